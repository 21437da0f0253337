//! Promises the schema itself keeps.

use testkit::TestDb;

#[tokio::test]
async fn no_column_anywhere_can_hold_a_raw_ip_address() {
    let db = TestDb::new().await;
    let suspicious: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text, column_name::text FROM information_schema.columns
          WHERE table_schema IN ('public', 'apalis')
            AND (data_type IN ('inet', 'cidr') OR column_name ~* '(^|_)(ip|ip_address|remote_addr|client_ip)($|_)')",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        suspicious.is_empty(),
        "columns that could hold an IP: {suspicious:?}"
    );
}

#[tokio::test]
async fn secrets_are_stored_only_as_32_byte_hashes() {
    let db = TestDb::new().await;
    for (table, column) in [
        ("sessions", "id_hash"),
        ("sign_in_tokens", "token_hash"),
        ("api_keys", "key_hash"),
    ] {
        let data_type: String = sqlx::query_scalar(
            "SELECT data_type::text FROM information_schema.columns WHERE table_name = $1 AND column_name = $2",
        )
        .bind(table)
        .bind(column)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(data_type, "bytea", "{table}.{column}");
    }
    let error = sqlx::query("INSERT INTO api_keys (id, user_id, name, prefix, key_hash) VALUES (gen_random_uuid(), gen_random_uuid(), 'k', 'p', 'plain')")
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("api_keys_key_hash_check"),
        "{error}"
    );
}

#[tokio::test]
async fn migrations_are_idempotent_when_run_again() {
    let db = TestDb::new().await;
    jobs::db::migrate(&db.pool).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, jobs::db::migrator().iter().count());
}

#[tokio::test]
async fn the_queue_table_indexes_only_what_its_queries_read_and_claims_check_no_foreign_key() {
    let db = TestDb::new().await;
    // Run again, as every process start does: apalis' setup must not bring back what the migrations dropped.
    jobs::db::migrate(&db.pool).await.unwrap();
    let indexes: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT c.relname::text, pg_get_expr(i.indpred, i.indrelid)
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          WHERE i.indrelid = 'apalis.jobs'::regclass
          ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let running = Some("(status = ANY (ARRAY['Queued'::text, 'Running'::text]))".to_owned());
    assert_eq!(
        indexes,
        [
            (
                "createimage2_jobs_claim_idx".to_owned(),
                Some("(status = 'Pending'::text)".to_owned())
            ),
            (
                "createimage2_jobs_done_idx".to_owned(),
                Some(
                    "(status = ANY (ARRAY['Done'::text, 'Killed'::text, 'Failed'::text]))"
                        .to_owned()
                )
            ),
            (
                "createimage2_jobs_idempotency_key_idx".to_owned(),
                Some("(idempotency_key IS NOT NULL)".to_owned())
            ),
            ("createimage2_jobs_lock_by_idx".to_owned(), running.clone()),
            ("createimage2_jobs_running_idx".to_owned(), running),
            ("jobs_pkey".to_owned(), None),
        ]
    );
    let foreign_keys: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'apalis.jobs'::regclass AND contype = 'f'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        foreign_keys, 0,
        "a claim would check apalis.workers once per row"
    );
}
