"""Private Redis deployments on loopback for the tests: a Redis Cluster of three masters, and
a master with a replica watched by one Sentinel. Each server runs in a temporary directory
on free ports, without persistence, and is stopped (and waited for) at the end. They are
started synchronously, by module-scoped fixtures, before any test's event loop runs."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
import redis
from redis.crc import key_slot

START_TIMEOUT = 20.0


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct ports nothing listens on now (all bound at once, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for(check: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Server:
    """One redis-server (or Sentinel) process with its own directory, on a free port (and
    with `cluster=True`, a cluster node with a free bus port: port + 10000, Redis's
    default, may be taken). A port taken between its choice and the bind is chosen again."""

    def __init__(
        self,
        directory: Path,
        *options: str,
        sentinel_conf: str | None = None,
        password: str | None = None,
        cluster: bool = False,
    ) -> None:
        directory.mkdir(parents=True)
        self.directory = directory
        command = ["redis-server"]
        if sentinel_conf is not None:
            # Sentinel rewrites its configuration file: it must be one of its own.
            conf = directory / "sentinel.conf"
            conf.write_text(sentinel_conf)
            command += [str(conf), "--sentinel"]
        for attempt in range(3):
            (directory / "redis.log").unlink(missing_ok=True)
            self.port, self.bus_port = free_ports(2)
            ports = ["--port", str(self.port)]
            if cluster:
                ports += ["--cluster-enabled", "yes", "--cluster-port", str(self.bus_port)]
            self.process = subprocess.Popen(
                [
                    *command,
                    *ports,
                    "--bind", "127.0.0.1",
                    "--dir", str(directory),
                    "--save", "",
                    "--appendonly", "no",
                    "--repl-diskless-sync-delay", "0",  # a replica syncs at once
                    "--daemonize", "no",
                    "--loglevel", "warning",
                    "--logfile", str(directory / "redis.log"),
                    *options,
                ],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            self.client = redis.Redis(port=self.port, password=password, socket_timeout=2.0)
            try:
                wait_for(self._answers, f"redis-server on port {self.port}")
                return
            except RuntimeError as exc:
                self.client.close()
                if "Address already in use" not in str(exc) or attempt == 2:
                    raise

    def command(self, *args: str | int | bytes) -> Any:
        return self.client.execute_command(*args)  # type: ignore[no-untyped-call]

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            log = self.directory / "redis.log"
            raise RuntimeError(f"redis-server exited: {log.read_text() if log.exists() else ''}")
        try:
            return bool(self.client.ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Cluster:
    """Masters with every slot assigned (redis-cli --cluster create), and optionally a
    replica of each of the first `replicas` masters. `nodes` are the nodes running."""

    def __init__(
        self, directory: Path, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 5000
    ) -> None:
        self.nodes: list[Server] = []
        self._directory = directory
        self._node_timeout = str(node_timeout_ms)
        try:
            for i in range(masters):
                self.nodes.append(self._start(f"node{i}"))
            subprocess.run(
                [
                    "redis-cli", "--cluster", "create",
                    *(f"127.0.0.1:{node.port}" for node in self.nodes),
                    "--cluster-replicas", "0", "--cluster-yes",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=START_TIMEOUT,
            )  # fmt: skip
            wait_for(self.is_ok, "cluster_state:ok on every node")
            for i in range(replicas):
                self._add_replica(self.nodes[i], f"replica{i}")
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str) -> Server:
        return Server(
            self._directory / name,
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", self._node_timeout,
            "--cluster-replica-validity-factor", "0",  # any replica may take over
            cluster=True,
        )  # fmt: skip

    def _add_replica(self, master: Server, name: str) -> None:
        replica = self._start(name)
        self.nodes.append(replica)
        master_id = master.command("CLUSTER", "MYID")
        replica.command("CLUSTER", "MEET", "127.0.0.1", master.port, master.bus_port)
        wait_for(lambda: master_id in replica.command("CLUSTER", "NODES"), "the replica to meet")
        replica.command("CLUSTER", "REPLICATE", master_id)
        wait_for(
            lambda: replica.client.info("replication").get("master_link_status") == "up",
            "the replica to sync",
        )
        # Every master must know it as the replica of `master`, or they would ignore its
        # request for votes when `master` fails.
        replica_id = replica.command("CLUSTER", "MYID")
        wait_for(
            lambda: all(_knows_replica(node, replica_id, master_id) for node in self.nodes),
            "every node to know the replica",
        )
        wait_for(self.is_ok, "cluster_state:ok with the replica")

    def kill(self, node: Server) -> None:
        """SIGKILL: the node is gone, as a crashed or unplugged one is."""
        node.process.kill()
        node.process.wait()
        node.client.close()
        self.nodes.remove(node)

    @property
    def urls(self) -> str:
        """SPENDGATE_REDIS_URL for the cluster: every node as a seed."""
        return ",".join(node.url for node in self.nodes)

    def is_ok(self) -> bool:
        """Every node says the cluster is ok, and all see the same slot map."""
        for node in self.nodes:
            info = node.client.cluster("INFO")
            if info.get("cluster_state") != "ok" or int(info["cluster_slots_ok"]) != 16384:
                return False
        return len({tuple(self.slot_ranges(node)) for node in self.nodes}) == 1

    def slot_ranges(self, node: Server | None = None) -> list[tuple[int, int, int]]:
        """(first slot, last slot, port of the master), as `node` sees them."""
        reply = (node or self.nodes[0]).command("CLUSTER", "SLOTS")
        return sorted((int(first), int(last), int(master[1])) for first, last, master, *_ in reply)

    def owner(self, slot: int) -> Server:
        """The master that serves `slot`."""
        for first, last, port in self.slot_ranges():
            if first <= slot <= last:
                return next(node for node in self.nodes if node.port == port)
        raise KeyError(slot)

    def owner_of(self, key: str) -> Server:
        return self.owner(key_slot(key.encode()))

    def move_slot(self, slot: int, target: Server) -> None:
        """Migrate `slot` and its keys to `target`, as redis-cli --cluster reshard does."""
        source = self.begin_migration(slot, target)
        self.migrate_keys(slot, source, target)
        self.end_migration(slot, target)

    def begin_migration(self, slot: int, target: Server) -> Server:
        """IMPORTING on the target, MIGRATING on the source (returned): from now on a key
        of the slot that the source no longer has is answered ASK."""
        source = self.owner(slot)
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.command("CLUSTER", "MYID"))
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.command("CLUSTER", "MYID"))
        return source

    def migrate_keys(self, slot: int, source: Server, target: Server) -> None:
        while keys := source.command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)

    def end_migration(self, slot: int, target: Server) -> None:
        """The slot is the target's, told to every node: the old owner answers MOVED."""
        target_id = target.command("CLUSTER", "MYID")
        for node in self.nodes:
            node.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        wait_for(self.is_ok, "the cluster to agree on the moved slot")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelDeployment:
    """A master with a replica, both with a password, watched by one Sentinel that has a
    password of its own; Sentinel fails the master over when told to."""

    NAME = "spendgate"

    def __init__(
        self,
        directory: Path,
        password: str = "master-secret-1",
        sentinel_password: str = "sentinel-secret-1",
    ) -> None:
        self.password = password
        self.sentinel_password = sentinel_password
        self.servers: list[Server] = []
        auth = ("--requirepass", password, "--masterauth", password)
        try:
            master = Server(directory / "a", *auth, password=password)
            self.servers.append(master)
            replica = Server(
                directory / "b",
                *auth,
                "--replicaof",
                "127.0.0.1",
                str(master.port),
                password=password,
            )
            self.servers.append(replica)
            wait_for(lambda: _link_up(replica), "the replica to sync")
            conf = (
                f"sentinel monitor {self.NAME} 127.0.0.1 {master.port} 1\n"
                f"sentinel auth-pass {self.NAME} {password}\n"
                f"sentinel down-after-milliseconds {self.NAME} 1000\n"
                f"sentinel failover-timeout {self.NAME} 2000\n"
                f"requirepass {sentinel_password}\n"
            )
            self.sentinel = Server(
                directory / "sentinel", sentinel_conf=conf, password=sentinel_password
            )
            self.servers.append(self.sentinel)
            # A demoted master is told to follow the new one once it has reported its old
            # role for 4 publish periods, read by INFO: 400 ms with these rather than 8 s
            # (Redis 7's SENTINEL DEBUG).
            self.sentinel.command("SENTINEL", "DEBUG", "INFO-PERIOD", 100, "PUBLISH-PERIOD", 100)
            wait_for(self._replica_ready, "Sentinel to see a replica it could promote")
        except BaseException:
            self.stop()
            raise

    def _replica_ready(self) -> bool:
        replicas = self.sentinel.command("SENTINEL", "REPLICAS", self.NAME)
        return any(r[b"flags"] == b"slave" and r[b"master-link-status"] == b"ok" for r in replicas)

    @property
    def url(self) -> str:
        """SPENDGATE_REDIS_URL: the Sentinel, with the master's password."""
        return f"redis://:{self.password}@127.0.0.1:{self.sentinel.port}/0"

    @property
    def master(self) -> Server:
        """The master, as Sentinel names it now."""
        _, port = self.sentinel.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.NAME)
        return next(server for server in self.servers if server.port == int(port))

    @property
    def replica(self) -> Server:
        return next(s for s in self.servers[:2] if s is not self.master)

    def failover(self) -> tuple[Server, Server]:
        """Promote the replica; returns (old master, new master) once the old master
        follows the new one."""
        old, new = self.master, self.replica
        wait_for(lambda: _caught_up(new, old), "the replica to have every write")
        wait_for(self._replica_ready, "Sentinel to see a replica it could promote")
        self.sentinel.command("SENTINEL", "FAILOVER", self.NAME)
        wait_for(lambda: self.master is new, "Sentinel to name the new master")
        wait_for(lambda: new.client.info("replication")["role"] == "master", "the promotion")
        wait_for(lambda: _link_up(old), "the old master to follow the new one")
        return old, new

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _knows_replica(node: Server, replica_id: bytes, master_id: bytes) -> bool:
    """`node`'s CLUSTER NODES lists `replica_id` as a replica of `master_id`."""
    for line in node.command("CLUSTER", "NODES").splitlines():
        fields = line.split()
        if fields[0] == replica_id and fields[3] == master_id:
            return b"slave" in fields[2].split(b",")
    return False


def _caught_up(replica: Server, master: Server) -> bool:
    """The replica has processed all the master has written (as of now)."""
    offset = int(master.client.info("replication")["master_repl_offset"])
    return int(replica.client.info("replication")["master_repl_offset"]) >= offset


def _link_up(replica: Server) -> bool:
    info = replica.client.info("replication")
    return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")


class Deployment(Protocol):
    def stop(self) -> None: ...


D = TypeVar("D", bound=Deployment)


def running(start: Callable[[], D]) -> Iterator[D]:
    """A module fixture's body: the deployment `start` makes, stopped after the module's
    last test; the module is skipped where Redis is not installed."""
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    deployment = start()
    try:
        yield deployment
    finally:
        deployment.stop()
