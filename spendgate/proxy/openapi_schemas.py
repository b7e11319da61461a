"""The schemas of the admin API's OpenAPI document (openapi.py): what each object looks
like in requests and answers."""

from __future__ import annotations

from spendgate.enforcement.keys import NAME_MAX
from spendgate.enforcement.windows import MAX_EVERY
from spendgate.proxy.admin_input import MAX_CUSTOM_KEY_LIMIT
from spendgate.types import JSONObject

MONEY = {
    "description": "USD as a decimal string or number: at most 9 decimals, not negative",
    "oneOf": [
        {"type": "string", "pattern": r"^[0-9]+(\.[0-9]{1,9})?$"},
        {"type": "number", "minimum": 0},
    ],
}
MONEY_OUT = {"type": "string", "description": "USD, shortest exact decimal", "example": "12.5"}
NAME = {"type": "string", "minLength": 1, "maxLength": NAME_MAX}
TIME = {"type": "string", "format": "date-time"}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
PLAN = {"type": "string", "enum": ["free", "pro", "enterprise"]}
CUSTOM_LIMIT = {
    "type": ["integer", "null"],
    "minimum": 0,
    "maximum": MAX_CUSTOM_KEY_LIMIT,
    "description": "enterprise plan only",
}


def ref(name: str) -> JSONObject:
    return {"$ref": f"#/components/schemas/{name}"}


PATTERNS = {
    "type": "array",
    "minItems": 1,
    "maxItems": 100,
    "items": {"type": "string", "minLength": 1, "maxLength": 255},
}
PRICING = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "description": "tier, and ceilings in USD per million tokens",
    "properties": {
        "tier": {"type": "string", "enum": ["free", "paid"]},
        "max_input_per_mtok": MONEY,
        "max_output_per_mtok": MONEY,
    },
}
USAGE_TOTALS = {
    "type": "object",
    "required": ["requests", "cost"],
    "properties": {"requests": {"type": "integer"}, "cost": MONEY_OUT},
}
RECURRING_IN = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "required": ["amount", "every", "unit"],
    "description": "from 1 hour to 12 months; null removes it",
    "properties": {
        "amount": MONEY,
        "every": {"type": "integer", "minimum": 1, "maximum": max(MAX_EVERY.values())},
        "unit": {"type": "string", "enum": list(MAX_EVERY)},
    },
}
SCHEMAS: JSONObject = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": "string"},
                },
            }
        },
    },
    "Project": {
        "type": "object",
        "required": ["id", "name", "plan", "key_limit", "key_count", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "plan": PLAN,
            "key_limit": {"type": "integer"},
            "key_count": {"type": "integer"},
            "created_at": TIME,
        },
    },
    "NewProject": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {"name": NAME, "plan": PLAN, "key_limit": CUSTOM_LIMIT},
    },
    "ProjectChanges": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"name": NAME, "plan": PLAN, "key_limit": CUSTOM_LIMIT},
    },
    "Key": {
        "type": "object",
        "required": ["id", "project_id", "name", "preview", "status", "created_at", "usage"],
        "properties": {
            "id": {"type": "string"},
            "project_id": {"type": "string"},
            "name": {"type": "string"},
            "preview": {"type": "string", "example": "sgk_AbCd...wxyz"},
            "status": {"type": "string", "enum": ["active", "inactive"]},
            "created_at": TIME,
            "last_used_at": NULLABLE_TIME,
            "usage": MONEY_OUT,
            "usage_limit": {"type": ["string", "null"]},
            "recurring_limit": {
                "type": ["object", "null"],
                "properties": {
                    "amount": MONEY_OUT,
                    "every": {"type": "integer"},
                    "unit": {"type": "string"},
                },
            },
            "current_period": {
                "type": ["object", "null"],
                "properties": {"usage": MONEY_OUT, "started_at": TIME, "resets_at": TIME},
            },
            "iam_rules_count": {"type": "integer"},
            "iam_rules": {"type": "array", "items": {"type": "object"}},
        },
    },
    "NewRule": {
        "type": "object",
        "additionalProperties": False,
        "required": ["effect"],
        "properties": {
            "effect": {"type": "string", "enum": ["allow", "deny"]},
            "status": {"type": "string", "enum": ["active", "inactive"]},
            "models": PATTERNS,
            "providers": PATTERNS,
            "pricing": PRICING,
        },
        "oneOf": [
            {"required": ["models"]},
            {"required": ["providers"]},
            {"required": ["pricing"]},
        ],
    },
    "Rule": {
        "type": "object",
        "required": ["id", "effect", "status"],
        "properties": {
            "id": {"type": "string"},
            "effect": {"type": "string"},
            "status": {"type": "string"},
            "models": {"type": "array", "items": {"type": "string"}},
            "providers": {"type": "array", "items": {"type": "string"}},
            "pricing": {"type": "object"},
        },
    },
    "Credential": {
        "type": "object",
        "additionalProperties": False,
        "required": ["api_key"],
        "properties": {"api_key": {"type": "string", "minLength": 1, "maxLength": 4096}},
    },
    "Credentials": {
        "type": "object",
        "properties": {
            "project_id": {"type": "string"},
            "provider": {"type": "string"},
            "byok_providers": {"type": "array", "items": {"type": "string"}},
        },
    },
    "UsageRequest": {
        "type": "object",
        "description": "one ledger row",
        "properties": {
            "request_id": {"type": "string"},
            "created_at": TIME,
            "model": {"type": "string"},
            "provider": {"type": "string"},
            "prompt_tokens": {"type": "integer"},
            "completion_tokens": {"type": "integer"},
            "cost": MONEY_OUT,
            "status": {"type": "integer"},
            "duration_ms": {"type": "integer"},
            "billing": {"type": "string", "enum": ["credits", "byok"]},
            "stream": {"type": "boolean"},
        },
    },
    "KeyUsage": {
        "type": "object",
        "required": ["requests", "next_cursor", "totals", "by_day", "by_model"],
        "properties": {
            "requests": {
                "type": "array",
                "description": "newest first",
                "items": ref("UsageRequest"),
            },
            "next_cursor": {"type": ["string", "null"], "description": "null on the last page"},
            "totals": {
                "type": "object",
                "description": "the whole [since, until) range, whatever the page",
                "properties": {
                    "requests": {"type": "integer"},
                    "cost": MONEY_OUT,
                    "prompt_tokens": {"type": "integer"},
                    "completion_tokens": {"type": "integer"},
                },
            },
            "by_day": {
                "type": "array",
                "description": "UTC days, ascending",
                "items": {
                    "allOf": [
                        USAGE_TOTALS,
                        {"properties": {"day": {"type": "string", "format": "date"}}},
                    ]
                },
            },
            "by_model": {
                "type": "array",
                "description": "by cost descending, then model",
                "items": {"allOf": [USAGE_TOTALS, {"properties": {"model": {"type": "string"}}}]},
            },
        },
    },
    "CreatedKey": {
        "allOf": [
            ref("Key"),
            {
                "type": "object",
                "required": ["key"],
                "properties": {"key": {"type": "string", "description": "shown only once"}},
            },
        ]
    },
    "NewKey": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {
            "name": NAME,
            "usage_limit": {**MONEY, "oneOf": [*MONEY["oneOf"], {"type": "null"}]},
            "recurring_limit": RECURRING_IN,
        },
    },
    "KeyChanges": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": NAME,
            "status": {"type": "string", "enum": ["active", "inactive"]},
            "usage_limit": {**MONEY, "oneOf": [*MONEY["oneOf"], {"type": "null"}]},
            "recurring_limit": RECURRING_IN,
        },
    },
}
