"""Logs, traces and metrics, set up once per process.

- structlog renders JSON lines (or console lines for people); `bind(tenant=..., session=..., trace=...)` context
  variables ride along with every log line of the task that set them.
- OpenTelemetry: one tracer provider with a console or OTLP exporter, or none; it runs without a collector.
  `inject()` / `extract()` carry the W3C trace context inside bus entries so one chunk's trace spans processes.
- Prometheus: one registry per process (`REGISTRY`), served on `metrics_port` when set. Metrics are declared beside
  the code that sets them (`counter`, `gauge`, `histogram`); the GPU memory gauge is read here, at scrape time.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from ditto.config import TelemetrySettings
from ditto.redaction import redact_event

REGISTRY = CollectorRegistry(auto_describe=True)
_configured = False


class _GpuMemory:
    """`ditto_gpu_memory_bytes{device, kind}` at scrape time: what PyTorch holds on each CUDA device of this process
    (`allocated` by tensors, `reserved` by its caching allocator) and the device's memory in use by every process
    (`device_used`). Read only once the process has initialised CUDA itself, so a scrape never creates a CUDA
    context; a process without a GPU exports the family with no samples."""

    def collect(self) -> Any:
        family = GaugeMetricFamily("ditto_gpu_memory_bytes", "GPU memory: held by this process's tensors "
                                   "(allocated), by its allocator (reserved), in use on the device (device_used)",
                                   labels=("device", "kind"))
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            for i in range(torch.cuda.device_count()):
                free, total = torch.cuda.mem_get_info(i)
                family.add_metric([f"cuda:{i}", "allocated"], float(torch.cuda.memory_allocated(i)))
                family.add_metric([f"cuda:{i}", "reserved"], float(torch.cuda.memory_reserved(i)))
                family.add_metric([f"cuda:{i}", "device_used"], float(total - free))
        yield family


REGISTRY.register(_GpuMemory())


def setup(settings: TelemetrySettings | None = None, service_name: str | None = None) -> None:
    """Configure logging, tracing and the metrics endpoint. Safe to call more than once (first call wins)."""
    global _configured
    if _configured:
        return
    settings = settings or TelemetrySettings.model_validate({})
    name = service_name or settings.service_name
    level = getattr(logging, settings.log_level.upper())
    logging.basicConfig(stream=sys.stderr, level=level, format="%(message)s")
    renderer: Any = (
        structlog.processors.JSONRenderer() if settings.log_format == "json" else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_trace_ids,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_event,  # after the traceback is text: a Redis error inside it may name the URL
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=name)
    _setup_tracing(settings, name)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, registry=REGISTRY)
    _configured = True


def _setup_tracing(settings: TelemetrySettings, name: str) -> None:
    if settings.trace_exporter == "none":
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    if settings.trace_exporter == "console":
        exporter: Any = ConsoleSpanExporter(out=sys.stderr)
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=True)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def _add_trace_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event.setdefault("span_id", format(ctx.span_id, "016x"))
    return event


def get_logger(name: str | None = None, **initial: Any) -> Any:
    return structlog.get_logger(name, **initial)


def bind(**values: Any) -> None:
    """Bind tenant / session / other ids to every later log line of the current task or thread."""
    structlog.contextvars.bind_contextvars(**values)


def unbind(*keys: str) -> None:
    structlog.contextvars.unbind_contextvars(*keys)


def tracer(name: str = "ditto") -> trace.Tracer:
    return trace.get_tracer(name)


def inject(carrier: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """The current trace context as W3C headers, to put into a stream entry."""
    out: dict[str, str] = dict(carrier or {})
    propagate.inject(out)
    return out


def extract(carrier: Mapping[str, str]) -> otel_context.Context:
    """A context whose parent span is the one recorded in a stream entry."""
    return propagate.extract(dict(carrier))


def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
    return _metric(Counter, name, doc, labels)


def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
    return _metric(Gauge, name, doc, labels)


def histogram(name: str, doc: str, labels: tuple[str, ...] = (), buckets: tuple[float, ...] | None = None) -> Histogram:
    kw: dict[str, Any] = {"buckets": buckets} if buckets else {}
    return _metric(Histogram, name, doc, labels, **kw)


def _metric(kind: Any, name: str, doc: str, labels: tuple[str, ...], **kw: Any) -> Any:
    """Create a metric once per process; later calls with the same name return the same object."""
    existing = REGISTRY._names_to_collectors.get(name)  # noqa: SLF001 - prometheus has no public lookup
    if existing is None and kind is Counter:
        existing = REGISTRY._names_to_collectors.get(name + "_total")
    if existing is not None:
        return existing
    return kind(name, doc, labels, registry=REGISTRY, **kw)
