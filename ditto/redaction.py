"""Credentials never leave the process: a Redis URL may carry a password (`redis://:PASSWORD@host`), and an error
from Redis or a log line that mentions the URL must not show it to a client, a log reader or a trace viewer."""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# scheme://userinfo@ -> scheme://***@ (userinfo is whatever precedes the first @ of the authority)
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
_known: set[str] = set()


def redact(text: str) -> str:
    """`text` with the user:password part of every URL, and every password seen by `remember_url`, masked."""
    out = _USERINFO.sub(r"\g<scheme>***@", text)
    for secret in _known:
        if secret in out:
            out = out.replace(secret, "***")
    return out


def redact_url(url: str) -> str:
    """The URL without its credentials, for messages and logs: `redis://***@host:6379/0`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def remember_url(url: str) -> None:
    """Remember the password of a URL this process uses, so it is masked even where it appears without the URL."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return
    if password and len(password) >= 4:  # a very short "password" would mask unrelated text
        _known.add(password)


def redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: every string value of a log line, exceptions and tracebacks included, redacted."""
    for k, v in event.items():
        if isinstance(v, str):
            event[k] = redact(v)
        elif isinstance(v, BaseException):
            event[k] = redact(str(v))
    return event
