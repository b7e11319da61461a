"""The pooled HTTP/1.1 client (spendgate.proxy.http_client) against real servers on
127.0.0.1: a raw asyncio server where the answer must be byte-exact or misbehave, aiohttp
where an ordinary server will do. The client's timeouts are a fraction of a second."""

from __future__ import annotations

import asyncio
import functools
import gzip
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import uvloop
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from spendgate.config.catalog import Provider
from spendgate.proxy import http_client
from spendgate.proxy.errors import UpstreamUnavailable
from spendgate.proxy.http_client import HttpClient, Origin
from spendgate.proxy.http_connection import MAX_BUFFERED, HttpClientError, Response
from spendgate.proxy.upstream import Upstreams
from tests.proxy.http_servers import (
    LAST_CHUNK,
    STREAM_HEAD,
    Handler,
    Peer,
    RawServer,
    answer,
    answering,
    chunk,
    free_port,
    json_answer,
)

CONNECT_TIMEOUT = 0.5
READ_TIMEOUT = 0.2
TOTAL_TIMEOUT = 2.0
GUARD = 5.0  # seconds a test waits for a timeout of the client's before it fails
ONE_READ = 256 * 1024  # the most one socket read hands the protocol (asyncio and uvloop)
JSON = b'{"id":"chatcmpl-1","object":"chat.completion"}'
REQUEST_HEADERS = b"Content-Type: application/json\r\n"


async def eventually(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.002)


async def post(http: HttpClient, server: RawServer, body: bytes = b"{}") -> Response:
    return await http.post(server.origin(), "/chat", REQUEST_HEADERS, body)


async def read_all(response: Response) -> bytes:
    return b"".join([data async for data in response.chunks()])


async def times_out(awaitable: Awaitable[object]) -> None:
    """Await `awaitable`, which must raise the client's TimeoutError. Had it not after GUARD
    seconds, the guard's own TimeoutError, raised outside pytest.raises, fails the test."""

    async def awaiting() -> None:
        with pytest.raises(TimeoutError):
            await awaitable

    async with asyncio.timeout(GUARD):
        await awaiting()


def make_client(
    read_timeout: float = READ_TIMEOUT, total_timeout: float = TOTAL_TIMEOUT
) -> HttpClient:
    return HttpClient(
        connect_timeout=CONNECT_TIMEOUT, read_timeout=read_timeout, total_timeout=total_timeout
    )


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = make_client()
    yield client
    await client.close()


@pytest.fixture
async def patient_http() -> AsyncIterator[HttpClient]:
    """A client whose only short timeout is the read timeout."""
    client = make_client(total_timeout=60)
    yield client
    await client.close()


ServerFactory = Callable[[Handler], Awaitable[RawServer]]


@pytest.fixture
async def serve() -> AsyncIterator[ServerFactory]:
    servers: list[RawServer] = []

    async def start(handler: Handler) -> RawServer:
        server = RawServer(handler)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


# --- answers with a length, chunked, or ended by the close ------------------------------


async def test_a_json_answer_is_read_and_the_connection_reused(
    http: HttpClient, serve: ServerFactory
) -> None:
    server = await serve(answering(json_answer(JSON, "X-Request-Id: abc")))
    origin = server.origin("/v1/")

    for body in (b'{"n":1}', b'{"n":2}'):
        response = await http.post(origin, "/chat/completions", REQUEST_HEADERS, body)
        assert response.status == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-request-id"] == "abc"
        assert await response.read() == JSON
        response.release()

    assert len(server.peers) == 1
    first, second = server.requests
    assert first.line == second.line == "POST /v1/chat/completions HTTP/1.1"
    assert first.headers == [
        ("Host", server.url.removeprefix("http://")),
        ("Content-Type", "application/json"),
        ("Content-Length", "7"),
    ]
    assert (first.body, second.body) == (b'{"n":1}', b'{"n":2}')


async def test_a_chunked_answer_streams_each_chunk_as_it_arrives(
    http: HttpClient, aiohttp_server: AiohttpServer
) -> None:
    got_first = asyncio.Event()
    connections: list[object] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        if request.transport not in connections:
            connections.append(request.transport)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: one\n\n")
        await got_first.wait()
        await response.write(b"data: two\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat", stream)
    server = await aiohttp_server(app)
    origin = Origin.parse(str(server.make_url("/v1")))

    for _ in range(2):
        got_first.clear()
        response = await http.post(origin, "/chat", REQUEST_HEADERS, b"{}")
        assert response.headers["transfer-encoding"] == "chunked"
        received: list[bytes] = []
        async with asyncio.timeout(GUARD):  # a client that waits for the end never gets it
            async for data in response.chunks():
                received.append(data)
                got_first.set()  # the server sends "two" only now
        response.release()
        assert received == [b"data: one\n\n", b"data: two\n\n"]

    assert len(connections) == 1


