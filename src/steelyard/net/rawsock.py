"""Plain TCP sockets on an epoll set of our own, under asyncio's Protocol interface (Linux).

Why. Per new connection, uvloop's transports cost more than the whole rest of a TCP relay:
each transport is registered in a pure-Python WeakValueDictionary, has its peer and local
addresses read with two system calls and converted, and a connect is a coroutine with
futures; libuv removes every descriptor from its epoll set before closing it. Measured
(`bench/l4_ab.py`, `Connection: close` clients through a TCP listener): a ~40-line uvloop
relay used 79-80 µs of CPU per connection where HAProxy used 59-61; the same relay on a
private epoll set 58-59 µs. Keep-alive traffic costs those two relays the same (11.4-11.6 µs
per request); Steelyard's listener pays ~3% more on its own set (the socket module releases
the GIL around every recv and send).

How. A `Reactor` owns one `select.epoll` set; the event loop watches only that set's
descriptor (one `loop.add_reader`), and its callback takes the ready events with
`epoll.poll(0)` and hands each to the handler registered for the descriptor. A socket is
registered once for its life; its interest changes (`modify`) when a connect completes, when
reading pauses, resumes or meets the EOF, and when a write has to wait; closing the
descriptor takes it out of the set without a system call (unless someone else holds a
duplicate of it: `get_extra_info("socket")` marks that, and the transport then removes it
explicitly before closing). The set is level-triggered. A descriptor number closed and
reused within one batch of events could receive its predecessor's event: sockets registered
during a batch skip the rest of it (they are reported again at the next poll if ready).

`RawTransport` is what a Protocol sees: `write` (sends at once, buffers what the socket did
not take, calls the protocol's `pause_writing` past the high-water mark and `resume_writing`
below the low one), `write_eof` (shutdown(SHUT_WR) once the buffer is out), `close` (after
the buffer is out), `abort`, `pause_reading`/`resume_reading`, `get_extra_info` ("peername",
"sockname", "socket"), `set_write_buffer_limits`, `get_write_buffer_size`, `is_closing`. As
on asyncio's transports, `connection_lost` is called once, on a later loop iteration, and an
error while reading or writing ends the connection with that error (`connection_lost(exc)`).
An EOF calls `eof_received()`; a false return closes the transport.

`RawServer` accepts on a listening socket in the same set (each accepted socket gets
TCP_NODELAY, as the loop's transports do); `RawConnect` opens a non-blocking connect to an IP
address and reports the new transport, or the error, through a callback. Host names are not
resolved here: the caller uses the loop's create_connection() for them.
"""

from __future__ import annotations

import _socket
import asyncio
import collections
import errno
import itertools
import logging
import os
import select
import socket
from collections.abc import Callable
from typing import Any, Final

log = logging.getLogger("steelyard")

SUPPORTED: Final = hasattr(select, "epoll")
_IN: Final = getattr(select, "EPOLLIN", 1)
_OUT: Final = getattr(select, "EPOLLOUT", 4)
_ERR: Final = getattr(select, "EPOLLERR", 8)
_HUP: Final = getattr(select, "EPOLLHUP", 16)
EVENTS_PER_POLL: Final = 512
# bytes per recv(). recv() allocates that much and shrinks the bytes object to what came:
# below glibc's mmap threshold (128 KiB until a larger block is freed) that is cheap, above it
# every small read costs an mmap and a munmap (measured: 2 µs per small read with 64 KiB,
# 14 µs with 256 KiB). So reads start at READ_SIZE and grow to BULK_READ_SIZE only after a
# read filled its buffer (a bulk stream, whose full reads are freed whole, which raises the
# threshold), and go back after a short one.
READ_SIZE: Final = 64 * 1024
BULK_READ_SIZE: Final = 256 * 1024
ACCEPTS_PER_EVENT: Final = 64
ACCEPT_RETRY: Final = 1.0  # seconds without accepting after running out of descriptors
_SHUT_WR: Final = socket.SHUT_WR
_SOL_SOCKET: Final = socket.SOL_SOCKET
_SO_ERROR: Final = socket.SO_ERROR
_IPPROTO_TCP: Final = socket.IPPROTO_TCP
_TCP_NODELAY: Final = socket.TCP_NODELAY
_STREAM: Final = socket.SOCK_STREAM
_CONNECT_FLAGS: Final = (
    socket.SOCK_STREAM | getattr(socket, "SOCK_NONBLOCK", 0) | getattr(socket, "SOCK_CLOEXEC", 0)
)
_IN_PROGRESS: Final = frozenset({0, errno.EINPROGRESS, errno.EAGAIN})
_OUT_OF_RESOURCES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class EventHandler:
    """What the reactor calls for a descriptor's events (a native base class: compiled, the
    call is a vtable lookup, not a method lookup by name)."""

    __slots__ = ()

    def on_event(self, events: int) -> None:
        raise NotImplementedError


