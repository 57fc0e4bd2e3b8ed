"""`steelyard ctl`: talk to a running instance's admin API (SPEC §1, §4).

    steelyard ctl [--admin URL] [--token T] [--json] COMMAND
      status | servers [BACKEND] | drain B/S | enable B/S | disable B/S | weight B/S N |
      add B ADDRESS [--weight N] [--name NAME] | remove B/S | reload |
      events [--history N] [--count N]

--admin takes a full URL (default http://127.0.0.1:9901, or $STEELYARD_ADMIN); the token comes
from --token or $STEELYARD_ADMIN_TOKEN. Output is a readable table, or the API's JSON with
--json. Exit codes: 0 ok, 1 the API refused or could not be reached, 2 usage error.
Standard library only (urllib), so it works wherever steelyard is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlsplit

DEFAULT_ADMIN = "http://127.0.0.1:9901"
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class CtlError(Exception):
    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # raise instead of exiting: main() returns the code
        raise UsageError(message)


def _common(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The global options, accepted before or after the command (`ctl servers --json`)."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--admin",
        default=default(os.environ.get("STEELYARD_ADMIN") or DEFAULT_ADMIN),
        help=f"admin API URL (default {DEFAULT_ADMIN}, or $STEELYARD_ADMIN)",
    )
    parser.add_argument(
        "--token",
        default=default(os.environ.get("STEELYARD_ADMIN_TOKEN") or None),
        help="bearer token (default $STEELYARD_ADMIN_TOKEN)",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="print the API's JSON"
    )
    parser.add_argument("--timeout", type=float, default=default(10.0), help="seconds (default 10)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="steelyard ctl",
        description="Talk to a running Steelyard instance's admin API.",
    )
    _common(parser, defaults=True)
    common = _Parser(add_help=False)
    _common(common, defaults=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("status", parents=[common], help="version, uptime, config and listeners")
    servers = sub.add_parser(
        "servers", parents=[common], help="every backend's servers and their state"
    )
    servers.add_argument("backend", nargs="?", help="only this backend")
    for action, text in (
        ("drain", "no new requests; in-flight ones finish"),
        ("enable", "back in rotation"),
        ("disable", "out of rotation at once"),
        ("remove", "drain, then remove the server"),
    ):
        p = sub.add_parser(action, parents=[common], help=text)
        p.add_argument("target", metavar="BACKEND/SERVER")
    weight = sub.add_parser("weight", parents=[common], help="set a server's weight (0-1000)")
    weight.add_argument("target", metavar="BACKEND/SERVER")
    weight.add_argument("weight", metavar="N", type=int)
    add = sub.add_parser("add", parents=[common], help="add a server to a backend")
    add.add_argument("backend", metavar="BACKEND")
    add.add_argument("address", metavar="HOST:PORT")
    add.add_argument("--weight", type=int, default=None)
    add.add_argument("--name", default=None)
    sub.add_parser("reload", parents=[common], help="re-read the config file")
    events = sub.add_parser("events", parents=[common], help="follow the event stream")
    events.add_argument("--history", type=int, default=0, help="first show the last N events")
    events.add_argument("--count", type=int, default=0, help="stop after N events")
    return parser


# -- HTTP --------------------------------------------------------------------------------------


class Client:
    def __init__(self, base: str, token: str | None, timeout: float) -> None:
        if "://" not in base:
            base = "http://" + base
        split = urlsplit(base)
        if split.scheme not in ("http", "https") or not split.netloc:
            raise UsageError(f"--admin must be a URL like {DEFAULT_ADMIN}, got {base!r}")
        self.base = base.rstrip("/")
        self.token = token
        self.timeout = timeout

    def stream(self, path: str) -> Any:
        """An open response for a server-sent-event stream (no read timeout)."""
        headers = {"Accept": "text/event-stream", "User-Agent": "steelyard-ctl"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, headers=headers)
        try:
            return urllib.request.urlopen(req, timeout=None)
        except urllib.error.HTTPError as exc:
            payload = _decode(exc.read())
            message = payload.get("error") if isinstance(payload, dict) else None
            raise CtlError(f"{exc.code} {exc.reason}: {message or 'request failed'}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CtlError(f"cannot reach the admin API at {self.base}: {reason}") from None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None
        headers = {"Accept": "application/json", "User-Agent": "steelyard-ctl"}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return _decode(resp.read())
        except urllib.error.HTTPError as exc:
            payload = _decode(exc.read())
            message = payload.get("error") if isinstance(payload, dict) else None
            problems = payload.get("problems") if isinstance(payload, dict) else None
            text = f"{exc.code} {exc.reason}: {message or 'request failed'}"
            if exc.code == 401:
                text += " (pass --token or set STEELYARD_ADMIN_TOKEN)"
            raise CtlError(text, [str(p) for p in problems or []]) from None
        except urllib.error.URLError as exc:
            raise CtlError(f"cannot reach the admin API at {self.base}: {exc.reason}") from None
        except (TimeoutError, OSError) as exc:
            raise CtlError(f"cannot reach the admin API at {self.base}: {exc}") from None


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _split_target(target: str) -> tuple[str, str]:
    backend, sep, server = target.partition("/")
    if not sep or not backend or not server:
        raise UsageError(f"expected BACKEND/SERVER, got {target!r}")
    return backend, server


def _server_path(backend: str, server: str) -> str:
    return f"/api/v1/backends/{quote(backend, safe='')}/servers/{quote(server, safe='')}"


# -- output ------------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    right = right or set()
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: list[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def _uptime(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m {s}s"
    if minutes:
        return f"{minutes}m {s}s"
    return f"{s}s"


def format_status(status: dict[str, Any]) -> str:
    lines = [
        f"version      {status.get('version')}",
        f"uptime       {_uptime(float(status.get('uptime_s') or 0))}",
        f"config file  {status.get('config_file') or '(none)'}",
        f"config hash  {status.get('config_hash') or '-'}",
    ]
    listeners = status.get("listeners") or []
    if listeners:
        lines.append("")
        rows = [
            [
                str(lst.get("name")),
                str(lst.get("protocol")),
                str(lst.get("address") or lst.get("bind")),
            ]
            for lst in listeners
        ]
        lines.append(table(["LISTENER", "PROTOCOL", "BIND"], rows))
    else:
        lines.append("listeners    none")
    return "\n".join(lines)


def _check(server: dict[str, Any]) -> str:
    check = server.get("last_check")
    if not check:
        return "-"
    reason = check.get("reason") or ""
    return f"{check.get('result')} {reason}".strip()


def format_servers(backends: list[dict[str, Any]]) -> str:
    rows = []
    for backend in backends:
        for s in backend.get("servers", []):
            rows.append(
                [
                    str(backend.get("name")),
                    str(backend.get("algorithm")),
                    str(s.get("name")),
                    str(s.get("address")),
                    str(s.get("state")),
                    str(s.get("weight")),
                    str(s.get("active")),
                    str(s.get("requests_total")),
                    str(s.get("failures_total")),
                    f"{float(s.get('latency_ewma_ms') or 0):.2f}",
                    _check(s),
                ]
            )
    headers = [
        "BACKEND",
        "ALGORITHM",
        "SERVER",
        "ADDRESS",
        "STATE",
        "WEIGHT",
        "ACTIVE",
        "REQUESTS",
        "FAILURES",
        "EWMA_MS",
        "LAST CHECK",
    ]
    if not rows:
        return "no servers"
    return table(headers, rows, right={5, 6, 7, 8, 9})


# -- main --------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    client = Client(args.admin, args.token, args.timeout)
    out = sys.stdout
    command = args.command
    if command == "status":
        status = client.request("GET", "/api/v1/status")
        print(json.dumps(status, indent=2) if args.json else format_status(status), file=out)
        return EXIT_OK
    if command == "servers":
        if args.backend:
            backends = [client.request("GET", f"/api/v1/backends/{quote(args.backend, safe='')}")]
            payload: Any = {"backends": backends}
        else:
            payload = client.request("GET", "/api/v1/backends")
            backends = payload.get("backends", [])
        print(json.dumps(payload, indent=2) if args.json else format_servers(backends), file=out)
        return EXIT_OK
    if command in ("drain", "enable", "disable", "remove", "weight"):
        backend, server = _split_target(args.target)
        path = _server_path(backend, server)
        if command == "remove":
            result = client.request("DELETE", path)
            verb = "removing (draining first)"
        elif command == "weight":
            if not 0 <= args.weight <= 1000:
                raise UsageError("weight must be from 0 to 1000")
            result = client.request("PUT", path + "/weight", {"weight": args.weight})
            verb = f"weight set to {args.weight}"
        else:
            result = client.request("POST", f"{path}/{command}")
            verb = {"drain": "draining", "enable": "enabled", "disable": "disabled"}[command]
        if args.json:
            print(json.dumps(result, indent=2), file=out)
        else:
            print(f"{backend}/{server}: {verb}; state {result.get('state')}", file=out)
        return EXIT_OK
    if command == "add":
        body: dict[str, Any] = {"address": args.address}
        if args.weight is not None:
            body["weight"] = args.weight
        if args.name is not None:
            body["name"] = args.name
        result = client.request(
            "POST", f"/api/v1/backends/{quote(args.backend, safe='')}/servers", body
        )
        if args.json:
            print(json.dumps(result, indent=2), file=out)
        else:
            print(
                f"{args.backend}/{result.get('name')}: added ({result.get('address')}, "
                f"weight {result.get('weight')}); state {result.get('state')}",
                file=out,
            )
        return EXIT_OK
    if command == "reload":
        started = time.monotonic()
        result = client.request("POST", "/api/v1/reload")
        if args.json:
            print(json.dumps(result, indent=2), file=out)
        else:
            took = (time.monotonic() - started) * 1000
            print(f"reloaded (config hash {result.get('config_hash')}, {took:.0f} ms)", file=out)
        return EXIT_OK
    if command == "events":
        return follow_events(client, args, out)
    raise UsageError(f"unknown command {command!r}")


def follow_events(client: Client, args: argparse.Namespace, out: Any) -> int:
    """Print events as they come: one line each (or the JSON of each with --json)."""
    history = max(0, min(200, args.history))
    seen = 0
    with client.stream(f"/api/v1/events?history={history}") as resp:
        try:
            for raw in resp:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not line.startswith("data:"):
                    continue
                event = _decode(line[5:].strip().encode())
                if not isinstance(event, dict):
                    continue
                if args.json:
                    print(json.dumps(event), file=out, flush=True)
                else:
                    who = event.get("backend") or "-"
                    if event.get("server"):
                        who += "/" + str(event["server"])
                    print(
                        f"{event.get('time')}  {event.get('type', ''):9} {who:24} "
                        f"{event.get('state') or '-':10} {event.get('reason') or ''}".rstrip(),
                        file=out,
                        flush=True,
                    )
                seen += 1
                if args.count and seen >= args.count:
                    break
        except KeyboardInterrupt:
            pass
    return EXIT_OK


def main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return run(args)
    except UsageError as exc:
        print(f"steelyard ctl: {exc}", file=sys.stderr)
        print("usage: see `steelyard ctl --help`", file=sys.stderr)
        return EXIT_USAGE
    except CtlError as exc:
        print(f"steelyard ctl: {exc.message}", file=sys.stderr)
        for detail in exc.details:
            print(f"  {detail}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
