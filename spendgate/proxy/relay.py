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
from spendgate.proxy.sse import EventSplitter, error_event, has_content, reported_usage
from spendgate.proxy.upstream import UpstreamCut, UpstreamReply
from spendgate.storage.errors import StorageUnavailable
from spendgate.storage.spend import RESERVATION_TTL

if TYPE_CHECKING:
    from spendgate.proxy.call import Call
    from spendgate.proxy.gateway import Gateway

EXTEND_EVERY = RESERVATION_TTL.total_seconds() / 3


class _Tally:
    """What a stream delivered: content events, and the usage the provider reported."""

    def __init__(self) -> None:
        self.splitter = EventSplitter()
        self.usage: Usage | None = None
        self.content = 0

    def take(self, data: bytes) -> list[tuple[bytes, bool]]:
        """Complete events in `data`, each with whether it is a usage-only chunk."""
        events = []
        for event in self.splitter.feed(data):
            if has_content(event):
                self.content += 1
            report = reported_usage(event)
            if report is None:
                events.append((event, False))
            else:
                self.usage, usage_only = report
                events.append((event, usage_only))
        return events


async def relay_stream(
    gateway: Gateway, request: web.Request, call: Call, reply: UpstreamReply
) -> web.StreamResponse:
    assert reply.chunks is not None
    chunks = reply.chunks
    tally = _Tally()
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
                # The events of one upstream read go out in one write (one send call).
                out = [
                    event
                    for event, usage_only in tally.take(data)
                    if not usage_only or call.client_wants_usage
                ]
                if out:
                    await response.write(b"".join(out))
                if gateway.monotonic() >= extend_at:
                    extend_at = gateway.monotonic() + EXTEND_EVERY
                    await _extend(gateway, call)
            if rest := tally.splitter.remainder():
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
