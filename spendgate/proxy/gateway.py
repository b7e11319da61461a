"""The OpenAI-compatible proxy routes: authenticate, admit, forward, settle.

Per request (DESIGN.md, "The request path"): the token is checked for shape, then looked
up (process cache -> Redis -> Postgres); the body is parsed and the model resolved; ONE
Redis script admits the request and reserves its estimate; the call goes to the
provider; ONE Redis script settles the actual cost and appends the usage event, in a
`finally`, whatever happened upstream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from spendgate.config import Settings
from spendgate.config.catalog import Catalog, Model
from spendgate.enforcement import iam, tokens
from spendgate.enforcement.cost import (
    Estimate,
    cost_nano,
    estimate_chat,
    estimate_completion,
    estimate_embedding,
)
from spendgate.enforcement.errors import (
    AccessDenied,
    InvalidApiKey,
    InvalidRequest,
    ModelNotFound,
)
from spendgate.enforcement.keys import Clock, Principal
from spendgate.enforcement.usage import Usage, UsageEvent
from spendgate.enforcement.windows import to_epoch_ms
from spendgate.proxy.call import Call
from spendgate.proxy.errors import (
    CLIENT_CLOSED,
    REQUEST_ID,
    REQUEST_ID_HEADER,
    ApiError,
    UpstreamUnavailable,
)
from spendgate.proxy.metrics import Metrics
from spendgate.proxy.observe import FACTS
from spendgate.proxy.relay import relay_stream
from spendgate.proxy.settler import Settler
from spendgate.proxy.upstream import UpstreamReply, Upstreams
from spendgate.storage.credentials import Credentials
from spendgate.storage.errors import RecordMissing, RecordStale
from spendgate.storage.key_directory import KeyDirectory
from spendgate.storage.spend import AdmissionRequest, Admitted, SpendStore


class Gateway:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        directory: KeyDirectory,
        spend: SpendStore,
        upstreams: Upstreams,
        settler: Settler,
        credentials: Credentials,
        metrics: Metrics,
        clock: Clock,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.directory = directory
        self.spend = spend
        self.upstreams = upstreams
        self.settler = settler
        self.credentials = credentials
        self.metrics = metrics
        self.clock = clock
        self.monotonic = monotonic

    # -- routes ------------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        """The models this key may use, as `provider/model` ids."""
        principal, _ = await self._authenticate(request)
        data = [
            {"id": m.full_id, "object": "model", "created": 0, "owned_by": m.provider}
            for m in self.catalog.models()
            if iam.evaluate(principal.rules, m) is None
        ]
        return _json({"object": "list", "data": data})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "/chat/completions", "chat", self._estimate_chat)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "/completions", "chat", self._estimate_completion)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "/embeddings", "embedding", self._estimate_embedding)

    def _estimate_chat(self, body: dict[str, Any], model: Model) -> Estimate:
        return estimate_chat(body, model.price, self.settings.default_max_output_tokens)

    def _estimate_completion(self, body: dict[str, Any], model: Model) -> Estimate:
        return estimate_completion(body, model.price, self.settings.default_max_output_tokens)

    def _estimate_embedding(self, body: dict[str, Any], model: Model) -> Estimate:
        return estimate_embedding(body, model.price)

    async def _proxy(
        self,
        request: web.Request,
        path: str,
        kind: str,
        estimator: Callable[[dict[str, Any], Model], Estimate],
    ) -> web.StreamResponse:
        facts = request[FACTS]
        principal, token_hash = await self._authenticate(request)
        facts.key_id, facts.project_id = principal.key_id, principal.project_id
        body = await _read_body(request)
        model = self._resolve(body, kind, path)
        facts.model, facts.provider = model.full_id, model.provider
        facts.stream = body.get("stream") is True
        denial = iam.evaluate(principal.rules, model)
        if denial is not None:  # refused before any Redis write: costs nothing
            raise AccessDenied(denial.code, denial.message, denial.type)
        estimate = estimator(body, model)
        upstream = self._upstream_body(body, model)
        payload = _encode(upstream)  # before admission: a body that cannot go costs nothing
        credential = await self._credential(principal, model)
        call = await self._admit(request, principal, token_hash, model, body, estimate, credential)
        if call.admitted.output_tokens is not None:  # hard mode lowered the output cap
            field = "max_tokens" if "max_tokens" in body else "max_completion_tokens"
            upstream.pop("max_tokens", None)
            upstream[field] = call.admitted.output_tokens
            payload = orjson.dumps(upstream)
        return await self._forward(request, call, path, upstream, payload)

    # -- steps -------------------------------------------------------------------------

    async def _authenticate(self, request: web.Request) -> tuple[Principal, bytes]:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or len(token) != tokens.TOKEN_LENGTH:
            raise InvalidApiKey()
        token_hash = tokens.hash_token(token)
        # A token whose hash is cached is a key's, so well formed: the checksum is for
        # the others, to refuse them before any lookup.
        principal = self.directory.cached(token_hash)
        if principal is None:
            if not tokens.is_well_formed(token):
                raise InvalidApiKey()
            principal = await self.directory.find(token_hash)
            if principal is None:
                raise InvalidApiKey()
        return principal, token_hash

    def _resolve(self, body: dict[str, Any], kind: str, path: str) -> Model:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("missing_model", "the body must name a model", "model")
        model = self.catalog.resolve(name)
        if model is None:
            raise ModelNotFound(name)
        if model.kind != kind:
            raise ModelNotFound(name, f"the model {name!r} does not support /v1{path}")
        return model

    async def _credential(self, principal: Principal, model: Model) -> tuple[str | None, str]:
        """The credential the call goes upstream with, and how it is billed: the project's
        own (BYOK) when it stored one for the provider, else the gateway's."""
        provider = self.catalog.providers[model.provider]
        if provider.base_url is not None:  # the built-in mock takes no credential
            own = await self.credentials.lookup(principal.project_id, provider.name)
            if own is not None:
                return own, "byok"
        return provider.api_key, "credits"

    async def _admit(
        self,
        request: web.Request,
        principal: Principal,
        token_hash: bytes,
        model: Model,
        body: dict[str, Any],
        estimate: Estimate,
        credential: tuple[str | None, str],
    ) -> Call:
        now = self.clock.now()
        choices = _positive_int(body.get("n")) or 1
        admission = AdmissionRequest(
            request_id=request[REQUEST_ID],
            now=now,
            input_cost=estimate.input_cost,
            output_cost=estimate.output_cost,
            output_price=estimate.output_price,
            output_tokens=max(1, estimate.output_tokens // choices),
            choices=choices,
            hard=self.settings.enforcement == "hard",
        )
        try:
            admitted = await self._reserve(principal, admission, model)
        except (RecordStale, RecordMissing):
            # The key changed (or Redis lost it) since this process cached it.
            refreshed = await self.directory.refresh(token_hash)
            if refreshed is None:
                raise InvalidApiKey() from None
            principal = refreshed
            admitted = await self._reserve(principal, admission, model)
        stream = body.get("stream") is True
        options = body.get("stream_options")
        return Call(
            request_id=admission.request_id,
            principal=principal,
            model=model,
            estimate=estimate,
            admitted=admitted,
            admitted_at_ms=to_epoch_ms(now),
            started=self.monotonic(),
            stream=stream,
            client_wants_usage=isinstance(options, dict) and options.get("include_usage") is True,
            api_key=credential[0],
            billing=credential[1],
        )

    async def _reserve(
        self, principal: Principal, admission: AdmissionRequest, model: Model
    ) -> Admitted:
        """Run the admission script. If the handler is cancelled while it runs, the script
        may still reserve: it is queued on the Redis connection already. A settle at cost
        0, queued behind it on the same connection (the key's slot has one), runs after it
        and releases what it reserved, or finds nothing and does nothing. So nothing waits
        10 minutes to expire."""
        try:
            return await self.spend.admit(principal, admission)
        except asyncio.CancelledError:
            self.settler.defer(
                UsageEvent(
                    request_id=admission.request_id,
                    created_at_ms=to_epoch_ms(admission.now),
                    key_id=principal.key_id,
                    project_id=principal.project_id,
                    model=model.full_id,
                    provider=model.provider,
                    usage=Usage(),
                    cost=0,
                    status=CLIENT_CLOSED,
                    duration_ms=0,
                    billing="credits",
                    stream=False,
                )
            )
            raise

    def _upstream_body(self, body: dict[str, Any], model: Model) -> dict[str, Any]:
        upstream = dict(body)
        upstream["model"] = model.id
        provider = self.catalog.providers[model.provider]
        if body.get("stream") is True and provider.stream_usage:
            options = body.get("stream_options")
            upstream["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        return upstream

    async def _forward(
        self,
        request: web.Request,
        call: Call,
        path: str,
        body: dict[str, Any],
        payload: bytes,
    ) -> web.StreamResponse:
        provider = self.catalog.providers[call.model.provider]
        call.facts = request[FACTS]
        call.upstream_started = self.monotonic()
        try:
            reply = await self.upstreams.send(
                provider, path, payload, body, call.api_key, call.stream
            )
            self.metrics.upstream_ttfb.held(provider.name).observe(
                self.monotonic() - call.upstream_started
            )
        except ApiError as exc:  # unreachable or timed out: nothing was delivered, no charge
            await self._settle(call, Usage(), 0, exc.status)
            raise
        except BaseException:  # cancelled: settle later, never leak the reservation
            self.settler.defer(self.finished(call, Usage(), 0, CLIENT_CLOSED))
            raise
        if reply.streaming:
            return await relay_stream(self, request, call, reply)
        return await self._answer(call, reply)

    async def _answer(self, call: Call, reply: UpstreamReply) -> web.Response:
        """A whole answer: charge the reported usage; pass provider errors through."""
        assert reply.body is not None
        usage = Usage()
        cost = 0
        status = reply.status
        if reply.status == 200:
            try:
                answer = orjson.loads(reply.body)
            except orjson.JSONDecodeError:
                await self._settle(call, usage, 0, 502)
                raise UpstreamUnavailable(call.model.provider) from None
            reported = Usage.from_openai(answer.get("usage")) if isinstance(answer, dict) else None
            # Output was delivered: never free. Without a report, charge the estimate.
            usage = reported or call.estimated_usage(call.estimate.output_tokens)
            cost = cost_nano(call.model.price, usage)
        await self._settle(call, usage, cost, status)
        return web.Response(
            status=status,
            body=reply.body,
            headers={"Content-Type": reply.content_type, REQUEST_ID_HEADER: call.request_id},
        )

    async def _settle(self, call: Call, usage: Usage, cost: int, status: int) -> None:
        await self.settler.settle(self.finished(call, usage, cost, status))

    def finished(self, call: Call, usage: Usage, cost: int, status: int) -> UsageEvent:
        """The call's usage event, counted in the metrics and the request's facts."""
        now = self.monotonic()
        event = call.event(usage, cost, status, now)
        if call.upstream_started:
            upstream = now - call.upstream_started
            call.facts.upstream_seconds = upstream
            self.metrics.upstream_duration.held(call.model.provider).observe(upstream)
        call.facts.cost = cost
        call.facts.prompt_tokens = usage.prompt_tokens
        call.facts.completion_tokens = usage.completion_tokens
        self.metrics.charged(event)
        return event


async def _read_body(request: web.Request) -> dict[str, Any]:
    content_type = request.headers.get("Content-Type")
    if content_type is not None and "json" not in request.content_type:
        raise InvalidRequest(
            "invalid_json", "the body must be JSON, sent as Content-Type: application/json"
        )
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("invalid_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("invalid_json", "the body must be a JSON object")
    return body


def _encode(body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError:  # nested deeper than orjson writes (255), or a lone surrogate
        raise InvalidRequest("invalid_json", "the body is nested too deeply") from None


def _positive_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
