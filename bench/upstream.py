"""A fast fake OpenAI upstream for `make bench`: 127.0.0.1:9000 by default.

    POST /v1/chat/completions   a chat.completion (JSON), or with "stream": true an SSE
                                stream of chat.completion.chunk events, ending with a
                                usage-only chunk when stream_options.include_usage is true,
                                then `data: [DONE]`
    GET  /v1/models             one model

It must never be what limits a benchmark, so it is not an aiohttp app: a bare
asyncio.Protocol speaking just enough HTTP/1.1 (keep-alive, Content-Length or chunked
request bodies, pipelining) and answering with bytes computed once at start. The request
body is parsed only to learn `stream` and `stream_options.include_usage`. `bench/run.py`
pins it to its own core and measures it alone first (the "upstream (direct)" rows).

    python bench/upstream.py [--host 127.0.0.1] [--port 9000] [--chunks 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Callable
from typing import Any

MODEL = "gpt-4o-mini"
CREATED = 1_700_000_000
PROMPT_TOKENS = 12
WORDS = ["Hello", "!", " How", " can", " I", " help", " you", " today", "?", " Just", " ask"]

_loads: Callable[[bytes], Any] = json.loads
_Error: tuple[type[Exception], ...] = (ValueError,)
try:  # orjson is in spendgate's venv; the standard library does as well, only slower
    import orjson

    _loads = orjson.loads
    _Error = (orjson.JSONDecodeError,)
except ImportError:  # pragma: no cover
    pass


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _response(status: str, content_type: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\n"
        b"Content-Type: " + content_type + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"\r\n" + body
    )


def build_answers(chunks: int) -> dict[str, bytes]:
    """Every answer, as the exact bytes written to the socket."""
    words = [WORDS[i % len(WORDS)] for i in range(chunks)]
    completion_tokens = len(words)
    usage = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
    }
    chat = _dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(words), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
    )

    def chunk(delta: dict[str, Any], finish: str | None, with_usage: bool) -> bytes:
        event: dict[str, Any] = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if with_usage:
            event["usage"] = None
        return b"data: " + _dumps(event) + b"\n\n"

    def stream(include_usage: bool) -> bytes:
        events = [chunk({"role": "assistant", "content": ""}, None, include_usage)]
        events += [chunk({"content": w}, None, include_usage) for w in words]
        events.append(chunk({}, "stop", include_usage))
        if include_usage:
            last = {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": MODEL,
                "system_fingerprint": "fp_bench",
                "choices": [],
                "usage": usage,
            }
            events.append(b"data: " + _dumps(last) + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        # One HTTP chunk per event, as providers send them; all written at once.
        body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
        return (
            b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: text/event-stream; charset=utf-8\r\n"
            b"Cache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n"
            b"\r\n" + body
        )

    models = _dumps(
        {
            "object": "list",
            "data": [{"id": MODEL, "object": "model", "created": CREATED, "owned_by": "bench"}],
        }
    )
    return {
        "chat": _response("200 OK", b"application/json", chat),
        "stream": stream(False),
        "stream_usage": stream(True),
        "models": _response("200 OK", b"application/json", models),
        "not_found": _response(
            "404 Not Found",
            b"application/json",
            _dumps({"error": {"message": "not found", "type": "invalid_request_error"}}),
        ),
        "bad_json": _response(
            "400 Bad Request",
            b"application/json",
            _dumps({"error": {"message": "bad JSON", "type": "invalid_request_error"}}),
        ),
    }


class HttpProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive; one buffer, parsed as bytes arrive."""

    __slots__ = ("answers", "buffer", "transport")

    def __init__(self, answers: dict[str, bytes]) -> None:
        self.answers = answers
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        out: list[bytes] = []
        close = False
        while True:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                break
            head = buffer[:head_end]
            line_end = head.find(b"\r\n")
            request_line = head if line_end < 0 else head[:line_end]
            headers = b"" if line_end < 0 else head[line_end + 2 :].lower()
            start = head_end + 4
            length = 0
            chunked = False
            for header in headers.split(b"\r\n"):
                name, _, value = header.partition(b":")
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value:
                    chunked = True
                elif name == b"connection" and b"close" in value:
                    close = True
            if chunked:
                decoded = _dechunk(buffer, start)
                if decoded is None:
                    break
                body, end = decoded
            else:
                end = start + length
                if len(buffer) < end:
                    break
                body = buffer[start:end]
            buffer = buffer[end:]
            out.append(self.answer(request_line, body))
            if close:
                break
        self.buffer = buffer
        assert self.transport is not None
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        if close:
            self.transport.close()

    def answer(self, request_line: bytes, body: bytes) -> bytes:
        method, _, rest = request_line.partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0]
        if method == b"POST" and path == b"/v1/chat/completions":
            try:
                parsed = _loads(body)
            except _Error:
                return self.answers["bad_json"]
            if not isinstance(parsed, dict):
                return self.answers["bad_json"]
            if parsed.get("stream") is True:
                options = parsed.get("stream_options")
                usage = isinstance(options, dict) and options.get("include_usage") is True
                return self.answers["stream_usage" if usage else "stream"]
            return self.answers["chat"]
        if method == b"GET" and path == b"/v1/models":
            return self.answers["models"]
        return self.answers["not_found"]


def _dechunk(buffer: bytes, start: int) -> tuple[bytes, int] | None:
    """A chunked body starting at `start`: (body, end), or None until it is complete."""
    parts: list[bytes] = []
    at = start
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(buffer[at:line_end].split(b";")[0], 16)
        at = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n", at)  # no trailers expected: just the CRLF
            if trailer_end < 0:
                return None
            return b"".join(parts), trailer_end + 2
        if len(buffer) < at + size + 2:
            return None
        parts.append(buffer[at : at + size])
        at += size + 2


async def serve(host: str, port: int, chunks: int) -> None:
    answers = build_answers(chunks)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: HttpProtocol(answers), host, port, reuse_address=True, backlog=1024
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"bench upstream: listening on http://{host}:{port}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--chunks", type=int, default=8, help="content chunks per stream")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.chunks))


if __name__ == "__main__":
    main()
