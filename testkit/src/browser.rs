//! `Browser`: a cookie-keeping HTTP client that behaves like a browser without JavaScript — it follows
//! redirects when asked, and reads CSRF tokens and links out of pages — for handler tests of the site.

use reqwest::{
    StatusCode,
    header::{HeaderMap, HeaderName, HeaderValue, LOCATION},
};

/// A page as the browser received it.
#[derive(Debug, Clone)]
pub struct Page {
    pub status: StatusCode,
    /// The URL this page came from (after redirects).
    pub url: String,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    /// The redirect target, for a 3xx.
    pub fn location(&self) -> Option<&str> {
        self.headers.get(LOCATION).and_then(|v| v.to_str().ok())
    }

    /// The value of the first `name="<name>" value="…"` field in the page.
    pub fn field(&self, name: &str) -> Option<String> {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self.body.find(&marker)? + marker.len();
        let end = self.body[start..].find('"')? + start;
        Some(html_unescape(&self.body[start..end]))
    }

    /// The page's CSRF token (every page with a form has one).
    pub fn csrf(&self) -> String {
        self.field("csrf")
            .or_else(|| {
                let start = self.body.find("data-csrf=\"")? + "data-csrf=\"".len();
                let end = self.body[start..].find('"')? + start;
                Some(self.body[start..end].to_owned())
            })
            .unwrap_or_else(|| panic!("no CSRF token in the page at {}:\n{}", self.url, self.body))
    }

    /// Every hidden field of the page, in order: `(name, value)`.
    pub fn hidden_fields(&self) -> Vec<(String, String)> {
        let mut fields = vec![];
        let mut rest = self.body.as_str();
        while let Some(at) = rest.find("type=\"hidden\" name=\"") {
            rest = &rest[at + "type=\"hidden\" name=\"".len()..];
            let Some(name_end) = rest.find('"') else {
                break;
            };
            let name = html_unescape(&rest[..name_end]);
            let after = &rest[name_end..];
            let value = after
                .strip_prefix("\" value=\"")
                .and_then(|v| v.find('"').map(|end| html_unescape(&v[..end])))
                .unwrap_or_default();
            fields.push((name, value));
        }
        fields
    }

    pub fn contains(&self, text: &str) -> bool {
        self.body.contains(text)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn html_unescape(text: &str) -> String {
    text.replace("&amp;", "&")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
}

/// The first `http…` URL in a plain-text body starting with `prefix` (e.g. a link in an e-mail).
pub fn find_link(text: &str, prefix: &str) -> Option<String> {
    let start = text.find(prefix)?;
    let end = text[start..]
        .find(|c: char| c.is_whitespace())
        .map_or(text.len(), |e| start + e);
    Some(text[start..end].to_owned())
}

pub struct Browser {
    client: reqwest::Client,
    base: String,
}

impl Browser {
    pub fn new(base: &str) -> Self {
        Self::with_headers(base, HeaderMap::new())
    }

    /// A browser that sends these headers with every request (a user agent, DNT, Sec-GPC, …).
    pub fn with_headers(base: &str, mut headers: HeaderMap) -> Self {
        headers
            .entry(reqwest::header::USER_AGENT)
            .or_insert(HeaderValue::from_static(
                "Mozilla/5.0 (X11; Linux x86_64) createimage2-tests",
            ));
        let client = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(headers)
            .build()
            .expect("a client builds");
        Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// Another browser with the same defaults plus one header.
    pub fn with_header(base: &str, name: &'static str, value: &'static str) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
        Self::with_headers(base, headers)
    }

    fn absolute(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    async fn page(response: reqwest::Response) -> Page {
        let status = response.status();
        let url = response.url().to_string();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap_or_default();
        Page {
            status,
            url,
            headers,
            body,
        }
    }

    /// GET without following redirects.
    pub async fn get(&self, path: &str) -> Page {
        let response = self
            .client
            .get(self.absolute(path))
            .send()
            .await
            .expect("the site answers");
        Self::page(response).await
    }

    /// GET, following redirects (as a click on a link does).
    pub async fn visit(&self, path: &str) -> Page {
        self.follow(self.get(path).await).await
    }

    /// Follows a page's redirects with GETs.
    pub async fn follow(&self, mut page: Page) -> Page {
        for _ in 0..10 {
            if !page.status.is_redirection() {
                return page;
            }
            let target = page
                .location()
                .expect("a redirect has a Location")
                .to_owned();
            let target = reqwest::Url::parse(&page.url)
                .and_then(|base| base.join(&target))
                .map(|u| u.to_string())
                .unwrap_or(target);
            page = self.get(&target).await;
        }
        panic!("too many redirects ending at {}", page.url)
    }

    /// POSTs a form without following the redirect.
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        let response = self
            .client
            .post(self.absolute(path))
            .form(fields)
            .send()
            .await
            .expect("the site answers");
        Self::page(response).await
    }

    /// POSTs a form with extra headers.
    pub async fn post_with(&self, path: &str, fields: &[(&str, &str)], headers: HeaderMap) -> Page {
        let response = self
            .client
            .post(self.absolute(path))
            .headers(headers)
            .form(fields)
            .send()
            .await
            .expect("the site answers");
        Self::page(response).await
    }

    /// POSTs a form and follows the redirect (as a browser does).
    pub async fn submit(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        self.follow(self.post(path, fields).await).await
    }

    /// The underlying client (cookies included), for JSON calls a page's script would make.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }
}
