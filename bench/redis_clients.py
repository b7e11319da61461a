"""Client-side CPU per Lua script call: spendgate's pipelined RespClient against redis-py's
asyncio client, on the same Redis, the same script and the same concurrency (uvloop).

    .venv/bin/python bench/redis_clients.py [redis://127.0.0.1:6379/0]

Counts the process's CPU time only (not Redis's), per call, after a warm-up. The figures
include this driver's own cost (a semaphore and a task per call), the same for both.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable

import uvloop

from spendgate.storage.redis_client import close_redis, create_redis
from spendgate.storage.resp import RespClient, Script

SOURCE = "return {KEYS[1], ARGV[1]}"
KEY = "spendgate-bench:redis-clients"
CALLS = 20_000
CONCURRENCY = 32


async def cpu_per_call(call: Callable[[int], Awaitable[object]]) -> float:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with limit:
            await call(i)

    await asyncio.gather(*(one(i) for i in range(500)))  # connect, load the script
    started = time.process_time()
    await asyncio.gather(*(one(i) for i in range(CALLS)))
    return (time.process_time() - started) / CALLS * 1e6


async def main(url: str) -> None:
    resp = RespClient(url)
    script = Script(SOURCE)
    try:
        lean = await cpu_per_call(lambda i: resp.run(script, [KEY], [i]))
    finally:
        await resp.aclose()
    client = create_redis(url)
    registered = client.register_script(SOURCE)
    try:
        redis_py = await cpu_per_call(lambda i: registered(keys=[KEY], args=[i]))
    finally:
        await close_redis(client)
    print(
        f"CPU per script call, {CALLS:,} calls, {CONCURRENCY} at once:"
        f" RespClient {lean:.1f} us, redis-py {redis_py:.1f} us"
    )


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"))
