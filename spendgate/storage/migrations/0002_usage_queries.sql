-- The hourly rollup of the ledger, for the totals of GET /admin/v1/keys/{kid}/usage.
--
-- One row per key, UTC hour and model: what the ledger holds for them, summed. Triggers on
-- usage_events keep it in the same transaction as the statement that changes the ledger,
-- whoever runs it (the usage writer, a backfill, a retention DELETE, a test's INSERT). The
-- triggers are per statement and read the transition tables, which hold only the rows the
-- statement really inserted or deleted: a duplicate event that `ON CONFLICT DO NOTHING`
-- skips never reaches the rollup. Totals over [since, until) read the whole hours here and
-- the partial hours at either edge from usage_events (docs/USAGE_QUERIES.md).
--
-- Retention by dropping or detaching a partition of usage_events fires no trigger: delete
-- the same hours from usage_hourly with it.

CREATE TABLE usage_hourly (
    key_id              TEXT NOT NULL,
    hour                TIMESTAMPTZ NOT NULL,  -- the start of the UTC hour
    model               TEXT NOT NULL,
    requests            BIGINT NOT NULL,
    -- NUMERIC: a sum of BIGINT costs may pass 2^63, and an overflow here would fail the
    -- ledger insert itself, again at every retry.
    cost_nano           NUMERIC NOT NULL,
    prompt_tokens       BIGINT NOT NULL,
    completion_tokens   BIGINT NOT NULL,
    PRIMARY KEY (key_id, hour, model)
);

-- Applies the statement's rows: old ones subtracted (UPDATE, DELETE), new ones added
-- (INSERT, UPDATE). The upserts lock rollup rows in key order, so two writers whose
-- batches share keys wait for each other instead of deadlocking.
CREATE FUNCTION usage_hourly_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO usage_hourly AS h
        SELECT key_id, date_trunc('hour', created_at, 'UTC'), model, -count(*),
               -sum(cost_nano), -sum(prompt_tokens), -sum(completion_tokens)
        FROM old_rows GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (key_id, hour, model) DO UPDATE SET
            requests = h.requests + excluded.requests,
            cost_nano = h.cost_nano + excluded.cost_nano,
            prompt_tokens = h.prompt_tokens + excluded.prompt_tokens,
            completion_tokens = h.completion_tokens + excluded.completion_tokens;
        DELETE FROM usage_hourly h USING old_rows o
        WHERE h.key_id = o.key_id AND h.hour = date_trunc('hour', o.created_at, 'UTC')
          AND h.model = o.model AND h.requests = 0;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO usage_hourly AS h
        SELECT key_id, date_trunc('hour', created_at, 'UTC'), model, count(*),
               sum(cost_nano), sum(prompt_tokens), sum(completion_tokens)
        FROM new_rows GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (key_id, hour, model) DO UPDATE SET
            requests = h.requests + excluded.requests,
            cost_nano = h.cost_nano + excluded.cost_nano,
            prompt_tokens = h.prompt_tokens + excluded.prompt_tokens,
            completion_tokens = h.completion_tokens + excluded.completion_tokens;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION usage_hourly_clear() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE usage_hourly;
    RETURN NULL;
END
$$;

-- No insert may slip in between the backfill and the triggers.
LOCK TABLE usage_events IN SHARE ROW EXCLUSIVE MODE;

INSERT INTO usage_hourly
SELECT key_id, date_trunc('hour', created_at, 'UTC'), model, count(*),
       sum(cost_nano), sum(prompt_tokens), sum(completion_tokens)
FROM usage_events GROUP BY 1, 2, 3;

CREATE TRIGGER usage_hourly_insert AFTER INSERT ON usage_events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_hourly_apply();
CREATE TRIGGER usage_hourly_update AFTER UPDATE ON usage_events
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_hourly_apply();
CREATE TRIGGER usage_hourly_delete AFTER DELETE ON usage_events
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_hourly_apply();
CREATE TRIGGER usage_hourly_truncate AFTER TRUNCATE ON usage_events
    FOR EACH STATEMENT EXECUTE FUNCTION usage_hourly_clear();
