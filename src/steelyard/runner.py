"""`steelyard run`: load the config, serve, and handle signals.

SIGTERM/SIGINT: graceful shutdown (stop accepting, finish in-flight work up to
shutdown_timeout, exit 0). SIGHUP: reload; an invalid file is logged and the old config
keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("steelyard")


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("steelyard")
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def print_problems(exc: Any) -> None:
    for problem in getattr(exc, "problems", []) or [exc]:
        print(str(problem), file=sys.stderr)


def run_loop(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    from steelyard.net.transport_table import import_uvloop

    try:
        uvloop = import_uvloop()
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        return asyncio.run(main())
    rc: int = uvloop.run(main())
    return rc


def run(config_path: str) -> int:
    from steelyard.config import ConfigError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print_problems(exc)
        return 1
    except OSError as exc:
        print(f"{config_path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return 1
    setup_logging()
    for warning in getattr(config, "warnings", ()):
        log.warning("%s", warning)
    from steelyard import _native
    from steelyard.files import LOW_FILE_LIMIT, raise_open_file_limit

    if _native.WARNING:
        log.warning("%s", _native.WARNING)

    before, after = raise_open_file_limit()
    if after != before:
        log.info("open-file limit raised from %d to %d", before, after)
    if 0 <= after < LOW_FILE_LIMIT:
        log.warning(
            "open-file limit is %d: at most about %d connections at once; "
            "raise it (ulimit -n, or LimitNOFILE= in a systemd unit)",
            after, after // 2,
        )  # fmt: skip
    return run_loop(lambda: serve(config, config_path))


def _access_log_key(config: Any) -> tuple[str | None, str]:
    """(path, format) of the config's access log: None = stdout, "off" = none."""
    log_cfg = getattr(config, "log", None)
    return getattr(log_cfg, "access", None), getattr(log_cfg, "format", "json") or "json"


async def serve(
    config: Any, config_path: str | None, on_started: Callable[[Any], None] | None = None
) -> int:
    from steelyard.config import ConfigError
    from steelyard.core.events import Event
    from steelyard.engine import Engine, StartError
    from steelyard.logs import AccessLog

    loop = asyncio.get_running_loop()
    engine = Engine(config, config_path, loop=loop)
    access_key = _access_log_key(config)
    try:  # (the config checked the path; this is for what changed since, e.g. a full disk)
        access = AccessLog(*access_key)
    except OSError as exc:
        print(f"steelyard: cannot open the access log {access_key[0]}: {exc}", file=sys.stderr)
        return 3
    if access.enabled:  # `access: off`: no call per request, and no record strings made
        engine.recorders.append(access)

    def reconfigure_access_log(event: Event) -> None:
        """A reload (SIGHUP or the admin API) that changed `log.access` or `log.format`
        switches the access log over: lines of requests that end after it go to the new one."""
        nonlocal access, access_key
        if event.type != "reload":
            return
        key = _access_log_key(engine.config)
        if key == access_key:
            return
        try:
            new = AccessLog(*key)
        except OSError as exc:
            log.error("access log %s cannot be opened, the old one stays: %s", key[0], exc)
            return
        old = access
        old.detach()
        if old in engine.recorders:
            engine.recorders.remove(old)
        if new.enabled:
            engine.recorders.append(new)
        access, access_key = new, key
        loop.run_in_executor(None, old.close)  # writes out its buffer off the event loop
        log.info("access log: %s (%s)", key[0] or "stdout", key[1])

    engine.events.subscribe(reconfigure_access_log)
    try:
        await engine.start()
    except (StartError, OSError) as exc:
        print(f"steelyard: {exc}", file=sys.stderr)
        await engine.shutdown(0)
        access.close()
        return 3
    stop = asyncio.Event()

    async def reload() -> None:
        try:
            await engine.reload()
            for warning in getattr(engine.config, "warnings", ()):
                log.warning("%s", warning)
            log.info("reloaded %s", config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused, old config kept: %s", problem)
        except Exception as exc:  # a reload must never take the process down
            log.exception("reload failed, old config kept: %s", exc)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload()))
    for name, (host, port) in engine.bound.items():
        log.info("listener %s on %s:%s", name, host, port)
    if engine.admin is not None:
        log.info("admin on %s", getattr(engine.admin, "url", config.admin.bind))
    if on_started is not None:
        on_started(engine)
    await stop.wait()
    log.info("shutting down (up to %ss for in-flight work)", config.shutdown_timeout)
    await engine.shutdown()
    access.close()
    return 0
