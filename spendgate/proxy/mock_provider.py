"""The built-in `mock` provider: deterministic answers in-process, no HTTP.

Token counts follow DESIGN.md exactly, so a test can predict every charge:

- prompt_tokens = ceil(UTF-8 bytes / 4), at least 1, over all message contents (a string,
  or the text parts of a list) for chat; over the `prompt` string(s) for completions and
  the `input` string(s) for embeddings. A token-id array counts one token per id.
- completion_tokens = min(max_completion_tokens or else max_tokens, 16) per choice, where
  a value that is not a positive integer counts as absent; 16 when both are absent.
  A chat request with `n` has n choices; a completion request with a list of prompts has
  one choice per prompt (times n), as OpenAI does. Usage counts every choice.

The answer echoes the last user message (or the prompt) one word per token, repeating its
words to fill, so a stream sends exactly completion_tokens content chunks per choice.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import struct
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from spendgate.proxy.sse import DONE

CHAT_MODELS = frozenset({"echo-1", "free-1"})
EMBEDDING_MODELS = frozenset({"embed-1"})
MAX_COMPLETION_TOKENS = 16
MAX_CHOICES = 128  # n
MAX_INPUTS = 2048  # prompts or embedding inputs in one call, and choices of a completion
EMBEDDING_SIZE = 8
FILLER_WORD = "echo"

JSON_HEADERS = {"Content-Type": "application/json"}
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


@dataclass(frozen=True)
class MockReply:
    """What the provider answered: `body` for JSON, `chunks` (SSE wire bytes) for a stream."""

    status: int
    headers: dict[str, str]
    body: bytes | None
    chunks: AsyncIterator[bytes] | None


class _BadRequest(Exception):
    """Input the mock refuses, as OpenAI would; `handle` turns it into a 4xx error body."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = 400


class _ModelNotFound(_BadRequest):
    def __init__(self, model: str, path: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist or does not support {path}",
            param="model",
            code="model_not_found",
        )
        self.status = 404


class MockProvider:
    """The `mock` provider. `latency_ms` delays every answer before its first byte."""

    def __init__(self, latency_ms: int = 0, *, clock: Callable[[], float] = time.time) -> None:
        if latency_ms < 0:
            raise ValueError("latency_ms must not be negative")
        self._latency = latency_ms / 1000
        self._clock = clock
        self._ids = itertools.count(1)

    async def handle(self, path: str, body: Mapping[str, Any]) -> MockReply:
        """Answer one call. `path` is relative to the provider's /v1 base; `body` is the
        parsed JSON the gateway would send upstream. Never raises on any JSON input."""
        if self._latency:
            await asyncio.sleep(self._latency)
        try:
            if not isinstance(body, Mapping):
                raise _BadRequest("the body must be a JSON object")
            if path == "/chat/completions":
                return self._chat(body)
            if path == "/completions":
                return self._completion(body)
            if path == "/embeddings":
                return self._embedding(body)
            return _error(404, f"Invalid URL (POST /v1{path})", None, "unknown_url")
        except _BadRequest as exc:
            return _error(exc.status, exc.message, exc.param, exc.code)

    # -- the three endpoints ------------------------------------------------------------

    def _chat(self, body: Mapping[str, Any]) -> MockReply:
        model = _model(body, CHAT_MODELS, "/v1/chat/completions")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("messages must be a non-empty list", "messages")
        size = 0
        last_user = ""
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise _BadRequest(f"messages[{i}] must be an object with a role", "messages")
            text = _message_text(message.get("content"), i)
            size += _utf8_len(text)
            if message["role"] == "user":
                last_user = text
        per_choice, finish = _completion_budget(body)
        n = _choices(body)
        words = _answer(last_user, per_choice)
        usage = _usage(_prompt_tokens(size), per_choice * n)
        reply_id = f"chatcmpl-mock-{next(self._ids)}"
        created = int(self._clock())
        if body.get("stream") is True:
            head = {"id": reply_id, "object": "chat.completion.chunk", "created": created}
            head |= {"model": model, "system_fingerprint": None}
            chunks = _chat_stream(head, [words] * n, finish, usage, _include_usage(body))
            return MockReply(200, dict(SSE_HEADERS), None, chunks)
        message = {"role": "assistant", "content": " ".join(words), "refusal": None}
        choice = {"message": message, "logprobs": None, "finish_reason": finish}
        reply = {
            "id": reply_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": i} | choice for i in range(n)],
            "usage": usage,
            "system_fingerprint": None,
        }
        return MockReply(200, dict(JSON_HEADERS), orjson.dumps(reply), None)

    def _completion(self, body: Mapping[str, Any]) -> MockReply:
        model = _model(body, CHAT_MODELS, "/v1/completions")
        prompts = _inputs(body.get("prompt"), "prompt")
        per_choice, finish = _completion_budget(body)
        n = _choices(body)
        if len(prompts) * n > MAX_INPUTS:
            raise _BadRequest(f"at most {MAX_INPUTS} choices (prompts times n)", "n")
        answers = [_answer(text, per_choice) for text, _ in prompts for _ in range(n)]
        size = sum(size for _, size in prompts)
        usage = _usage(_prompt_tokens(size), per_choice * len(answers))
        reply_id = f"cmpl-mock-{next(self._ids)}"
        head = {"id": reply_id, "object": "text_completion", "created": int(self._clock())}
        head |= {"model": model, "system_fingerprint": None}
        if body.get("stream") is True:
            chunks = _completion_stream(head, answers, finish, usage, _include_usage(body))
            return MockReply(200, dict(SSE_HEADERS), None, chunks)
        choices = [
            {"index": i, "text": " ".join(words), "logprobs": None, "finish_reason": finish}
            for i, words in enumerate(answers)
        ]
        reply = head | {"choices": choices, "usage": usage}
        return MockReply(200, dict(JSON_HEADERS), orjson.dumps(reply), None)

    def _embedding(self, body: Mapping[str, Any]) -> MockReply:
        model = _model(body, EMBEDDING_MODELS, "/v1/embeddings")
        inputs = _inputs(body.get("input"), "input")
        as_base64 = body.get("encoding_format") == "base64"
        data = [
            {"object": "embedding", "index": i, "embedding": _vector(text, as_base64)}
            for i, (text, _) in enumerate(inputs)
        ]
        tokens = _prompt_tokens(sum(size for _, size in inputs))
        reply = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return MockReply(200, dict(JSON_HEADERS), orjson.dumps(reply), None)


