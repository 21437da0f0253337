//! The site's own CSS, JavaScript and icon, compiled into the binary (no external CDN). URLs carry a content
//! hash (`/static/app.css?v=…`), so responses are cached for a year and a deploy changes the URL.

use std::sync::LazyLock;

use axum::{
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../static/app.css"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../static/app.js"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../../static/icon.svg"),
    },
];

static VERSIONS: LazyLock<Vec<(&'static str, String)>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let digest = Sha256::digest(asset.body.as_bytes());
            (asset.name, hex::encode(&digest[..6]))
        })
        .collect()
});

/// The cache-busting URL of an asset.
pub fn url(name: &str) -> String {
    let version = VERSIONS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("0", |(_, v)| v.as_str());
    format!("/static/{name}?v={version}")
}

/// `GET /static/{file}`.
pub async fn serve(Path(file): Path<String>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == file) else {
        return super::not_found().into_response();
    };
    let mut response = (StatusCode::OK, asset.body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    response
}
