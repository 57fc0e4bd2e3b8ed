"""Semantic rules over the raw config data: the errors pydantic cannot see (references,
conflicts, protocol-specific keys) and lint warnings.

They read the plain data of loader.Document defensively (anything of the wrong type is
skipped: the models report it), so they run even when the models fail and every problem of
a file is reported at once.
"""

from __future__ import annotations

import difflib
import ipaddress
from typing import TYPE_CHECKING, Any

from steelyard.config.units import is_loopback, parse_duration, split_host_port

if TYPE_CHECKING:
    from steelyard.config.loader import Document, Path
    from steelyard.config.models import Config
    from steelyard.config.problems import Problem

ROUTE_TARGETS = ("backend", "split", "redirect", "respond")
HTTP_ONLY = ("routes", "redirect_https", "max_body_size", "normalize_path")
HTTP_ONLY_TIMEOUTS = ("request_head", "tunnel", "idle")
UDP_ONLY = ("session_idle_timeout", "max_sessions")
NOT_UDP = ("tls", "accept_proxy_protocol")
TCP_ONLY = ("sni_routes",)


def _map(x: Any) -> dict[Any, Any]:
    return x if isinstance(x, dict) else {}


def _list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else []


def _did_you_mean(value: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
    if close:
        return f" (did you mean {close[0]!r}?)"
    if choices:
        return f"; defined backends: {', '.join(choices)}"
    return "; no backends are defined"


# ---------------------------------------------------------------- errors


def semantic_errors(doc: Document) -> list[Problem]:
    data = _map(doc.data)
    out: list[Problem] = []
    backends = data.get("backends")
    names: list[str] | None = (
        [k for k in backends if isinstance(k, str)] if isinstance(backends, dict) else None
    )

    def ref(path: Path, value: Any) -> None:
        if names is None or not isinstance(value, str) or value in names:
            return
        out.append(doc.problem(path, f"unknown backend {value!r}{_did_you_mean(value, names)}"))

    out.extend(_backend_errors(doc, _map(backends)))
    listeners = _list(data.get("listeners"))
    first_name: dict[str, int] = {}
    for i, lst in enumerate(listeners):
        if not isinstance(lst, dict):
            continue
        base: Path = ("listeners", i)
        name = lst.get("name")
        if isinstance(name, str):
            if name in first_name:
                line = doc.locate(("listeners", first_name[name], "name"))[0]
                out.append(
                    doc.problem(
                        (*base, "name"),
                        f"duplicate listener name {name!r} (first used on line {line})",
                    )
                )
            else:
                first_name[name] = i
        out.extend(_listener_errors(doc, base, lst, ref))
    out.extend(_bind_conflicts(doc, data, listeners))
    admin = data.get("admin")
    if isinstance(admin, dict):
        bind = admin.get("bind", "127.0.0.1:9901")
        token = admin.get("token")
        try:
            host, _port = split_host_port(bind)
        except ValueError:
            host = ""
        if host and not is_loopback(host) and not (isinstance(token, str) and token.strip()):
            out.append(
                doc.problem(
                    ("admin", "bind"),
                    f"admin binds {bind}, which is not loopback: set a non-empty admin.token "
                    "(every API call must then carry it)",
                )
            )
    return out


def _backend_errors(doc: Document, backends: dict[Any, Any]) -> list[Problem]:
    out: list[Problem] = []
    for bname, b in backends.items():
        base: Path = ("backends", bname)
        if isinstance(bname, str) and (
            not bname or "/" in bname or any(c.isspace() for c in bname)
        ):
            out.append(
                doc.problem(base, f"invalid backend name {bname!r}: no spaces or '/'", key=True)
            )
        if not isinstance(b, dict):
            continue
        if "name" in b:
            out.append(
                doc.problem(
                    (*base, "name"),
                    f"unknown key 'name' in backends.{bname}: a backend's name is its key "
                    "under backends",
                    key=True,
                )
            )
        hc = b.get("health_check")
        if isinstance(hc, dict):
            out.extend(_health_check_errors(doc, (*base, "health_check"), hc))
        seen: dict[str, int] = {}
        for j, s in enumerate(_list(b.get("servers"))):
            if not isinstance(s, dict):
                continue
            explicit = "name" in s
            sname = s.get("name") if explicit else s.get("address")
            if not isinstance(sname, str | int):
                continue
            sname = str(sname).strip()
            if sname in seen:
                line = doc.locate((*base, "servers", seen[sname]))[0]
                where = (*base, "servers", j, "name" if explicit else "address")
                hint = "" if explicit else "; give one of them a distinct `name`"
                out.append(
                    doc.problem(
                        where,
                        f"duplicate server name {sname!r} in backend {bname!r} "
                        f"(first on line {line}){hint}",
                    )
                )
            else:
                seen[sname] = j
    return out


def _seconds(value: Any, default: float) -> float | None:
    if value is None:
        return default
    try:
        return parse_duration(value)
    except ValueError:
        return None


def _fmt(seconds: float) -> str:
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def _health_check_errors(doc: Document, base: Path, hc: dict[Any, Any]) -> list[Problem]:
    interval = _seconds(hc.get("interval"), 5.0)
    timeout = _seconds(hc.get("timeout"), 2.0)
    if interval is None or timeout is None:
        return []
    if interval <= 0:
        return [doc.problem((*base, "interval"), "health_check interval must be greater than 0")]
    if timeout <= 0:
        return [doc.problem((*base, "timeout"), "health_check timeout must be greater than 0")]
    if timeout >= interval:
        where = (*base, "timeout") if "timeout" in hc else (*base, "interval")
        return [
            doc.problem(
                where,
                f"health_check timeout ({_fmt(timeout)}) must be shorter than its interval "
                f"({_fmt(interval)})",
            )
        ]
    return []


def _listener_errors(doc: Document, base: Path, lst: dict[Any, Any], ref: Any) -> list[Problem]:
    out: list[Problem] = []
    protocol = lst.get("protocol", "http")
    label = f"listener {lst.get('name')!r}" if isinstance(lst.get("name"), str) else "listener"

    def refuse(key: str, why: str) -> None:
        out.append(doc.problem((*base, key), f"{key!r} {why} ({label} is {protocol})", key=True))

    if protocol in ("tcp", "udp"):
        for key in HTTP_ONLY:
            if key in lst:
                refuse(key, "is only for http listeners")
        # tcp uses request_head as the time allowed for a PROXY header / TLS ClientHello
        for key in HTTP_ONLY_TIMEOUTS if protocol == "udp" else ("tunnel",):
            if key in _map(lst.get("timeouts")):
                hint = " (use session_idle_timeout)" if key == "idle" else ""
                out.append(
                    doc.problem(
                        (*base, "timeouts", key),
                        f"timeouts.{key} is not used by {protocol} listeners ({label}){hint}",
                        key=True,
                    )
                )
    if protocol in ("http", "tcp"):
        for key in UDP_ONLY:
            if key in lst:
                refuse(key, "is only for udp listeners")
    if protocol == "udp":
        for key in NOT_UDP:
            if key in lst:
                refuse(key, "is not available on udp listeners")
    if protocol in ("http", "udp"):
        for key in TCP_ONLY:
            if key in lst:
                refuse(key, "is only for tcp listeners")
    if protocol == "http" and lst.get("backend") is not None and lst.get("routes"):
        out.append(
            doc.problem(
                (*base, "backend"),
                f"'backend' on an http listener is a shorthand for a single catch-all route; "
                f"{label} has routes: add a last route {{backend: NAME}} instead",
                key=True,
            )
        )
    if protocol == "tcp":
        if lst.get("backend") is None and not lst.get("sni_routes"):
            out.append(doc.problem(base, f"{label} (tcp) needs a 'backend' or 'sni_routes'"))
        if "sni_routes" in lst and lst.get("tls") is not None:
            out.append(
                doc.problem(
                    (*base, "sni_routes"),
                    "sni_routes pass TLS through untouched and cannot be combined with 'tls' "
                    "(which terminates it)",
                    key=True,
                )
            )
    if protocol == "udp" and lst.get("backend") is None:
        out.append(doc.problem(base, f"{label} (udp) needs a 'backend'"))
    ref((*base, "backend"), lst.get("backend"))
    for k, sr in enumerate(_list(lst.get("sni_routes"))):
        if isinstance(sr, dict):
            ref((*base, "sni_routes", k, "backend"), sr.get("backend"))
    for k, route in enumerate(_list(lst.get("routes"))):
        if isinstance(route, dict):
            out.extend(_route_errors(doc, (*base, "routes", k), route, ref))
    return out


def _route_errors(doc: Document, base: Path, route: dict[Any, Any], ref: Any) -> list[Problem]:
    out: list[Problem] = []
    present = [k for k in ROUTE_TARGETS if route.get(k) is not None]
    if not present:
        out.append(
            doc.problem(
                base,
                "a route needs one of backend, split, redirect or respond (found none)",
            )
        )
    elif len(present) > 1:
        out.append(
            doc.problem(
                (*base, present[1]),
                f"a route takes only one of backend, split, redirect or respond "
                f"(found {' and '.join(present)})",
                key=True,
            )
        )
    ref((*base, "backend"), route.get("backend"))
    split = route.get("split")
    if isinstance(split, list):
        if not split:
            out.append(doc.problem((*base, "split"), "split needs at least one {backend, weight}"))
        total = 0
        ok = True
        for k, entry in enumerate(split):
            if not isinstance(entry, dict):
                ok = False
                continue
            ref((*base, "split", k, "backend"), entry.get("backend"))
            w = entry.get("weight", 1)
            if isinstance(w, int) and not isinstance(w, bool) and w >= 0:
                total += w
            else:
                ok = False
        if split and ok and total <= 0:
            out.append(
                doc.problem(
                    (*base, "split"),
                    "split weights add up to 0: at least one backend needs a weight above 0",
                )
            )
    if route.get("rewrite_prefix") is not None and route.get("strip_prefix") is None:
        match = _map(route.get("match"))
        if match.get("path_prefix") is None:
            out.append(
                doc.problem(
                    (*base, "rewrite_prefix"),
                    "rewrite_prefix replaces strip_prefix or, without it, match.path_prefix: "
                    "this route has neither",
                    key=True,
                )
            )
    return out


def _bind_key(host: str) -> tuple[str, str]:
    """(family, normalised host); family is 4, 6 or 'name'."""
    if host.lower() == "localhost":
        return ("4", "127.0.0.1")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return ("name", host.lower())
    return (str(ip.version), str(ip))


def _conflict(a: tuple[str, str], b: tuple[str, str]) -> bool:
    if a == b:
        return True
    wild = {("4", "0.0.0.0"), ("6", "::")}
    # asyncio binds IPv6 sockets with IPV6_V6ONLY, so [::] does not cover IPv4
    return any(x in wild and y[0] in (x[0], "name") for x, y in ((a, b), (b, a)))


def _bind_conflicts(doc: Document, data: dict[Any, Any], listeners: list[Any]) -> list[Problem]:
    entries: list[tuple[str, str, tuple[str, str], int, Path, str]] = []
    admin = data.get("admin")
    if isinstance(admin, dict):
        bind = admin.get("bind", "127.0.0.1:9901")
        entries.append(("tcp", str(bind), ("", ""), 0, ("admin", "bind"), "the admin listener"))
    for i, lst in enumerate(listeners):
        if isinstance(lst, dict) and isinstance(lst.get("bind"), str):
            cls = "udp" if lst.get("protocol") == "udp" else "tcp"
            name = lst.get("name")
            label = f"listener {name!r}" if isinstance(name, str) else f"listener #{i + 1}"
            entries.append((cls, lst["bind"], ("", ""), 0, ("listeners", i, "bind"), label))
    parsed: list[tuple[str, str, tuple[str, str], int, Path, str]] = []
    for cls, bind, _, _, path, label in entries:
        try:
            host, port = split_host_port(bind)
        except ValueError:
            continue
        if port == 0:
            continue
        parsed.append((cls, bind, _bind_key(host), port, path, label))
    out: list[Problem] = []
    for j, (cls, bind, key, port, path, label) in enumerate(parsed):
        for cls2, bind2, key2, port2, path2, label2 in parsed[:j]:
            if cls == cls2 and port == port2 and _conflict(key, key2):
                line = doc.locate(path2)[0]
                out.append(
                    doc.problem(
                        path,
                        f"bind conflict: {label} binds {bind}, which overlaps {label2} "
                        f"({bind2}, line {line})",
                    )
                )
                break
    return out


# ---------------------------------------------------------------- warnings


def lint(doc: Document, config: Config | None) -> list[Problem]:
    data = _map(doc.data)
    out: list[Problem] = []

    def warn(path: Path, message: str, key: bool = True) -> None:
        out.append(doc.problem(path, message, key=key, warning=True))

    backends = _map(data.get("backends"))
    used: set[str] = set()
    http_used: set[str] = set()
    l4_used: set[str] = set()
    for i, lst in enumerate(_list(data.get("listeners"))):
        lst = _map(lst)
        protocol = lst.get("protocol", "http")
        refs: list[Any] = [lst.get("backend")]
        refs += [_map(s).get("backend") for s in _list(lst.get("sni_routes"))]
        routes = _list(lst.get("routes"))
        for route in routes:
            route = _map(route)
            refs.append(route.get("backend"))
            refs += [_map(e).get("backend") for e in _list(route.get("split"))]
        names = {r for r in refs if isinstance(r, str)}
        used |= names
        (http_used if protocol == "http" else l4_used).update(names)
        base: Path = ("listeners", i)
        if protocol == "http" and not routes and lst.get("backend") is None:
            warn(base, "http listener has no routes: every request gets 404", key=False)
        if protocol == "tcp" and "idle" in _map(lst.get("timeouts")):
            warn(
                (*base, "timeouts", "idle"),
                "timeouts.idle is not used by tcp listeners: the backend's timeouts.idle "
                "closes quiet tcp connections",
            )
        if protocol == "http" and lst.get("redirect_https") is True and lst.get("tls"):
            warn(
                (*base, "redirect_https"),
                "redirect_https on a listener that already terminates TLS redirects every "
                "request to itself",
            )
        out.extend(_unreachable_routes(doc, base, routes))
        if protocol == "http" and lst.get("normalize_path") is not True:
            out.extend(_deny_routes_without_normalization(doc, base, routes))
    for bname, b in backends.items():
        if not isinstance(b, dict):
            continue
        base = ("backends", bname)
        if isinstance(bname, str) and bname not in used:
            warn(base, f"backend {bname!r} is not used by any listener or route")
        out.extend(_backend_warnings(doc, base, b, bname in http_used, bname in l4_used))
    out.extend(_unitless_durations(doc, config))
    return out


def _deny_routes_without_normalization(
    doc: Document, base: Path, routes: list[Any]
) -> list[Problem]:
    """A route that answers 401/403 by path on a listener that routes on the raw path: the
    same resource spelled /%61dmin or //admin does not match it."""
    out: list[Problem] = []
    for k, route in enumerate(routes):
        route = _map(route)
        match = _map(route.get("match"))
        status = _map(route.get("respond")).get("status")
        if status in (401, 403) and (match.get("path_prefix") or match.get("path_regex")):
            out.append(
                doc.problem(
                    (*base, "routes", k),
                    f"this route answers {status} by path, but the listener routes on the path "
                    "as received: /%61dmin or //admin would not match it; add "
                    "'normalize_path: true' to the listener",
                    warning=True,
                )
            )
    return out


def _match_key(route: dict[Any, Any]) -> Any:
    match = route.get("match")
    if match is None:
        match = {}
    if not isinstance(match, dict):
        return None
    return repr(sorted((str(k), repr(v)) for k, v in match.items()))


def _catch_all(route: dict[Any, Any]) -> bool:
    match = route.get("match")
    if match is None:
        return True
    if not isinstance(match, dict):
        return False
    rest = {k: v for k, v in match.items() if v not in (None, {}, [])}
    return not rest or rest == {"path_prefix": "/"}


def _unreachable_routes(doc: Document, base: Path, routes: list[Any]) -> list[Problem]:
    out: list[Problem] = []
    earlier: dict[Any, int] = {}
    catch_all: int | None = None
    for k, route in enumerate(routes):
        if not isinstance(route, dict):
            continue
        path = (*base, "routes", k)
        if catch_all is not None:
            line = doc.locate((*base, "routes", catch_all))[0]
            out.append(
                doc.problem(
                    path,
                    f"this route can never match: the route on line {line} matches every request",
                    warning=True,
                )
            )
            continue
        key = _match_key(route)
        if key is not None and key in earlier:
            line = doc.locate((*base, "routes", earlier[key]))[0]
            out.append(
                doc.problem(
                    path,
                    f"this route can never match: the route on line {line} has the same match",
                    warning=True,
                )
            )
        elif key is not None:
            earlier[key] = k
        if _catch_all(route):
            catch_all = k
    return out


def _backend_warnings(
    doc: Document, base: Path, b: dict[Any, Any], http: bool, l4: bool
) -> list[Problem]:
    out: list[Problem] = []

    def warn(key: str, message: str) -> None:
        out.append(doc.problem((*base, key), message, key=True, warning=True))

    algorithm = b.get("algorithm", "round_robin")
    servers = _list(b.get("servers"))
    if not servers:
        out.append(
            doc.problem(
                base,
                "backend has no servers: every request to it fails until servers are added "
                "through the admin API",
                key=True,
                warning=True,
            )
        )
    elif len(servers) > 1 and b.get("health_check") is None and b.get("outlier_detection") is None:
        out.append(
            doc.problem(
                base,
                f"backend has {len(servers)} servers but neither health_check nor "
                "outlier_detection: a failed server keeps receiving traffic",
                key=True,
                warning=True,
            )
        )
    if "hash_on" in b and algorithm not in ("consistent_hash", "maglev"):
        warn("hash_on", f"hash_on is used only by consistent_hash and maglev, not {algorithm}")
    if "table_size" in b and algorithm != "maglev":
        warn("table_size", f"table_size is used only by maglev, not {algorithm}")
    if "hash_balance_factor" in b and algorithm != "consistent_hash":
        warn(
            "hash_balance_factor",
            f"hash_balance_factor is used only by consistent_hash, not {algorithm}",
        )
    if algorithm == "maglev":
        size = b.get("table_size", 65537)
        if isinstance(size, int) and servers and size < 100 * len(servers):
            warn(
                "table_size" if "table_size" in b else "algorithm",
                f"maglev table_size {size} is under 100 x the {len(servers)} servers: "
                "expect uneven shares",
            )
    if b.get("sticky") is not None and l4 and not http:
        warn("sticky", "sticky cookies work only for http listeners; this backend serves tcp/udp")
    if b.get("proxy_protocol") is not None and http:
        warn(
            "proxy_protocol",
            "proxy_protocol is meant for tcp listeners; http servers behind this backend will "
            "receive a PROXY header first",
        )
    hc = b.get("health_check")
    if isinstance(hc, dict) and hc.get("type") == "tcp":
        for key in ("path", "expect_status", "expect_body", "host"):
            if key in hc:
                out.append(
                    doc.problem(
                        (*base, "health_check", key),
                        f"health_check.{key} is ignored by type: tcp checks",
                        key=True,
                        warning=True,
                    )
                )
    return out


def _unitless_durations(doc: Document, config: Config | None) -> list[Problem]:
    """A duration written without a unit is read as seconds: say so, it is a classic slip."""
    from steelyard.config.loader import model_at

    out: list[Problem] = []

    def visit(value: Any, path: Path) -> None:
        if isinstance(value, dict):
            model = model_at(path) if path == () or isinstance(path[-1], str | int) else None
            for k, v in value.items():
                sub = (*path, k)
                if model is not None and isinstance(k, str) and k in model.model_fields:
                    f = model.model_fields[k]
                    is_duration = any(
                        getattr(m, "func", None) is parse_duration for m in f.metadata
                    )
                    if is_duration and _unitless(v):
                        out.append(
                            doc.problem(
                                sub,
                                f"{k}: {v!r} has no unit and is read as seconds; "
                                f"write {_as_seconds(v)} to say so",
                                warning=True,
                            )
                        )
                visit(v, sub)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                visit(v, (*path, i))

    visit(doc.data, ())
    return out


def _unitless(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int | float):
        return v != 0
    if isinstance(v, str):
        try:
            float(v)
        except ValueError:
            return False
        return float(v) != 0
    return False


def _as_seconds(v: Any) -> str:
    try:
        return f"{parse_duration(v):g}s"
    except ValueError:
        return "e.g. 5s"
