"""Postgres and Redis: the ledger, key records, counters and their scripts."""

from __future__ import annotations
