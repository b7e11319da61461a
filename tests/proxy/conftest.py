"""The gateway fixtures live in tests/gateway_fixtures.py (a plugin of tests/conftest.py);
their helpers are importable from here too."""

from __future__ import annotations

from tests.gateway_fixtures import (
    UPSTREAM_KEY,
    FakeGatewayFactory,
    Gateway,
    GatewayFactory,
    fake_catalog,
    ledger,
)

__all__ = [
    "UPSTREAM_KEY",
    "FakeGatewayFactory",
    "Gateway",
    "GatewayFactory",
    "fake_catalog",
    "ledger",
]
