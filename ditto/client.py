"""The SDK lives in the small client package `ditto_client` (clients/python: grpcio and protobuf only, no torch).
This name stays so that code written against `ditto.client` keeps working where the whole service is installed."""

from ditto_client import *  # noqa: F403
from ditto_client import __all__  # noqa: F401
