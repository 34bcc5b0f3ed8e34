-- Beat's shared state, events and remote control.
CREATE TABLE {s}.beat_lease (
    name       text PRIMARY KEY,
    holder     text NOT NULL,
    expires_at double precision NOT NULL
);
CREATE TABLE {s}.beat_state (
    entry     text PRIMARY KEY,
    last_tick double precision,
    paused    boolean NOT NULL DEFAULT false
);
CREATE TABLE {s}.beat_unsent (
    entry text PRIMARY KEY,
    tick  double precision NOT NULL
);
CREATE TABLE {s}.beat_sent (
    entry   text PRIMARY KEY,
    sent_at double precision NOT NULL
);
CREATE TABLE {s}.beat_entries (
    name       text PRIMARY KEY,
    spec       text NOT NULL,
    updated_at double precision NOT NULL
);
CREATE TABLE {s}.beat_meta (
    key   text PRIMARY KEY,
    value bigint NOT NULL
);
-- Rows are inserted under a transaction-level advisory lock, so ids commit in order and a
-- reader that goes by id never skips one that commits late.
CREATE TABLE {s}.events (
    id          bigserial PRIMARY KEY,
    routing_key text NOT NULL,
    created     double precision NOT NULL,
    body        text NOT NULL
);
CREATE INDEX events_created ON {s}.events (created);
CREATE TABLE {s}.control_commands (
    id      bigserial PRIMARY KEY,
    created double precision NOT NULL,
    body    text NOT NULL,
    headers text NOT NULL
);
CREATE TABLE {s}.control_replies (
    id      bigserial PRIMARY KEY,
    oid     text NOT NULL,
    created double precision NOT NULL,
    body    text NOT NULL,
    headers text NOT NULL
);
CREATE INDEX control_replies_oid ON {s}.control_replies (oid, id);
