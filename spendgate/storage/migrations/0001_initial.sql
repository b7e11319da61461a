-- Projects, API keys, IAM rules, provider credentials and the usage ledger.

CREATE TABLE projects (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL CHECK (char_length(name) BETWEEN 1 AND 255),
    plan        TEXT NOT NULL CHECK (plan IN ('free', 'pro', 'enterprise')),
    key_limit   INTEGER,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Only an enterprise project may set its own key limit.
    CHECK (key_limit IS NULL OR (plan = 'enterprise' AND key_limit >= 0))
);

CREATE TABLE api_keys (
    id                      TEXT PRIMARY KEY,
    project_id              TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name                    TEXT NOT NULL CHECK (char_length(name) BETWEEN 1 AND 255),
    token_hash              BYTEA NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    preview                 TEXT NOT NULL,
    status                  TEXT NOT NULL CHECK (status IN ('active', 'inactive')),
    usage_limit_nano        BIGINT CHECK (usage_limit_nano >= 0),
    recurring_amount_nano   BIGINT CHECK (recurring_amount_nano >= 0),
    recurring_every         INTEGER,
    recurring_unit          TEXT CHECK (recurring_unit IN ('hour', 'day', 'week', 'month')),
    -- When the recurring limit was last configured: period k starts at anchor + k windows.
    period_anchor           TIMESTAMPTZ,
    -- Bumped on every change; Redis applies a key record only if it is newer.
    version                 BIGINT NOT NULL DEFAULT 1,
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at            TIMESTAMPTZ,
    CHECK ((recurring_amount_nano IS NULL) = (recurring_every IS NULL)
       AND (recurring_every IS NULL) = (recurring_unit IS NULL)
       AND (recurring_unit IS NULL) = (period_anchor IS NULL))
);
CREATE INDEX api_keys_project_created ON api_keys (project_id, created_at, id);

CREATE TABLE iam_rules (
    id          TEXT PRIMARY KEY,
    key_id      TEXT NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    effect      TEXT NOT NULL CHECK (effect IN ('allow', 'deny')),
    status      TEXT NOT NULL CHECK (status IN ('active', 'inactive')),
    rule_type   TEXT NOT NULL CHECK (rule_type IN ('models', 'providers', 'pricing')),
    spec        JSONB NOT NULL,
    UNIQUE (key_id, position)
);

CREATE TABLE provider_credentials (
    project_id  TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    provider    TEXT NOT NULL,
    -- Encrypted with the server secret; never returned by the API.
    ciphertext  BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, provider)
);

-- The ledger: one row per admitted and forwarded request. No foreign key to api_keys:
-- a deleted key's rows stay.
CREATE TABLE usage_events (
    request_id          TEXT NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL,
    key_id              TEXT NOT NULL,
    project_id          TEXT NOT NULL,
    model               TEXT NOT NULL,
    provider            TEXT NOT NULL,
    prompt_tokens       INTEGER NOT NULL DEFAULT 0,
    completion_tokens   INTEGER NOT NULL DEFAULT 0,
    cost_nano           BIGINT NOT NULL DEFAULT 0,
    status              INTEGER NOT NULL,
    duration_ms         INTEGER NOT NULL DEFAULT 0,
    billing             TEXT NOT NULL CHECK (billing IN ('credits', 'byok')),
    stream              BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (request_id, created_at)
);
CREATE INDEX usage_events_key_time ON usage_events (key_id, created_at DESC, request_id DESC);
