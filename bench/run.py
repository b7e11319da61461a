"""`make bench`: spendgate against a bare aiohttp proxy, side by side, in one run.

Starts a fast fake OpenAI upstream (bench/upstream.py, pinned to core 1), the bare
pass-through reference proxy (bench/bare_proxy.py) and `spendgate serve --workers 1` (both
pinned to core 0), creates a project and keys through the admin API, drives each target
with wrk (pinned to core 1, beside the upstream; the bare proxy and spendgate in the order
bare, spendgate, spendgate, bare, half the duration each) and prints one table per scenario:

    target | rps | p50 | p99 | CPU µs/req | rps vs bare | CPU vs bare | errors | core 1 busy
           | interference (what other processes took of the core under test)

The same tables go to /tmp/spendgate-bench/latest.md. docs/BENCHMARKS.md explains every
number. Knobs (environment, or `make bench VAR=...`):

    QUICK=1        ~35 s: 2 s per measurement after 1 s of warm-up
    DURATION=10    seconds of each measurement (whole seconds: wrk's unit)
    WARMUP=2       seconds of unmeasured load before each measurement
    CONNECTIONS=64 connections of the throughput runs
    RATE=500       requests per second of the fixed-rate latency run
    LATENCY_CONNECTIONS=16  connections of that run
    KEYS=10        API keys the load is spread over
    SCALE=1        also measure with 1,000,000 keys in Redis and Postgres (SCALE_KEYS=N)
    LOADGEN=python use the Python load generator even when wrk is installed
    ONLY=latency   run only these scenarios (comma-separated: json, sse, latency,
                   workers, scale; scale also needs SCALE=1)

Servers: the machine's Redis (127.0.0.1:6379) and PostgreSQL
(postgresql://postgres@127.0.0.1:5432) when they answer, else embedded ones in a temporary
directory (BENCH_REDIS_URL / BENCH_DATABASE_URL name others). A fresh database
`spendgate_bench_<hex>` is created and dropped, Redis keys live under a unique prefix and
are deleted afterwards. Every process started here is stopped, on Ctrl-C and failures too.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import keyfill  # noqa: E402  (bench/ is not a package)

RESULTS_DIR = Path("/tmp/spendgate-bench")
UPSTREAM_PORT = 9000  # bench/providers.toml names it
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CHAT_BODY = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say hello in one short sentence."},
    ],
    "max_tokens": 64,
}
SSE_BODY = {**CHAT_BODY, "stream": True, "stream_options": {"include_usage": True}}
BUCKETS = 64  # SPENDGATE_BUCKETS' default, which spendgate_env() leaves alone
USAGE_LIMIT_USD = "1000000000"  # nothing is ever refused
KNOBS = (
    "QUICK",
    "DURATION",
    "WARMUP",
    "CONNECTIONS",
    "RATE",
    "LATENCY_CONNECTIONS",
    "KEYS",
    "SCALE",
    "SCALE_KEYS",
    "LOADGEN",
    "ONLY",
)
SCENARIOS = ("json", "sse", "latency", "workers", "scale")
TARGETS = {
    "rps_ratio": 0.75,
    "cpu_ratio": 1.35,
    "added_p99_ms": 2.0,
    "workers_ratio": 1.7,
    "scale_within": 0.10,
}


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# -- settings ---------------------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise BenchError(f"{name} must be a whole number, not {value!r}") from None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Config:
    quick: bool
    duration: int
    warmup: int
    direct_duration: int
    connections: int
    rate: int
    latency_connections: int
    keys: int
    scale: bool
    scale_keys: int
    force_python: bool
    only: frozenset[str]

    @classmethod
    def from_env(cls) -> Config:
        quick = _env_flag("QUICK")
        duration = _env_int("DURATION", 2 if quick else 10)
        warmup = _env_int("WARMUP", 1 if quick else 2)
        if duration < 1 or warmup < 0:
            raise BenchError("DURATION must be >= 1 and WARMUP >= 0 (seconds)")
        only = frozenset(n.strip() for n in os.environ.get("ONLY", "").split(",") if n.strip())
        if only - set(SCENARIOS):
            raise BenchError(f"ONLY takes scenarios among {', '.join(SCENARIOS)}")
        return cls(
            quick=quick,
            duration=duration,
            warmup=warmup,
            direct_duration=1 if quick else min(duration, 5),
            connections=_env_int("CONNECTIONS", 64),
            rate=_env_int("RATE", 500),
            latency_connections=_env_int("LATENCY_CONNECTIONS", 16),
            keys=max(1, _env_int("KEYS", 10)),
            scale=_env_flag("SCALE"),
            scale_keys=_env_int("SCALE_KEYS", 1_000_000),
            force_python=os.environ.get("LOADGEN", "").strip().lower() == "python",
            only=only or frozenset(SCENARIOS),
        )

    def knobs(self) -> str:
        parts = [
            f"DURATION={self.duration}",
            f"WARMUP={self.warmup}",
            f"CONNECTIONS={self.connections}",
            f"RATE={self.rate}",
            f"LATENCY_CONNECTIONS={self.latency_connections}",
            f"KEYS={self.keys}",
        ]
        if self.scale:
            parts.append(f"SCALE=1 SCALE_KEYS={self.scale_keys}")
        return " ".join(parts)


# -- processes and CPU accounting -------------------------------------------------------


def all_cpus() -> set[int]:
    return set(range(os.cpu_count() or 1))


class Proc:
    """A child process with its own log file, in its own session, on the given cores."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        logs: Path,
        cpus: set[int] | None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self._log = open(self.log_path, "wb")
        affinity = cpus or all_cpus()
        self.popen = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=lambda: os.sched_setaffinity(0, affinity),
        )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            with suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                say(f"{self.name} (pid {self.pid}) did not stop in {timeout:.0f}s: killing it")
        # Whatever it left in its session (spendgate's forked workers), by process group.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self._log.close()

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (spendgate's forked workers)."""
    found = [pid]
    at = 0
    while at < len(found):
        current = found[at]
        at += 1
        with suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with suppress(OSError):
                    text = Path(f"/proc/{current}/task/{task}/children").read_text()
                    found.extend(int(child) for child in text.split())
    return found


def cpu_ticks(pid: int) -> int:
    """utime + stime of one process (all its threads), in clock ticks."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def tree_ticks(pid: int) -> dict[int, int]:
    return {p: cpu_ticks(p) for p in process_tree(pid)}


def core_times() -> dict[int, tuple[int, int, int]]:
    """(busy, steal, total) jiffies of every core, from /proc/stat. Busy is time this
    machine's processes ran; steal, time the hypervisor ran something else instead."""
    result = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        numbers = [int(v) for v in values] + [0] * 8
        idle = numbers[3] + numbers[4]  # idle + iowait
        steal = numbers[7]
        total = sum(numbers[:8])  # guest time is already in user
        result[int(name[3:])] = (total - idle - steal, steal, total)
    return result


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Move a running process tree (every thread) onto `cpus`."""
    for process in process_tree(pid):
        with suppress(OSError):
            for task in os.listdir(f"/proc/{process}/task"):
                with suppress(OSError):
                    os.sched_setaffinity(int(task), cpus)


# -- stores -----------------------------------------------------------------------------


def redis_answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 6379), timeout=0.5
        ) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def postgres_answers(dsn: str) -> bool:
    import asyncpg

    parts = urlsplit(dsn)
    if parts.hostname:
        try:
            socket.create_connection((parts.hostname, parts.port or 5432), timeout=0.5).close()
        except OSError:
            return False

    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(dsn, timeout=2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
        try:
            return bool(await conn.fetchval("SELECT 1") == 1)
        finally:
            await conn.close()

    return asyncio.run(probe())


def with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


def postgres_admin(dsn: str, statement: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


@dataclass
class Stores:
    redis_url: str
    database_url: str
    prefix: str
    described: str


@contextmanager
def stores(tmp: Path) -> Iterator[Stores]:
    """The servers spendgate runs on: a fresh database and a unique Redis prefix."""
    with ExitStack() as stack:
        notes = []
        redis_url = os.environ.get("BENCH_REDIS_URL") or LOCAL_REDIS_URL
        if redis_answers(redis_url):
            notes.append(f"Redis {redis_url}")
        else:
            from spendgate.storage.embedded import start_valkey

            valkey = start_valkey(tmp / "embedded")
            stack.callback(valkey.stop)
            redis_url = valkey.url
            notes.append(f"embedded Valkey {redis_url} (no Redis answered)")
        server_dsn = os.environ.get("BENCH_DATABASE_URL") or LOCAL_POSTGRES_URL
        if postgres_answers(server_dsn):
            notes.append("PostgreSQL " + urlsplit(server_dsn)._replace(path="").geturl())
        else:
            from spendgate.storage.embedded import start_postgres

            postgres = start_postgres(tmp / "embedded")
            stack.callback(postgres.stop)
            server_dsn = postgres.url
            notes.append("embedded PostgreSQL (no PostgreSQL answered)")
        suffix = secrets.token_hex(4)
        database = f"spendgate_bench_{suffix}"
        prefix = f"sgbench{suffix}"
        postgres_admin(server_dsn, f'CREATE DATABASE "{database}"')

        def drop() -> None:
            postgres_admin(server_dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            say(f"dropped database {database}")

        stack.callback(drop)

        def forget() -> None:
            deleted = keyfill.delete_redis_prefix(redis_url, prefix)
            say(f"deleted {deleted} Redis keys under {prefix}:")

        stack.callback(forget)
        notes.append(f"database {database}, Redis prefix {prefix}")
        yield Stores(redis_url, with_database(server_dsn, database), prefix, "; ".join(notes))


def store_processes(store: Stores) -> Callable[[], dict[str, list[int]]]:
    """The processes of the stores, for their CPU: the Redis server (found by its command
    line) and the PostgreSQL backends serving the bench database (asked at each call)."""
    import asyncpg

    port = urlsplit(store.redis_url).port or 6379
    redis_pid = None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError):
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if ("redis-server" in argv or "valkey-server" in argv) and f":{port}" in argv:
                redis_pid = int(entry.name)
                break
    database = urlsplit(store.database_url).path.lstrip("/")

    async def backends() -> list[int]:
        conn = await asyncpg.connect(store.database_url, timeout=5)
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
        finally:
            await conn.close()
        return [row["pid"] for row in rows]

    def pids() -> dict[str, list[int]]:
        found = {}
        if redis_pid is not None:
            found["redis"] = [redis_pid]
        with suppress(Exception):
            found["postgres"] = asyncio.run(backends())
        return found

    return pids


def store_servers(store: Stores) -> list[int]:
    """The server processes of the stores: the Redis server and PostgreSQL's postmaster
    (whose children, and the backends it forks later, follow its CPU affinity)."""
    import asyncpg

    async def backend() -> int:
        conn = await asyncpg.connect(store.database_url, timeout=5)
        try:
            return int(await conn.fetchval("SELECT pg_backend_pid()"))
        finally:
            await conn.close()

    servers = list(store_processes(store)().get("redis", []))
    with suppress(Exception):
        status = Path(f"/proc/{asyncio.run(backend())}/status").read_text()
        servers.append(int(status.split("PPid:")[1].split()[0]))
    return servers


@contextmanager
def stores_on(servers: list[int], cpus: set[int]) -> Iterator[bool]:
    """Redis and PostgreSQL on `cpus` for the duration, then back where they were (the
    backends forked meanwhile too). They are services of their own, on hosts of their own
    in production: on the core under test they would take CPU from the process under test
    that the bare proxy keeps. Yields whether it could move them."""

    def threads(server: int) -> Iterator[int]:
        for process in process_tree(server):
            with suppress(OSError):
                yield from (int(thread) for thread in os.listdir(f"/proc/{process}/task"))

    before: dict[int, set[int]] = {}
    moved = False
    for server in servers:
        with suppress(OSError):
            before[server] = os.sched_getaffinity(server)
        for thread in threads(server):
            with suppress(OSError):
                before.setdefault(thread, os.sched_getaffinity(thread))
                os.sched_setaffinity(thread, cpus)
                moved = True
    try:
        yield moved
    finally:
        for server in servers:
            for thread in threads(server):
                with suppress(OSError, KeyError):
                    os.sched_setaffinity(thread, before.get(thread, before[server]))


# -- HTTP helpers -----------------------------------------------------------------------


def http(
    method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 10
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        status = exc.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_busy(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_until(check: Callable[[], bool], proc: Proc, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{what} exited (status {proc.popen.returncode}):\n{proc.tail()}")
        with suppress(OSError, urllib.error.URLError, ConnectionError):
            if check():
                return
        time.sleep(0.1)
    raise BenchError(f"{what} not ready after {timeout:.0f}s:\n{proc.tail()}")


# -- load generation --------------------------------------------------------------------


@dataclass
class LoadGen:
    kind: str  # "wrk" or "python"
    note: str

    @classmethod
    def find(cls, force_python: bool) -> LoadGen:
        if force_python:
            return cls("python", "Python load generator (LOADGEN=python)")
        if shutil.which("wrk"):
            return cls("wrk", "wrk")
        if os.geteuid() == 0 and shutil.which("apt-get"):
            say("wrk is missing: apt-get install -y wrk")
            for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
                with suppress(subprocess.TimeoutExpired, OSError):
                    subprocess.run(
                        step,
                        check=False,
                        timeout=300,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
            if shutil.which("wrk"):
                return cls("wrk", "wrk (installed by this run)")
        return cls(
            "python",
            "Python load generator (wrk is not installed): throughput is capped by the"
            " generator itself, not by the proxies",
        )

    def argv(self, url: str, connections: int, seconds: int) -> list[str]:
        if self.kind == "wrk":
            return [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--timeout",
                "10s",
                "-s",
                str(BENCH / "chat.lua"),
                url,
            ]
        return [
            sys.executable,
            str(BENCH / "loadgen.py"),
            "--connections",
            str(connections),
            "--duration",
            str(seconds),
            url,
        ]


@dataclass
class Result:
    target: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float | None  # CPU time of the process under test per request
    cpu_pct: dict[str, float]  # each watched process's CPU use, % of one core
    core_busy: dict[int, float]  # each core's busy %, all processes
    other_pct: float  # CPU of processes that are no part of the bench, % of one core
    test_core: int | None  # the one core the process under test is pinned to, if so
    intrusion_pct: float  # CPU others took on that core (else: other_pct), % of one core
    steal_pct: float  # CPU the hypervisor took from this machine, % of one core
    halves: tuple[Result, Result] | None = None  # the two measurements merged into this

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass
class Bench:
    config: Config
    loadgen: LoadGen
    logs: Path
    pinned: bool
    watched: dict[str, int] = field(default_factory=dict)  # name -> pid, for CPU shares
    store_pids: Callable[[], dict[str, list[int]]] = lambda: {}

    def load(
        self,
        url: str,
        body: dict[str, Any],
        keys: list[str],
        *,
        connections: int,
        seconds: int,
        rate: int = 0,
        cpus: set[int] | None = None,
    ) -> dict[str, Any]:
        env = {
            **os.environ,
            "BENCH_BODY": json.dumps(body, separators=(",", ":")),
            "BENCH_KEYS": ",".join(keys),
            "BENCH_RATE": str(rate),
        }
        affinity = cpus or all_cpus()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(
            self.loadgen.argv(url, connections, seconds),
            env=env,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            preexec_fn=lambda: os.sched_setaffinity(0, affinity),
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        for line in done.stdout.splitlines():
            if line.startswith("BENCH_RESULT "):
                result: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
                result["loadgen_cpu_s"] = (after.ru_utime - children.ru_utime) + (
                    after.ru_stime - children.ru_stime
                )
                return result
        raise BenchError(
            f"the load generator printed no result (status {done.returncode}):\n"
            f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )

    def measure(
        self,
        target: str,
        url: str,
        body: dict[str, Any],
        keys: list[str],
        under_test: int | None,
        *,
        connections: int | None = None,
        rate: int = 0,
        loadgen_cpus: set[int] | None = None,
        seconds: int | None = None,
        warmup: int | None = None,
    ) -> Result:
        """Warm up, then one measured run; CPU of `under_test` (and its children) and of
        every watched process over that run."""
        connections = connections or self.config.connections
        seconds = seconds or self.config.duration
        warmup = self.config.warmup if warmup is None else warmup
        say(
            f"{target}: {warmup}s warm-up + {seconds}s, {connections} connections"
            + (f", {rate} req/s" if rate else "")
        )
        if warmup:
            self.load(
                url,
                body,
                keys,
                connections=connections,
                seconds=warmup,
                rate=rate,
                cpus=loadgen_cpus,
            )
        watched = dict(self.watched)
        stores_watched = self.store_pids()
        before = {name: tree_ticks(pid) for name, pid in watched.items()}
        stores_before = {n: {p: cpu_ticks(p) for p in ps} for n, ps in stores_watched.items()}
        test_before = tree_ticks(under_test) if under_test else {}
        self_before = resource.getrusage(resource.RUSAGE_SELF)
        cores_before = core_times()
        wall_start = time.monotonic()
        out = self.load(
            url, body, keys, connections=connections, seconds=seconds, rate=rate, cpus=loadgen_cpus
        )
        wall = time.monotonic() - wall_start  # the CPU window (the generator's start-up too)
        cores_after = core_times()
        self_after = resource.getrusage(resource.RUSAGE_SELF)
        test_after = tree_ticks(under_test) if under_test else {}
        after = {name: tree_ticks(pid) for name, pid in watched.items()}
        stores_after = {n: {p: cpu_ticks(p) for p in ps} for n, ps in stores_watched.items()}
        elapsed = out["duration_us"] / 1e6
        requests = int(out["requests"])
        errors = int(sum(out["errors"].values()))

        def used(start: dict[int, int], end: dict[int, int]) -> float:
            """Seconds of CPU between the snapshots (processes that came or went count
            from zero)."""
            return sum(t - start.get(p, 0) for p, t in end.items()) / CLK_TCK

        cpu_us = None
        test_core = None
        test_pct = 0.0
        if under_test:
            cpu_us = used(test_before, test_after) * 1e6 / max(requests, 1)
            test_pct = 100 * used(test_before, test_after) / wall
            with suppress(OSError):
                affinity = os.sched_getaffinity(under_test)
                if len(affinity) == 1 and len(all_cpus()) > 1:
                    test_core = next(iter(affinity))
        busy = {}
        busy_seconds = steal = 0.0
        for core, (b1, s1, t1) in cores_after.items():
            b0, s0, t0 = cores_before.get(core, (b1, s1, t1))
            busy[core] = 100.0 * (b1 - b0) / max(t1 - t0, 1)
            busy_seconds += (b1 - b0) / CLK_TCK
            steal += (s1 - s0) / CLK_TCK
        cpu_pct = {n: 100 * used(before[n], after[n]) / wall for n in watched}
        for n in stores_watched:
            cpu_pct[n] = 100 * used(stores_before[n], stores_after[n]) / wall
        cpu_pct["load generator"] = 100 * out["loadgen_cpu_s"] / wall
        ours = sum(cpu_pct.values()) * wall / 100
        ours += (self_after.ru_utime - self_before.ru_utime) + (
            self_after.ru_stime - self_before.ru_stime
        )
        if under_test and under_test not in watched.values():
            ours += used(test_before, test_after)
        return Result(
            target=target,
            requests=requests,
            seconds=elapsed,
            p50_ms=out["p50_us"] / 1000,
            p99_ms=out["p99_us"] / 1000,
            errors=errors,
            cpu_us=cpu_us,
            cpu_pct=cpu_pct,
            core_busy=busy,
            other_pct=max(0.0, 100 * (busy_seconds - ours) / wall),
            test_core=test_core,
            intrusion_pct=max(0.0, busy[test_core] - test_pct)
            if test_core is not None
            else max(0.0, 100 * (busy_seconds - ours) / wall),
            steal_pct=100 * steal / wall,
        )


# -- servers under test -----------------------------------------------------------------


def spendgate_env(stores: Stores, admin_token: str, port: int, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPENDGATE_")}
    env.update(
        SPENDGATE_DATABASE_URL=stores.database_url,
        SPENDGATE_REDIS_URL=stores.redis_url,
        SPENDGATE_REDIS_PREFIX=stores.prefix,
        SPENDGATE_PROVIDERS_FILE=str(BENCH / "providers.toml"),
        SPENDGATE_ADMIN_TOKEN=admin_token,
        SPENDGATE_LOG_LEVEL="warning",
        SPENDGATE_HOST="127.0.0.1",
        SPENDGATE_PORT=str(port),
        SPENDGATE_DATA_DIR=str(data_dir),
    )
    return env


def start_spendgate(
    stack: ExitStack,
    name: str,
    env: dict[str, str],
    workers: int,
    logs: Path,
    cpus: set[int] | None,
) -> tuple[Proc, str]:
    argv = [sys.executable, "-m", "spendgate", "serve", "--workers", str(workers)]
    proc = Proc(name, argv, logs, cpus, env)
    stack.callback(proc.stop)
    url = f"http://127.0.0.1:{env['SPENDGATE_PORT']}"
    wait_until(lambda: http("GET", url + "/readyz", timeout=2)[0] == 200, proc, name)
    return proc, url


def setup_keys(url: str, token: str, count: int) -> tuple[str, list[str]]:
    status, project = http(
        "POST",
        url + "/admin/v1/projects",
        {"name": "bench", "plan": "enterprise", "key_limit": 1_000_000},
        token,
    )
    if status != 201:
        raise BenchError(f"creating the bench project answered {status}: {project}")
    keys = []
    for i in range(count):
        status, key = http(
            "POST",
            f"{url}/admin/v1/projects/{project['id']}/keys",
            {"name": f"bench-{i}", "usage_limit": USAGE_LIMIT_USD},
            token,
        )
        if status != 201:
            raise BenchError(f"creating key {i} answered {status}: {key}")
        keys.append(key["key"])
    return project["id"], keys


def check_answer(url: str, keys: list[str], body: dict[str, Any], what: str) -> None:
    """One request by hand before any load: the path works end to end."""
    status, answer = http("POST", url + "/v1/chat/completions", body, keys[0] if keys else None)
    if status != 200:
        raise BenchError(f"{what} answered {status} to a chat completion: {answer}")


# -- report -----------------------------------------------------------------------------


def git_commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "--no-optional-locks", *args], cwd=ROOT, capture_output=True, text=True
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return commit + (" (with uncommitted changes)" if dirty else "")


def cpu_model() -> str:
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def background_load(seconds: float = 1.0) -> dict[int, float]:
    before = core_times()
    time.sleep(seconds)
    after = core_times()
    return {
        c: 100.0 * (after[c][0] - before[c][0]) / max(after[c][2] - before[c][2], 1) for c in after
    }


def fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "n/a"
    return f"{value / reference:.2f}x"


def table(rows: list[Result], reference: Result | None, loadgen_core: int | None) -> list[str]:
    """One Markdown table; ratios are to `reference` (the upstream's own rows get none)."""
    busy_header = f"core {loadgen_core} busy" if loadgen_core is not None else "cores busy"
    lines = [
        "| target | rps | p50 ms | p99 ms | CPU µs/req | rps vs bare | CPU vs bare | errors "
        f"| {busy_header} | interference |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rps_ratio = cpu_ratio = "-"
        if reference is not None and not r.target.startswith("upstream"):
            rps_ratio = ratio(r.rps, reference.rps)
            cpu_ratio = ratio(r.cpu_us, reference.cpu_us)
        if loadgen_core is not None:
            busy = f"{r.core_busy.get(loadgen_core, 0):.0f}%"
        else:
            busy = " / ".join(f"{v:.0f}%" for _, v in sorted(r.core_busy.items()))
        lines.append(
            f"| {r.target} | {fmt(r.rps)} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {fmt(r.cpu_us)} "
            f"| {rps_ratio} | {cpu_ratio} | {r.errors} | {busy} | {interference(r)} |"
        )
    return lines


NOISY_PINNED = 15.0  # others' CPU on the pinned core under test past which a row is flagged
NOISY_UNPINNED = 25.0  # CPU of processes outside the bench, for unpinned runs
LOAD_SIDE_MAX = 80.0  # upstream + load generator CPU (% of one core) past which to warn


def interference(r: Result) -> str:
    where = f"core {r.test_core}" if r.test_core is not None else "outside the bench"
    return f"{r.intrusion_pct:.0f}% ({where})"


def noisy(r: Result) -> bool:
    limit = NOISY_PINNED if r.test_core is not None else NOISY_UNPINNED
    return r.intrusion_pct > limit


def merged(a: Result, b: Result) -> Result:
    """One row of two measurements of the same target: counts added, CPU per request
    weighted by requests, shares of a core by time, p50 and p99 the mean of the two."""

    def by_time(x: float, y: float) -> float:
        return (x * a.seconds + y * b.seconds) / max(a.seconds + b.seconds, 1e-9)

    def shares(x: dict[Any, float], y: dict[Any, float]) -> dict[Any, float]:
        return {k: by_time(x.get(k, 0.0), y.get(k, 0.0)) for k in {**x, **y}}

    cpu_us = None
    if a.cpu_us is not None and b.cpu_us is not None:
        cpu_us = (a.cpu_us * a.requests + b.cpu_us * b.requests) / max(a.requests + b.requests, 1)
    return Result(
        target=a.target,
        requests=a.requests + b.requests,
        seconds=a.seconds + b.seconds,
        p50_ms=(a.p50_ms + b.p50_ms) / 2,
        p99_ms=(a.p99_ms + b.p99_ms) / 2,
        errors=a.errors + b.errors,
        cpu_us=cpu_us,
        cpu_pct=shares(a.cpu_pct, b.cpu_pct),
        core_busy=shares(a.core_busy, b.core_busy),
        other_pct=by_time(a.other_pct, b.other_pct),
        test_core=a.test_core,
        intrusion_pct=by_time(a.intrusion_pct, b.intrusion_pct),
        steal_pct=by_time(a.steal_pct, b.steal_pct),
        halves=(a, b),
    )


def details(rows: list[Result]) -> list[str]:
    out = []
    for r in rows:
        shares = ", ".join(f"{n} {v:.0f}%" for n, v in r.cpu_pct.items())
        cores = ", ".join(f"core {c} {v:.0f}%" for c, v in sorted(r.core_busy.items()))
        halves = ""
        if r.halves is not None:
            h1, h2 = r.halves
            halves = (
                f"; halves {h1.rps:,.0f} and {h2.rps:,.0f} req/s, p99 {h1.p99_ms:.2f} and"
                f" {h2.p99_ms:.2f} ms, CPU {fmt(h1.cpu_us)} and {fmt(h2.cpu_us)} µs/req"
            )
        out.append(
            f"- {r.target}: {r.requests:,} requests in {r.seconds:.1f}s; CPU, % of one"
            f" core: {shares}, other processes {r.other_pct:.0f}%, hypervisor steal"
            f" {r.steal_pct:.0f}%; busy: {cores}{halves}"
        )
    saturated = [
        r.target
        for r in rows
        if not r.target.startswith("upstream")
        and r.cpu_pct.get("upstream", 0) + r.cpu_pct.get("load generator", 0) > LOAD_SIDE_MAX
    ]
    if saturated:
        out.append(
            f"- WARNING: the upstream and the load generator used more than {LOAD_SIDE_MAX:.0f}%"
            f" of a core during: {', '.join(saturated)}. The load side may be the limit there."
        )
    flagged = [r.target for r in rows if noisy(r)]
    if flagged:
        out.append(
            f"- WARNING: other processes took more than {NOISY_PINNED:.0f}% of the core under"
            f" test (unpinned: {NOISY_UNPINNED:.0f}% of a core) during: {', '.join(flagged)}."
            " Those numbers are disturbed; rerun on a quiet machine."
        )
    return out


@dataclass
class Report:
    header: list[str]
    sections: list[list[str]] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)

    def section(self, title: str, intro: str, lines: list[str]) -> None:
        block = ["", f"## {title}", "", intro, "", *lines]
        self.sections.append(block)
        print("\n".join(block), flush=True)

    def markdown(self) -> str:
        lines = list(self.header)
        for block in self.sections:
            lines.extend(block)
        if self.verdicts:
            lines += ["", "## Targets", "", *self.verdicts]
        return "\n".join(lines) + "\n"


def verdict(
    name: str, value: float | None, target: float, higher_is_better: bool, unit: str = ""
) -> str:
    if value is None:
        return f"- {name}: not measured"
    ok = value >= target if higher_is_better else value <= target
    sign = ">=" if higher_is_better else "<="
    return (
        f"- {name}: {value:.2f}{unit} (target {sign} {target:g}{unit}): {'PASS' if ok else 'FAIL'}"
    )


# -- the run ---------------------------------------------------------------------------


@dataclass
class Session:
    """Everything the scenarios share."""

    config: Config
    bench: Bench
    report: Report
    store: Stores
    tmp: Path
    logs: Path
    pinned: bool
    target_cpus: set[int] | None  # the process under test
    side_cpus: set[int] | None  # upstream and load generator
    upstream: Proc
    upstream_url: str
    bare: Proc
    bare_url: str
    spendgate: Proc
    sg_url: str
    admin_token: str
    project_id: str
    keys: list[str]
    store_servers: list[int]  # Redis and PostgreSQL, on side_cpus while pinned
    values: dict[str, float | None] = field(default_factory=dict)  # what the targets judge

    @property
    def loadgen_core(self) -> int | None:
        return 1 if self.pinned else None

    def pair(self, label: str, body: dict[str, Any], **options: Any) -> list[Result]:
        """The bare proxy and spendgate under the same load, in the order bare, spendgate,
        spendgate, bare, each for half the duration, so that a machine whose speed drifts
        during the pair weighs on both alike. Each row merges its two halves."""
        half = max(1, self.config.duration // 2)

        def measure(target: str, url: str, pid: int, warmup: int | None = None) -> Result:
            return self.bench.measure(
                f"{target}{label}",
                url,
                body,
                self.keys,
                pid,
                loadgen_cpus=self.side_cpus,
                seconds=half,
                warmup=warmup,
                **options,
            )

        first_bare = measure("bare proxy", self.bare_url, self.bare.pid)
        first_spendgate = measure("spendgate", self.sg_url, self.spendgate.pid)
        # No warm-up: it has just been measured.
        second_spendgate = measure("spendgate", self.sg_url, self.spendgate.pid, warmup=0)
        second_bare = measure("bare proxy", self.bare_url, self.bare.pid)
        return [merged(first_bare, second_bare), merged(first_spendgate, second_spendgate)]

    def direct(self, body: dict[str, Any], label: str) -> list[Result]:
        """The upstream's own ceiling, the load generator on the other core."""
        if not self.pinned:
            return []
        return [
            self.bench.measure(
                f"upstream direct ({label})",
                self.upstream_url,
                body,
                [],
                self.upstream.pid,
                loadgen_cpus=self.target_cpus,
                seconds=self.config.direct_duration,
                warmup=min(self.config.warmup, 1),
            )
        ]


def scenario_json(s: Session) -> None:
    direct = s.direct(CHAT_BODY, "JSON")
    rows = s.pair("", CHAT_BODY)
    s.values["json_rps"] = rows[1].rps / rows[0].rps if rows[0].rps else None
    s.values["json_cpu"] = _div(rows[1].cpu_us, rows[0].cpu_us)
    intro = (
        f"POST /v1/chat/completions, JSON answer; {s.config.connections} connections, "
        f"{s.config.duration}s, load over {len(s.keys)} keys."
    )
    shown = direct + rows
    s.report.section(
        "JSON chat", intro, table(shown, rows[0], s.loadgen_core) + [""] + details(shown)
    )


def scenario_sse(s: Session) -> None:
    direct = s.direct(SSE_BODY, "SSE")
    rows = s.pair("", SSE_BODY)
    s.values["sse_rps"] = rows[1].rps / rows[0].rps if rows[0].rps else None
    s.values["sse_cpu"] = _div(rows[1].cpu_us, rows[0].cpu_us)
    intro = (
        'POST /v1/chat/completions with "stream": true and stream_options.include_usage '
        f"(12 events and [DONE] per answer); {s.config.connections} connections, "
        f"{s.config.duration}s."
    )
    shown = direct + rows
    s.report.section(
        "SSE chat", intro, table(shown, rows[0], s.loadgen_core) + [""] + details(shown)
    )


def scenario_latency(s: Session) -> None:
    rate = s.config.rate
    rows = s.pair(f" @ {rate}/s", CHAT_BODY, rate=rate, connections=s.config.latency_connections)
    added_p99 = rows[1].p99_ms - rows[0].p99_ms
    added_p50 = rows[1].p50_ms - rows[0].p50_ms
    s.values["added_p99"] = added_p99
    intro = (
        f"JSON chat at a fixed {rate} requests/s ({s.config.latency_connections} connections, "
        f"wrk paced by a Lua delay() schedule), {s.config.duration}s."
    )
    lines = table(rows, rows[0], s.loadgen_core) + [
        "",
        f"Added latency over the bare proxy: p50 {added_p50:+.2f} ms, p99 {added_p99:+.2f} ms.",
    ]
    short = [r.target for r in rows if r.rps < 0.95 * rate]
    if short:
        lines.append(
            f"NOT at the fixed rate: {', '.join(short)} could not keep up with {rate} requests/s,"
            " so its latency is queueing, not per-request overhead."
        )
    s.report.section(f"Latency at {rate} requests/s", intro, lines + [""] + details(rows))


def scenario_workers(s: Session) -> None:
    if not s.pinned:
        s.report.section("Two workers vs one", "Skipped: this machine has one core.", [])
        return
    everywhere = all_cpus()
    # With 4 cores or more, the gateway gets two of its own (cores 0 and 1) and the rest
    # runs elsewhere: the target's setting. With fewer, nothing is pinned.
    gateway = {0, 1} if len(everywhere) >= 4 else everywhere
    rest = everywhere - gateway or everywhere
    set_affinity(s.upstream.pid, rest)
    set_affinity(s.spendgate.pid, gateway)
    try:
        with ExitStack() as two_stack:
            two_stack.enter_context(stores_on(s.store_servers, rest))
            one = s.bench.measure(
                "spendgate, 1 worker",
                s.sg_url,
                CHAT_BODY,
                s.keys,
                s.spendgate.pid,
                loadgen_cpus=rest,
            )
            env = spendgate_env(s.store, s.admin_token, free_port(), s.tmp / "data2")
            two_proc, two_url = start_spendgate(two_stack, "spendgate-2w", env, 2, s.logs, gateway)
            check_answer(two_url, s.keys, CHAT_BODY, "spendgate --workers 2")
            s.bench.watched["spendgate-2w"] = two_proc.pid
            try:
                two = s.bench.measure(
                    "spendgate, 2 workers",
                    two_url,
                    CHAT_BODY,
                    s.keys,
                    two_proc.pid,
                    loadgen_cpus=rest,
                )
            finally:
                del s.bench.watched["spendgate-2w"]
    finally:
        set_affinity(s.upstream.pid, s.side_cpus or everywhere)
        set_affinity(s.spendgate.pid, s.target_cpus or everywhere)
    ratio_ = two.rps / one.rps if one.rps else None
    s.values["workers"] = ratio_
    placement = (
        "spendgate on cores 0 and 1, the upstream, the load generator, Redis and PostgreSQL"
        " on the others"
        if gateway != everywhere
        else "nothing pinned: spendgate, the upstream and the load generator share every core"
        " with Redis and PostgreSQL"
    )
    intro = f"JSON chat, {placement}; {s.config.connections} connections, {s.config.duration}s."
    lines = table([one, two], one, None)
    lines[0] = lines[0].replace("vs bare", "vs 1 worker")
    s.report.section(
        "Two workers vs one",
        intro,
        lines
        + ["", f"Two workers / one worker throughput: {fmt(ratio_, 2)}x.", ""]
        + details([one, two]),
    )


def scenario_scale(s: Session) -> None:
    """spendgate against the bare proxy (a pair, as in the JSON scenario) over the same
    keys, before and after the fill. The bare proxy does not depend on the keys, so the
    ratio of the two pairs' ratios leaves out how fast the host ran at either time."""
    n = s.config.scale_keys
    # Both measurements start with PostgreSQL's dirty pages written (here, after what the
    # earlier scenarios inserted; below, after the fill), not written during them.
    postgres_admin(s.store.database_url, "CHECKPOINT")
    ten = s.pair(f", {len(s.keys)} keys", CHAT_BODY)
    say(f"inserting {n:,} keys into PostgreSQL and Redis")
    t0 = time.monotonic()
    asyncio.run(keyfill.fill_postgres(s.store.database_url, s.project_id, n))
    postgres_admin(
        s.store.database_url, f"UPDATE projects SET key_limit = {2 * n} WHERE id = '{s.project_id}'"
    )
    # Now rather than by autovacuum and the checkpointer during the measurement.
    postgres_admin(s.store.database_url, "VACUUM ANALYZE api_keys")
    postgres_admin(s.store.database_url, "CHECKPOINT")
    t1 = time.monotonic()
    keyfill.fill_redis(s.store.redis_url, s.store.prefix, BUCKETS, s.project_id, n)
    t2 = time.monotonic()
    say(f"inserted in {t2 - t0:.0f}s (PostgreSQL {t1 - t0:.0f}s, Redis {t2 - t1:.0f}s)")
    many = s.pair(f", {n + len(s.keys):,} keys", CHAT_BODY)
    rps = _div(_div(many[1].rps, many[0].rps), _div(ten[1].rps, ten[0].rps))
    cpu = _div(_div(many[1].cpu_us, many[0].cpu_us), _div(ten[1].cpu_us, ten[0].cpu_us))
    s.values["scale"] = rps
    intro = (
        f"JSON chat over the same {len(s.keys)} keys, before and after {n:,} more keys were "
        f"put into PostgreSQL ({t1 - t0:.0f}s) and Redis ({t2 - t1:.0f}s); each time the "
        "bare proxy beside spendgate, for the host's speed at that time."
    )
    lines = table(ten, ten[0], s.loadgen_core) + table(many, many[0], s.loadgen_core)[2:]
    lines += [
        "",
        f"spendgate with {n + len(s.keys):,} keys against {len(s.keys)} (each as a ratio to the"
        f" bare proxy beside it): throughput {fmt(rps, 2)}x, CPU per request {fmt(cpu, 2)}x.",
    ]
    s.report.section("Key-count scaling", intro, lines + [""] + details(ten + many))


def log_problems(logs: Path) -> list[str]:
    """Warnings and errors in the servers' logs (spendgate logs JSON lines), counted."""
    lines = []
    for path in sorted(logs.glob("*.log")):
        found = [
            line
            for line in path.read_text(errors="replace").splitlines()
            if '"level":"warning"' in line or '"level":"error"' in line or "Traceback" in line
        ]
        if found:
            lines.append(f"- {path.stem}: {len(found)} lines, the first: `{found[0][:300]}`")
    return lines


def attempt(s: Session, title: str, scenario: Callable[[], None]) -> None:
    """A scenario that fails (a server that would not start, ...) is reported as failed;
    the others still run."""
    try:
        scenario()
    except BenchError as exc:
        say(f"{title} failed: {exc}")
        first = str(exc).splitlines()[0] if str(exc) else "error"
        s.report.section(title, f"FAILED: {first} (the logs are printed above).", [])


def header_lines(
    config: Config,
    loadgen: LoadGen,
    store: Stores,
    pinned: bool,
    stores_moved: bool,
    background: dict[int, float],
) -> list[str]:
    import aiohttp

    uses_uvloop = all(
        "uvloop" in path.read_text()
        for path in (ROOT / "spendgate" / "proxy" / "server.py", ROOT / "bench" / "bare_proxy.py")
    )
    loop_note = (
        "uvloop in both spendgate and the bare proxy"
        if uses_uvloop
        else "NOT a like-for-like comparison: only one of spendgate and the bare proxy uses uvloop"
    )
    given = " ".join(f"{k}={os.environ[k]}" for k in KNOBS if os.environ.get(k, "").strip())
    via_make = os.environ.get("BENCH_VIA_MAKE") == "1"
    command = (f"make bench {given}" if via_make else f"{given} python bench/run.py").strip()
    pinning = (
        "process under test on core 0; upstream, load generator"
        + (", Redis and PostgreSQL" if stores_moved else "")
        + " on core 1 (taskset-style sched_setaffinity)"
        + ("" if stores_moved else "; Redis and PostgreSQL not pinned (no permission)")
        if pinned
        else "none: this machine has one core, everything shares it (ratios only)"
    )
    return [
        "# spendgate benchmark",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- commit: {git_commit()}",
        f"- command: `{command}` ({config.knobs()})",
        f"- machine: {os.cpu_count()} cores (nproc), {cpu_model()}, Linux {platform.release()}",
        f"- Python {platform.python_version()}, aiohttp {aiohttp.__version__}; {loop_note}",
        f"- load generator: {loadgen.note}",
        f"- pinning: {pinning}",
        f"- stores: {store.described}",
        "- load from other processes before start: "
        + ", ".join(f"core {c} {v:.0f}%" for c, v in sorted(background.items())),
    ]


def run(config: Config, stack: ExitStack, report: Report) -> None:
    started = time.monotonic()
    pinned = (os.cpu_count() or 1) >= 2
    target_cpus = {0} if pinned else None
    side_cpus = {1} if pinned else None
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="spendgate-bench-")))
    logs = tmp / "logs"
    logs.mkdir()
    loadgen = LoadGen.find(config.force_python)
    background = background_load()
    if port_busy(UPSTREAM_PORT):
        raise BenchError(f"127.0.0.1:{UPSTREAM_PORT} is taken (bench/providers.toml needs it)")
    store = stack.enter_context(stores(tmp))
    say(f"stores: {store.described}")
    if pinned:  # this script mostly waits on its children: keep it off the core under test
        os.sched_setaffinity(0, side_cpus or all_cpus())
    bench = Bench(config, loadgen, logs, pinned)

    upstream = Proc(
        "upstream",
        [sys.executable, str(BENCH / "upstream.py"), "--port", str(UPSTREAM_PORT)],
        logs,
        side_cpus,
    )
    stack.callback(upstream.stop)
    upstream_url = f"http://127.0.0.1:{UPSTREAM_PORT}"
    wait_until(
        lambda: http("GET", upstream_url + "/v1/models", timeout=2)[0] == 200,
        upstream,
        "the upstream",
    )
    bare_port = free_port()
    bare = Proc(
        "bare",
        [
            sys.executable,
            str(BENCH / "bare_proxy.py"),
            "--port",
            str(bare_port),
            "--upstream",
            upstream_url,
        ],
        logs,
        target_cpus,
    )
    stack.callback(bare.stop)
    admin_token = "sga_bench_" + secrets.token_urlsafe(24)
    env = spendgate_env(store, admin_token, free_port(), tmp / "data")
    spendgate, sg_url = start_spendgate(stack, "spendgate", env, 1, logs, target_cpus)
    wait_until(lambda: port_busy(bare_port), bare, "the bare proxy")
    bare_url = f"http://127.0.0.1:{bare_port}"
    project_id, keys = setup_keys(sg_url, admin_token, config.keys)
    for url, what in ((bare_url, "the bare proxy"), (sg_url, "spendgate")):
        check_answer(url, keys, CHAT_BODY, what)
        check_answer(url, keys, SSE_BODY, what)
    bench.watched = {"upstream": upstream.pid, "bare": bare.pid, "spendgate": spendgate.pid}
    say(  # for attaching a profiler by hand (docs/BENCHMARKS.md)
        f"pids: upstream {upstream.pid}, bare proxy {bare.pid}, spendgate {spendgate.pid};"
        f" logs in {logs}"
    )
    bench.store_pids = store_processes(store)
    servers = store_servers(store) if pinned else []
    stores_moved = pinned and stack.enter_context(stores_on(servers, side_cpus or all_cpus()))

    report.header = header_lines(config, loadgen, store, pinned, stores_moved, background)
    print("\n".join(report.header), flush=True)
    s = Session(
        config,
        bench,
        report,
        store,
        tmp,
        logs,
        pinned,
        target_cpus,
        side_cpus,
        upstream,
        upstream_url,
        bare,
        bare_url,
        spendgate,
        sg_url,
        admin_token,
        project_id,
        keys,
        servers,
    )
    scenarios: dict[str, tuple[str, Callable[[Session], None]]] = {
        "json": ("JSON chat", scenario_json),
        "sse": ("SSE chat", scenario_sse),
        "latency": (f"Latency at {config.rate} requests/s", scenario_latency),
        "workers": ("Two workers vs one", scenario_workers),
        "scale": ("Key-count scaling", scenario_scale),
    }
    for name, (title, scenario) in scenarios.items():
        if name in config.only and (name != "scale" or config.scale):
            attempt(s, title, partial(scenario, s))

    problems = log_problems(logs)
    if problems:
        report.section("Server log warnings", "Warnings and errors the servers logged:", problems)
    v = s.values
    report.verdicts = [
        verdict("JSON throughput vs bare", v.get("json_rps"), TARGETS["rps_ratio"], True, "x"),
        verdict(
            "JSON CPU per request vs bare", v.get("json_cpu"), TARGETS["cpu_ratio"], False, "x"
        ),
        verdict("SSE throughput vs bare", v.get("sse_rps"), TARGETS["rps_ratio"], True, "x"),
        verdict("SSE CPU per request vs bare", v.get("sse_cpu"), TARGETS["cpu_ratio"], False, "x"),
        verdict(
            f"added p99 latency at {config.rate} req/s",
            v.get("added_p99"),
            TARGETS["added_p99_ms"],
            False,
            " ms",
        ),
        verdict("two workers vs one", v.get("workers"), TARGETS["workers_ratio"], True, "x"),
    ]
    if config.scale:
        scale = v.get("scale")
        within = scale is not None and abs(scale - 1) < TARGETS["scale_within"]
        report.verdicts.append(
            f"- {config.scale_keys:,} more keys vs none, throughput: {fmt(scale, 2)}x (target"
            f" within {TARGETS['scale_within']:.0%}): {'PASS' if within else 'FAIL'}"
        )
    print("\n## Targets\n\n" + "\n".join(report.verdicts), flush=True)
    say(f"measured in {time.monotonic() - started:.0f}s")


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def main() -> int:
    def interrupted(signum: int, frame: FrameType | None) -> None:
        # Once: a second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    try:
        config = Config.from_env()
    except BenchError as exc:
        say(str(exc))
        return 2
    started = time.monotonic()
    report = Report([])
    try:
        with ExitStack() as stack:
            run(config, stack, report)
            say("stopping the servers")
    except KeyboardInterrupt:
        say("interrupted; everything started was stopped")
        return 130
    except BenchError as exc:
        say(f"failed: {exc}")
        return 1
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / "latest.md"
    path.write_text(report.markdown())
    say(f"done in {time.monotonic() - started:.0f}s; tables written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
