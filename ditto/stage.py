"""Small helpers every stage's bus handler shares: reading a START spec, forwarding entries unchanged, and
reporting a session error to the orchestrator."""

from __future__ import annotations

import grpc

from ditto import codec
from ditto.bus.worker import Output, WorkItem
from ditto.v1 import bus_pb2, common_pb2


def session_spec(item: WorkItem) -> bus_pb2.SessionSpec:
    spec = bus_pb2.SessionSpec()
    spec.ParseFromString(item.entry.meta)
    return spec


def forward(item: WorkItem, target: str) -> Output:
    """The same entry (kind, meta, tensors) to the next stage."""
    return Output(target, item.entry.kind, dict(codec.unnamed(item.entry.tensors)), item.entry.meta)


def error(code: grpc.StatusCode, message: str) -> Output:
    """Tell the orchestrator this session cannot go on; it ends the session with this status."""
    st = common_pb2.Status(code=code.value[0], message=message)
    return Output("frames", bus_pb2.ENTRY_KIND_ERROR, {}, st.SerializeToString())
