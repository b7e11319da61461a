"""Relaying a streamed answer: events pass through as they arrive, never buffered whole.

The gateway asks the provider for usage (`stream_options.include_usage`); the extra
usage-only chunk that brings is withheld from a client that did not ask for it. The
settle runs in a `finally` with the best figure there is:

- the provider reported usage: that, whatever happened to the client;
- the client went away: keep reading the provider for a short grace, for its usage;
  otherwise the estimate of what was produced (never free);
- the provider broke off without usage: the estimate of what was delivered (nothing
  delivered, nothing charged); the client gets a final error event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress
from datetime import timedelta
from typing import TYPE_CHECKING

from aiohttp import web

from spendgate.enforcement.cost import cost_nano
from spendgate.enforcement.usage import Usage, UsageEvent
from spendgate.proxy.errors import CLIENT_CLOSED, REQUEST_ID_HEADER
from spendgate.proxy.sse import (
    EventSplitter,
    count_output,
    error_event,
    last_event_end,
    reported_usage,
    usage_candidate,
)
from spendgate.proxy.upstream import UpstreamCut, UpstreamReply
from spendgate.storage.errors import StorageUnavailable
from spendgate.storage.spend import RESERVATION_TTL

if TYPE_CHECKING:
    from spendgate.proxy.call import Call
    from spendgate.proxy.gateway import Gateway

EXTEND_EVERY = RESERVATION_TTL.total_seconds() / 3
COUNT_EVERY = 32 * 1024  # bytes of relayed events a tally holds before it counts them


class _Tally:
    """What a stream delivered (output values, and the usage the provider reported), and
    what of it to relay.

    A read at a time, not an event at a time (per-event Python work was most of a stream's
    cost): the events a read completes are searched in C for a usage object that is not
    null; only the events from such a candidate on (the last one or two of a stream) are
    looked at one by one, to parse the usage and to withhold the usage-only chunk from a
    client that did not ask for it. Output values are counted only when asked for, as a
    stream that reports usage never needs them: the bytes wait, up to COUNT_EVERY of them
    (then they are counted and let go)."""

    def __init__(self, keep_usage_only: bool) -> None:
        self.keep_usage_only = keep_usage_only
        self.usage: Usage | None = None
        self._rest = b""  # the start of an event not complete yet
        self._counted = 0
        self._uncounted: list[bytes] = []
        self._held = 0

    @property
    def content(self) -> int:
        """Output values delivered: about one a token, as providers stream."""
        self._count_held()
        return self._counted

    def _count_held(self) -> None:
        if self._uncounted:
            self._counted += count_output(b"".join(self._uncounted))
            self._uncounted.clear()
            self._held = 0

    def take(self, data: bytes) -> bytes:
        """What to relay now: the events completed so far, their bytes unchanged."""
        rest = self._rest
        buffer = rest + data if rest else data
        if buffer.endswith((b"\n\n", b"\n\r\n")):  # the usual read: whole events
            complete, self._rest = buffer, b""
        else:  # a blank line (at most 3 bytes) may straddle the old rest and `data`
            end = last_event_end(buffer, max(0, len(rest) - 2))
            if end < 0:
                self._rest = buffer
                return b""
            complete, self._rest = buffer[:end], buffer[end:]
        candidate = usage_candidate(complete)
        if self.usage is None:
            self._uncounted.append(complete)
            self._held += len(complete)
            if self._held > COUNT_EVERY:
                self._count_held()
        if candidate < 0:
            return complete
        start = last_event_end(complete, 0, candidate)
        splitter = EventSplitter()
        kept = [complete[:start] if start > 0 else b""]
        for event in splitter.feed(complete[start:] if start > 0 else complete):
            report = reported_usage(event)
            if report is not None:
                self.usage, usage_only = report
                if usage_only and not self.keep_usage_only:
                    continue
            kept.append(event)
        kept.append(splitter.remainder())  # stray blank lines after the last event
        if self.usage is not None:  # the output values will not be needed
            self._uncounted.clear()
        return b"".join(kept)

    def remainder(self) -> bytes:
        """The bytes of an event never completed (a stream that ended mid-event)."""
        return self._rest


async def relay_stream(
    gateway: Gateway, request: web.Request, call: Call, reply: UpstreamReply
) -> web.StreamResponse:
    assert reply.chunks is not None
    chunks = reply.chunks
    tally = _Tally(keep_usage_only=call.client_wants_usage)
    status = 200
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            REQUEST_ID_HEADER: call.request_id,
        },
    )
    extend_at = gateway.monotonic() + EXTEND_EVERY
    finished = False
    try:
        try:
            await response.prepare(request)
            async for data in chunks:
                out = tally.take(data)  # the events of one upstream read, in one write
                if out:
                    await response.write(out)
                if gateway.monotonic() >= extend_at:
                    extend_at = gateway.monotonic() + EXTEND_EVERY
                    await _extend(gateway, call)
            if rest := tally.remainder():
                await response.write(rest)
            await response.write_eof()
        except UpstreamCut:
            status = 502
            call.facts.outcome = "upstream_error"
            with suppress(ConnectionError):
                await response.write(
                    error_event(
                        "the provider's stream broke off", "api_error", "upstream_unavailable"
                    )
                )
                await response.write_eof()
        except ConnectionError:  # the client went away
            status = CLIENT_CLOSED
            await _drain(chunks, tally, gateway.settings.disconnect_grace)
        finished = True
        await gateway.settler.settle(_event(gateway, call, tally, status))
    finally:
        if finished:
            reply.release()
        else:  # cancelled (shutdown, or a server that cancels on disconnect)
            gateway.settler.finish(_finish_abandoned(gateway, call, chunks, tally, reply))
    return response


def _event(gateway: Gateway, call: Call, tally: _Tally, status: int) -> UsageEvent:
    """The usage event with the best figure there is (see the module docstring)."""
    if tally.usage is not None:
        usage = tally.usage
    else:
        produced = tally.content
        if status == CLIENT_CLOSED:
            produced = max(produced, 1)  # the client asked and got (part of) an answer
        if produced == 0:
            return gateway.finished(call, Usage(), 0, status)
        usage = call.estimated_usage(produced)
    return gateway.finished(call, usage, cost_nano(call.model.price, usage), status)


async def _finish_abandoned(
    gateway: Gateway, call: Call, chunks: AsyncIterator[bytes], tally: _Tally, reply: UpstreamReply
) -> None:
    try:
        await _drain(chunks, tally, gateway.settings.disconnect_grace)
        await gateway.settler.settle(_event(gateway, call, tally, CLIENT_CLOSED))
    finally:
        reply.release()


async def _drain(chunks: AsyncIterator[bytes], tally: _Tally, grace: float) -> None:
    """Keep reading a stream whose client left, for up to `grace` seconds, until the
    provider's usage arrives."""
    iterator = chunks.__aiter__()
    with suppress(TimeoutError, UpstreamCut):
        async with asyncio.timeout(grace):
            while tally.usage is None:
                try:
                    data = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                tally.take(data)
    close = getattr(iterator, "aclose", None)
    if close is not None:
        with suppress(Exception):
            await close()


async def _extend(gateway: Gateway, call: Call) -> None:
    until = gateway.clock.now() + timedelta(seconds=RESERVATION_TTL.total_seconds())
    with suppress(StorageUnavailable):
        await gateway.spend.extend(call.principal.key_id, call.request_id, until)
