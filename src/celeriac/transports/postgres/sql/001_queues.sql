-- The broker: one row per message, leased in place.
-- available_at: ready when <= now; a delayed message's ETA; a leased one's lease end (so a lapsed
-- lease makes its message claimable again with no sweep).
CREATE TABLE {s}.messages (
    id               bigserial PRIMARY KEY,
    queue            text             NOT NULL,
    priority         integer          NOT NULL DEFAULT 0,
    available_at     double precision NOT NULL,
    leased           boolean          NOT NULL DEFAULT false,
    delivery_count   integer          NOT NULL DEFAULT 0,
    task_id          text,
    headers          text             NOT NULL,
    properties       text             NOT NULL,
    content_type     text             NOT NULL,
    content_encoding text             NOT NULL,
    body             bytea            NOT NULL
);
CREATE INDEX messages_claim ON {s}.messages (queue, priority DESC, id);
CREATE INDEX messages_due ON {s}.messages (queue, available_at);
CREATE TABLE {s}.dead_letters (
    id               bigserial PRIMARY KEY,
    queue            text             NOT NULL,
    reason           text             NOT NULL,
    failed_at        double precision NOT NULL,
    headers          text             NOT NULL,
    properties       text             NOT NULL,
    content_type     text             NOT NULL,
    content_encoding text             NOT NULL,
    body             bytea            NOT NULL
);
CREATE INDEX dead_letters_failed_at ON {s}.dead_letters (failed_at);
CREATE TABLE {s}.rate_limits (
    key     text PRIMARY KEY,
    next_at double precision NOT NULL
);
