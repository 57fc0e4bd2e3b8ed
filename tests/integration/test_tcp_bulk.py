"""1 GiB each way through the L4 listener to an echo server process: same SHA-256."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import uvloop
from tests.helpers.servers import ServerProcess, run_bulk_client, start_echo

from steelyard.config import load_config_text
from steelyard.engine import Engine

GIB = 1 << 30

# production's loop (see tests/integration/conftest.py)
LOOP_FACTORIES = {"uvloop": uvloop.new_event_loop}


@pytest.fixture
def echo() -> Iterator[ServerProcess]:
    server = start_echo()
    yield server
    server.stop()


@pytest.mark.timeout(180)
async def test_one_gib_both_directions_intact(echo: ServerProcess) -> None:
    cfg = load_config_text(
        f"""
listeners:
  - {{name: bulk, protocol: tcp, bind: "127.0.0.1:0", backend: echo}}
backends:
  echo:
    servers: [{{address: "{echo.address}"}}]
"""
    )
    engine = Engine(cfg)
    await engine.start()
    records = []
    engine.recorders.append(records.append)
    try:
        host, port = engine.bound["bulk"]
        sent, received, count = await asyncio.to_thread(run_bulk_client, host, port, GIB)
        assert count == GIB
        assert sent == received
        for _ in range(200):
            if records:
                break
            await asyncio.sleep(0.02)
        assert records[0].bytes_in == GIB and records[0].bytes_out == GIB
    finally:
        await engine.shutdown(1)