async def test_a_body_ended_by_the_close_is_read_whole_and_not_reused(
    http: HttpClient, serve: ServerFactory
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.send(answer(b"first half, ", "Content-Type: text/plain"))
        await peer.writer.drain()
        await asyncio.sleep(0.01)
        peer.send(b"second half")

    server = await serve(handler)

    for _ in range(2):
        response = await post(http, server)
        assert await response.read() == b"first half, second half"
        response.release()

    assert len(server.peers) == 2


# --- compressed answers -------------------------------------------------------------------

TEXT = b" ".join(b"%d" % (i * i) for i in range(2000))


@pytest.mark.parametrize(
    ("coding", "compressed"),
    [
        ("gzip", gzip.compress(TEXT)),
        ("x-gzip", gzip.compress(TEXT)),
        ("deflate", zlib.compress(TEXT)),
    ],
    ids=["gzip", "x-gzip", "deflate"],
)
@pytest.mark.parametrize("reader", ["read", "chunks"])
async def test_a_compressed_answer_is_decoded(
    http: HttpClient, serve: ServerFactory, coding: str, compressed: bytes, reader: str
) -> None:
    pieces = [compressed[i : i + 50] for i in range(0, len(compressed), 50)]
    head = answer(b"", f"Content-Encoding: {coding}", "Transfer-Encoding: chunked")
    server = await serve(answering(head + b"".join(map(chunk, pieces)) + LAST_CHUNK))

    response = await post(http, server)
    body = await response.read() if reader == "read" else await read_all(response)
    response.release()

    assert body == TEXT


async def test_an_unsupported_encoding_fails_and_is_not_reused(
    http: HttpClient, serve: ServerFactory
) -> None:
    brotli = answer(b"\x0b\x02\x80hi\x03", "Content-Encoding: br", "Content-Length: 6")
    server = await serve(answering(brotli))

    for _ in range(2):
        with pytest.raises(HttpClientError, match="br"):
            await post(http, server)

    assert len(server.peers) == 2


async def test_a_corrupt_compressed_answer_fails(http: HttpClient, serve: ServerFactory) -> None:
    body = b"not gzip at all"
    server = await serve(
        answering(answer(body, "Content-Encoding: gzip", f"Content-Length: {len(body)}"))
    )

    response = await post(http, server)
    with pytest.raises(HttpClientError, match="corrupt"):
        await response.read()
    response.release()


@pytest.mark.parametrize("reader", ["read", "chunks"])
async def test_a_compressed_answer_cut_short_fails(
    http: HttpClient, serve: ServerFactory, reader: str
) -> None:
    body = gzip.compress(TEXT)[:-20]  # its Content-Length says what was sent: only gzip knows
    server = await serve(
        answering(answer(body, "Content-Encoding: gzip", f"Content-Length: {len(body)}"))
    )

    response = await post(http, server)
    with pytest.raises(HttpClientError, match="cut short"):
        await response.read() if reader == "read" else await read_all(response)
    response.release()


# --- the pool -----------------------------------------------------------------------------


async def test_a_pooled_connection_the_server_closed_is_replaced(
    http: HttpClient, serve: ServerFactory
) -> None:
    async def handler(peer: Peer) -> None:  # answers once, keep-alive, then closes anyway
        await peer.request()
        peer.send(json_answer(JSON))

    server = await serve(handler)
    response = await post(http, server)
    await response.read()
    connection = response._connection
    response.release()
    await eventually(lambda: connection.lost)  # the client has seen the close

    response = await post(http, server)
    assert await response.read() == JSON
    response.release()
    assert len(server.peers) == 2


async def test_a_connection_idle_longer_than_keepalive_is_closed_not_reused(
    http: HttpClient, serve: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_client, "KEEPALIVE", 0.05)
    server = await serve(answering(json_answer(JSON)))

    response = await post(http, server)
    await response.read()
    response.release()
    await asyncio.sleep(0.1)
    response = await post(http, server)
    assert await response.read() == JSON
    response.release()

    assert len(server.peers) == 2
    await asyncio.wait_for(server.peers[0].closed_by_client.wait(), 1)


@pytest.mark.parametrize(
    "data",
    [
        json_answer(JSON, "Connection: close"),
        answer(JSON, f"Content-Length: {len(JSON)}", version="1.0"),
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_an_answer_that_closes_the_connection_is_not_pooled(
    http: HttpClient, serve: ServerFactory, data: bytes
) -> None:
    server = await serve(answering(data))  # the server itself leaves the connection open

    for _ in range(2):
        response = await post(http, server)
        assert await response.read() == JSON
        response.release()

    assert len(server.peers) == 2
    await asyncio.wait_for(server.peers[0].closed_by_client.wait(), 1)


async def test_an_answer_released_before_its_end_closes_its_connection(
    http: HttpClient, serve: ServerFactory
) -> None:
    async def handler(peer: Peer) -> None:  # sends half the body, then waits
        while await peer.request() is not None:
            peer.send(answer(b"01234", "Content-Length: 10"))

    server = await serve(handler)
    response = await post(http, server)
    chunks = response.chunks()
    received = await anext(chunks)
    await chunks.aclose()
    response.release()
    response = await post(http, server)
    response.release()

    assert received == b"01234"
    assert len(server.peers) == 2
    await asyncio.wait_for(server.peers[0].closed_by_client.wait(), 1)


async def test_a_post_cancelled_before_the_answer_closes_its_connection(
    serve: ServerFactory,
) -> None:
    async def handler(peer: Peer) -> None:  # the first connection never answers in time
        first = len(server.peers) == 1
        while await peer.request() is not None:
            if first:
                await peer.until_closed_by_client()
            else:
                peer.send(json_answer(JSON))

    server = await serve(handler)
    http = make_client(read_timeout=5, total_timeout=5)  # no timeout closes it meanwhile
    try:
        waiting = asyncio.create_task(post(http, server))
        await eventually(lambda: len(server.requests) == 1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.wait_for(server.peers[0].closed_by_client.wait(), 1)

        response = await post(http, server)
        assert await response.read() == JSON
        response.release()
    finally:
        await http.close()
    assert len(server.peers) == 2


# --- failures -----------------------------------------------------------------------------


async def test_a_refused_connection_fails(http: HttpClient) -> None:
    origin = Origin.parse(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(HttpClientError, match="cannot connect"):
        await http.post(origin, "/chat", REQUEST_HEADERS, b"{}")


async def test_a_server_that_never_answers_times_out(
    patient_http: HttpClient, serve: ServerFactory
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.until_closed_by_client()

    server = await serve(handler)
    await times_out(post(patient_http, server))
    await asyncio.wait_for(server.peers[0].closed_by_client.wait(), 1)


@pytest.mark.parametrize("reader", ["read", "chunks"])
async def test_an_answer_that_stalls_mid_body_times_out(
    patient_http: HttpClient, serve: ServerFactory, reader: str
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.send(STREAM_HEAD + chunk(b"data: one\n\n"))
        await peer.until_closed_by_client()

    async def consume(response: Response) -> None:
        if reader == "read":
            await response.read()
        else:
            async for data in response.chunks():
                received.append(data)

    server = await serve(handler)
    received: list[bytes] = []
    response = await post(patient_http, server)
    try:
        await times_out(consume(response))
    finally:
        response.release()

    assert received == ([] if reader == "read" else [b"data: one\n\n"])
    await asyncio.wait_for(server.peers[0].closed_by_client.wait(), 1)


async def test_a_stream_that_trickles_forever_ends_at_the_total_timeout(
    serve: ServerFactory,
) -> None:
    async def handler(peer: Peer) -> None:  # a byte every 10 ms: no read timeout ever
        await peer.request()
        peer.send(STREAM_HEAD)
        while True:  # until the client closes the connection
            peer.send(chunk(b"."))
            await peer.writer.drain()
            await asyncio.sleep(0.01)

    async def consume(response: Response) -> None:
        async for data in response.chunks():
            received.append(data)

    server = await serve(handler)
    received: list[bytes] = []
    http = make_client(read_timeout=0.3, total_timeout=0.6)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        response = await post(http, server)
        try:
            await times_out(consume(response))
        finally:
            response.release()
    finally:
        await http.close()

    assert loop.time() - started >= 0.6  # not a read timeout: that would come after 0.3 s
    assert set(b"".join(received)) == {ord(".")}


async def test_a_connection_closed_before_the_answer_fails(
    http: HttpClient, serve: ServerFactory
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()

    server = await serve(handler)
    with pytest.raises(HttpClientError, match="lost"):
        await post(http, server)


async def test_a_body_cut_short_of_its_length_fails(http: HttpClient, serve: ServerFactory) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.send(answer(b"0123456789", "Content-Length: 100"))

    server = await serve(handler)
    response = await post(http, server)
    with pytest.raises(HttpClientError, match="lost"):
        await response.read()
    response.release()


async def test_a_stream_cut_off_yields_what_arrived_then_fails(
    http: HttpClient, serve: ServerFactory
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.send(STREAM_HEAD + chunk(b"data: one\n\n") + b"20\r\ndata: t")

    server = await serve(handler)
    response = await post(http, server)
    received = b""
    with pytest.raises(HttpClientError, match="lost"):
        async for data in response.chunks():
            received += data
    response.release()

    assert received.startswith(b"data: one\n\n")
    assert b"data: one\n\ndata: t".startswith(received)


async def test_a_body_ended_by_a_reset_rather_than_a_close_fails(
    http: HttpClient, serve: ServerFactory
) -> None:
    # With neither a length nor chunks, only an orderly close says the body is complete.
    got_first = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.send(answer(b"the first part", "Content-Type: text/plain"))
        await got_first.wait()
        peer.reset()

    server = await serve(handler)
    response = await post(http, server)
    received = []
    with pytest.raises(HttpClientError):
        async for data in response.chunks():
            received.append(data)
            got_first.set()
    response.release()

    assert received == [b"the first part"]


@pytest.mark.parametrize(
    "data",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        STREAM_HEAD + b"zz\r\nnot a chunk size\r\n",
    ],
    ids=["not-http", "bad-length", "bad-chunk-size"],
)
async def test_a_malformed_answer_fails(
    http: HttpClient, serve: ServerFactory, data: bytes
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.send(data)
        await peer.until_closed_by_client()

    server = await serve(handler)
    with pytest.raises(HttpClientError, match="malformed"):
        response = await post(http, server)
        try:
            await response.read()
        finally:
            response.release()
    await asyncio.wait_for(server.peers[0].closed_by_client.wait(), 1)


async def test_an_interim_answer_is_skipped_for_the_final_one(
    http: HttpClient, serve: ServerFactory
) -> None:
    # A client must accept 1xx answers before the final one, asked for or not (RFC 9110 15.2).
    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        await peer.writer.drain()
        await asyncio.sleep(0.02)
        peer.send(json_answer(JSON))
        await peer.until_closed_by_client()

    server = await serve(handler)
    response = await post(http, server)
    try:
        assert response.status == 200
        assert await response.read() == JSON
    finally:
        response.release()


# --- backpressure -------------------------------------------------------------------------


@functools.cache
def big_body() -> bytes:
    """8 MB, each 4 bytes telling their place."""
    return struct.pack(">2000000I", *range(2_000_000))


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_a_stream_not_read_pauses_the_socket_and_loses_nothing(
    serve: ServerFactory, framing: str
) -> None:
    big = big_body()

    async def handler(peer: Peer) -> None:
        await peer.request()
        if framing == "length":
            peer.send(answer(big, f"Content-Length: {len(big)}"))
        else:
            step = 64 * 1024
            pieces = (chunk(big[i : i + step]) for i in range(0, len(big), step))
            peer.send(STREAM_HEAD + b"".join(pieces) + LAST_CHUNK)
        await peer.until_closed_by_client()

    server = await serve(handler)
    http = make_client(total_timeout=10)
    try:
        response = await post(http, server)
        await eventually(lambda: response._buffered > MAX_BUFFERED)
        await asyncio.sleep(0.3)  # time for the server to write all it can
        buffered = response._buffered
        body = await read_all(response)
        response.release()
    finally:
        await http.close()

    assert buffered <= MAX_BUFFERED + ONE_READ
    assert body == big


async def test_a_large_answer_is_read_whole(http: HttpClient, serve: ServerFactory) -> None:
    # read() wants the whole body: the pause that protects streams must not stall it.
    body = b'{"data":"' + big_body().hex().encode()[: 4 * MAX_BUFFERED] + b'"}'
    server = await serve(answering(json_answer(body)))

    response = await post(http, server)
    try:
        assert await response.read() == body
    finally:
        response.release()


# --- through Upstreams --------------------------------------------------------------------


@pytest.fixture
async def upstream_server(serve: ServerFactory) -> RawServer:
    async def handler(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            accept = dict(request.headers).get("Accept")
            if accept == "text/event-stream":
                peer.send(STREAM_HEAD + chunk(b"data: [DONE]\n\n") + LAST_CHUNK)
            else:
                peer.send(json_answer(JSON))

    return await serve(handler)


def provider(server: RawServer) -> Provider:
    return Provider("up", server.url + "/v1", "sk-unused", True, ("m",))


async def test_upstreams_sends_exactly_the_expected_headers(
    http: HttpClient, upstream_server: RawServer
) -> None:
    upstreams = Upstreams(http, None)
    body = b'{"model":"m","messages":[]}'

    reply = await upstreams.send(
        provider(upstream_server), "/chat/completions", body, {}, "sk-k", False
    )
    assert (reply.status, reply.content_type, reply.body) == (200, "application/json", JSON)
    reply = await upstreams.send(
        provider(upstream_server), "/chat/completions", body, {}, "sk-k", True
    )
    assert reply.streaming and reply.chunks is not None
    assert b"".join([data async for data in reply.chunks]) == b"data: [DONE]\n\n"
    reply = await upstreams.send(provider(upstream_server), "/embeddings", body, {}, None, False)
    assert reply.body == JSON

    assert len(upstream_server.peers) == 1  # the streamed answer's connection went back too
    json_request, sse_request, keyless_request = upstream_server.requests
    common = [
        ("Host", upstream_server.url.removeprefix("http://")),
        ("Content-Type", "application/json"),
        ("Accept-Encoding", "identity"),
        ("Content-Length", str(len(body))),
    ]
    authorization = ("Authorization", "Bearer sk-k")
    assert json_request.line == "POST /v1/chat/completions HTTP/1.1"
    assert sorted(json_request.headers) == sorted(
        [*common, ("Accept", "application/json"), authorization]
    )
    assert sorted(sse_request.headers) == sorted(
        [*common, ("Accept", "text/event-stream"), authorization]
    )
    assert keyless_request.line == "POST /v1/embeddings HTTP/1.1"
    assert sorted(keyless_request.headers) == sorted([*common, ("Accept", "application/json")])
    assert json_request.body == sse_request.body == body


@pytest.mark.parametrize("api_key", ["sk-a\r\nX-Injected: 1", "sk-a\nX-Injected: 1", "sk-\0"])
async def test_upstreams_refuses_a_key_that_would_add_headers(
    http: HttpClient, upstream_server: RawServer, api_key: str
) -> None:
    upstreams = Upstreams(http, None)
    target = provider(upstream_server)

    await upstreams.send(target, "/chat/completions", b"{}", {}, "sk-good", False)
    with pytest.raises(UpstreamUnavailable):
        await upstreams.send(target, "/chat/completions", b"{}", {}, api_key, False)
    await upstreams.send(target, "/chat/completions", b"{}", {}, "sk-good", False)

    # One connection, requests in order: had the bad one gone out, it would sit in between.
    assert len(upstream_server.peers) == 1
    assert [dict(r.headers)["Authorization"] for r in upstream_server.requests] == [
        "Bearer sk-good",
        "Bearer sk-good",
    ]


# --- on uvloop ------------------------------------------------------------------------------


def test_json_and_chunked_answers_on_uvloop() -> None:
    # `spendgate serve` runs on uvloop, whose transports are not asyncio.Transport subclasses.
    async def exchange() -> None:
        got_first = asyncio.Event()

        async def handler(peer: Peer) -> None:
            while (request := await peer.request()) is not None:
                if request.path.endswith("/json"):
                    peer.send(json_answer(JSON))
                    continue
                peer.send(STREAM_HEAD + chunk(b"data: one\n\n"))
                await got_first.wait()
                peer.send(chunk(b"data: two\n\n") + LAST_CHUNK)

        server = RawServer(handler)
        await server.start()
        http = make_client()
        try:
            for _ in range(2):
                response = await http.post(server.origin(), "/json", REQUEST_HEADERS, b"{}")
                assert await response.read() == JSON
                response.release()
            response = await http.post(server.origin(), "/stream", REQUEST_HEADERS, b"{}")
            received: list[bytes] = []
            async with asyncio.timeout(GUARD):
                async for data in response.chunks():
                    received.append(data)
                    got_first.set()
            response.release()
        finally:
            await http.close()
            await server.close()
        assert received == [b"data: one\n\n", b"data: two\n\n"]
        assert len(server.peers) == 1

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
        runner.run(exchange())
