"""IAM evaluation: each rule type both ways, globs, and the properties that make it safe
(an explicit deny always wins; rule order never changes a decision)."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.config.catalog import Model, Price, PriceTier
from spendgate.enforcement.errors import InvalidField
from spendgate.enforcement.iam import Rule, evaluate, parse_rules

M = 1_000_000_000  # nano-USD in one USD


def model(provider: str, id_: str, input_usd: str, output_usd: str, free: bool = False) -> Model:
    tier = PriceTier(
        int(Decimal(input_usd) * M), int(Decimal(output_usd) * M), int(Decimal(input_usd) * M)
    )
    return Model(provider, id_, Price(tier), free, "chat")


MINI = model("openai", "gpt-4o-mini", "0.15", "0.60")
GPT4O = model("openai", "gpt-4o", "2.50", "10")
LLAMA = model("groq", "llama-3.1-8b-instant", "0.05", "0.08")
CLAUDE = model("openrouter", "anthropic/claude-3.5-sonnet", "3", "15")
FREE = model("mock", "free-1", "0", "0", free=True)
MODELS = [MINI, GPT4O, LLAMA, CLAUDE, FREE]


def rules(*specs: dict[str, Any]) -> list[Rule]:
    return parse_rules([{"id": f"rule_{i}", **spec} for i, spec in enumerate(specs)])


def allowed(rule_list: list[Rule]) -> set[str]:
    return {m.full_id for m in MODELS if evaluate(rule_list, m) is None}


def test_no_rules_allow_everything() -> None:
    assert allowed([]) == {m.full_id for m in MODELS}


def test_model_rules_match_the_canonical_id_or_provider_slash_id_with_globs() -> None:
    assert allowed(rules({"effect": "allow", "models": ["gpt-4o-mini"]})) == {"openai/gpt-4o-mini"}
    assert allowed(rules({"effect": "allow", "models": ["openai/gpt-4o"]})) == {"openai/gpt-4o"}
    assert allowed(rules({"effect": "allow", "models": ["gpt-4o*"]})) == {
        "openai/gpt-4o",
        "openai/gpt-4o-mini",
    }
    assert allowed(rules({"effect": "allow", "models": ["*/claude-*"]})) == {
        "openrouter/anthropic/claude-3.5-sonnet"
    }
    assert allowed(rules({"effect": "allow", "models": ["groq/*"]})) == {
        "groq/llama-3.1-8b-instant"
    }
    assert allowed(rules({"effect": "allow", "models": ["gpt-4o."]})) == set()  # "." is literal
    denied = allowed(rules({"effect": "deny", "models": ["gpt-4o"]}))
    assert "openai/gpt-4o" not in denied and "openai/gpt-4o-mini" in denied


def test_provider_rules() -> None:
    assert allowed(rules({"effect": "allow", "providers": ["openai", "groq"]})) == {
        "openai/gpt-4o",
        "openai/gpt-4o-mini",
        "groq/llama-3.1-8b-instant",
    }
    assert allowed(rules({"effect": "deny", "providers": ["openai"]})) == {
        "groq/llama-3.1-8b-instant",
        "openrouter/anthropic/claude-3.5-sonnet",
        "mock/free-1",
    }


def test_pricing_ceilings_are_usd_per_million_tokens() -> None:
    # "1.00" is one dollar per million tokens: gpt-4o-mini (0.15) is under, gpt-4o (2.50) over.
    cheap = allowed(rules({"effect": "allow", "pricing": {"max_input_per_mtok": "1.00"}}))
    assert cheap == {"openai/gpt-4o-mini", "groq/llama-3.1-8b-instant", "mock/free-1"}
    # A ceiling is inclusive.
    at = allowed(rules({"effect": "allow", "pricing": {"max_output_per_mtok": "0.60"}}))
    assert at == {"openai/gpt-4o-mini", "groq/llama-3.1-8b-instant", "mock/free-1"}
    assert allowed(rules({"effect": "allow", "pricing": {"tier": "free"}})) == {"mock/free-1"}
    assert "mock/free-1" not in allowed(rules({"effect": "deny", "pricing": {"tier": "free"}}))
    both = {"tier": "paid", "max_input_per_mtok": 1, "max_output_per_mtok": "0.5"}
    assert allowed(rules({"effect": "allow", "pricing": both})) == {"groq/llama-3.1-8b-instant"}


def test_allows_of_one_type_are_ored_and_of_different_types_anded() -> None:
    found = allowed(
        rules(
            {"effect": "allow", "models": ["gpt-4o"]},
            {"effect": "allow", "models": ["llama*"]},
            {"effect": "allow", "providers": ["openai"]},
        )
    )
    assert found == {"openai/gpt-4o"}


def test_inactive_rules_are_ignored() -> None:
    assert allowed(rules({"effect": "deny", "providers": ["openai"], "status": "inactive"})) == {
        m.full_id for m in MODELS
    }
    only = rules(
        {"effect": "allow", "models": ["gpt-4o"], "status": "inactive"},
        {"effect": "allow", "models": ["gpt-4o-mini"]},
    )
    assert allowed(only) == {"openai/gpt-4o-mini"}


def test_a_denial_names_the_deciding_rules() -> None:
    denial = evaluate(
        rules(
            {"effect": "allow", "models": ["gpt-4o-mini"]},
            {"effect": "deny", "providers": ["groq"]},
            {"effect": "allow", "models": ["claude*"]},
        ),
        LLAMA,
    )
    assert denial is not None and denial.code == "provider_not_allowed"
    assert denial.rule_ids == ("rule_1",)
    denial = evaluate(
        rules({"effect": "allow", "models": ["gpt-4o-mini"]}, {"effect": "allow", "models": ["x"]}),
        GPT4O,
    )
    assert denial is not None and denial.code == "model_not_allowed"
    assert denial.rule_ids == ("rule_0", "rule_1") and "rule_0, rule_1" in denial.message
    denial = evaluate(rules({"effect": "allow", "pricing": {"tier": "free"}}), GPT4O)
    assert denial is not None and denial.code == "pricing_not_allowed"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"effect": "allow", "colours": ["x"]}, "[0].colours"),
        ({"effect": "allow", "models": ["x"], "providers": ["y"]}, "[0]"),
        ({"effect": "allow"}, "[0]"),
        ({"effect": "maybe", "models": ["x"]}, "[0].effect"),
        ({"effect": "allow", "models": ["x"], "status": "paused"}, "[0].status"),
        ({"effect": "allow", "models": []}, "[0].models"),
        ({"effect": "allow", "models": "gpt-4o"}, "[0].models"),
        ({"effect": "allow", "models": [""]}, "[0].models[0]"),
        ({"effect": "allow", "models": [5]}, "[0].models[0]"),
        ({"effect": "allow", "providers": []}, "[0].providers"),
        ({"effect": "allow", "pricing": {}}, "[0].pricing"),
        ({"effect": "allow", "pricing": {"tier": "gold"}}, "[0].pricing.tier"),
        (
            {"effect": "allow", "pricing": {"max_input_per_mtok": "-1"}},
            "[0].pricing.max_input_per_mtok",
        ),
        (
            {"effect": "allow", "pricing": {"max_output_per_mtok": "x"}},
            "[0].pricing.max_output_per_mtok",
        ),
        ({"effect": "allow", "pricing": {"cheap": True}}, "[0].pricing.cheap"),
        ({"effect": "allow", "models": ["x"], "id": "rule_mine"}, "[0].id"),
        ("allow everything", "[0]"),
    ],
)
def test_bad_rules_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(InvalidField) as refused:
        parse_rules([body], new_id=lambda: "rule_new")
    assert refused.value.field == field


def test_the_body_must_be_a_list_of_at_most_100_rules() -> None:
    with pytest.raises(InvalidField):
        parse_rules({"effect": "allow", "models": ["x"]}, new_id=lambda: "r")
    with pytest.raises(InvalidField):
        parse_rules([{"effect": "allow", "models": ["x"]}] * 101, new_id=lambda: "r")


def test_rules_round_trip_through_their_json() -> None:
    original = rules(
        {"effect": "allow", "pricing": {"tier": "paid", "max_input_per_mtok": Decimal("1.5")}},
        {"effect": "deny", "models": ["gpt-*"], "status": "inactive"},
    )
    again = parse_rules([rule.json() for rule in original])
    assert again == original
    assert original[0].json()["pricing"] == {"tier": "paid", "max_input_per_mtok": "1.5"}


# -- properties ----------------------------------------------------------------------

PATTERNS = ["gpt-4o", "gpt-4o*", "*mini", "openai/*", "groq/*", "*claude*", "free-1", "*"]
rule_specs = st.one_of(
    st.fixed_dictionaries({"models": st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3)}),
    st.fixed_dictionaries(
        {"providers": st.lists(st.sampled_from(["openai", "groq", "mock", "x"]), min_size=1)}
    ),
    st.fixed_dictionaries(
        {
            "pricing": st.one_of(
                st.fixed_dictionaries({"tier": st.sampled_from(["free", "paid"])}),
                st.fixed_dictionaries(
                    {"max_input_per_mtok": st.sampled_from(["0", "0.1", "1", "3"])}
                ),
            )
        }
    ),
)


def _rule_list(items: list[tuple[dict[str, Any], str, bool]]) -> list[Rule]:
    return parse_rules(
        [
            {"id": f"r{i}", "effect": effect, "status": "active" if on else "inactive", **spec}
            for i, (spec, effect, on) in enumerate(items)
        ]
    )


rule_lists = st.lists(
    st.tuples(rule_specs, st.sampled_from(["allow", "deny"]), st.booleans()), max_size=6
).map(_rule_list)


@settings(max_examples=300, deadline=None)
@given(rule_lists, st.sampled_from(MODELS), st.randoms(use_true_random=False))
def test_shuffling_rules_never_changes_a_decision(
    rule_list: list[Rule], target: Model, rng: Any
) -> None:
    shuffled = list(rule_list)
    rng.shuffle(shuffled)
    assert evaluate(shuffled, target) == evaluate(rule_list, target)


@settings(max_examples=300, deadline=None)
@given(rule_lists, st.sampled_from(MODELS), rule_specs)
def test_a_matching_active_deny_always_wins(
    rule_list: list[Rule], target: Model, spec: dict[str, Any]
) -> None:
    deny = parse_rules([{"id": "deny", "effect": "deny", **spec}])[0]
    if not deny.matches(target):
        return
    for position in range(len(rule_list) + 1):
        with_deny = [*rule_list[:position], deny, *rule_list[position:]]
        denial = evaluate(with_deny, target)
        assert denial is not None  # whatever the allow rules say


def test_every_order_of_a_small_set_agrees() -> None:
    small = rules(
        {"effect": "allow", "models": ["gpt-*"]},
        {"effect": "deny", "models": ["gpt-4o"]},
        {"effect": "allow", "providers": ["openai"]},
    )
    for target in MODELS:
        decisions = {evaluate(list(order), target) for order in itertools.permutations(small)}
        assert len(decisions) == 1
