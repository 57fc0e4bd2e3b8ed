"""net/transport_table.py: uvloop's table of transports, made cheaper, answers as before.

Each case runs in a fresh interpreter: the table is chosen when uvloop is first imported.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("uvloop")


def run_script(body: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


OWNED_FD = """
import asyncio, gc, socket, weakref
from steelyard.net import transport_table
from steelyard.net.transport_table import import_uvloop

original = weakref.WeakValueDictionary
uvloop = import_uvloop()
assert weakref.WeakValueDictionary is original, "the swap outlived the import"
# nothing imported while the name was swapped made a table of its own (logging would)
print("made at import:", transport_table.installed)


async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    fd = transport.get_extra_info("socket").fileno()
    try:
        loop.add_reader(fd, lambda: None)
    except RuntimeError as exc:
        print("refused:", "is used by transport" in str(exc))
    else:
        print("refused: False")
    transport.close()
    await asyncio.sleep(0.05)
    del transport
    gc.collect()
    # the descriptor is free again: a plain socket that gets it can be watched
    sock = socket.socket()
    print("same fd:", sock.fileno() == fd)
    loop.add_reader(sock.fileno(), lambda: None)
    loop.remove_reader(sock.fileno())
    print("free fd accepted: True")
    sock.close()
    server.close()
    await server.wait_closed()
    return 0


rc = uvloop.run(main())
print("installed:", transport_table.installed)
"""


def test_a_descriptor_owned_by_a_live_transport_is_refused_and_a_freed_one_is_not() -> None:
    out = run_script(OWNED_FD)
    assert "refused: True" in out
    assert "same fd: True" in out  # else the next line would not be about the freed one
    assert "free fd accepted: True" in out
    assert "installed: True" in out
    assert "made at import: False" in out


def test_uvloop_imported_earlier_keeps_its_own_table() -> None:
    out = run_script(
        """
        import uvloop
        from steelyard.net import transport_table
        assert transport_table.import_uvloop() is uvloop

        async def main():
            return 0

        uvloop.run(main())
        print("installed:", transport_table.installed)
        """
    )
    assert "installed: False" in out


def test_the_runner_serves_on_a_loop_with_the_table() -> None:
    out = run_script(
        """
        import asyncio
        from steelyard.net import transport_table
        from steelyard.runner import run_loop

        async def main():
            print("loop:", type(asyncio.get_running_loop()).__module__)
            print("installed:", transport_table.installed)
            return 0

        print("rc:", run_loop(main))
        """
    )
    assert "loop: uvloop" in out
    assert "installed: True" in out
    assert "rc: 0" in out


def test_the_table_maps_live_transports_only() -> None:
    from steelyard.net.transport_table import FdTransports

    class T:
        pass

    table = FdTransports()
    with pytest.raises(KeyError):
        table[3]
    t = T()
    table[3] = t
    assert table[3] is t
    table[3] = t2 = T()  # a new transport on a reused descriptor replaces the entry
    assert table[3] is t2
    assert len(table) == 1
    del t, t2
    with pytest.raises(KeyError):
        table[3]
