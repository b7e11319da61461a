"""`/metrics` after real traffic: every counter moves by the right amount, in one process
and summed over two worker processes; `/healthz` and `/readyz`."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from typing import Any

import aiohttp
import asyncpg
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from spendgate.config import Settings
from spendgate.enforcement.money import format_usd
from spendgate.enforcement.tokens import generate_token
from spendgate.proxy.metrics import DURATION_BUCKETS, FLUSH_EVERY, Metrics
from tests.helpers import ADMIN_TOKEN, TcpLink, answering, call, serve_env
from tests.proxy.conftest import FakeGatewayFactory, Gateway, GatewayFactory, ledger

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
COST = 1 * 1000 + 16 * 2000
CHAT = "/v1/chat/completions"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(gateway: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await gateway.admin.get("/metrics")
    assert response.status == 200
    return samples(await response.text())


async def test_counters_move_by_the_traffic_that_happened(
    via_fake: FakeGatewayFactory, db: asyncpg.Connection
) -> None:
    fake, gateway = await via_fake()
    before = await scrape(gateway)
    key = await gateway.key(usage_limit=format_usd(3 * COST))
    sdk = gateway.sdk(key["key"])
    for _ in range(3):
        await sdk.chat.completions.create(model="mock/echo-1", messages=HI)
    with pytest.raises(openai.RateLimitError):
        await sdk.chat.completions.create(model="mock/echo-1", messages=HI)
    with pytest.raises(openai.AuthenticationError):
        await gateway.sdk(generate_token()).chat.completions.create(
            model="mock/echo-1", messages=HI
        )
    other = await gateway.key()
    await call(
        gateway.admin,
        "PUT",
        f"/keys/{other['id']}/iam-rules",
        [{"effect": "deny", "models": ["*"]}],
    )
    with pytest.raises(openai.PermissionDeniedError):
        await gateway.sdk(other["key"]).chat.completions.create(model="mock/echo-1", messages=HI)
    fake.mode = "error_500"
    third = await gateway.key()
    with pytest.raises(openai.InternalServerError):
        await gateway.sdk(third["key"]).chat.completions.create(model="fake/m1", messages=HI)
    with pytest.raises(openai.BadRequestError):
        await gateway.sdk(third["key"]).chat.completions.create(model="", messages=HI)
    await ledger(db, key["id"], 3)
    await asyncio.sleep(0.3)  # the writer's batch for the upstream error's row

    after = await scrape(gateway)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "spendgate_requests_total"
    assert moved(requests, route=CHAT, outcome="forwarded") == 3
    assert moved(requests, route=CHAT, outcome="limit_exceeded") == 1
    assert moved(requests, route=CHAT, outcome="auth_failed") == 1
    assert moved(requests, route=CHAT, outcome="iam_denied") == 1
    assert moved(requests, route=CHAT, outcome="upstream_error") == 1
    assert moved(requests, route=CHAT, outcome="bad_request") == 1
    assert moved("spendgate_limit_rejections_total", limit="all_time") == 1
    assert moved("spendgate_iam_denials_total", rule_type="models") == 1
    spend = moved(
        "spendgate_spend_usd_total", provider="mock", model="mock/echo-1", project=key["project_id"]
    )
    assert spend == pytest.approx(3 * COST / 1e9)
    assert moved("spendgate_tokens_total", provider="mock", model="mock/echo-1", kind="prompt") == 3
    assert (
        moved("spendgate_tokens_total", provider="mock", model="mock/echo-1", kind="completion")
        == 48
    )
    assert moved("spendgate_request_duration_seconds_count", route=CHAT) == 8
    assert moved("spendgate_overhead_seconds_count", route=CHAT) == 8
    assert moved("spendgate_upstream_ttfb_seconds_count", provider="mock") == 3
    assert moved("spendgate_upstream_duration_seconds_count", provider="fake") == 1
    assert moved("spendgate_ledger_writes_total", result="ok") >= 1
    assert moved("spendgate_key_cache_total", result="miss") >= 4
    assert moved("spendgate_key_cache_total", result="hit") >= 3
    assert ("spendgate_usage_backlog", ()) in after
    assert "spendgate_redis_errors_total" in {name for name, _ in after}
    # No label carries a key id or a token.
    text = await (await gateway.admin.get("/metrics")).text()
    assert key["id"] not in text and key["key"] not in text


async def test_healthz_and_readyz(gateway: Gateway) -> None:
    assert (await (await gateway.admin.get("/healthz")).json()) == {"status": "ok"}
    ready = await gateway.admin.get("/readyz")
    assert ready.status == 200 and (await ready.json()) == {"status": "ready"}


async def test_readyz_names_the_dependency_that_failed(
    make_gateway: GatewayFactory, postgres_link: tuple[TcpLink, str]
) -> None:
    gateway = await make_gateway(redis_url="redis://127.0.0.1:1/0")
    ready = await gateway.admin.get("/readyz")
    assert ready.status == 503
    assert await ready.json() == {"status": "unavailable", "failed": {"redis": "unreachable"}}
    assert (await gateway.admin.get("/healthz")).status == 200

    link, dsn = postgres_link
    healthy = await make_gateway(database_url=dsn)  # Postgres through a link we can cut
    await link.cut()
    ready = await healthy.admin.get("/readyz")
    assert ready.status == 503
    assert await ready.json() == {"status": "unavailable", "failed": {"postgres": "unreachable"}}
    await link.restore()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_two_workers_report_the_totals_of_both(
    settings: Settings, db: asyncpg.Connection, raw_redis: Any
) -> None:
    port = free_port()
    env = serve_env(settings, port, SPENDGATE_WORKERS="2")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "spendgate", "serve", env=env, stderr=asyncio.subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    admin_headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        # A new connection per request, so the kernel spreads them over both workers.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(base, connector=connector) as http:
            await answering(http, "/healthz")
            async with http.post(
                "/admin/v1/projects", json={"name": "p"}, headers=admin_headers
            ) as created:
                project = await created.json()
            async with http.post(
                f"/admin/v1/projects/{project['id']}/keys",
                json={"name": "k"},
                headers=admin_headers,
            ) as created:
                key = await created.json()
            headers = {"Authorization": f"Bearer {key['key']}"}
            body = {"model": "mock/echo-1", "messages": HI}
            for _ in range(20):
                async with http.post(CHAT, json=body, headers=headers) as answer:
                    assert answer.status == 200
            # Each worker applies its held values to its file at least every FLUSH_EVERY
            # seconds (and at its own scrapes): after that, whichever answers reports both.
            await asyncio.sleep(FLUSH_EVERY + 0.5)
            for _ in range(6):
                async with http.get("/metrics") as scraped:
                    found = samples(await scraped.text())
                assert (
                    value(found, "spendgate_requests_total", route=CHAT, outcome="forwarded") == 20
                )
                spend = value(
                    found,
                    "spendgate_spend_usd_total",
                    provider="mock",
                    model="mock/echo-1",
                    project=project["id"],
                )
                assert spend == pytest.approx(20 * COST / 1e9)
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await process.wait()
    assert process.returncode == 0
    rows = await db.fetchval("SELECT count(*) FROM usage_events WHERE key_id = $1", key["id"])
    assert rows == 20  # the workers drained the ledger on the way out


@settings(max_examples=200, deadline=None)
@given(
    amounts=st.lists(
        st.one_of(
            st.floats(min_value=0, max_value=400, allow_nan=False),
            st.sampled_from([*DURATION_BUCKETS, 0.0]),  # on a bound: that bucket, as the library
        ),
        max_size=40,
    ),
    flush_at=st.integers(0, 40),
)
def test_held_observations_land_in_the_buckets_the_library_would_use(
    amounts: list[float], flush_at: int
) -> None:
    held_metrics, direct_metrics = Metrics(), Metrics()
    held, direct = held_metrics.duration.held(CHAT), direct_metrics.duration.labels(CHAT)
    for i, amount in enumerate(amounts):
        held.observe(amount)
        direct.observe(amount)
        if i == flush_at:  # a flush in the middle changes nothing either
            held_metrics.flush()
    got, want = (samples(m.exposition().decode()) for m in (held_metrics, direct_metrics))
    name = "spendgate_request_duration_seconds"
    assert {k: v for k, v in got.items() if k[0].startswith(name + "_bucket")} == {
        k: v for k, v in want.items() if k[0].startswith(name + "_bucket")
    }
    assert value(got, name + "_sum", route=CHAT) == pytest.approx(
        value(want, name + "_sum", route=CHAT)
    )


def test_held_counts_reach_the_exposition() -> None:
    metrics = Metrics()
    metrics.spend.held("p", "m", "prj").inc(0.25)
    metrics.spend.held("p", "m", "prj").inc(0.5)
    found = samples(metrics.exposition().decode())
    assert value(found, "spendgate_spend_usd_total", provider="p", model="m", project="prj") == 0.75