class Reactor:
    """One epoll set, watched by the loop through its descriptor."""

    __slots__ = ("loop", "ep", "fd", "handlers", "fresh", "closed")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ep = select.epoll()
        self.fd = self.ep.fileno()
        self.handlers: dict[int, EventHandler] = {}
        # descriptors registered while a batch of events is handed out: the batch's events
        # for their numbers were meant for a socket closed since (see the module docstring)
        self.fresh: set[int] = set()
        self.closed = False
        loop.add_reader(self.fd, self._ready)

    def register(self, fd: int, events: int, handler: EventHandler) -> None:
        self.ep.register(fd, events)
        self.handlers[fd] = handler
        self.fresh.add(fd)

    def modify(self, fd: int, events: int) -> None:
        self.ep.modify(fd, events)

    def forget(self, fd: int) -> None:
        """The descriptor is about to be closed (which takes it out of the set)."""
        self.handlers.pop(fd, None)

    def unregister(self, fd: int) -> None:
        """Out of the set now (a duplicate of the descriptor stays open elsewhere)."""
        self.handlers.pop(fd, None)
        try:
            self.ep.unregister(fd)
        except (OSError, ValueError):
            pass

    def _ready(self) -> None:
        try:
            ready = self.ep.poll(0, EVENTS_PER_POLL)
        except OSError as exc:  # EINTR is retried by Python; anything else is a bug
            log.error("epoll_wait failed: %s", exc)
            return
        handlers = self.handlers
        fresh = self.fresh
        fresh.clear()
        for fd, events in ready:
            handler = handlers.get(fd)
            if handler is None or (fresh and fd in fresh):
                continue
            try:
                handler.on_event(events)
            except Exception:  # one connection's bug must not stop the others
                log.exception("error handling socket events")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.loop.remove_reader(self.fd)
        except Exception:  # the loop is closed already
            pass
        self.handlers.clear()
        self.ep.close()

    def __repr__(self) -> str:
        return f"Reactor(fd={self.fd}, sockets={len(self.handlers)}, closed={self.closed})"


