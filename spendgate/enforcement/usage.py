"""Token usage as a provider reports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, those billed at the cached-input price

    @classmethod
    def from_openai(cls, usage: Any) -> Usage | None:
        """An OpenAI `usage` object -> Usage; None when it is missing or malformed."""
        if not isinstance(usage, dict):
            return None
        prompt = _count(usage.get("prompt_tokens"))
        completion = _count(usage.get("completion_tokens", 0))
        if prompt is None or completion is None:
            return None
        details = usage.get("prompt_tokens_details")
        cached = _count(details.get("cached_tokens", 0)) if isinstance(details, dict) else 0
        return cls(prompt, completion, min(cached or 0, prompt))


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One forwarded request as the ledger records it."""

    request_id: str
    created_at_ms: int  # when it was admitted; a retried settle carries the same value
    key_id: str
    project_id: str
    model: str  # provider/model
    provider: str
    usage: Usage
    cost: int  # nano-USD
    status: int
    duration_ms: int
    billing: str  # "credits" or "byok"
    stream: bool

    def fields(self) -> list[str | int]:
        """Field, value pairs for the usage stream (see storage/usage_writer.py)."""
        return [
            "request_id", self.request_id,
            "created_at", self.created_at_ms,
            "key_id", self.key_id,
            "project_id", self.project_id,
            "model", self.model,
            "provider", self.provider,
            "prompt_tokens", self.usage.prompt_tokens,
            "completion_tokens", self.usage.completion_tokens,
            "cost", self.cost,
            "status", self.status,
            "duration_ms", self.duration_ms,
            "billing", self.billing,
            "stream", "1" if self.stream else "0",
        ]  # fmt: skip
