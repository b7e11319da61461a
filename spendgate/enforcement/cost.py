"""What a request costs: the actual cost at settle, and the estimate reserved at admission.

Integer nano-USD only. A token kind costs ceil(tokens x price per Mtok / 1,000,000).

Estimates are upper bounds for text (DESIGN.md, "Limits"): a byte-level BPE token covers at
least one byte, so the UTF-8 bytes of a text bound its tokens.

- chat: 3 per request + 4 per message + the text bytes of each message: `content` as a string,
  or per part: a text part's `text`, 2,000 per image part (its base64 payload is not text);
  `name`, `tool_call_id` and other string fields as text; `tool_calls` and any other
  non-string field as the bytes of its JSON. A known `role` is covered by the 4 per message.
  Plus the bytes of the JSON of `tools`, `functions` and `response_format`.
- completions: per prompt, its text bytes (a token-id list: one token per id) + 2 for
  special tokens; plus the bytes of `suffix`.
- embeddings: per input, the same as a prompt; no output.
- Anything of another shape counts as the bytes of its JSON serialization, an upper bound.
  The functions never raise on any JSON value: the body is untrusted.
- Output: the client's cap (`max_completion_tokens`, else `max_tokens`) or the default,
  times the `n` choices (completions: times max(n, best_of), for each prompt).
- Priced at the highest tier; input tokens at the higher of the input and cached-input
  prices. Tokens are capped at 10**12 and costs at 2**63 - 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson

from spendgate.config.catalog import Price
from spendgate.enforcement.money import MAX_NANO
from spendgate.enforcement.usage import Usage
from spendgate.types import Nano

PER_MTOK = 1_000_000
MAX_TOKENS = 10**12
IMAGE_TOKENS = 2_000
PER_MESSAGE = 4
PER_REQUEST = 3
PER_TEXT = 2  # special tokens around a prompt or an embedding input (BOS/EOS, CLS/SEP)

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
_REQUEST_EXTRAS = ("tools", "functions", "response_format")


def _charge(tokens: int, nano_per_mtok: int) -> Nano:
    return min(-(-max(tokens, 0) * nano_per_mtok // PER_MTOK), MAX_NANO)


def cost_nano(price: Price, usage: Usage) -> Nano:
    """The actual cost of `usage`, at the tier its prompt tokens fall in."""
    prompt = max(usage.prompt_tokens, 0)
    cached = min(max(usage.cached_tokens, 0), prompt)
    tier = price.for_prompt_tokens(prompt)
    total = (
        _charge(prompt - cached, tier.input)
        + _charge(cached, tier.cached_input)
        + _charge(usage.completion_tokens, tier.output)
    )
    return min(total, MAX_NANO)


@dataclass(frozen=True, slots=True)
class Estimate:
    """An upper bound of a request's cost, reserved at admission."""

    input_tokens: int
    output_tokens: int  # over all choices
    input_cost: Nano
    output_cost: Nano
    output_price: int  # nano-USD per Mtok of output: the hard mode lowers the cap with it

    @property
    def total(self) -> Nano:
        return min(self.input_cost + self.output_cost, MAX_NANO)


def output_cap(body: Mapping[str, Any]) -> int | None:
    """The client's output cap: `max_completion_tokens`, else `max_tokens`, when positive."""
    if not isinstance(body, Mapping):
        return None
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if _positive_int(value):
            return value
    return None


def estimate_chat(body: Mapping[str, Any], price: Price, default_max_output: int) -> Estimate:
    if not isinstance(body, Mapping):
        return _estimate(PER_REQUEST + _json_size(body), default_max_output, price)
    tokens = PER_REQUEST + _messages(body.get("messages"))
    for key in _REQUEST_EXTRAS:
        value = body.get(key)
        if value is not None:
            tokens += _json_size(value)
    output = (output_cap(body) or default_max_output) * _count(body.get("n"))
    return _estimate(tokens, output, price)


def estimate_completion(body: Mapping[str, Any], price: Price, default_max_output: int) -> Estimate:
    if not isinstance(body, Mapping):
        return _estimate(PER_TEXT + _json_size(body), default_max_output, price)
    tokens, prompts = _texts(body.get("prompt"))
    suffix = body.get("suffix")
    if suffix is not None:
        tokens += _utf8(suffix) if isinstance(suffix, str) else _json_size(suffix)
    choices = max(_count(body.get("n")), _count(body.get("best_of")))
    output = (output_cap(body) or default_max_output) * choices * prompts
    return _estimate(tokens, output, price)