class RawTransport(EventHandler):
    """asyncio's Transport interface over one connected non-blocking socket (see the module
    docstring for what it supports)."""

    __slots__ = (
        "reactor",
        "loop",
        "sock",
        "fd",
        "protocol",
        "peer",
        "events",
        "registered",
        "parked",
        "reading",
        "read_eof",
        "closing",
        "lost",
        "eof_pending",
        "shared",
        "buffer",
        "size",
        "high",
        "low",
        "writing_paused",
        "read_size",
        "recv",
        "send",
        "on_data",
    )

    def __init__(
        self, reactor: Reactor, sock: _socket.socket, protocol: asyncio.Protocol, peer: Any
    ) -> None:
        self.reactor = reactor
        self.loop = reactor.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.protocol = protocol
        self.peer = peer  # the accept()ed address; None: read on demand
        self.events = 0  # the interest registered in the epoll set
        self.registered = False
        self.parked = False  # out of the set while it reports a hang-up no one reads
        self.reading = True
        self.read_eof = False
        self.closing = False
        self.lost = False
        self.eof_pending = False  # write_eof() called: shutdown once the buffer is out
        self.shared = False  # handed out by get_extra_info("socket"): may be duplicated
        self.buffer: collections.deque[bytes | memoryview] = collections.deque()
        self.size = 0
        self.high = 64 * 1024  # asyncio's defaults
        self.low = 16 * 1024
        self.writing_paused = False
        self.read_size = READ_SIZE
        # bound once: a call through them skips the method lookup by name (per event)
        self.recv: Callable[[int], bytes] = sock.recv
        self.send: Callable[[bytes | memoryview], int] = sock.send
        self.on_data: Callable[[bytes], object] = protocol.data_received

    def start(self) -> None:
        """Into the epoll set, after the protocol's connection_made (which may have paused
        reading or closed the transport already)."""
        if self.lost:
            return
        events = self._interest()
        self.reactor.register(self.fd, events, self)
        self.events = events
        self.registered = True

    def adopt(self) -> None:
        """Take over a descriptor already in the set (a finished RawConnect)."""
        if self.lost:  # closed in connection_made
            return
        self.reactor.handlers[self.fd] = self
        self.registered = True
        self.events = _OUT  # as the connect registered it
        self._update()

    # -- events -------------------------------------------------------------------------------

    def on_event(self, events: int) -> None:
        if self.lost:
            return
        if events & _OUT and self.buffer:
            self._flush()
            if self.lost:
                return
        if self.reading and not self.read_eof and not self.closing:
            if events & (_IN | _ERR | _HUP):
                self._read()  # (an error or a hang-up shows as a failed or empty read)
        elif events & (_ERR | _HUP):
            self._hang_up(events)

    def _hang_up(self, events: int) -> None:
        """An error or a hang-up is reported whatever the interest, and again at every poll:
        one that nothing will read ends the connection (an error, or a close waiting for its
        buffer to go out); else the socket is parked out of the set until reading resumes."""
        if events & _ERR or self.buffer or self.closing:
            err = self._socket_error()
            if err or self.closing:
                self._fatal(OSError(err, os.strerror(err)) if err else None)
                return
        self.reactor.unregister(self.fd)
        self.registered = False
        self.parked = True

    def _socket_error(self) -> int:
        try:
            return self.sock.getsockopt(_SOL_SOCKET, _SO_ERROR)
        except OSError as exc:
            return exc.errno or errno.EIO

    def _read(self) -> None:
        size = self.read_size
        try:
            data = self.recv(size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        if data:
            n = len(data)
            if n == size:
                self.read_size = BULK_READ_SIZE
            elif n < READ_SIZE and size != READ_SIZE:
                self.read_size = READ_SIZE
            try:
                self.on_data(data)
            except Exception as exc:
                log.exception("error in data_received")
                self._fatal(exc)
            return
        self.read_eof = True
        self._update()
        try:
            keep_open = self.protocol.eof_received()
        except Exception as exc:
            log.exception("error in eof_received")
            self._fatal(exc)
            return
        if not keep_open:
            self.close()

    # -- writing ------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data or self.lost or self.closing:
            return
        if self.eof_pending:
            raise RuntimeError("write() after write_eof()")
        if type(data) is not bytes:
            data = bytes(data)  # what is buffered must not change under us (as asyncio does)
        if not self.buffer:
            try:
                n = self.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._fatal(exc)
                return
            if n == len(data):
                return
            rest: bytes | memoryview = memoryview(data)[n:] if n else data
            self.buffer.append(rest)
            self.size = len(data) - n
            self._update()
        else:
            self.buffer.append(data)
            self.size += len(data)
        if not self.writing_paused and self.size > self.high:
            self.writing_paused = True
            try:
                self.protocol.pause_writing()
            except Exception:
                log.exception("error in pause_writing")

    def writelines(self, chunks: list[bytes | bytearray | memoryview]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def _flush(self) -> None:
        buffer = self.buffer
        sock = self.sock
        while buffer:
            try:
                if len(buffer) > 1:  # one writev for many pieces
                    n = sock.sendmsg(list(itertools.islice(buffer, 64)))
                else:
                    n = sock.send(buffer[0])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._fatal(exc)
                return
            self.size -= n
            while n:
                head = buffer[0]
                if n >= len(head):
                    n -= len(head)
                    buffer.popleft()
                else:
                    buffer[0] = memoryview(head)[n:]
                    n = 0
            if buffer:
                break  # the socket took less than all: wait for it to be writable again
        if self.writing_paused and self.size <= self.low:
            self.writing_paused = False
            try:
                self.protocol.resume_writing()
            except Exception:
                log.exception("error in resume_writing")
        if buffer:
            return
        if self.closing:
            self._lose(None)
            return
        if self.eof_pending:
            self._shutdown()
        self._update()

    def _shutdown(self) -> None:
        try:
            self.sock.shutdown(_SHUT_WR)
        except OSError:
            pass  # the peer is gone: reading tells

    def write_eof(self) -> None:
        if self.closing or self.eof_pending:
            return
        self.eof_pending = True
        if not self.buffer:
            self._shutdown()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self.size

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self.high = high
        self.low = low

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.low, self.high

    # -- reading control ----------------------------------------------------------------------

    def pause_reading(self) -> None:
        if self.reading:
            self.reading = False
            self._update()

    def resume_reading(self) -> None:
        if not self.reading and not self.closing:
            self.reading = True
            self._update()

    def is_reading(self) -> bool:
        return self.reading and not self.closing and not self.read_eof

    def _interest(self) -> int:
        events = 0
        if self.reading and not self.read_eof and not self.closing:
            events = _IN
        if self.buffer:
            events |= _OUT
        return events

    def _update(self) -> None:
        if self.lost:
            return
        events = self._interest()
        if self.parked:
            if not events:
                return
            self.parked = False
            self.reactor.register(self.fd, events, self)
            self.registered = True
            self.events = events
            return
        if events != self.events and self.registered:
            self.events = events
            try:
                self.reactor.modify(self.fd, events)
            except OSError as exc:
                self._fatal(exc)

    # -- closing ------------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self.buffer:
            self._update()  # stop reading; the buffer goes out first
            return
        self._lose(None)

    def abort(self) -> None:
        self._fatal(None)

    def _fatal(self, exc: BaseException | None) -> None:
        if self.lost:
            return
        self.closing = True
        self.buffer.clear()
        self.size = 0
        self._lose(exc)

    def _lose(self, exc: BaseException | None) -> None:
        """Close the socket now; the protocol hears of it on the next loop iteration."""
        if self.lost:
            return
        self.lost = True
        self.closing = True
        if self.registered and self.shared:
            self.reactor.unregister(self.fd)  # a duplicate would keep it in the set
        else:
            self.reactor.forget(self.fd)
        self.registered = False
        self.sock.close()
        self.loop.call_soon(_connection_lost, self.protocol, exc)

    # -- the rest of asyncio's Transport ------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            if self.peer is None and not self.lost:
                try:
                    self.peer = self.sock.getpeername()
                except OSError:
                    return default
            return self.peer if self.peer is not None else default
        if name == "sockname":
            if self.lost:
                return default
            try:
                return self.sock.getsockname()
            except OSError:
                return default
        if name == "socket":
            if self.lost:
                return default
            self.shared = True
            return self.sock
        return default

    def set_protocol(self, protocol: asyncio.Protocol) -> None:
        self.protocol = protocol
        self.on_data = protocol.data_received

    def get_protocol(self) -> asyncio.Protocol:
        return self.protocol

    def __repr__(self) -> str:
        state = "lost" if self.lost else "closing" if self.closing else "open"
        return (
            f"RawTransport(fd={self.fd} {state} reading={self.reading} eof={self.read_eof} "
            f"buffered={self.size})"
        )


def _connection_lost(protocol: asyncio.Protocol, exc: BaseException | None) -> None:
    protocol.connection_lost(exc if isinstance(exc, Exception) or exc is None else None)


class RawServer(EventHandler):
    """Accepts on a listening socket in the reactor's set; each connection gets the
    factory's protocol on a RawTransport. `close()` stops accepting and closes the socket."""

    __slots__ = ("reactor", "sock", "fd", "family", "factory", "closed", "retry")

    def __init__(
        self, reactor: Reactor, sock: socket.socket, factory: Callable[[], asyncio.Protocol]
    ) -> None:
        self.reactor = reactor
        self.sock = sock
        self.fd = sock.fileno()
        self.family = sock.family
        self.factory = factory
        self.closed = False
        self.retry: asyncio.TimerHandle | None = None
        sock.setblocking(False)
        reactor.register(self.fd, _IN, self)

    def on_event(self, events: int) -> None:
        accept = self.sock._accept  # type: ignore[attr-defined]
        for _ in range(ACCEPTS_PER_EVENT):
            if self.closed:
                return
            try:
                fd, addr = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause(exc)
                    return
                # ECONNABORTED, EPROTO and the like: that connection is gone, go on
                log.debug("accept failed: %s", exc)
                continue
            self._serve(fd, addr)

    def _serve(self, fd: int, addr: Any) -> None:
        try:
            sock = _socket.socket(self.family, _STREAM, 0, fd)
        except OSError:
            os.close(fd)
            return
        try:
            sock.setblocking(False)
            sock.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
        except OSError:  # the client is gone already
            sock.close()
            return
        try:
            protocol = self.factory()
            transport = RawTransport(self.reactor, sock, protocol, addr)
            protocol.connection_made(transport)  # type: ignore[arg-type]
        except Exception:
            log.exception("error setting up an accepted connection")
            sock.close()
            return
        transport.start()

    def _pause(self, exc: OSError) -> None:
        log.warning("cannot accept connections for %.0fs: %s", ACCEPT_RETRY, exc)
        try:
            self.reactor.modify(self.fd, 0)
        except OSError:
            return
        self.retry = self.reactor.loop.call_later(ACCEPT_RETRY, self._resume)

    def _resume(self) -> None:
        self.retry = None
        if not self.closed:
            self.reactor.modify(self.fd, _IN)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None
        self.reactor.unregister(self.fd)
        self.sock.close()

    def __repr__(self) -> str:
        return f"RawServer(fd={self.fd}, closed={self.closed})"


def ip_family(host: str) -> int:
    """AF_INET / AF_INET6 for an IP address literal, 0 for anything else (a host name)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return int(family)
    return 0


class RawConnect(EventHandler):
    """A non-blocking connect to an IP address in the reactor's set. `done(transport, exc)`
    is called once, from a later loop iteration (never from start() or cancel()): with the
    RawTransport (its protocol's connection_made already called) or with the error
    (`OSError`, or `asyncio.CancelledError` after cancel())."""

    __slots__ = ("reactor", "sock", "fd", "protocol", "done", "finished")

    def __init__(
        self,
        reactor: Reactor,
        protocol: asyncio.Protocol,
        done: Callable[[RawTransport | None, BaseException | None], None],
    ) -> None:
        self.reactor = reactor
        self.sock: _socket.socket | None = None
        self.fd = -1
        self.protocol = protocol
        self.done = done
        self.finished = False

    def start(self, family: int, host: str, port: int) -> None:
        try:
            sock = _socket.socket(family, _CONNECT_FLAGS, 0)
        except OSError as exc:
            self._fail(exc)
            return
        try:
            sock.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
            err = sock.connect_ex((host, port))
            if err not in _IN_PROGRESS:
                raise OSError(err, os.strerror(err))
            self.fd = sock.fileno()
            self.reactor.register(self.fd, _OUT, self)
        except OSError as exc:
            sock.close()
            self._fail(exc)
            return
        self.sock = sock

    def on_event(self, events: int) -> None:
        sock = self.sock
        if sock is None or self.finished:
            return
        try:
            err = sock.getsockopt(_SOL_SOCKET, _SO_ERROR)
        except OSError as exc:
            err = exc.errno or errno.EIO
        if err:
            self._close_socket()
            self._fail(OSError(err, os.strerror(err)))
            return
        self.sock = None
        self.finished = True
        transport = RawTransport(self.reactor, sock, self.protocol, None)
        try:
            self.protocol.connection_made(transport)  # type: ignore[arg-type]
        except Exception as exc:
            log.exception("error in connection_made")
            transport.abort()
            self.done(None, exc)
            return
        transport.adopt()
        self.done(transport, None)

    def cancel(self) -> None:
        """Stop connecting; done() gets CancelledError."""
        if self.finished:
            return
        self._close_socket()
        self._fail(asyncio.CancelledError())

    def _close_socket(self) -> None:
        sock = self.sock
        if sock is not None:
            self.sock = None
            self.reactor.forget(self.fd)
            sock.close()

    def _fail(self, exc: BaseException) -> None:
        if self.finished:
            return
        self.finished = True
        self.reactor.loop.call_soon(self.done, None, exc)

    def __repr__(self) -> str:
        return f"RawConnect(fd={self.fd}, finished={self.finished})"
