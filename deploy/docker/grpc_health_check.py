"""Container health check: ask a local gRPC server (grpc.health.v1) whether it is SERVING.

Exit status 0 when SERVING, 1 otherwise (NOT_SERVING, unknown service, no answer in time). Docker's HEALTHCHECK runs
it inside the image; Kubernetes uses its native gRPC probes against the same endpoint instead.

    python grpc_health_check.py [--port 50051] [--service NAME] [--timeout 3]

The port defaults to DITTO_GRPC_PORT (the port every Ditto process serves on), else 50051.
"""

from __future__ import annotations

import argparse
import os
import sys


def check(address: str, service: str = "", timeout: float = 3.0) -> tuple[bool, str]:
    """(serving, what was seen) for the health of `service` ("" = the whole server) at `address`."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as err:
            return False, f"{err.code().name}: {err.details()}"  # type: ignore[attr-defined]
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gRPC health check for Ditto containers")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("DITTO_GRPC_PORT") or 50051))
    parser.add_argument("--service", default="", help="service name to check; empty = the server as a whole")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    serving, seen = check(f"{args.host}:{args.port}", args.service, args.timeout)
    print(f"{args.host}:{args.port} {args.service or '(server)'}: {seen}")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
