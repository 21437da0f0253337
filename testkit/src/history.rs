//! A long history planted by SQL: months of generations for several members, with what a real history leaves
//! behind (stored images, usage-log rows, a reservation and its settle or refund per generation in the ledger,
//! the pack purchases that paid for them), in far less time than the pipeline would take to make them.
//!
//! Every row goes through the schema's own constraints and triggers (the ledger's balance trigger refuses an
//! overdraft, each ledger key applies once, a final status has its `finished_at`), so a planted history is one
//! the product could have written. All members' rows are written in one time order, as a real table receives
//! them: one member's generations are spread over the heap among everyone else's, not packed together.
//!
//! The mix: requests of one image mostly, some of two or four (variations sharing one `created_at` and
//! `batch_id`); 1K mostly, some 2K and 4K; 93 % succeeded, 5.5 % failed (mostly refused by the content policy),
//! 1.5 % cancelled while queued; prompts of 5–20 words drawn from a vocabulary of a few hundred, so a word
//! matches a few percent of the prompts (every subject about 2.5 %, "lighthouse" among them) and "narwhal" one
//! in a thousand. Every 50 generations of a member are paid by a purchase of Studio packs (`pack_500`) made
//! just before them, with its payment row and its grant, enough for the 50 and leaving a balance.

use sqlx::PgPool;
use uuid::Uuid;

/// A word that appears in about 2.5 % of planted prompts (one subject among forty).
pub const COMMON_WORD: &str = "lighthouse";
/// A word that appears in about one planted prompt in a thousand.
pub const RARE_WORD: &str = "narwhal";

/// One member's planted history: `generations` over `days` days that ended `ended_days_ago` days ago (0: an
/// hour ago; a member who stopped a while back has everyone else's newer rows above theirs).
#[derive(Debug, Clone, Copy)]
pub struct Planting {
    pub user: Uuid,
    pub generations: i32,
    pub days: i32,
    pub ended_days_ago: i32,
}

impl Planting {
    /// `generations` over the last `days` days, up to an hour ago.
    pub fn recent(user: Uuid, generations: i32, days: i32) -> Self {
        Self {
            user,
            generations,
            days,
            ended_days_ago: 0,
        }
    }
}

/// What was planted, counted.
#[derive(Debug, Clone, Copy, Default)]
pub struct Planted {
    pub generations: i64,
    pub images: i64,
    pub ledger_rows: i64,
    pub payments: i64,
}

/// A member with an account (`history-<n>@example.com`), for histories of other members.
pub async fn member(pool: &PgPool, n: usize) -> sqlx::Result<Uuid> {
    let id = Uuid::new_v4();
    sqlx::query("INSERT INTO users (id, email, email_verified_at) VALUES ($1, $2, now())")
        .bind(id)
        .bind(format!("history-{n}@example.com"))
        .execute(pool)
        .await?;
    sqlx::query("INSERT INTO credit_accounts (user_id) VALUES ($1)")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(id)
}

/// Plants each member's history, then VACUUMs and ANALYZEs the tables it wrote (as autovacuum would soon after
/// so many inserts: its visibility map and statistics, and the prompt index's pending entries merged). `seed` (0..1) makes prompts, statuses and times the same from run to
/// run. The generations, images, usage and payments are one transaction; the ledger follows in transactions of
/// [`LEDGER_BATCH`] rows, in time order: its trigger updates the member's balance row once per ledger row, and
/// tens of thousands of updates of one row in one transaction leave a chain of versions no update can skip
/// (the ledger alone took 83 s in one transaction, a few seconds in batches).
pub async fn plant(pool: &PgPool, members: &[Planting], seed: f64) -> sqlx::Result<Planted> {
    let users: Vec<Uuid> = members.iter().map(|m| m.user).collect();
    let counts: Vec<i32> = members.iter().map(|m| m.generations).collect();
    let days: Vec<i32> = members.iter().map(|m| m.days).collect();
    let ended: Vec<i32> = members.iter().map(|m| m.ended_days_ago).collect();
    // Temporary tables live on one connection.
    let mut conn = pool.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::query("SELECT setseed($1)")
        .bind(seed)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO credit_accounts (user_id) SELECT unnest($1::uuid[]) ON CONFLICT DO NOTHING",
    )
    .bind(&users)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "CREATE TEMP TABLE planting (user_id uuid NOT NULL, n int NOT NULL, days int NOT NULL, ended int NOT NULL)",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO planting SELECT * FROM unnest($1::uuid[], $2::int[], $3::int[], $4::int[])",
    )
    .bind(&users)
    .bind(&counts)
    .bind(&days)
    .bind(&ended)
    .execute(&mut *tx)
    .await?;
    let mut planted = Planted::default();
    sqlx::query(PLAN).execute(&mut *tx).await?;
    planted.generations = rows(sqlx::query(GENERATIONS).execute(&mut *tx).await?);
    planted.images = rows(sqlx::query(IMAGES).execute(&mut *tx).await?);
    sqlx::query(USAGE).execute(&mut *tx).await?;
    sqlx::query(PAYMENT_PLAN).execute(&mut *tx).await?;
    planted.payments = rows(sqlx::query(PAYMENTS).execute(&mut *tx).await?);
    let movements = rows(sqlx::query(MOVEMENTS).execute(&mut *tx).await?);
    tx.commit().await?;
    let mut from = 1;
    while from <= movements {
        planted.ledger_rows += rows(
            sqlx::query(LEDGER)
                .bind(from)
                .bind(from + LEDGER_BATCH - 1)
                .execute(&mut *conn)
                .await?,
        );
        from += LEDGER_BATCH;
    }
    sqlx::query("DROP TABLE planting, planted, planted_payments, planted_movements")
        .execute(&mut *conn)
        .await?;
    for table in [
        "generations",
        "generated_images",
        "usage_log",
        "payments",
        "credit_ledger",
        "credit_accounts",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {table}")))
            .execute(&mut *conn)
            .await?;
    }
    Ok(planted)
}

