//! A long history: the gallery (a deep page, a search, a status filter), the generator's recent images and the
//! account's ledger are read through the indexes meant for them, never by scanning the member's rows or
//! everyone's. Each plan is Postgres' own for the very SQL the site runs (`jobs::generations::gallery_query`,
//! `api::site::LEDGER_LINES`), with the values bound, over a planted history of several members, analysed.

use jobs::generations::{GalleryFilter, StatusFilter, gallery_query};
use serde_json::Value;
use testkit::{
    TestDb,
    history::{self, Planting},
};
use uuid::Uuid;

/// The tables a page must never read whole.
const LARGE: &[&str] = &["generations", "generated_images", "credit_ledger"];

/// One scan of a plan: its node type, relation and index.
#[derive(Debug)]
struct Scan {
    node: String,
    relation: Option<String>,
    index: Option<String>,
}

fn collect_scans(plan: &Value, scans: &mut Vec<Scan>) {
    let text = |key: &str| plan[key].as_str().map(str::to_owned);
    if let Some(node) = text("Node Type")
        && node.contains("Scan")
    {
        scans.push(Scan {
            node,
            relation: text("Relation Name"),
            index: text("Index Name"),
        });
    }
    for child in plan["Plans"].as_array().into_iter().flatten() {
        collect_scans(child, scans);
    }
}

/// The scans of `query`'s plan (EXPLAIN (FORMAT JSON) in front of it, its values bound).
async fn scans_of(db: &TestDb, mut query: sqlx::QueryBuilder<sqlx::Postgres>) -> Vec<Scan> {
    let explained: Value = query
        .build_query_scalar()
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let mut scans = Vec::new();
    collect_scans(&explained[0]["Plan"], &mut scans);
    scans
}

/// Asserts that `scans` read `index` by an index scan (plain, index-only or bitmap) and scan no large table
/// whole.
fn reads_by(scans: &[Scan], index: &str, what: &str) {
    assert!(
        scans.iter().any(|s| s.index.as_deref() == Some(index)
            && matches!(
                s.node.as_str(),
                "Index Scan" | "Index Only Scan" | "Bitmap Index Scan"
            )),
        "{what}: expected a scan of {index}, planned {scans:#?}"
    );
    let whole: Vec<&Scan> = scans
        .iter()
        .filter(|s| s.node == "Seq Scan" && LARGE.contains(&s.relation.as_deref().unwrap_or("")))
        .collect();
    assert!(whole.is_empty(), "{what}: sequential scans {whole:#?}");
}

fn gallery(
    user: Uuid,
    filter: GalleryFilter,
    after: Option<(chrono::DateTime<chrono::Utc>, Uuid)>,
    limit: i64,
) -> sqlx::QueryBuilder<sqlx::Postgres> {
    let mut query = sqlx::QueryBuilder::new("EXPLAIN (FORMAT JSON) ");
    gallery_query(&mut query, user, &filter, after, limit);
    query
}

#[tokio::test]
async fn a_long_history_pages_by_index_not_by_scan() {
    let db = TestDb::new().await;
    let member = history::member(&db.pool, 0).await.unwrap();
    // As long a history, which ended 60 days ago: everyone's newer ledger rows sit above this member's.
    let quiet = history::member(&db.pool, 1).await.unwrap();
    let mut plantings = vec![
        Planting::recent(member, 4_000, 180),
        Planting {
            ended_days_ago: 60,
            ..Planting::recent(quiet, 4_000, 180)
        },
    ];
    for n in 2..10 {
        let other = history::member(&db.pool, n).await.unwrap();
        plantings.push(Planting::recent(other, 1_000, 180));
    }
    let planted = history::plant(&db.pool, &plantings, 0.19).await.unwrap();
    assert_eq!(planted.generations, 16_000);

    let first_page = scans_of(&db, gallery(member, GalleryFilter::default(), None, 25)).await;
    reads_by(&first_page, "generations_user_created_idx", "the gallery");
    let recent = scans_of(&db, gallery(member, GalleryFilter::default(), None, 7)).await;
    reads_by(
        &recent,
        "generations_user_created_idx",
        "the generator's recent images",
    );

    let deep: (chrono::DateTime<chrono::Utc>, Uuid) = sqlx::query_as(
        "SELECT created_at, id FROM generations WHERE user_id = $1
          ORDER BY created_at DESC, id DESC OFFSET 3500 LIMIT 1",
    )
    .bind(member)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let deep_page = scans_of(
        &db,
        gallery(member, GalleryFilter::default(), Some(deep), 25),
    )
    .await;
    reads_by(
        &deep_page,
        "generations_user_created_idx",
        "a gallery page 3,500 cards down",
    );

    for word in [history::COMMON_WORD, history::RARE_WORD] {
        let search = GalleryFilter {
            search: Some(word.to_owned()),
            status: None,
        };
        let searched = scans_of(&db, gallery(member, search, None, 25)).await;
        reads_by(
            &searched,
            "generations_user_prompt_search_idx",
            &format!("a search for {word:?}"),
        );
    }

    let in_progress = GalleryFilter {
        search: None,
        status: Some(StatusFilter::InProgress),
    };
    let filtered = scans_of(&db, gallery(member, in_progress, None, 25)).await;
    reads_by(
        &filtered,
        "generations_unfinished_idx",
        "the gallery's in-progress filter",
    );

    for (who, user) in [("the member", member), ("the quiet member", quiet)] {
        let (before, after) = api::site::LEDGER_LINES.split_once("$1").unwrap();
        let mut ledger = sqlx::QueryBuilder::new("EXPLAIN (FORMAT JSON) ");
        ledger.push(before).push_bind(user).push(after);
        let ledger = scans_of(&db, ledger).await;
        reads_by(
            &ledger,
            "credit_ledger_user_created_idx",
            &format!("the account's ledger of {who}"),
        );
    }
}
