"""Micro benchmark of the pure per-request code in core/http1 and core/routing, and of the
access-log formatter: what one keep-alive request through Steelyard costs in these pieces,
without sockets. Prints µs per call (the best of several repeats, so the number is the cost
of the code, not of a noisy machine).

The inputs are what `make bench` sends and receives: wrk's request (`GET / HTTP/1.1` + Host)
and nginx's small response (Server, Date, Content-Type, Content-Length, Connection, x-server).

Usage: .venv/bin/python bench/micro_http1.py [--number N] [--repeat R]
"""

from __future__ import annotations

import argparse
import sys
import time
import timeit
from typing import Any

from steelyard.core.http1.headers import build_request_head, build_response_head, response_mode
from steelyard.core.http1.parser import RequestHead, RequestParser, ResponseHead, ResponseParser
from steelyard.core.records import RequestRecord
from steelyard.core.routing import Router
from steelyard.logs import format_json

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
REQUEST_CLOSE = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: close\r\n\r\n"
BROWSER = (
    b"GET /api/items?page=2 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Mozilla/5.0\r\n"
    b"Accept: text/html,application/xhtml+xml\r\nAccept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\nConnection: keep-alive\r\nCookie: a=1; b=2\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 14:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 14\r\nConnection: keep-alive\r\n"
    b"x-server: s1\r\n\r\nhello from s1\n"
)


class Sink:
    __slots__ = ("head",)

    def __init__(self) -> None:
        self.head: Any = None

    def on_request_head(self, head: RequestHead) -> None:
        self.head = head

    def on_request_body(self, data: bytes) -> None:
        pass

    def on_request_end(self, trailers: Any) -> None:
        pass

    def on_interim(self, head: ResponseHead) -> None:
        pass

    def on_response_head(self, head: ResponseHead) -> None:
        self.head = head

    def on_response_body(self, data: bytes) -> None:
        pass

    def on_response_end(self, trailers: Any) -> None:
        pass


class _Match:
    path_prefix = "/"


class _Route:
    match = _Match()
    backend = "app"


def cases() -> dict[str, Any]:
    req_sink = Sink()
    req_parser = RequestParser(req_sink)
    resp_sink = Sink()
    resp_parser = ResponseParser(resp_sink)
    req_parser.feed(REQUEST)
    head: RequestHead = req_sink.head
    resp_parser.expect_response(resp_sink, False)
    resp_parser.feed(RESPONSE)
    resp: ResponseHead = resp_sink.head
    router = Router([_Route()])
    rec = RequestRecord("web", "127.0.0.1:40000", time.time())
    rec.method, rec.path, rec.status = "GET", "/", 200
    rec.backend, rec.server, rec.request_id = "app", "127.0.0.1:8001", "0123456789ab00000001"
    rec.bytes_in, rec.bytes_out, rec.duration = 40, 160, 0.000812

    def response() -> None:
        resp_parser.expect_response(resp_sink, False)
        resp_parser.feed(RESPONSE)

    return {
        "RequestParser.feed (wrk GET)": lambda: req_parser.feed(REQUEST),
        "RequestParser() + feed (wrk GET, Connection: close)": lambda: RequestParser(req_sink).feed(
            REQUEST_CLOSE
        ),
        "RequestParser.feed (browser GET, 9 fields)": lambda: req_parser.feed(BROWSER),
        "ResponseParser.feed (nginx 200, 6 fields)": response,
        "build_request_head": lambda: build_request_head(
            head,
            head.headers,
            target=head.target,
            client_ip=b"127.0.0.1",
            proto=b"http",
            request_id=b"0123456789ab00000001",
        ),
        "build_response_head": lambda: build_response_head(
            resp,
            resp.headers,
            mode=response_mode(resp, False),
            keep_alive=True,
            http10_client=False,
            request_id=b"0123456789ab00000001",
        ),
        "Router.match (path_prefix /)": lambda: router.match(head),
        "format_json (access log line)": lambda: format_json(rec),
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--number", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    total = 0.0
    for name, fn in cases().items():
        best = min(timeit.repeat(fn, number=args.number, repeat=args.repeat)) / args.number
        if "close" not in name and "browser" not in name:
            total += best
        print(f"{best * 1e6:8.2f} µs  {name}")
    print(f"{total * 1e6:8.2f} µs  total for one wrk keep-alive request (pieces above)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