/// Ledger rows per transaction while planting.
pub const LEDGER_BATCH: i64 = 2_000;

fn rows(done: sqlx::postgres::PgQueryResult) -> i64 {
    done.rows_affected() as i64
}

/// The plan: one row per generation to plant (from `planting`: each member, how many, over how many days), with every choice
/// made. Random numbers are drawn in the inner selects and read by name in the outer ones, so one draw decides
/// one thing.
const PLAN: &str = r#"
CREATE TEMP TABLE planted AS
WITH requests AS (
    SELECT m.user_id, m.n, m.days, m.ended, r,
           gen_random_uuid() AS batch,
           random() AS u_variations, random() AS u_resolution, random() AS u_ratio,
           random() AS u_adjective, random() AS u_subject, random() AS u_setting, random() AS u_style,
           random() AS u_detail, random() AS u_rare, random() AS u_time
      FROM planting m
     CROSS JOIN LATERAL generate_series(1, m.n) AS r
), shaped AS (
    SELECT user_id, n, r, batch,
           (CASE WHEN u_variations < 0.02 THEN 4 WHEN u_variations < 0.07 THEN 2 ELSE 1 END)::smallint AS variations,
           CASE WHEN u_resolution < 0.7 THEN '1K' WHEN u_resolution < 0.9 THEN '2K' ELSE '4K' END AS resolution,
           (ARRAY['auto', '1:1', '1:1', '16:9', '9:16', '3:2', '2:3', '4:3', '3:4'])[1 + floor(u_ratio * 9)::int]
               AS aspect_ratio,
           concat_ws(', ', concat_ws(' ',
               (ARRAY['weathered', 'tiny', 'enormous', 'glowing', 'ancient', 'futuristic', 'quiet', 'crowded',
                      'abandoned', 'golden', 'frozen', 'misty', 'neon', 'rustic', 'elegant', 'broken', 'floating',
                      'sleepy', 'curious', 'majestic', 'colourful', 'minimal', 'haunted', 'sunlit', 'stormy',
                      'velvet', 'crystal', 'wooden', 'paper', 'copper'])[1 + floor(u_adjective * 30)::int],
               (ARRAY['lighthouse', 'cat', 'fox', 'castle', 'robot', 'teapot', 'forest', 'city', 'dragon',
                      'bicycle', 'garden', 'library', 'owl', 'sailboat', 'mountain', 'astronaut', 'bakery',
                      'whale', 'train station', 'greenhouse', 'violin', 'market', 'tiger', 'bridge', 'cottage',
                      'jellyfish', 'windmill', 'samurai', 'octopus', 'cathedral', 'hummingbird', 'desert',
                      'submarine', 'carousel', 'waterfall', 'tram', 'beekeeper', 'chess set', 'hot air balloon',
                      'orchard'])[1 + floor(u_subject * 40)::int],
               (ARRAY['at dawn', 'at night', 'in the rain', 'under a full moon', 'on a cliff', 'in the snow',
                      'by the sea', 'in a busy street', 'on a distant planet', 'in autumn', 'at sunset',
                      'in a dense fog', 'underwater', 'in a snow globe', 'on a rooftop', 'in the desert',
                      'among cherry blossoms', 'inside a cave', 'in a thunderstorm', 'at golden hour',
                      'in a meadow', 'above the clouds', 'in an old photograph', 'on a rainy window',
                      'at a night market', 'in springtime', 'on the moon', 'in a jungle', 'by a campfire',
                      'in a mirror'])[1 + floor(u_setting * 30)::int],
               CASE WHEN u_rare < 0.001 THEN 'and a narwhal' END),
               CASE WHEN u_style < 0.6 THEN
               (ARRAY['watercolor', 'oil painting', 'photorealistic', 'pixel art', 'studio lighting',
                      'isometric', 'ukiyo-e woodblock print', 'pencil sketch', 'cinematic',
                      '35mm film grain', 'low poly', 'art nouveau poster', 'claymation',
                      'children''s book illustration', 'charcoal drawing', 'vaporwave', 'bauhaus',
                      'stained glass', 'macro photograph', 'long exposure', 'tilt-shift',
                      'impressionist', 'comic book', 'blueprint', 'embroidery'])[1 + floor(u_style * 25 / 0.6)::int]
               END,
               CASE WHEN u_detail < 0.25 THEN
               (ARRAY['with soft shadows and a shallow depth of field', 'highly detailed, intricate textures',
                      'muted pastel palette, gentle light', 'dramatic contrast, deep blacks and bright highlights',
                      'wide angle, symmetrical composition', 'seen from above, lots of empty space',
                      'warm tones, cosy atmosphere, steam rising', 'cold blue palette, sharp reflections'])
                   [1 + floor(u_detail * 8 / 0.25)::int]
               END) AS prompt,
           now() - interval '1 hour' - make_interval(days => days + ended)
               + make_interval(secs => (r - 1 + u_time * 0.8) * days * 86400.0 / n) AS created_at
      FROM requests
), generations AS (
    SELECT s.*, v AS variation,
           CASE WHEN v = 1 THEN batch ELSE gen_random_uuid() END AS id,
           random() AS u_status, random() AS u_failure, random() AS u_submit, random() AS u_upstream,
           random() AS u_store, random() AS u_size
      FROM shaped s CROSS JOIN LATERAL generate_series(1, s.variations) AS v
), chosen AS (
    SELECT g.*,
           row_number() OVER (PARTITION BY user_id ORDER BY r, variation) AS nth,
           CASE WHEN u_status < 0.93 THEN 'succeeded' WHEN u_status < 0.985 THEN 'failed' ELSE 'cancelled' END
               AS status
      FROM generations g
)
SELECT id, user_id, batch, variation, variations, prompt, aspect_ratio, resolution,
       CASE resolution WHEN '1K' THEN 10 WHEN '2K' THEN 20 ELSE 40 END AS cost,
       status, created_at, (nth - 1) / 50 AS block,
       CASE WHEN status <> 'cancelled' THEN created_at + make_interval(secs => 0.2 + u_submit * 2) END
           AS submitted_at,
       CASE WHEN status <> 'cancelled'
            THEN created_at + make_interval(secs => 8 + u_upstream * 40) END AS upstream_finished_at,
       CASE status WHEN 'cancelled' THEN created_at + make_interval(secs => 1 + u_upstream * 9)
                   ELSE created_at + make_interval(secs => 8 + u_upstream * 40 + 0.5 + u_store * 2) END
           AS finished_at,
       CASE WHEN status = 'failed' THEN
            CASE WHEN u_failure < 0.7 THEN 'content_policy' WHEN u_failure < 0.9 THEN 'generation_failed'
                 ELSE 'deadline_exceeded' END END AS failure_code,
       1200000 + floor(u_size * 1800000)::bigint AS byte_size,
       md5(batch::text) AS trace_id
  FROM chosen
 WHERE nth <= n
