//! The OpenAPI document as a client's tooling reads it: valid OpenAPI 3.1 (read by the `oas3` crate, every
//! reference resolved), every operation it lists served, every endpoint the README documents listed, and the
//! reference page showing them all.

use oas3::spec::ObjectOrReference;
use serde_json::json;
use testkit::TestApp;

/// The document as a client fetches it, without a key.
async fn document(app: &TestApp) -> (String, oas3::OpenApiV3Spec) {
    let response = app.get("/api/v1/openapi.json").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let text = response.text().await.unwrap();
    let spec = oas3::from_json(&text).expect("the document is OpenAPI 3.1 as oas3 reads it");
    (text, spec)
}

/// `(METHOD, path)` of every operation in the document.
fn operations(spec: &oas3::OpenApiV3Spec) -> Vec<(String, String)> {
    let mut operations: Vec<(String, String)> = spec
        .operations()
        .map(|(path, method, _)| (method.to_string(), path))
        .collect();
    operations.sort();
    operations
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_every_reference_in_it_resolves() {
    let app = TestApp::spawn().await;
    let (_, spec) = document(&app).await;
    assert_eq!(spec.openapi, "3.1.0");
    spec.validate_version().unwrap();
    for (path, method, operation) in spec.operations() {
        let what = format!("{method} {path}");
        let declared = operation.responses.as_ref().map_or(0, |r| r.len());
        let responses = operation.responses(&spec);
        assert_eq!(responses.len(), declared, "{what}: every response resolves");
        for (status, response) in responses {
            for content in response.content.values() {
                if let Some(schema) = &content.schema {
                    schema
                        .resolve(&spec)
                        .unwrap_or_else(|e| panic!("{what} {status}: {e}"));
                }
            }
            for name in ["RateLimit", "RateLimit-Policy"] {
                assert!(
                    response.headers.contains_key(name),
                    "{what} {status}: {name}"
                );
            }
        }
        if let Some(ObjectOrReference::Object(body)) = &operation.request_body {
            for content in body.content.values() {
                content
                    .schema
                    .as_ref()
                    .expect("a request body has a schema")
                    .resolve(&spec)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
            }
        }
        let public = path == "/api/v1/openapi.json";
        let secured = operation
            .security
            .iter()
            .any(|s| s.0.contains_key("api_key"));
        assert_eq!(
            secured, !public,
            "{what}: the bearer key, but for the document"
        );
    }
    app.finish().await;
}

#[tokio::test]
async fn every_operation_the_document_lists_is_served() {
    let app = TestApp::builder().without_worker().spawn().await;
    let user = app.create_user(100).await;
    let (_, spec) = document(&app).await;
    let listed = operations(&spec);
    assert!(listed.len() >= 12, "{listed:?}");
    for (method, path) in listed {
        let url = app.url(&path.replace("{id}", &uuid::Uuid::new_v4().to_string()));
        let method: reqwest::Method = method.parse().unwrap();
        let response = app
            .client
            .request(method.clone(), url)
            .bearer_auth(&user.api_key)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let unrouted = status == 405
            || (status == 404
                && body["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("no such endpoint")));
        assert!(!unrouted, "{method} {path} is not served: {status} {body}");
    }
    app.discard_unrun_jobs().await;
    app.finish().await;
}

/// The endpoints README's JSON API table documents, as `(METHOD, path)`.
fn readme_endpoints() -> Vec<(String, String)> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let mut endpoints: Vec<(String, String)> = readme
        .lines()
        .filter_map(|line| {
            let call = line.strip_prefix("| `")?.split('`').next()?;
            let (method, target) = call.split_once(' ')?;
            let path = target.split('?').next()?;
            path.starts_with("/api/")
                .then(|| (method.to_owned(), path.to_owned()))
        })
        .collect();
    endpoints.sort();
    endpoints.dedup();
    endpoints
}

#[tokio::test]
async fn the_readme_documents_exactly_the_operations_of_the_document() {
    let app = TestApp::spawn().await;
    let (_, spec) = document(&app).await;
    assert_eq!(readme_endpoints(), operations(&spec));
    app.finish().await;
}

#[tokio::test]
async fn the_reference_page_shows_every_operation_and_object() {
    let app = TestApp::spawn().await;
    let (_, spec) = document(&app).await;
    let page = app.get("/docs/api").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    for (method, path) in operations(&spec) {
        assert!(
            html.contains(&format!("{method} {path}")),
            "{method} {path}"
        );
    }
    for object in ["Generation", "Error", "NewGeneration", "Upload", "Export"] {
        assert!(
            html.contains(&format!("id=\"schema-{object}\"")),
            "{object}"
        );
    }
    app.finish().await;
}
