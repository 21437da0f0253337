//! Where a redirect may go. Every `next` the site accepts (sign-in, Google, the e-mailed link, consent) passes
//! through [`local_path`] and nothing else, so an attacker's link cannot send a visitor off the site after they
//! sign in (an open redirect).

/// The longest `next` kept; longer ones fall back to `/`.
const MAX_NEXT: usize = 2048;

/// `next` if it is an absolute path on this site, else `/`.
///
/// Accepted: it starts with one `/` (not `//`, not `/\`), has no backslash, no whitespace, no control
/// character and nothing outside printable ASCII (so it is always a valid `Location` header), and all of this
/// still holds after percent-decoding it, as often as it decodes: browsers drop tabs and newlines from URLs and
/// read `\` as `/`, so `/%09/evil.example` or `/\evil.example` would otherwise leave the site.
pub fn local_path(next: Option<&str>) -> String {
    match next {
        Some(path) if is_local_path(path) => path.to_owned(),
        _ => "/".to_owned(),
    }
}

fn is_local_path(path: &str) -> bool {
    if path.len() > MAX_NEXT || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return false;
    }
    // Each decoding step must keep the shape; a path stops decoding when it no longer changes.
    let mut current = path.to_owned();
    for _ in 0..8 {
        if !safe_shape(&current) {
            return false;
        }
        let decoded = percent_encoding::percent_decode_str(&current).decode_utf8_lossy();
        if decoded == current {
            return true;
        }
        current = decoded.into_owned();
    }
    // Encoded eight times over: no honest link does that.
    false
}

fn safe_shape(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && !path.contains('\\')
        && !path
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\u{fffd}')
}

#[cfg(test)]
mod tests {
    use super::local_path;
    use proptest::prelude::*;

    const SITE: &str = "https://createimage2.example/";

    /// What a browser does with the `Location` header we would send: the WHATWG URL parser (the `url` crate
    /// implements it) resolves it against the page's URL.
    fn lands_on_site(location: &str) -> bool {
        let base = url::Url::parse(SITE).unwrap();
        base.join(location)
            .is_ok_and(|url| url.origin() == base.origin())
    }

    #[test]
    fn site_paths_with_their_queries_are_kept() {
        for path in [
            "/",
            "/gallery",
            "/generations/0190c1f2-1111-7000-8000-000000000000",
            "/account?tab=keys#api",
            "/gallery?q=caf%C3%A9",
        ] {
            assert_eq!(local_path(Some(path)), path);
        }
    }

    #[test]
    fn every_known_way_off_the_site_falls_back_to_the_home_page() {
        for attack in [
            "//evil.example/",
            "/\t/evil.example/",
            "/%09/evil.example/",
            "/%2509/evil.example/",
            "/%2F/evil.example",
            "/%252F/evil.example",
            "/\\evil.example",
            "/%5Cevil.example",
            "\\/evil.example",
            "https://evil.example/",
            "javascript:alert(1)",
            "/\n/evil.example",
            "/%0A/evil.example",
            "/%0D%0ASet-Cookie:x=1",
            "/%00",
            "/ /evil.example",
            "/\u{3000}/evil.example",
            "/%E3%80%80/evil.example",
            "/%FF",
            "evil.example",
            "",
        ] {
            assert_eq!(local_path(Some(attack)), "/", "{attack:?}");
        }
        assert_eq!(local_path(None), "/");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Whatever the string, the answer is a valid header value that a browser resolves on this site.
        #[test]
        fn no_string_leaves_the_site(next in prop_oneof![
            any::<String>(),
            "[/\\\\%09AaFf20:.@ \t\n\r?#]{0,12}",
            "/[/\\\\%0-9A-Fa-f]{0,10}(evil\\.example)?/?",
        ]) {
            let path = local_path(Some(&next));
            prop_assert!(axum::http::HeaderValue::from_str(&path).is_ok(), "{path:?}");
            prop_assert!(lands_on_site(&path), "{next:?} → {path:?}");
            // And decoded, as a careless reader of it might: still on the site.
            let decoded = percent_encoding::percent_decode_str(&path).decode_utf8_lossy();
            prop_assert!(lands_on_site(&decoded), "{next:?} → {path:?} → {decoded:?}");
        }
    }
}
