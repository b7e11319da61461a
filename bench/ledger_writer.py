"""CPU of the ledger writer per usage event: events appended to the bucket streams the way
the settle script does, then written to PostgreSQL by UsageWriter.run_once() until none is
left, on a scratch database and Redis prefix that are removed afterwards.

    .venv/bin/python bench/ledger_writer.py [EVENTS]

Uses the machine's Redis (127.0.0.1:6379) and PostgreSQL (postgres@127.0.0.1:5432), or
BENCH_REDIS_URL and BENCH_DATABASE_URL. Counts this process's CPU only.
"""

from __future__ import annotations

import os
import sys
import time

import asyncpg
import uvloop

from spendgate.enforcement.keys import bucket_of
from spendgate.storage.postgres import create_pool, migrate
from spendgate.storage.resp import Command, RespClient
from spendgate.storage.usage_events import usage_stream_key
from spendgate.storage.usage_writer import UsageWriter

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
SERVER_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432")
BUCKETS = 64
KEYS = 200


def appends(prefix: str, events: int) -> list[Command]:
    keys = [f"key_{i:020d}" for i in range(KEYS)]
    created = int(time.time() * 1000)
    commands: list[Command] = []
    for i in range(events):
        key = keys[i % KEYS]
        stream = usage_stream_key(prefix, bucket_of(key, BUCKETS))
        fields = (
            "request_id", f"req_{i:022d}", "created_at", created + i, "key_id", key,
            "project_id", "prj_bench", "model", "openai/gpt-4o-mini", "provider", "openai",
            "prompt_tokens", 23, "completion_tokens", 64, "cost", 41_850, "status", 200,
            "duration_ms", 3, "billing", "credits", "stream", "0",
        )  # fmt: skip
        commands.append((stream, ("XADD", stream, "*", *fields)))
    return commands


async def main(events: int) -> None:
    suffix = os.urandom(4).hex()
    prefix, database = f"sgbench{suffix}", f"spendgate_bench_{suffix}"
    admin = await asyncpg.connect(f"{SERVER_URL}/postgres")
    await admin.execute(f"CREATE DATABASE {database}")
    redis = RespClient(REDIS_URL)
    streams = [usage_stream_key(prefix, bucket) for bucket in range(BUCKETS)]
    try:
        pool = await create_pool(f"{SERVER_URL}/{database}")
        try:
            await migrate(pool)
            writer = UsageWriter(redis, pool, prefix=prefix, buckets=BUCKETS, consumer="bench")
            await writer.ensure_groups()
            commands = appends(prefix, events)
            for start in range(0, events, 1_000):
                await redis.pipeline(commands[start : start + 1_000])
            cpu, wall, written = time.process_time(), time.perf_counter(), 0
            while written < events:
                written += await writer.run_once()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        finally:
            await pool.close()
        print(
            f"{written:,} events written: {cpu / events * 1e6:.1f} us of CPU"
            f" and {wall / events * 1e6:.1f} us of wall time per event"
        )
    finally:
        await redis.pipeline([(stream, ("DEL", stream)) for stream in streams])
        await redis.aclose()
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin.close()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000))
