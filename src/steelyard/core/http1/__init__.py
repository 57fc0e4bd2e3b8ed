"""HTTP/1.1 for the proxy: strict parsing (httptools) and header logic, pure."""

from __future__ import annotations

from steelyard.core.http1.headers import (
    HeaderActions,
    RequestContext,
    RequestIdGenerator,
    Template,
    valid_request_id,
)
from steelyard.core.http1.parser import (
    Headers,
    Limits,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
)

__all__ = [
    "HeaderActions",
    "Headers",
    "Limits",
    "RequestContext",
    "RequestHead",
    "RequestIdGenerator",
    "RequestParser",
    "ResponseHead",
    "ResponseParser",
    "Template",
    "valid_request_id",
]
