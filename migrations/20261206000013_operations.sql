-- Operations (issue 17): sticky operator pauses, the upstream's credit balance, and the operators' audit trail.

-- Who paused an upstream. An `operator` pause holds until an operator resumes it; an `automatic` one (an
-- account-level error seen by a worker) is probed and lifted by `probe_upstreams`. Existing rows were written by
-- the automatic path or by an operator; both were lifted by the probe before, so they stay automatic.
ALTER TABLE upstream_pauses
    ADD COLUMN kind text NOT NULL DEFAULT 'automatic' CHECK (kind IN ('operator', 'automatic'));

-- The latest balance `probe_upstreams` read from an upstream (kie.ai's credits), exported once per fleet by the
-- scheduler so every pod agrees.
CREATE TABLE upstream_balances (
    upstream text PRIMARY KEY,
    balance  double precision NOT NULL,
    read_at  timestamptz NOT NULL DEFAULT now()
);

-- Every operator action, from the CLI and the console: who, what, on what, when, and why. Append-only.
CREATE TABLE operator_actions (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL CHECK (actor <> ''),
    -- `cli` or `console`.
    via     text NOT NULL CHECK (via IN ('cli', 'console')),
    -- e.g. `jobs.retry`, `jobs.pause`, `upstream.resume`.
    action  text NOT NULL,
    -- The queue, job id or upstream acted on.
    target  text NOT NULL,
    reason  text NOT NULL DEFAULT '',
    -- What the action changed (e.g. `{"jobs": 12}`).
    detail  jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX operator_actions_at_idx ON operator_actions (at DESC);
