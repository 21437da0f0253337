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

#[cfg(test)]
mod tests {
    /// The custom properties set in `block` (`--name: #rrggbb;`), as (name, colour).
    fn colours(block: &str) -> Vec<(String, [f64; 3])> {
        block
            .split(';')
            .filter_map(|declaration| {
                let (name, value) = declaration.split_once(':')?;
                let name = name
                    .trim()
                    .rsplit(|c: char| c.is_whitespace() || c == '{')
                    .next()?;
                let hex = value.trim().strip_prefix('#')?;
                let hex = match hex.len() {
                    6 => hex.to_owned(),
                    3 => hex.chars().flat_map(|c| [c, c]).collect(),
                    _ => return None,
                };
                if !name.starts_with("--") {
                    return None;
                }
                let channel = |i: usize| f64::from(u8::from_str_radix(&hex[i..i + 2], 16).unwrap());
                Some((name.to_owned(), [channel(0), channel(2), channel(4)]))
            })
            .collect()
    }

    fn without_comments(css: &str) -> String {
        let mut out = String::new();
        let mut rest = css;
        while let Some(start) = rest.find("/*") {
            out.push_str(&rest[..start]);
            rest = rest[start..]
                .find("*/")
                .map_or("", |end| &rest[start + end + 2..]);
        }
        out.push_str(rest);
        out
    }

    /// WCAG 2.x relative luminance.
    fn luminance([r, g, b]: [f64; 3]) -> f64 {
        let linear = |c: f64| {
            let c = c / 255.0;
            if c <= 0.039_28 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b)
    }

    fn contrast(a: [f64; 3], b: [f64; 3]) -> f64 {
        let (light, dark) = {
            let (x, y) = (luminance(a), luminance(b));
            if x > y { (x, y) } else { (y, x) }
        };
        (light + 0.05) / (dark + 0.05)
    }

    #[test]
    fn text_colours_read_at_aa_contrast_on_the_page_and_on_cards_in_both_colour_schemes() {
        let css = without_comments(include_str!("../../static/app.css"));
        let css = css.as_str();
        // The declarations between `:root {` and its `}`, after `from`.
        let root_block = |from: usize| {
            let start = from + css[from..].find(":root {").unwrap() + ":root {".len();
            &css[start..start + css[start..].find('}').unwrap()]
        };
        let light = root_block(0);
        let dark = root_block(css.find("prefers-color-scheme: dark").unwrap());
        let light = colours(light);
        let mut dark_scheme = light.clone();
        for (name, colour) in colours(dark) {
            match dark_scheme.iter_mut().find(|(n, _)| *n == name) {
                Some(entry) => entry.1 = colour,
                None => dark_scheme.push((name, colour)),
            }
        }
        for (scheme, vars) in [("light", &light), ("dark", &dark_scheme)] {
            let get = |name: &str| {
                vars.iter()
                    .find(|(n, _)| n == name)
                    .unwrap_or_else(|| panic!("{scheme}: {name}"))
                    .1
            };
            for text in ["--link", "--ok-text", "--danger-text", "--fg", "--muted"] {
                for background in ["--bg", "--card"] {
                    let ratio = contrast(get(text), get(background));
                    assert!(
                        ratio >= 4.5,
                        "{scheme}: {text} on {background} at {ratio:.2}:1"
                    );
                }
            }
        }
    }
}
