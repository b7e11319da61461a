"""A fake OpenAI-compatible provider: a small aiohttp app that speaks OpenAI's JSON and SSE.

Serve it with pytest-aiohttp and point a provider's base URL at `server.make_url("/v1")`:

    fake = FakeUpstream()
    server = await aiohttp_server(fake.app())

Tests steer it through plain attributes and assert on `fake.requests` (what the gateway
sent: the Authorization header, a clamped max_tokens, an added stream_options...).

Modes (`fake.mode`), for every POST endpoint:

ok               answers normally
error_500        500 with an OpenAI error envelope, type "server_error"
error_400        400 with an OpenAI error envelope, type "invalid_request_error"
malformed_json   200 whose JSON body is cut short; a stream ends with an event that is not
                 valid JSON in place of the usage chunk (sent whether or not usage was asked)
cut_stream       a stream sends the role chunk and `cut_after` content chunks, then the
                 connection drops (no finish chunk, no usage, no [DONE]); a JSON answer
                 drops after part of its body. The client sees aiohttp.ClientPayloadError.
no_usage         no usage anywhere: a stream ignores stream_options.include_usage (and sends
                 no "usage": null either), a JSON answer has no "usage" field
slow_first_byte  sleeps `delay` seconds before sending the status and headers
slow_stream      sleeps `delay` seconds before each stream event after the first
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web
from multidict import CIMultiDict

Mode = Literal[
    "ok", "error_500", "error_400", "malformed_json", "cut_stream", "no_usage",
    "slow_first_byte", "slow_stream",
]  # fmt: skip

EMBEDDING = [0.5, -0.25, 0.125, 0.0, 1.0, -1.0, 0.75, -0.5]  # exact in float32


@dataclass
class Received:
    """One request as the fake upstream saw it."""

    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes
    json: Any  # the parsed body; None for a GET or a body that is not JSON


@dataclass
class FakeUpstream:
    mode: Mode = "ok"
    prompt_tokens: int = 10
    completion_tokens: int = 5  # also the number of content chunks in a stream
    cached_tokens: int = 0
    delay: float = 0.5  # seconds, for the slow_* modes
    cut_after: int = 2  # content chunks sent before cut_stream drops the connection
    models: list[str] = field(default_factory=lambda: ["gpt-4o-mini", "gpt-4o"])
    requests: list[Received] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        return app

    # -- handlers -------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat.completion")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "text_completion")

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._receive(request)
        refusal = await self._refusal(request)
        if refusal is not None:
            return refusal
        inputs = body.get("input") if isinstance(body, dict) else None
        count = len(inputs) if isinstance(inputs, list) else 1
        as_base64 = isinstance(body, dict) and body.get("encoding_format") == "base64"
        vector: list[float] | str = EMBEDDING
        if as_base64:
            vector = base64.b64encode(struct.pack("<8f", *EMBEDDING)).decode()
        reply: dict[str, Any] = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": vector} for i in range(count)
            ],
            "model": _model(body),
        }
        if self.mode != "no_usage":
            reply["usage"] = {
                "prompt_tokens": self.prompt_tokens,
                "total_tokens": self.prompt_tokens,
            }
        return await self._json(request, reply)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self._receive(request)
        refusal = await self._refusal(request)
        if refusal is not None:
            return refusal
        data = [
            {"id": model, "object": "model", "created": 1700000000, "owned_by": "fake"}
            for model in self.models
        ]
        return await self._json(request, {"object": "list", "data": data})

    async def _generate(self, request: web.Request, kind: str) -> web.StreamResponse:
        body = await self._receive(request)
        refusal = await self._refusal(request)
        if refusal is not None:
            return refusal
        if isinstance(body, dict) and body.get("stream") is True:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            return await self._stream(request, kind, _model(body), include_usage)
        words = [f"w{i}" for i in range(self.completion_tokens)]
        head = {"id": "fake-1", "object": kind, "created": int(time.time()), "model": _model(body)}
        if kind == "chat.completion":
            message = {"role": "assistant", "content": " ".join(words), "refusal": None}
            choice: dict[str, Any] = {"index": 0, "message": message}
        else:
            choice = {"index": 0, "text": " ".join(words)}
        choice |= {"logprobs": None, "finish_reason": "stop"}
        reply = head | {"choices": [choice]}
        if self.mode != "no_usage":
            reply["usage"] = self._usage()
        return await self._json(request, reply)

    # -- pieces ---------------------------------------------------------------------------

    async def _receive(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            parsed = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = None
        self.requests.append(
            Received(request.method, request.path, CIMultiDict(request.headers), raw, parsed)
        )
        if self.mode == "slow_first_byte":
            await asyncio.sleep(self.delay)
        return parsed

    async def _refusal(self, request: web.Request) -> web.StreamResponse | None:
        if self.mode == "error_500":
            return _error(500, "The server had an error processing your request.", "server_error")
        if self.mode == "error_400":
            return _error(400, "Invalid value for 'messages'.", "invalid_request_error")
        return None

    def _usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }

    async def _json(self, request: web.Request, reply: dict[str, Any]) -> web.StreamResponse:
        body = orjson.dumps(reply)
        if self.mode == "malformed_json":
            body = body[: len(body) // 2]
        if self.mode == "cut_stream":
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            _drop(request)
            return response
        return web.Response(body=body, content_type="application/json")

    async def _stream(
        self, request: web.Request, kind: str, model: str, include_usage: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        reports_usage = include_usage and self.mode != "no_usage"
        head: dict[str, Any] = {"id": "fake-1", "object": f"{kind}.chunk", "created": 1}
        if kind == "text_completion":
            head["object"] = kind  # OpenAI's completion chunks keep the plain object name
        head |= {"model": model, "system_fingerprint": None}
        tail: dict[str, Any] = {"usage": None} if reports_usage else {}

        def chunk(delta: dict[str, Any] | str, finish_reason: str | None = None) -> bytes:
            if isinstance(delta, str):
                choice: dict[str, Any] = {"index": 0, "text": delta}
            else:
                choice = {"index": 0, "delta": delta}
            choice |= {"logprobs": None, "finish_reason": finish_reason}
            return b"data: " + orjson.dumps(head | {"choices": [choice]} | tail) + b"\n\n"

        def content(i: int) -> bytes:
            text = f"w{i}" if i == 0 else f" w{i}"
            return chunk(text if kind == "text_completion" else {"content": text})

        events = []
        if kind == "chat.completion":
            events.append(chunk({"role": "assistant", "content": "", "refusal": None}))
        events += [content(i) for i in range(self.completion_tokens)]
        if self.mode == "cut_stream":
            events = events[: self.cut_after + (kind == "chat.completion")]
        else:
            events.append(chunk("" if kind == "text_completion" else {}, "stop"))
            if self.mode == "malformed_json":
                events.append(b'data: {"choices": [], "usage": {"prompt_tokens": \n\n')
            elif reports_usage:
                usage = head | {"choices": [], "usage": self._usage()}
                events.append(b"data: " + orjson.dumps(usage) + b"\n\n")
            events.append(b"data: [DONE]\n\n")
        for i, event in enumerate(events):
            if self.mode == "slow_stream" and i > 0:
                await asyncio.sleep(self.delay)
            await response.write(event)
        if self.mode == "cut_stream":
            _drop(request)
        else:
            await response.write_eof()
        return response


def _model(body: Any) -> str:
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else "unknown"


def _error(status: int, message: str, type_: str) -> web.Response:
    envelope = {"error": {"message": message, "type": type_, "param": None, "code": None}}
    return web.Response(status=status, body=orjson.dumps(envelope), content_type="application/json")


def _drop(request: web.Request) -> None:
    """Close the connection mid-body: what has been written is flushed, then EOF."""
    assert request.transport is not None
    request.transport.close()
