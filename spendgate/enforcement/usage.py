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
