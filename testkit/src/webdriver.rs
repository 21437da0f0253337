//! A real headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`; `.ci/run`
//! installs them when missing). Each [`Chrome`] runs its own chromedriver on a free port and one browser
//! session; dropping it ends both.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

pub struct Chrome {
    pub client: Client,
    driver: Child,
    screenshots: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Where screenshots of the browser tests go: `$CARGO_TARGET_DIR/browser-screenshots` (or `target/…`).
pub fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(
            || {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("..")
                    .join("target")
            },
            PathBuf::from,
        )
        .join("browser-screenshots")
}

/// The colour scheme the browser asks pages for (`prefers-color-scheme`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Light,
    Dark,
}

/// One accessibility rule a page breaks, as axe-core reports it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Violation {
    /// The rule (`color-contrast`, `label`, …).
    pub id: String,
    /// `minor`, `moderate`, `serious` or `critical`.
    pub impact: Option<String>,
    pub help: String,
    /// CSS selectors of the elements at fault.
    pub targets: Vec<String>,
}

/// axe-core's browser bundle, from `api/tests/browser/node_modules` (`npm ci` there; `.ci/run` does it).
fn axe_source() -> &'static str {
    static SOURCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SOURCE.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../api/tests/browser/node_modules/axe-core/axe.min.js");
        std::fs::read_to_string(&path).unwrap_or_else(|error| {
            panic!(
                "the accessibility tests need axe-core at {}: (cd api/tests/browser && npm ci) ({error})",
                path.display()
            )
        })
    })
}

impl Chrome {
    /// Starts chromedriver and a headless Chromium in the light scheme ([`Chrome::start_in`]).
    pub async fn start() -> Self {
        Self::start_in(Scheme::Light).await
    }

