"""Sans-IO core: pure, synchronous logic. Nothing here imports asyncio, socket or ssl."""
