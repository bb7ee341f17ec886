"""Generated gRPC stubs of the ditto.v1 API (protos/ditto/v1). Do not edit: run `make protos`."""
