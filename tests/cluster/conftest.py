"""Fixtures of the Redis Cluster and Sentinel tests: each module starts its own deployment
on loopback (servers.py) once, and stops it after its last test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.servers import Cluster, SentinelDeployment, running


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A Redis Cluster of three masters, private to the module."""
    yield from running(lambda: Cluster(tmp_path_factory.mktemp("cluster")))


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelDeployment]:
    """A master, its replica and a Sentinel, private to the module."""
    yield from running(lambda: SentinelDeployment(tmp_path_factory.mktemp("sentinel")))
