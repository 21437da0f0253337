//! Privacy-policy changes: published ≥ 30 days ahead, every registered user e-mailed once per version.

use chrono::{Duration, Utc};
use jobs::{kinds::SendPolicyNotices, services::JobContext};
use queue::Job;
use testkit::TestApp;

async fn notices(app: &TestApp, version: &str) -> Vec<(String, bool)> {
    sqlx::query_as(
        "SELECT to_address, sent_at IS NOT NULL FROM email_outbox WHERE template = 'policy_notice'
            AND idempotency_key LIKE 'policy_notice:' || $1 || ':%' ORDER BY to_address",
    )
    .bind(version)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_version_effective_sooner_than_30_days_is_refused() {
    let app = TestApp::spawn().await;
    let error = jobs::policy::publish(
        &app.pool,
        "2027-01",
        Utc::now() + Duration::days(29),
        "new processor",
    )
    .await
    .unwrap_err();
    assert!(
        error.to_string().contains("at least 30 days ahead"),
        "{error}"
    );
    assert!(jobs::policy::upcoming(&app.pool).await.unwrap().is_none());
    app.finish().await;
}

#[tokio::test]
async fn every_registered_user_is_notified_once_even_when_the_job_runs_again_after_a_crash() {
    let app = TestApp::builder().without_worker().spawn().await;
    let mut users = Vec::new();
    for _ in 0..3 {
        users.push(app.create_user(0).await);
    }
    jobs::policy::publish(
        &app.pool,
        "2027-02",
        Utc::now() + Duration::days(31),
        "We add a new image processor.",
    )
    .await
    .unwrap();
    let upcoming = jobs::policy::upcoming(&app.pool).await.unwrap().unwrap();
    assert_eq!(upcoming.version, "2027-02");

    // A crash after the first run committed: the job runs again (at-least-once). Nobody is mailed twice.
    let job = SendPolicyNotices {
        version: "2027-02".into(),
    };
    let ctx = JobContext {
        pool: app.pool.clone(),
        app: app.services.clone(),
        job_id: "manual".into(),
        attempt: 1,
        max_attempts: 5,
    };
    job.clone().run(ctx.clone()).await.unwrap();
    job.clone().run(ctx).await.unwrap();
    let queued = notices(&app, "2027-02").await;
    assert_eq!(queued.len(), 3, "{queued:?}");
    let mut addresses: Vec<String> = queued.iter().map(|(a, _)| a.clone()).collect();
    addresses.dedup();
    assert_eq!(addresses.len(), 3, "one notice per user");

    // The worker delivers them (through the outbox transport in tests), exactly once each.
    let worker = app
        .start_worker(
            &[("send_email", 5), ("send_policy_notices", 1)],
            Default::default(),
        )
        .await;
    app.drain().await;
    worker.stop().await;
    assert!(notices(&app, "2027-02").await.iter().all(|(_, sent)| *sent));
    app.finish().await;
}
