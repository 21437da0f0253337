-- Generations: the user's intent, its progress through the pipeline, and the stored results.
--
-- Privacy policy §1.2/§1.3/§1.5: prompts, reference images, generated images and the usage log are the user's,
-- kept until they delete them or their account.

-- Reference images uploaded straight to the bucket through a presigned PUT. The api signs; bytes never pass
-- through it. `verified_at` is set once the submit job has checked the object (HEAD: size and type).
CREATE TABLE uploads (
    id            uuid PRIMARY KEY,
    user_id       uuid REFERENCES users (id) ON DELETE CASCADE,
    object_key    text NOT NULL UNIQUE,
    content_type  text NOT NULL CHECK (content_type IN ('image/jpeg', 'image/png', 'image/webp')),
    byte_size     bigint NOT NULL CHECK (byte_size > 0 AND byte_size <= 10485760),
    created_at    timestamptz NOT NULL DEFAULT now(),
    verified_at   timestamptz
);
CREATE INDEX uploads_user_idx ON uploads (user_id, created_at DESC);

CREATE TABLE generations (
    id                  uuid PRIMARY KEY,
    -- NULL for a no-signup trial generation, which belongs to a browser session instead.
    user_id             uuid REFERENCES users (id) ON DELETE CASCADE,
    trial_session_hash  bytea,
    prompt              text NOT NULL CHECK (char_length(prompt) BETWEEN 1 AND 20000),
    aspect_ratio        text NOT NULL DEFAULT 'auto',
    resolution          text NOT NULL DEFAULT '1K' CHECK (resolution IN ('1K', '2K', '4K')),
    model               text NOT NULL,
    reference_upload_ids uuid[] NOT NULL DEFAULT '{}' CHECK (cardinality(reference_upload_ids) <= 16),
    status              text NOT NULL DEFAULT 'queued'
                        CHECK (status IN ('queued', 'submitting', 'generating', 'storing', 'succeeded', 'failed')),
    credits_reserved    integer NOT NULL CHECK (credits_reserved >= 0),
    -- kie.ai's task id, set once the task exists upstream.
    upstream_task_id    text UNIQUE,
    -- SHA-256 of the per-generation secret embedded in the callback URL.
    callback_secret_hash bytea,
    failure_code        text,
    -- Shown to the user as is: plain words they can act on.
    failure_reason      text,
    -- Client-supplied Idempotency-Key of the POST that created it: a retried POST returns this generation.
    idempotency_key     text,
    -- Follows the generation through every job and upstream call in the logs.
    trace_id            text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    submitted_at        timestamptz,
    upstream_finished_at timestamptz,
    stored_at           timestamptz,
    finished_at         timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    -- Polling gives up past this instant and the reservation is refunded.
    poll_deadline_at    timestamptz,
    CHECK (user_id IS NOT NULL OR trial_session_hash IS NOT NULL),
    CHECK ((status IN ('succeeded', 'failed')) = (finished_at IS NOT NULL))
);
-- The gallery and the JSON list: newest first per user, with (created_at, id) as the cursor.
CREATE INDEX generations_user_created_idx ON generations (user_id, created_at DESC, id DESC);
CREATE UNIQUE INDEX generations_idempotency_key ON generations (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Unfinished work, for audits and the ops console.
CREATE INDEX generations_unfinished_idx ON generations (status) WHERE finished_at IS NULL;

CREATE TABLE generated_images (
    id            uuid PRIMARY KEY,
    generation_id uuid NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
    n             integer NOT NULL CHECK (n >= 0),
    object_key    text NOT NULL UNIQUE,
    byte_size     bigint NOT NULL CHECK (byte_size > 0),
    content_type  text NOT NULL,
    width         integer CHECK (width > 0),
    height        integer CHECK (height > 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (generation_id, n)
);

-- Callbacks received from kie.ai: recorded, then confirmed by the worker with recordInfo. A hint only.
CREATE TABLE upstream_callbacks (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    generation_id uuid NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
    upstream_task_id text,
    state         text,
    received_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX upstream_callbacks_generation_idx ON upstream_callbacks (generation_id);

-- Privacy policy §1.5, exactly: task id, model, generation time, pass/fail. Nothing else.
CREATE TABLE usage_log (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id          uuid REFERENCES users (id) ON DELETE CASCADE,
    -- One row per generation outcome, written by the settle/refund step.
    generation_id    uuid UNIQUE,
    task_id          text,
    model            text NOT NULL,
    generation_ms    integer,
    succeeded        boolean NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_log_user_idx ON usage_log (user_id, created_at DESC);
