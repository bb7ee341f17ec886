"""Small helpers every stage's bus handler shares: reading a START spec, forwarding entries unchanged, and
reporting a session error to the orchestrator."""

from __future__ import annotations

import grpc
from ditto_client.v1 import bus_pb2, common_pb2

from ditto import codec
from ditto.bus.worker import Output, WorkItem, WorkResult


def session_spec(item: WorkItem) -> bus_pb2.SessionSpec:
    spec = bus_pb2.SessionSpec()
    spec.ParseFromString(item.entry.meta)
    return spec


def forward(item: WorkItem, target: str) -> Output:
    """The same entry (kind, meta, tensors) to the next stage."""
    return Output(target, item.entry.kind, dict(codec.unnamed(item.entry.tensors)), item.entry.meta)


def state_lost(item: WorkItem, result: WorkResult, stage_name: str) -> None:
    """A session's entry arrived without a checkpoint (START never seen here, or its state expired): the session
    cannot go on at this stage. Tell the orchestrator (unless the session is closing anyway) and forget it."""
    if item.entry.kind != bus_pb2.ENTRY_KIND_CLOSE:
        result.outputs.append(error(grpc.StatusCode.ABORTED, f"the {stage_name} lost this session's state; "
                                                             "start a new session"))
    result.close = True


def error(code: grpc.StatusCode, message: str) -> Output:
    """Tell the orchestrator this session cannot go on; it ends the session with this status."""
    st = common_pb2.Status(code=code.value[0], message=message)
    return Output("frames", bus_pb2.ENTRY_KIND_ERROR, {}, st.SerializeToString())
