"""Settings from the environment, loaded once, validated and frozen."""

from __future__ import annotations

from spendgate.config.errors import ConfigError
from spendgate.config.settings import Settings

__all__ = ["ConfigError", "Settings"]
