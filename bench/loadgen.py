"""The fallback load generator of `make bench`, for machines without `wrk`.

Same job and same output as `wrk -s bench/chat.lua` (reads BENCH_BODY, BENCH_KEYS and
BENCH_RATE from the environment; prints one `BENCH_RESULT {json}` line), on aiohttp's client.
It is much slower than wrk: one core of it drives a few thousand requests per second at
most, so throughput numbers measured with it are the generator's, not the proxy's, and
bench/run.py says so in every table header.

    python bench/loadgen.py --connections 64 --duration 10 http://127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import aiohttp


def percentile(ordered: list[int], p: float) -> int:
    if not ordered:
        return 0
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
    return ordered[index]


async def run(url: str, connections: int, duration: float) -> dict[str, object]:
    body = os.environ.get("BENCH_BODY", '{"model":"gpt-4o-mini","messages":[]}').encode()
    keys = [k for k in os.environ.get("BENCH_KEYS", "").split(",") if k]
    rate = float(os.environ.get("BENCH_RATE", "0") or 0)
    headers = [{"Content-Type": "application/json"}]
    if keys:
        headers = [
            {"Content-Type": "application/json", "Authorization": f"Bearer {k}"} for k in keys
        ]
    latencies: list[int] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    received = 0
    counter = 0
    started = time.monotonic()
    deadline = started + duration
    interval = 1 / rate if rate > 0 else 0.0
    next_at = started
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        target = url.rstrip("/") + "/v1/chat/completions"

        async def one() -> None:
            nonlocal counter, received
            counter += 1
            sent = time.monotonic()
            try:
                async with session.post(
                    target, data=body, headers=headers[counter % len(headers)]
                ) as response:
                    data = await response.read()
                    received += len(data)
                    if response.status >= 400:
                        errors["status"] += 1
            except TimeoutError:
                errors["timeout"] += 1
                return
            except aiohttp.ClientConnectionError:
                errors["read"] += 1
                return
            latencies.append(int((time.monotonic() - sent) * 1e6))

        async def closed_loop() -> None:
            while time.monotonic() < deadline:
                await one()

        if rate <= 0:
            await asyncio.gather(*(closed_loop() for _ in range(connections)))
        else:  # open loop: a request every `interval`, whatever is in flight
            pending: set[asyncio.Task[None]] = set()
            while True:
                next_at += interval
                now = time.monotonic()
                if next_at >= deadline:
                    break
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                task = asyncio.create_task(one())
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
    elapsed = time.monotonic() - started
    ordered = sorted(latencies)
    return {
        "requests": len(latencies) + errors["status"],
        "duration_us": int(elapsed * 1e6),
        "bytes": received,
        "errors": errors,
        "p50_us": percentile(ordered, 50),
        "p90_us": percentile(ordered, 90),
        "p99_us": percentile(ordered, 99),
        "p999_us": percentile(ordered, 99.9),
        "max_us": ordered[-1] if ordered else 0,
        "mean_us": sum(ordered) / len(ordered) if ordered else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", "-c", type=int, default=64)
    parser.add_argument("--duration", "-d", type=float, default=10.0, help="seconds")
    parser.add_argument("url")
    args = parser.parse_args()
    result = asyncio.run(run(args.url, args.connections, args.duration))
    print("BENCH_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
