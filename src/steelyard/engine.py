"""Config -> runtime objects; serve, reload, drain, shutdown.

One Engine per event loop. It owns the backends (core.backend.Backend), the listeners (the
net layer's protocol factories bound to sockets), the upstream connection pools, the event
bus and the outputs of the data path (access log, metrics). A reload builds new backends,
carrying over the runtime state of every server present before and after, and swaps them in;
listeners whose bind did not change keep their socket.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from steelyard import BUILD, __version__
from steelyard.core.backend import Backend
from steelyard.core.balancing import SLOW_BUILD
from steelyard.core.balancing.base import BalancerSettings, Server, ServerState
from steelyard.core.clock import monotonic
from steelyard.core.events import Event, EventBus
from steelyard.core.records import RequestRecord
from steelyard.files import FileLimitWatch
from steelyard.net.listen import ACCEPT_SOCKETS, BACKLOG, ServerGroup, bind_sockets

log = logging.getLogger("steelyard")

TICK_INTERVAL = 0.25


class StartError(RuntimeError):
    """Could not bind or start (exit code 3)."""


@dataclass(slots=True)
class ListenerHandle:
    name: str
    protocol: str
    bind: str
    runtime: Any  # HttpListener | TcpListener | UdpListener
    server: Any  # asyncio.Server | asyncio.DatagramTransport
    config: Any


def parse_address(address: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    if address.startswith("["):
        host, _, port = address[1:].partition("]:")
    else:
        host, _, port = address.rpartition(":")
    return host, int(port)


def server_from_config(cfg: Any) -> Server:
    host, port = parse_address(cfg.address)
    return Server(name=cfg.name or cfg.address, host=host, port=port, weight=cfg.weight)


class Engine:
    def __init__(
        self,
        config: Any,
        config_path: str | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.loop = loop or asyncio.get_event_loop()
        self.clock = monotonic
        self.rng = rng or random.Random()
        self.events = EventBus()
        self.events.subscribe(self._log_event)
        self.started_at = time.time()
        self.shutting_down = False
        self.backends: dict[str, Backend] = {}
        self.listeners: dict[str, ListenerHandle] = {}
        self.bound: dict[str, tuple[str, int]] = {}
        self.pools: Any = None
        self.admin: Any = None
        self.health: Any = None  # health-check supervisor (net layer)
        self.recorders: list[Callable[[RequestRecord], None]] = []
        self._tick_handle: asyncio.TimerHandle | None = None
        self._builds: dict[str, asyncio.Future[Any]] = {}
        self.reloads = 0
        # (backend, server, "ok" | "fail") -> count, filled by the health checker
        self.check_counts: dict[tuple[str, str, str], int] = {}
        self._retired: list[Backend] = []  # backends a reload removed, still draining
        self.files = FileLimitWatch()  # a warning when descriptors near the open-file limit
        self.backends = self._build_backends(config, previous={})

    # -- building ------------------------------------------------------------------------------

    def _build_backends(self, config: Any, previous: dict[str, Backend]) -> dict[str, Backend]:
        result: dict[str, Backend] = {}
        for name, bcfg in config.backends.items():
            hc = bcfg.health_check
            od = bcfg.outlier_detection
            settings = BalancerSettings(
                algorithm=bcfg.algorithm,
                table_size=bcfg.table_size,
                hash_balance_factor=bcfg.hash_balance_factor,
                extra={"clock": self.clock},  # least_response_time fades stale estimates
            )
            servers = [server_from_config(s) for s in bcfg.servers]
            old = previous.get(name)
            backend = Backend(
                name,
                [] if old else servers,
                settings,
                clock=self.clock,
                rng=self.rng,
                config=bcfg,
                health_checked=hc is not None,
                healthy_threshold=hc.healthy_threshold if hc else 2,
                unhealthy_threshold=hc.unhealthy_threshold if hc else 3,
                outlier=(
                    (
                        od.consecutive_failures,
                        od.base_ejection_time,
                        od.max_ejection_percent,
                        od.max_ejection_time,
                    )
                    if od
                    else None
                ),
                slow_start=bcfg.slow_start or 0.0,
                panic_threshold=bcfg.panic_threshold,
                max_connections_per_server=bcfg.max_connections_per_server,
                queue_timeout=bcfg.queue_timeout,
                max_queue=bcfg.max_queue,
                drain_timeout=bcfg.drain_timeout,
                events=self.events,
            )
            if old is not None:
                # reload: Backend.carry_over keeps the state of servers present before and
                # after (the rule is documented in docs/health.md)
                backend.carry_over(old, servers)
            if bcfg.algorithm in SLOW_BUILD:
                backend.scheduler = self._schedule_build
            result[name] = backend
        return result

    def _schedule_build(self, backend: Backend) -> None:
        """Slow snapshots (rings, Maglev) are built in a worker thread; the old one serves."""
        if backend.name in self._builds and not self._builds[backend.name].done():
            return  # the running build will be followed by another (version check)
        if self.loop.is_closed() or not self.loop.is_running():
            backend.rebuild()
            return
        fut = self.loop.run_in_executor(None, backend.build)
        self._builds[backend.name] = fut

        def done(f: asyncio.Future[Any]) -> None:
            if f.cancelled() or f.exception() is not None:
                reason = "cancelled" if f.cancelled() else repr(f.exception())
                log.error("building backend %s off the loop failed: %s", backend.name, reason)
                backend.rebuild()
                return
            version, balancer, panic = f.result()
            backend.install(version, balancer, panic)
            if backend.installed < backend.version:
                self._schedule_build(backend)

        fut.add_done_callback(done)

    # -- serving -------------------------------------------------------------------------------

    async def start(self) -> None:
        from steelyard.net.pool import UpstreamPools

        self.pools = UpstreamPools(self.loop)
        for lcfg in self.config.listeners:
            await self._start_listener(lcfg)
        if self.config.admin is not None:
            from steelyard.admin.server import AdminServer

            self.admin = AdminServer(self)
            await self.admin.start()
        self._start_health_checks()
        self._tick_handle = self.loop.call_later(TICK_INTERVAL, self._tick)

    def _start_health_checks(self) -> None:
        from steelyard.net.health_check import HealthSupervisor

        if self.health is None:
            self.health = HealthSupervisor(self)
        self.health.sync()

    def _make_runtime(self, lcfg: Any) -> Any:
        if lcfg.protocol == "http":
            from steelyard.net.http_proxy import HttpListener

            return HttpListener(self, lcfg)
        if lcfg.protocol == "tcp":
            from steelyard.net.tcp_proxy import TcpListener

            return TcpListener(self, lcfg)
        if lcfg.protocol == "udp":
            from steelyard.net.udp_proxy import UdpListener

            return UdpListener(self, lcfg)
        raise StartError(f"listener {lcfg.name}: unsupported protocol {lcfg.protocol!r}")

    def _ssl_context(self, lcfg: Any) -> Any:
        if getattr(lcfg, "tls", None) is None:
            return None
        from steelyard.net.tls import TLSConfigError, server_context

        # ALPN names what runs inside: http/1.1 on HTTP listeners, nothing on TCP ones
        try:
            return server_context(lcfg.tls, alpn=("http/1.1",) if lcfg.protocol == "http" else ())
        except TLSConfigError as exc:
            raise StartError(f"listener {lcfg.name}: {exc}") from exc

    def _proxy_preface(self, runtime: Any, lcfg: Any, ssl_ctx: Any) -> Any:
        from steelyard.net.proxy_preface import ProxyPreface

        name = lcfg.name

        def factory() -> ProxyPreface:
            # read per connection: a reload changes timeouts.request_head in the runtime, and
            # re-reads certificates into the same context object
            return ProxyPreface(runtime.protocol_factory, ssl_ctx, runtime.preface_timeout, name)

        return factory

    async def _start_listener(self, lcfg: Any, socks: list[socket.socket] | None = None) -> None:
        runtime = self._make_runtime(lcfg)
        host, port = parse_address(lcfg.bind)
        try:
            if lcfg.protocol == "udp":
                transport, _ = await self.loop.create_datagram_endpoint(
                    runtime.protocol_factory, local_addr=(host, port)
                )
                server: Any = transport
                sockname = transport.get_extra_info("sockname")
            else:
                socks = socks or bind_sockets(host, port, _accept_sockets(lcfg))
                sock = socks[0]
                # TLS is terminated by the server for http and tcp listeners alike; a tcp
                # runtime is told (runtime.ssl_context) so that it skips the splice fast path
                ssl_ctx = self._ssl_context(lcfg)
                # (http and tcp runtimes re-read certificates on reload through it)
                runtime.ssl_context = ssl_ctx
                factory = runtime.protocol_factory
                if _uses_preface(lcfg):
                    # the PROXY header comes before TLS and HTTP: net/proxy_preface.py reads
                    # it, then starts TLS itself (a plain tcp listener reads it on its own)
                    factory = self._proxy_preface(runtime, lcfg, ssl_ctx)
                    ssl_ctx = None
                serve_raw = getattr(runtime, "serve_raw", None)  # tcp: net/rawsock.py
                server = None
                if serve_raw is not None and ssl_ctx is None:
                    server = serve_raw(sock)  # (one socket: _accept_sockets)
                if server is None:
                    server = await self._serve(factory, socks, ssl_ctx)
                sockname = sock.getsockname()
        except OSError as exc:
            raise StartError(
                f"listener {lcfg.name}: cannot bind {lcfg.bind}: {exc.strerror or exc}"
            ) from exc
        self.bound[lcfg.name] = (sockname[0], sockname[1])
        self.listeners[lcfg.name] = ListenerHandle(
            lcfg.name, lcfg.protocol, lcfg.bind, runtime, server, lcfg
        )

    async def _serve(self, factory: Any, socks: list[socket.socket], ssl_ctx: Any) -> Any:
        """The loop's server on one socket, or a ServerGroup on several (net/listen.py)."""
        servers: list[Any] = []
        try:
            for s in socks:
                servers.append(
                    await self.loop.create_server(factory, sock=s, ssl=ssl_ctx, backlog=BACKLOG)
                )
        except BaseException:
            for server in servers:
                server.close()
            for s in socks:
                s.close()
            raise
        return servers[0] if len(servers) == 1 else ServerGroup(servers)

    def _tick(self) -> None:
        self._tick_handle = None
        for backend in list(self.backends.values()) + list(self._retired):
            timed_out = backend.tick()
            for state in timed_out:
                self.close_server_connections(backend, state)
        self._retired = [b for b in self._retired if b.servers or b.leaving]
        self.files.check(self.loop.time())
        if not self.shutting_down:
            self._tick_handle = self.loop.call_later(TICK_INTERVAL, self._tick)

    def close_server_connections(self, backend: Backend, state: ServerState) -> None:
        """Drain timeout: cut what still runs on this server (listeners do the cutting)."""
        for handle in self.listeners.values():
            closer = getattr(handle.runtime, "close_server", None)
            if closer is not None:
                closer(backend.name, state)

    def record(self, record: RequestRecord) -> None:
        for recorder in self.recorders:
            recorder(record)

    def _log_event(self, event: Event) -> None:
        log.info(
            "%s backend=%s server=%s state=%s reason=%s",
            event.type,
            event.backend,
            event.server,
            event.state,
            event.reason,
        )

    # -- reload --------------------------------------------------------------------------------

    async def reload(self, config: Any | None = None) -> None:
        """Swap in a new configuration (raises ConfigError and keeps the old one if invalid)."""
        if config is None:
            from steelyard.config import load_config

            if self.config_path is None:
                raise RuntimeError("no config file to reload from")
            config = load_config(self.config_path)
        prebound = self._prebind(config)  # a bind that fails leaves everything as it was
        old_backends = self.backends
        new_backends = self._build_backends(config, previous=old_backends)
        # backends that are gone keep serving their in-flight work until drained
        for name, backend in old_backends.items():
            if name not in new_backends:
                for sname in list(backend.servers):
                    backend.remove_server(sname)
                self._retired.append(backend)
        self.backends = new_backends
        self.config = config
        new_listeners = {lc.name: lc for lc in config.listeners}
        for name, handle in list(self.listeners.items()):
            lcfg = new_listeners.get(name)
            if (
                lcfg is not None
                and lcfg.bind == handle.bind
                and lcfg.protocol == handle.protocol
                and (getattr(lcfg, "tls", None) is None)
                == (getattr(handle.config, "tls", None) is None)
                and _uses_preface(lcfg) == _uses_preface(handle.config)
            ):
                handle.runtime.update(lcfg)
                handle.config = lcfg
                continue
            await self._stop_listener(handle)
        for name, lcfg in new_listeners.items():
            if name not in self.listeners:
                await self._start_listener(lcfg, prebound.pop(name, None))
        for socks in prebound.values():
            for sock in socks:
                sock.close()
        self._start_health_checks()
        self.reloads += 1
        self.events.publish(Event(type="reload", time=time.time(), reason="config reloaded"))

    def _prebind(self, config: Any) -> dict[str, list[socket.socket]]:
        """Bind the sockets of new and moved stream listeners before anything changes, so
        that a reload whose bind fails keeps the old configuration whole. (A bind that an
        existing listener holds is left to the usual stop-then-start.)"""
        held = {self.bound.get(name) for name, h in self.listeners.items() if h.protocol != "udp"}
        prebound: dict[str, list[socket.socket]] = {}
        for lcfg in config.listeners:
            handle = self.listeners.get(lcfg.name)
            if handle is not None and (handle.bind, handle.protocol) == (lcfg.bind, lcfg.protocol):
                continue  # kept as it is
            host, port = parse_address(lcfg.bind)
            if lcfg.protocol == "udp" or (port and (host, port) in held):
                continue
            try:
                prebound[lcfg.name] = bind_sockets(host, port, _accept_sockets(lcfg))
            except OSError as exc:
                for socks in prebound.values():
                    for sock in socks:
                        sock.close()
                raise StartError(
                    f"listener {lcfg.name}: cannot bind {lcfg.bind}: {exc.strerror or exc}"
                ) from exc
        return prebound

    async def _stop_listener(self, handle: ListenerHandle) -> None:
        del self.listeners[handle.name]
        self.bound.pop(handle.name, None)
        handle.server.close()
        handle.runtime.begin_shutdown()
        self.loop.create_task(handle.runtime.wait_closed(self.config.shutdown_timeout))

    # -- shutdown ------------------------------------------------------------------------------

    async def shutdown(self, timeout: float | None = None) -> None:
        if self.shutting_down:
            return
        self.shutting_down = True
        if timeout is None:
            timeout = self.config.shutdown_timeout
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        for handle in self.listeners.values():
            handle.server.close()
            handle.runtime.begin_shutdown()
        if self.health is not None:
            self.health.stop()
        await asyncio.gather(
            *(h.runtime.wait_closed(timeout) for h in self.listeners.values()),
            return_exceptions=True,
        )
        if self.pools is not None:
            self.pools.close_all()
        if self.admin is not None:
            await self.admin.stop()

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "build": BUILD,
            "uptime_s": round(time.time() - self.started_at, 3),
            "config_file": self.config_path,
            "config_hash": getattr(self.config, "source_hash", None),
            "listeners": [
                {"name": h.name, "protocol": h.protocol, "bind": h.bind}
                for h in self.listeners.values()
            ],
        }

    def __repr__(self) -> str:
        return (
            f"Engine(listeners={list(self.listeners)}, backends={list(self.backends)}, "
            f"reloads={self.reloads}, shutting_down={self.shutting_down})"
        )


def _accept_sockets(lcfg: Any) -> int:
    """How many sockets a stream listener listens on (net/listen.py): one for a tcp listener
    on its own epoll set, which accepts in a loop."""
    if lcfg.protocol == "tcp":
        from steelyard.net.tcp_proxy import accepts_raw

        if accepts_raw(getattr(lcfg, "tls", None)):
            return 1
    return ACCEPT_SOCKETS


def _uses_preface(lcfg: Any) -> bool:
    """Whether accepted connections start with net/proxy_preface.py (fixed for the life of
    the listening server: a reload that changes it restarts the listener)."""
    return bool(getattr(lcfg, "accept_proxy_protocol", False)) and (
        lcfg.protocol == "http" or getattr(lcfg, "tls", None) is not None
    )
