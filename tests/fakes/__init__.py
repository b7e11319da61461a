"""Fakes of the outside services the gateway calls (only the LLM provider: Redis and
Postgres are real in tests)."""

from __future__ import annotations