    /// Starts chromedriver and a headless Chromium that asks pages for `scheme`. Panics with what to install if
    /// they are missing: a browser test never skips.
    pub async fn start_in(scheme: Scheme) -> Self {
        assert!(
            Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists(),
            "browser tests need Debian's chromium and chromium-driver: apt-get install chromium chromium-driver \
             (.ci/run installs them)"
        );
        // Two rustls crypto providers are linked in the test binary; the WebDriver client needs one chosen.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let mut args = vec![
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--window-size=1280,1000",
            "--no-first-run",
            "--disable-extensions",
        ];
        if scheme == Scheme::Dark {
            // Blink's preferredColorScheme: 0 is dark.
            args.extend([
                "--blink-settings=preferredColorScheme=0",
                "--force-dark-mode",
            ]);
        }
        let capabilities = json!({
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args }
        });
        let capabilities = match capabilities {
            serde_json::Value::Object(map) => map,
            _ => unreachable!("a JSON object"),
        };
        let mut last_error = None;
        for _ in 0..50 {
            match ClientBuilder::rustls()
                .expect("rustls is available")
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => {
                    let screenshots = screenshot_dir();
                    std::fs::create_dir_all(&screenshots).expect("the screenshot folder");
                    return Self {
                        client,
                        driver,
                        screenshots,
                    };
                }
                Err(error) => {
                    last_error = Some(error);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        panic!("could not start a Chromium session: {last_error:?}")
    }

    /// Writes a PNG of the current page as `<name>.png` in [`screenshot_dir`].
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(self.screenshots.join(format!("{name}.png")), png)
            .expect("the screenshot is written");
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("the page loads");
    }

    /// Waits (up to `timeout`) for an element matching `css`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> fantoccini::elements::Element {
        self.wait_within(css, timeout)
            .await
            .unwrap_or_else(|error| panic!("no {css} within {timeout:?}: {error}"))
    }

    async fn wait_within(
        &self,
        css: &str,
        timeout: Duration,
    ) -> Result<fantoccini::elements::Element, fantoccini::error::CmdError> {
        self.client
            .wait()
            .at_most(timeout)
            .for_element(Locator::Css(css))
            .await
    }

    /// Like [`Chrome::wait_for`], but a timeout says where the browser is, what the page shows, and what
    /// `explain` finds (the rows behind the page), so a wait that fails once in many runs names its cause.
    pub async fn wait_for_explained(
        &self,
        css: &str,
        timeout: Duration,
        explain: impl std::future::Future<Output = String>,
    ) -> fantoccini::elements::Element {
        match self.wait_within(css, timeout).await {
            Ok(element) => element,
            Err(error) => {
                let url = self.client.current_url().await.map(|u| u.to_string());
                let source = self.client.source().await.unwrap_or_default();
                let text: String = source.chars().take(3000).collect();
                panic!(
                    "no {css} within {timeout:?}: {error}\nat {url:?}\n{}\npage:\n{text}",
                    explain.await
                )
            }
        }
    }

    /// Clicks the element matching `css`, scrolled to the middle of the viewport first (as a person scrolls
    /// to what they want before clicking: nothing fixed at an edge, like the consent banner, covers it).
    pub async fn click(&self, css: &str) {
        let element = self.wait_for(css, Duration::from_secs(10)).await;
        let argument = serde_json::to_value(&element).expect("an element reference");
        self.client
            .execute(
                "arguments[0].scrollIntoView({block: 'center', inline: 'center'})",
                vec![argument],
            )
            .await
            .unwrap_or_else(|error| panic!("scrolling to {css}: {error}"));
        element
            .click()
            .await
            .unwrap_or_else(|error| panic!("clicking {css}: {error}"));
    }

    pub async fn fill(&self, css: &str, text: &str) {
        let element = self.wait_for(css, Duration::from_secs(10)).await;
        element.clear().await.ok();
        element
            .send_keys(text)
            .await
            .unwrap_or_else(|error| panic!("typing into {css}: {error}"));
    }

    /// How many elements match `css` now.
    pub async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |found| found.len())
    }

    /// The WebDriver session, for what the helpers here do not cover (running a script, say).
    pub fn client(&self) -> &fantoccini::Client {
        &self.client
    }

    /// The page's HTML.
    pub async fn source(&self) -> String {
        self.client.source().await.expect("the page source")
    }

    /// Waits until the page's HTML contains `text`.
    pub async fn wait_for_text(&self, text: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.source().await.contains(text) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never showed {text:?}; it shows:\n{}",
                self.source().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("a URL")
            .path()
            .to_owned()
    }

    /// Resizes the window so the page's viewport is `width` CSS pixels wide (a phone: 390).
    pub async fn viewport_width(&self, width: u32) {
        // The window's frame (if any) is measured, not assumed: size, look, correct.
        let mut window = width;
        let mut now = 0.0;
        for _ in 0..3 {
            self.client
                .set_window_size(window, 900)
                .await
                .expect("the window resizes");
            now = self.script_number("return window.innerWidth").await;
            if now as u32 == width {
                break;
            }
            window = (i64::from(window) + i64::from(width) - now as i64).max(1) as u32;
        }
        assert_eq!(now as u32, width, "the viewport is {width} px wide");
    }

    /// How far the page reaches past the viewport's right edge, in CSS pixels (0: no sideways scrolling).
    pub async fn sideways_overflow(&self) -> f64 {
        self.script_number(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
        )
        .await
    }

    async fn script_number(&self, script: &str) -> f64 {
        self.client
            .execute(script, Vec::new())
            .await
            .expect("the script runs")
            .as_f64()
            .expect("a number")
    }

    /// Whether the page sees `prefers-color-scheme: dark`.
    pub async fn prefers_dark(&self) -> bool {
        self.client
            .execute(
                "return window.matchMedia('(prefers-color-scheme: dark)').matches",
                Vec::new(),
            )
            .await
            .expect("the script runs")
            .as_bool()
            .expect("a boolean")
    }

    /// Runs axe-core on the current page: the rules it breaks (WCAG 2.x A and AA, and axe's best practices).
    pub async fn axe(&self) -> Vec<Violation> {
        self.client
            .execute(axe_source(), Vec::new())
            .await
            .expect("axe-core loads into the page");
        let found = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, { resultTypes: ['violations'] })
                    .then(r => done(JSON.stringify(r.violations.map(v => ({
                        id: v.id, impact: v.impact, help: v.help,
                        targets: v.nodes.map(n => n.target.join(' ')) })))))
                    .catch(e => done(JSON.stringify({ error: String(e) })));",
                Vec::new(),
            )
            .await
            .expect("axe-core runs");
        let text = found.as_str().expect("axe's answer as JSON text");
        serde_json::from_str(text).unwrap_or_else(|error| panic!("axe-core: {text} ({error})"))
    }

    /// The value of a cookie the site set.
    pub async fn cookie(&self, name: &str) -> Option<String> {
        self.client
            .get_named_cookie(name)
            .await
            .ok()
            .map(|c| c.value().to_owned())
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}