"#;

const GENERATIONS: &str = r#"
INSERT INTO generations (id, user_id, prompt, aspect_ratio, resolution, model, status, credits_reserved,
                         upstream_task_id, failure_code, failure_reason, trace_id, created_at, submitted_at,
                         upstream_finished_at, stored_at, finished_at, updated_at, poll_deadline_at,
                         submit_attempts, batch_id, variation, variations)
SELECT id, user_id, prompt, aspect_ratio, resolution, 'gpt-image-2-text-to-image', status, cost,
       CASE WHEN submitted_at IS NOT NULL THEN 'planted-' || id END,
       failure_code,
       CASE failure_code
            WHEN 'content_policy' THEN 'The image service refused this prompt under its content policy.'
            WHEN 'generation_failed' THEN 'The image service could not make this image. Your credits were refunded.'
            WHEN 'deadline_exceeded' THEN 'The image took too long to make. Your credits were refunded.' END,
       trace_id, created_at, submitted_at, upstream_finished_at,
       CASE WHEN status = 'succeeded' THEN finished_at END, finished_at, finished_at,
       submitted_at + interval '10 minutes',
       CASE WHEN submitted_at IS NOT NULL THEN 1 ELSE 0 END, batch, variation, variations
  FROM planted
 ORDER BY created_at, batch, variation