# -- reading the request ----------------------------------------------------------------


def _model(body: Mapping[str, Any], served: frozenset[str], path: str) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("you must provide a model parameter", "model", "missing_model")
    if model not in served:
        raise _ModelNotFound(model, path)
    return model


def _message_text(content: Any, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _BadRequest(f"messages[{index}].content parts must be objects with a type")
            if part["type"] == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise _BadRequest(f"messages[{index}].content text parts need a text string")
                texts.append(text)
        return "".join(texts)
    raise _BadRequest(f"messages[{index}].content must be a string or a list of parts")


def _inputs(value: Any, param: str) -> list[tuple[str, int]]:
    """A prompt or embedding input -> (text, UTF-8 size) per item. A token-id array is
    one item whose "size" is 4 bytes per id, so each id counts one token."""
    if isinstance(value, str):
        return [(value, _utf8_len(value))]
    if _is_token_ids(value):
        return [(" ".join(map(str, value)), 4 * len(value))]
    if isinstance(value, list) and 0 < len(value) <= MAX_INPUTS:
        if all(isinstance(item, str) for item in value):
            return [(item, _utf8_len(item)) for item in value]
        if all(_is_token_ids(item) for item in value):
            return [(" ".join(map(str, item)), 4 * len(item)) for item in value]
    raise _BadRequest(
        f"{param} must be a string, or a list of at most {MAX_INPUTS} strings or token arrays",
        param,
    )


def _is_token_ids(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(i, int) and not isinstance(i, bool) for i in value)
    )


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


def _completion_budget(body: Mapping[str, Any]) -> tuple[int, str]:
    """Tokens per choice and the finish reason: "length" when a client limit cut it."""
    limit = _positive_int(body.get("max_completion_tokens"))
    if limit is None:
        limit = _positive_int(body.get("max_tokens"))
    if limit is None or limit > MAX_COMPLETION_TOKENS:
        return MAX_COMPLETION_TOKENS, "stop"
    return limit, "length"


def _choices(body: Mapping[str, Any]) -> int:
    n = body.get("n")
    if n is None:
        return 1
    if _positive_int(n) is None or n > MAX_CHOICES:
        raise _BadRequest(f"n must be an integer from 1 to {MAX_CHOICES}", "n")
    return int(n)


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _utf8_len(text: str) -> int:
    # surrogatepass: a lone surrogate (never in valid JSON, possible in a Mapping) still counts
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _prompt_tokens(size: int) -> int:
    return max(1, -(-size // 4))


# -- building the answer ----------------------------------------------------------------


def _answer(text: str, tokens: int) -> list[str]:
    """`tokens` words echoing `text`, its words repeated to fill."""
    words = text.split() or [FILLER_WORD]
    return [words[i % len(words)] for i in range(tokens)]


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _vector(text: str, as_base64: bool) -> list[float] | str:
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    # k/128 - 1 is exact in float32, so the base64 form decodes to the same numbers
    vector = [byte / 128 - 1 for byte in digest]
    if as_base64:
        return base64.b64encode(struct.pack(f"<{EMBEDDING_SIZE}f", *vector)).decode("ascii")
    return vector


def _event(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _chat_stream(
    head: dict[str, Any],
    answers: Sequence[list[str]],
    finish: str,
    usage: dict[str, Any],
    include_usage: bool,
) -> AsyncIterator[bytes]:
    # With include_usage OpenAI sends "usage": null on every chunk but the last one.
    tail: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _event(head | {"choices": [choice]} | tail)

    for index in range(len(answers)):
        yield chunk(index, {"role": "assistant", "content": "", "refusal": None})
    for position in range(len(answers[0]) if answers else 0):
        for index, words in enumerate(answers):
            yield chunk(
                index, {"content": words[position] if position == 0 else " " + words[position]}
            )
    for index in range(len(answers)):
        yield chunk(index, {}, finish)
    if include_usage:
        yield _event(head | {"choices": [], "usage": usage})
    yield DONE


async def _completion_stream(
    head: dict[str, Any],
    answers: Sequence[list[str]],
    finish: str,
    usage: dict[str, Any],
    include_usage: bool,
) -> AsyncIterator[bytes]:
    tail: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(index: int, text: str, finish_reason: str | None = None) -> bytes:
        choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return _event(head | {"choices": [choice]} | tail)

    for position in range(len(answers[0]) if answers else 0):
        for index, words in enumerate(answers):
            yield chunk(index, words[position] if position == 0 else " " + words[position])
    for index in range(len(answers)):
        yield chunk(index, "", finish)
    if include_usage:
        yield _event(head | {"choices": [], "usage": usage})
    yield DONE


def _error(status: int, message: str, param: str | None, code: str) -> MockReply:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return MockReply(status, dict(JSON_HEADERS), orjson.dumps({"error": error}), None)