def estimate_embedding(body: Mapping[str, Any], price: Price) -> Estimate:
    if not isinstance(body, Mapping):
        return _estimate(PER_TEXT + _json_size(body), 0, price)
    tokens, _ = _texts(body.get("input"))
    return _estimate(tokens, 0, price)


def _estimate(input_tokens: int, output_tokens: int, price: Price) -> Estimate:
    tier = price.highest()
    input_tokens = min(input_tokens, MAX_TOKENS)
    output_tokens = min(output_tokens, MAX_TOKENS)
    return Estimate(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        input_cost=_charge(input_tokens, max(tier.input, tier.cached_input)),
        output_cost=_charge(output_tokens, tier.output),
        output_price=tier.output,
    )


def _positive_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _count(value: Any) -> int:
    return value if _positive_int(value) else 1


def _messages(messages: Any) -> int:
    if messages is None:
        return 0
    if not isinstance(messages, list):
        return _json_size(messages)
    tokens = 0
    for message in messages:
        tokens += PER_MESSAGE
        tokens += _message(message) if isinstance(message, Mapping) else _json_size(message)
    return tokens


def _message(message: Mapping[Any, Any]) -> int:
    tokens = 0
    for key, value in message.items():
        if key == "content":
            tokens += _content(value)
        elif key == "role" and isinstance(value, str) and value in _ROLES:
            continue
        elif isinstance(value, str):
            tokens += _utf8(value)
        elif value is not None:
            tokens += _json_size(value)
    return tokens


def _content(content: Any) -> int:
    if isinstance(content, str):
        return _utf8(content)
    if content is None:
        return 0
    if not isinstance(content, list):
        return _json_size(content)
    tokens = 0
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        text = part.get("text") if isinstance(part, Mapping) else None
        if isinstance(kind, str) and kind in _IMAGE_PARTS:
            tokens += IMAGE_TOKENS
        elif isinstance(kind, str) and kind in _TEXT_PARTS and isinstance(text, str):
            tokens += _utf8(text)
        else:
            tokens += _json_size(part)
    return tokens


def _texts(value: Any) -> tuple[int, int]:
    """(tokens, number of prompts) of a `prompt` or `input` value."""
    if isinstance(value, list) and value and not _token_ids(value):
        return sum(_text(item) for item in value), len(value)
    return _text(value), 1


def _text(value: Any) -> int:
    if isinstance(value, str):
        return PER_TEXT + _utf8(value)
    if isinstance(value, list) and _token_ids(value):
        return PER_TEXT + len(value)
    return PER_TEXT + _json_size(value)


def _token_ids(items: list[Any]) -> bool:
    return all(isinstance(i, int) and not isinstance(i, bool) for i in items)


def _utf8(text: str) -> int:
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates: only from Python callers, never from JSON
        return len(text.encode("utf-8", "surrogatepass"))


def _json_size(value: Any) -> int:
    """The bytes of `value`'s JSON serialization; a safe overestimate when orjson refuses it
    (integers beyond 64 bits, deep nesting, cycles, non-JSON objects)."""
    try:
        return len(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return _walk_size(value)


def _walk_size(value: Any) -> int:
    size = 0
    stack = [value]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            size += 2 + _utf8(item)
        elif item is None or isinstance(item, bool):
            size += 5
        elif isinstance(item, int):
            size += 2 + item.bit_length() // 3  # decimal digits <= bits x log10(2) + 1
        elif isinstance(item, Mapping | list | tuple):
            if id(item) in seen:
                continue
            seen.add(id(item))
            size += 2 + 2 * len(item)
            stack.extend((*item.keys(), *item.values()) if isinstance(item, Mapping) else item)
        else:
            size += _repr_size(item)
    return size


def _repr_size(item: object) -> int:
    try:
        return len(str(item).encode("utf-8", "surrogatepass"))
    except Exception:  # an arbitrary object's __str__; the estimate must not raise
        return 64
