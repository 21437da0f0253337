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
    assert_eq!(applied as usize, jobs::db::MIGRATOR.iter().count());
}
