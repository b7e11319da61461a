"""spendgate: an inline authentication proxy with atomic spend limits for LLM providers."""

from __future__ import annotations

__version__ = "0.1.0"
