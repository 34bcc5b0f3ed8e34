-- The result backend: one serialized result document per task (JSON unless result_serializer
-- says otherwise), chords counted by row, saved groups.
CREATE TABLE {s}.results (
    task_id    text PRIMARY KEY,
    status     text  NOT NULL,
    meta       bytea NOT NULL,
    expires_at double precision
);
CREATE INDEX results_expiry ON {s}.results (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE {s}.chords (
    group_id   text PRIMARY KEY,
    size       integer,
    counted    integer NOT NULL DEFAULT 0,
    claimed_at double precision,
    claimer    text,
    done       boolean NOT NULL DEFAULT false,
    expires_at double precision
);
CREATE TABLE {s}.chord_parts (
    group_id text    NOT NULL,
    idx      integer NOT NULL,
    task_id  text    NOT NULL,
    status   text    NOT NULL,
    meta     bytea   NOT NULL,
    PRIMARY KEY (group_id, idx)
);
CREATE TABLE {s}.groups (
    group_id   text PRIMARY KEY,
    meta       bytea NOT NULL,
    expires_at double precision
);
