"""One admitted request on its way through the gateway, and the usage event it ends in."""

from __future__ import annotations

from dataclasses import dataclass, field

from spendgate.config.catalog import Model
from spendgate.enforcement.cost import Estimate
from spendgate.enforcement.keys import Principal
from spendgate.enforcement.usage import Usage, UsageEvent
from spendgate.proxy.observe import Facts
from spendgate.storage.spend import Admitted


@dataclass(slots=True)
class Call:
    """One admitted request on its way through the gateway."""

    request_id: str
    principal: Principal
    model: Model
    estimate: Estimate
    admitted: Admitted
    admitted_at_ms: int
    started: float  # monotonic
    stream: bool
    client_wants_usage: bool
    api_key: str | None  # the provider credential the call goes with
    billing: str  # "byok" when it is the project's own, else "credits"
    facts: Facts = field(default_factory=Facts)  # what the request log and metrics see
    upstream_started: float = 0.0  # monotonic; 0 until the call is sent

    def event(self, usage: Usage, cost: int, status: int, finished: float) -> UsageEvent:
        return UsageEvent(
            request_id=self.request_id,
            created_at_ms=self.admitted_at_ms,
            key_id=self.principal.key_id,
            project_id=self.principal.project_id,
            model=self.model.full_id,
            provider=self.model.provider,
            usage=usage,
            cost=cost,
            status=status,
            duration_ms=int((finished - self.started) * 1000),
            billing=self.billing,
            stream=self.stream,
        )

    def estimated_usage(self, completion_tokens: int) -> Usage:
        """What a call without reported usage is charged for: the input estimate (an upper
        bound) and the output the caller knows was produced."""
        return Usage(self.estimate.input_tokens, completion_tokens)