"#;

const IMAGES: &str = r#"
INSERT INTO generated_images (id, generation_id, n, object_key, byte_size, content_type, width, height, created_at)
SELECT gen_random_uuid(), id, 0, 'users/' || user_id || '/generations/' || id || '/0.png', byte_size, 'image/png',
       scale * CASE aspect_ratio WHEN '16:9' THEN 1376 WHEN '9:16' THEN 768 WHEN '3:2' THEN 1264
                                 WHEN '2:3' THEN 848 WHEN '4:3' THEN 1184 WHEN '3:4' THEN 864 ELSE 1024 END,
       scale * CASE aspect_ratio WHEN '16:9' THEN 768 WHEN '9:16' THEN 1376 WHEN '3:2' THEN 848
                                 WHEN '2:3' THEN 1264 WHEN '4:3' THEN 864 WHEN '3:4' THEN 1184 ELSE 1024 END,
       finished_at
  FROM (SELECT *, CASE resolution WHEN '1K' THEN 1 WHEN '2K' THEN 2 ELSE 4 END AS scale FROM planted) p
 WHERE status = 'succeeded'
 ORDER BY finished_at
"#;

const USAGE: &str = r#"
INSERT INTO usage_log (user_id, generation_id, task_id, model, generation_ms, succeeded, created_at)
SELECT user_id, id, 'planted-' || id, 'gpt-image-2-text-to-image',
       (EXTRACT(EPOCH FROM upstream_finished_at - submitted_at) * 1000)::int, status = 'succeeded', finished_at
  FROM planted
 WHERE status <> 'cancelled'
 ORDER BY finished_at
"#;

/// A purchase per block of 50 generations, a minute before the block's first: as many Studio packs (500
/// credits, $20) as the block's reservations need.
const PAYMENT_PLAN: &str = r#"
CREATE TEMP TABLE planted_payments AS
SELECT gen_random_uuid() AS id, user_id, block,
       min(created_at) - interval '1 minute' AS paid_at,
       ceil(sum(cost) / 500.0)::bigint AS packs
  FROM planted
 GROUP BY user_id, block
"#;

const PAYMENTS: &str = r#"
INSERT INTO payments (id, user_id, pseudonym, stripe_object_id, product_id, amount_minor, currency, paid_at,
                      created_at, kind, credits, stripe_payment_intent)
SELECT id, user_id, md5(id::text), 'cs_planted_' || id, 'pack_500', packs * 2000, 'usd', paid_at, paid_at,
       'pack', packs * 500, 'pi_planted_' || id
  FROM planted_payments
 ORDER BY paid_at
"#;

/// Every movement in time order, numbered (ids follow time, as they would): the grants, then per generation
/// its reservation and, once finished, its settle or refund.
const MOVEMENTS: &str = r#"
CREATE TEMP TABLE planted_movements AS
SELECT row_number() OVER (ORDER BY at, amount DESC, business_key) AS seq, * FROM (
    SELECT user_id, 'grant' AS kind, packs * 500 AS amount, 'pack:cs_planted_' || id AS business_key,
           jsonb_build_object('product', 'pack_500', 'checkout_session', 'cs_planted_' || id) AS detail,
           paid_at AS at
      FROM planted_payments
    UNION ALL
    SELECT user_id, 'reserve', -cost, 'generation:' || id, jsonb_build_object('generation', id), created_at
      FROM planted
    UNION ALL
    SELECT user_id, 'settle', 0, 'generation:' || id, jsonb_build_object('generation', id, 'credits', cost),
           finished_at
      FROM planted WHERE status = 'succeeded'
    UNION ALL
    SELECT user_id, 'refund', cost, 'generation:' || id,
           jsonb_build_object('generation', id, 'reason', coalesce(failure_code, 'cancelled')), finished_at
      FROM planted WHERE status <> 'succeeded'
) movements
"#;

/// One batch of movements, `$1` to `$2` by number; the balance trigger checks each row.
const LEDGER: &str = r#"
INSERT INTO credit_ledger (user_id, kind, amount, business_key, detail, created_at)
SELECT user_id, kind, amount, business_key, detail, at
  FROM planted_movements
 WHERE seq BETWEEN $1 AND $2
 ORDER BY seq
"#;
