//! The site's pages: plain functions from data to markup (maud). No inline script or style (the CSP forbids
//! both): behaviour lives in `static/app.js`, looks in `static/app.css`.

use chrono::{DateTime, Utc};
use jobs::{
    config::Product,
    export_requests::ExportStatus,
    generations::{AspectRatio, Resolution, Status, combination_allowed},
};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use uuid::Uuid;

use super::assets;

/// What every page's frame shows: who is signed in, the flash message, the consent banner.
#[derive(Debug, Default, Clone)]
pub struct Chrome {
    pub member: Option<(String, i64)>,
    pub csrf: Option<String>,
    pub flash: Option<String>,
    /// Ask for analytics consent (no choice recorded, no DNT/GPC signal, analytics configured).
    pub banner: bool,
    /// Load Google Analytics: `(measurement id, script URL)`, only with consent.
    pub analytics: Option<(String, String)>,
    /// The current path, for the sign-in link's `next`.
    pub path: String,
    /// Without JavaScript, reload the page every few seconds (pages waiting for a worker).
    pub refresh: bool,
}

pub fn page(title: &str, chrome: &Chrome, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · createimage2" }
                link rel="stylesheet" href=(assets::url("app.css"));
                link rel="icon" href=(assets::url("icon.svg")) type="image/svg+xml";
                script src=(assets::url("app.js")) defer {}
                @if chrome.refresh { noscript { meta http-equiv="refresh" content="3"; } }
            }
            body data-ga-id=[chrome.analytics.as_ref().map(|a| &a.0)]
                 data-ga-src=[chrome.analytics.as_ref().map(|a| &a.1)]
                 data-csrf=[chrome.csrf.as_ref()] {
                a.skip href="#main" { "Skip to content" }
                header.site-header {
                    nav aria-label="Main" {
                        a.brand href="/" { "createimage2" }
                        a href="/" { "Generate" }
                        @if chrome.member.is_some() { a href="/gallery" { "Gallery" } }
                        a href="/pricing" { "Pricing" }
                    }
                    div.account-menu {
                        @if let Some((email, balance)) = &chrome.member {
                            a.balance href="/account#credits" title="Your credit balance" {
                                span.credits data-balance=(balance) { (balance) } " credits"
                            }
                            a href="/account" { (email) }
                            @if let Some(csrf) = &chrome.csrf {
                                form method="post" action="/sign-out" {
                                    input type="hidden" name="csrf" value=(csrf);
                                    button.link type="submit" { "Sign out" }
                                }
                            }
                        } @else {
                            a.button href={ "/sign-in?next=" (urlencode(&chrome.path)) } { "Sign in" }
                        }
                    }
                }
                @if let Some(flash) = &chrome.flash {
                    p.flash role="status" { (flash) }
                }
                main id="main" { (body) }
                footer.site-footer {
                    p {
                        a href="/privacy-policy" { "Privacy policy" } " · "
                        a href="/terms" { "Terms" } " · "
                        a href="/pricing" { "Pricing" } " · "
                        a href="mailto:support@createimage2.com" { "support@createimage2.com" }
                    }
                    p.muted { "Images by OpenAI's gpt-image-2 via kie.ai. Your gallery is private; you own what you generate." }
                }
                @if chrome.banner && let Some(csrf) = &chrome.csrf {
                    section.consent-banner aria-label="Cookie consent" id="consent-banner" {
                        p {
                            "We use essential cookies to keep you signed in. With your consent we would also use "
                            "Google Analytics for aggregated page-view statistics. "
                            a href="/privacy-policy#cookies" { "Details" }
                        }
                        form method="post" action="/consent" {
                            input type="hidden" name="csrf" value=(csrf);
                            input type="hidden" name="next" value=(chrome.path);
                            button type="submit" name="analytics" value="no" id="consent-decline" { "Essential only" }
                            button.primary type="submit" name="analytics" value="yes" id="consent-accept" { "Allow analytics" }
                        }
                    }
                }
            }
        }
    }
}

pub fn urlencode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// A page for errors (404, 403, 500, …), matching the site.
pub fn error_page(title: &str, message: &str) -> Markup {
    page(
        title,
        &Chrome::default(),
        html! {
            section.narrow {
                h1 { (title) }
                p { (message) }
                p { a.button href="/" { "Back to the generator" } }
            }
        },
    )
}

/// The generator form's values (kept when a submission is refused).
#[derive(Debug, Clone)]
pub struct GeneratorForm {
    pub prompt: String,
    pub aspect_ratio: String,
    pub resolution: String,
    /// Reference uploads already attached: `(upload id, preview URL)`.
    pub references: Vec<(Uuid, String)>,
    pub error: Option<String>,
}

impl GeneratorForm {
    /// Credits the chosen resolution costs (a word that is no resolution, from a refused submission, costs what
    /// the default does).
    pub fn cost(&self) -> i64 {
        self.resolution
            .parse::<Resolution>()
            .unwrap_or(Resolution::R1K)
            .cost()
    }
}

impl Default for GeneratorForm {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            aspect_ratio: "auto".into(),
            resolution: "1K".into(),
            references: vec![],
            error: None,
        }
    }
}

fn aspect_ratio_select(selected: &str) -> Markup {
    html! {
        label for="aspect_ratio" { "Aspect ratio" }
        select id="aspect_ratio" name="aspect_ratio" {
            @for ratio in AspectRatio::ALL {
                option value=(ratio) selected[ratio.as_str() == selected] { (ratio) }
            }
        }
    }
}

/// The resolutions valid with each aspect ratio, for the script that hides the rest: without reference images
/// (text to image) or with them (image to image), whose rules differ.
fn allowed_matrix(with_references: bool) -> String {
    let pairs: Vec<String> = AspectRatio::ALL
        .iter()
        .map(|&ratio| {
            let allowed: Vec<&str> = Resolution::ALL
                .iter()
                .filter(|&&res| combination_allowed(ratio, res, with_references))
                .map(|res| res.as_str())
                .collect();
            format!("{ratio}={}", allowed.join("|"))
        })
        .collect();
    pairs.join(";")
}

/// Home for a signed-in member: the generator.
pub fn generator(chrome: &Chrome, csrf: &str, balance: i64, form: &GeneratorForm) -> Markup {
    page(
        "Generate images",
        chrome,
        html! {
            section.generator {
                h1 { "Generate an image" }
                @if let Some(error) = &form.error {
                    p.error role="alert" id="form-error" { (error) }
                }
                form method="post" action="/generate" id="generator" data-allowed=(allowed_matrix(false))
                    data-allowed-with-references=(allowed_matrix(true)) {
                    input type="hidden" name="csrf" value=(csrf);
                    // A resubmitted form (double click, back and submit) creates one generation, not two.
                    input type="hidden" name="idempotency_key" value=(Uuid::new_v4());
                    label for="prompt" { "Prompt" }
                    textarea id="prompt" name="prompt" rows="5" maxlength="20000" required
                        placeholder="A lighthouse on a cliff at dawn, watercolour" { (form.prompt) }
                    div.row {
                        div { (aspect_ratio_select(&form.aspect_ratio)) }
                        div {
                            label for="resolution" { "Resolution" }
                            select id="resolution" name="resolution" {
                                @for res in Resolution::ALL {
                                    option value=(res) data-cost=(res.cost()) selected[res.as_str() == form.resolution] {
                                        (res) " — " (res.cost()) " credits"
                                    }
                                }
                            }
                        }
                    }
                    fieldset.references {
                        legend { "Reference images " span.muted { "(optional, up to 16; JPEG, PNG or WebP, 10 MB each)" } }
                        div.previews id="reference-previews" {
                            @for (id, url) in &form.references {
                                figure.preview {
                                    img src=(url) alt="Reference image";
                                    input type="hidden" name="reference_upload_ids" value=(id);
                                    button.remove.js-only type="button" aria-label="Remove this reference image" { "Remove" }
                                }
                            }
                        }
                        div.js-only {
                            label for="reference-files" { "Add reference images" }
                            input type="file" id="reference-files" accept="image/jpeg,image/png,image/webp" multiple;
                            p.muted id="upload-status" aria-live="polite" {}
                        }
                        noscript { p.muted { "Adding reference images needs JavaScript." } }
                    }
                    p.cost {
                        "This costs " strong id="cost" { (form.cost()) } " credits. Your balance: "
                        strong { (balance) } "."
                        @if balance < form.cost() { " " a href="/pricing" { "Buy credits" } }
                    }
                    button.primary type="submit" id="generate" { "Generate" }
                }
            }
        },
    )
}

/// Home for a visitor: what the service is, sign-in, and the one free trial.
pub fn landing(
    chrome: &Chrome,
    csrf: &str,
    trial: Option<(&str, &str)>,
    form: &GeneratorForm,
) -> Markup {
    page(
        "Generate images with gpt-image-2",
        chrome,
        html! {
            section.hero {
                h1 { "Generate images with gpt-image-2" }
                p.lead { "Type a prompt, add reference images, and keep every result in a private gallery. No passwords: sign in with Google or an e-mailed link." }
                p { a.button.primary href="/sign-in" { "Sign in or sign up" } " " a.button href="/pricing" { "See pricing" } }
            }
            @if let Some((site_key, script_url)) = trial {
                section.trial aria-labelledby="trial-title" {
                    h2 id="trial-title" { "Try it once, free, without an account" }
                    p.muted { "One 1K image per visitor per day. We keep only a salted hash of your IP address and browser to prevent abuse, deleted after 24 hours." }
                    @if let Some(error) = &form.error {
                        p.error role="alert" id="form-error" { (error) }
                    }
                    form method="post" action="/trial" id="trial-form" {
                        input type="hidden" name="csrf" value=(csrf);
                        label for="trial-prompt" { "Prompt" }
                        textarea id="trial-prompt" name="prompt" rows="3" maxlength="20000" required { (form.prompt) }
                        (aspect_ratio_select(&form.aspect_ratio))
                        div.cf-turnstile data-sitekey=(site_key) data-action=(super::trial::TRIAL_ACTION) {}
                        script src=(script_url) async defer {}
                        button.primary type="submit" id="trial-generate" { "Generate my free image" }
                    }
                }
            }
        },
    )
}

/// One generation as the pages show it.
#[derive(Debug, Clone)]
pub struct GenerationView {
    pub id: Uuid,
    pub status: Status,
    pub prompt: String,
    pub aspect_ratio: AspectRatio,
    pub resolution: Resolution,
    pub created_at: DateTime<Utc>,
    pub failure_reason: Option<String>,
    pub image_urls: Vec<String>,
    pub credits: i32,
    /// The reference images it was made with: `(upload id, preview URL)`.
    pub references: Vec<(Uuid, String)>,
}

impl GenerationView {
    pub fn finished(&self) -> bool {
        self.status.is_final()
    }
}

fn status_label(status: Status) -> &'static str {
    match status {
        Status::Queued => "Queued",
        Status::Submitting => "Sending to the model",
        Status::Generating => "Generating",
        Status::Storing => "Saving your image",
        Status::Succeeded => "Ready",
        Status::Failed => "Failed",
        Status::Cancelled => "Cancelled",
    }
}

/// The status and detail page of one generation. Without JavaScript it refreshes itself until finished.
pub fn generation(
    chrome: &Chrome,
    generation: &GenerationView,
    trial: bool,
    csrf: Option<&str>,
) -> Markup {
    page(
        "Your image",
        chrome,
        html! {
            section.generation id="generation" data-id=(generation.id) data-status=(generation.status)
                data-events=[(!generation.finished()).then(|| format!("/generations/{}/events", generation.id))] {
                p.status {
                    span.badge id="status" data-status=(generation.status) role="status" aria-live="polite" {
                        (status_label(generation.status))
                    }
                    " " span.muted { (generation.resolution) " · " (generation.aspect_ratio) " · " (generation.created_at.format("%Y-%m-%d %H:%M UTC")) }
                }
                blockquote.prompt { (generation.prompt) }
                @if !generation.finished() {
                    div.spinner aria-hidden="true" {}
                    @if trial {
                        p.muted { "This usually takes under a minute. Keep this page open: a trial image lives only in this browser." }
                    } @else {
                        p.muted { "This usually takes under a minute. You can leave this page: the image will be in your gallery." }
                    }
                }
                @if generation.status == Status::Queued && !trial && let Some(csrf) = csrf {
                    form method="post" action={ "/generations/" (generation.id) "/cancel" } id="cancel-form" {
                        input type="hidden" name="csrf" value=(csrf);
                        button type="submit" id="cancel" { "Cancel and refund" }
                        " " span.muted { "Possible until the model starts on it." }
                    }
                }
                @if generation.status == Status::Cancelled {
                    p { "You cancelled this generation before it started." }
                    @if generation.credits > 0 { p.muted { "The " (generation.credits) " credits reserved for it were returned." } }
                }
                @if let Some(reason) = &generation.failure_reason {
                    p.error { (reason) }
                    @if generation.credits > 0 { p.muted { "The " (generation.credits) " credits reserved for it were returned." } }
                }
                @for (n, url) in generation.image_urls.iter().enumerate() {
                    figure.result {
                        img src=(url) alt={ "Generated image: " (generation.prompt) } id={ "image-" (n) };
                    }
                }
                @if generation.status == Status::Succeeded {
                    div.actions {
                        a.button.primary href={ "/generations/" (generation.id) "/download" } id="download" download { "Download original" }
                        @if !trial && let Some(csrf) = csrf {
                            form method="post" action={ "/generations/" (generation.id) "/reference" } {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" id="use-as-reference" { "Use as reference" }
                            }
                        }
                        @if !trial {
                            a.button.danger href={ "/generations/" (generation.id) "/delete" } id="delete" { "Delete" }
                        }
                    }
                }
                @if generation.finished() && !trial && let Some(csrf) = csrf {
                    div.actions id="iterate" {
                        form method="post" action="/generate" {
                            input type="hidden" name="csrf" value=(csrf);
                            input type="hidden" name="idempotency_key" value=(Uuid::new_v4());
                            input type="hidden" name="prompt" value=(generation.prompt);
                            input type="hidden" name="aspect_ratio" value=(generation.aspect_ratio);
                            input type="hidden" name="resolution" value=(generation.resolution);
                            @for (id, _) in &generation.references {
                                input type="hidden" name="reference_upload_ids" value=(id);
                            }
                            button type="submit" id="again" { "Again" }
                        }
                        a.button href={ "/?from=" (generation.id) } id="edit-prompt" { "Edit prompt" }
                    }
                }
                @if !generation.references.is_empty() {
                    figure.references-used {
                        figcaption.muted { "Made with " (generation.references.len()) @if generation.references.len() == 1 { " reference image" } @else { " reference images" } }
                        div.previews {
                            @for (n, (_, url)) in generation.references.iter().enumerate() {
                                img.thumb src=(url) alt={ "Reference image " (n + 1) };
                            }
                        }
                    }
                }
                @if trial {
                    aside.invite {
                        h2 { "Keep this image" }
                        p { "Trial images live only in this browser session. Sign up — it takes one e-mail — and it moves to your private gallery, with 20 free credits to start." }
                        a.button.primary href={ "/sign-in?next=/generations/" (generation.id) } id="trial-sign-up" { "Sign up to keep it" }
                    }
                } @else if generation.finished() {
                    p { a href="/gallery" { "Back to the gallery" } " · " a href="/" { "Generate another" } }
                }
            }
        },
    )
}

pub fn confirm_delete(chrome: &Chrome, csrf: &str, generation: &GenerationView) -> Markup {
    page(
        "Delete image",
        chrome,
        html! {
            section.narrow {
                h1 { "Delete this image?" }
                blockquote.prompt { (generation.prompt) }
                @for url in &generation.image_urls { img.thumb src=(url) alt="The image to delete"; }
                p { "The image and its prompt are removed from your gallery and our storage. This cannot be undone." }
                form method="post" action={ "/generations/" (generation.id) "/delete" } {
                    input type="hidden" name="csrf" value=(csrf);
                    button.danger type="submit" id="confirm-delete" { "Delete for good" }
                    " " a href={ "/generations/" (generation.id) } { "Cancel" }
                }
            }
        },
    )
}

/// A gallery card.
#[derive(Debug, Clone)]
pub struct GalleryItem {
    pub id: Uuid,
    pub prompt: String,
    pub status: Status,
    pub created_at: DateTime<Utc>,
    pub thumb_url: Option<String>,
}

pub fn gallery(
    chrome: &Chrome,
    items: &[GalleryItem],
    next: Option<&str>,
    first_page: bool,
) -> Markup {
    page(
        "Your gallery",
        chrome,
        html! {
            h1 { "Your gallery" }
            @if items.is_empty() {
                p { "Nothing here yet. " a href="/" { "Generate your first image" } "." }
            }
            ul.gallery {
                @for item in items {
                    li.card {
                        a href={ "/generations/" (item.id) } {
                            @if let Some(url) = &item.thumb_url {
                                img src=(url) alt=(item.prompt) loading="lazy";
                            } @else {
                                div.placeholder { (status_label(item.status)) }
                            }
                            p.prompt-snippet { (item.prompt.chars().take(120).collect::<String>()) }
                        }
                        p.muted {
                            span.badge data-status=(item.status) { (status_label(item.status)) }
                            " " time datetime=(item.created_at.to_rfc3339()) { (item.created_at.format("%Y-%m-%d %H:%M")) }
                        }
                    }
                }
            }
            nav.pager aria-label="Pages" {
                @if !first_page { a href="/gallery" { "Newest" } }
                @if let Some(cursor) = next { a href={ "/gallery?before=" (cursor) } rel="next" id="older" { "Older" } }
            }
        },
    )
}

pub fn sign_in(
    chrome: &Chrome,
    csrf: &str,
    next: &str,
    google: bool,
    error: Option<&str>,
) -> Markup {
    page(
        "Sign in",
        chrome,
        html! {
            section.narrow {
                h1 { "Sign in or sign up" }
                p.muted { "No passwords. New here? The same steps create your account." }
                @if let Some(error) = error { p.error role="alert" { (error) } }
                @if google {
                    p { a.button.google href={ "/auth/google?next=" (urlencode(next)) } id="google-sign-in" { "Continue with Google" } }
                    p.or { "or" }
                }
                form method="post" action="/sign-in/email" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="next" value=(next);
                    label for="email" { "E-mail address" }
                    input type="email" id="email" name="email" required autocomplete="email" maxlength="320";
                    button.primary type="submit" id="send-link" { "E-mail me a sign-in link" }
                }
                p.muted { "By signing in you agree to the " a href="/terms" { "terms" } " and the " a href="/privacy-policy" { "privacy policy" } "." }
            }
        },
    )
}

pub fn check_email(chrome: &Chrome, minutes: u64) -> Markup {
    page(
        "Check your e-mail",
        chrome,
        html! {
            section.narrow {
                h1 { "Check your e-mail" }
                p id="check-email" { "If the address can receive mail, a sign-in link is on its way. It works once and expires in " (minutes) " minutes." }
                p.muted { "Nothing arrived? Check spam, or " a href="/sign-in" { "ask for a new link" } "." }
            }
        },
    )
}

/// The page an e-mailed link opens: a button that POSTs the token (mail scanners prefetch links with GET).
pub fn link_landing(
    chrome: &Chrome,
    csrf: &str,
    action: &str,
    token: &str,
    next: &str,
    label: &str,
) -> Markup {
    page(
        label,
        chrome,
        html! {
            section.narrow {
                h1 { (label) }
                form method="post" action=(action) {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="token" value=(token);
                    input type="hidden" name="next" value=(next);
                    button.primary type="submit" id="confirm-link" { (label) }
                }
            }
        },
    )
}

/// An API key row: id, name, prefix, created, revoked.
pub type ApiKeyRow = (Uuid, String, String, DateTime<Utc>, Option<DateTime<Utc>>);
/// An export row: id, status, created, expires.
pub type ExportRow = (Uuid, ExportStatus, DateTime<Utc>, Option<DateTime<Utc>>);

/// Everything the account page shows.
#[derive(Debug, Clone, Default)]
pub struct AccountView {
    pub email: String,
    pub display_name: Option<String>,
    pub balance: i64,
    pub shortfall: i64,
    pub ledger: Vec<(DateTime<Utc>, String, i64, String)>,
    pub plan: Option<(String, String, Option<DateTime<Utc>>)>,
    pub usage: Vec<(DateTime<Utc>, String, Option<i32>, bool)>,
    pub api_keys: Vec<ApiKeyRow>,
    pub new_key: Option<String>,
    pub analytics_consent: Option<bool>,
    pub privacy_signal: bool,
    pub exports: Vec<ExportRow>,
    pub sessions: i64,
    pub has_customer: bool,
}

pub fn account(chrome: &Chrome, csrf: &str, view: &AccountView) -> Markup {
    page(
        "Your account",
        chrome,
        html! {
            h1 { "Your account" }
            section.panel id="profile" {
                h2 { "Profile" }
                form method="post" action="/account/profile" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="display_name" { "Name" }
                    input id="display_name" name="display_name" maxlength="200" value=[view.display_name.as_ref()];
                    label for="email" { "E-mail address" }
                    input type="email" id="email" name="email" required maxlength="320" value=(view.email);
                    p.muted { "A new address is used once you open the confirmation link we send to it." }
                    button type="submit" id="save-profile" { "Save" }
                }
            }
            section.panel id="credits" {
                h2 { "Credits" }
                p { "Balance: " strong id="balance" { (view.balance) } " credits. " a href="/pricing" { "Buy credits" } }
                @if view.shortfall > 0 {
                    p.error id="shortfall" { "A refunded or disputed payment left " (view.shortfall) " credits owing. New generations are paused until it is settled: buy credits to cover it, or contact support." }
                }
                @if let Some((plan, status, end)) = &view.plan {
                    p id="plan" { "Plan: " strong { (plan) } " (" (status) ")" @if let Some(end) = end { ", current period ends " (end.format("%Y-%m-%d")) } }
                } @else {
                    p id="plan" { "No plan. " a href="/pricing" { "See plans" } }
                }
                @if view.has_customer {
                    form method="post" action="/billing/portal" {
                        input type="hidden" name="csrf" value=(csrf);
                        button type="submit" id="manage-billing" { "Manage plan and invoices" }
                    }
                }
                @if !view.ledger.is_empty() {
                    div.table-scroll role="region" tabindex="0" aria-label="Recent credit movements" {
                        table {
                            caption { "Recent credit movements" }
                            thead { tr { th { "Date" } th { "What" } th.num { "Credits" } th { "For" } } }
                            tbody {
                                @for (at, kind, amount, key) in &view.ledger {
                                    tr { td { (at.format("%Y-%m-%d %H:%M")) } td { (kind) } td.num { (amount) } td.muted.breakable { (key) } }
                                }
                            }
                        }
                    }
                }
            }
            section.panel id="usage" {
                h2 { "Usage log" }
                @if view.usage.is_empty() { p.muted { "No generations yet." } }
                @else {
                    div.table-scroll role="region" tabindex="0" aria-label="Usage log" { table {
                        thead { tr { th { "Date" } th { "Model" } th.num { "Time" } th { "Result" } } }
                        tbody {
                            @for (at, model, ms, ok) in &view.usage {
                                tr {
                                    td { (at.format("%Y-%m-%d %H:%M")) } td { (model) }
                                    td.num { @if let Some(ms) = ms { (format!("{:.1} s", f64::from(*ms) / 1000.0)) } }
                                    td { @if *ok { "succeeded" } @else { "failed" } }
                                }
                            }
                        }
                    } }
                }
            }
            section.panel id="api-keys" {
                h2 { "API keys" }
                @if let Some(key) = &view.new_key {
                    p.flash role="status" { "Your new key — copy it now, it is shown only once:" }
                    pre id="new-api-key" { (key) }
                }
                ul {
                    @for (id, name, prefix, created, revoked) in &view.api_keys {
                        li {
                            strong { (name) } " " code { (prefix) "…" } " " span.muted { "created " (created.format("%Y-%m-%d")) }
                            @if revoked.is_some() { " " span.muted { "(revoked)" } }
                            @else {
                                form.inline method="post" action={ "/account/api-keys/" (id) "/revoke" } {
                                    input type="hidden" name="csrf" value=(csrf);
                                    button.link type="submit" { "Revoke" }
                                }
                            }
                        }
                    }
                }
                form method="post" action="/account/api-keys" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="key-name" { "New key name" }
                    input id="key-name" name="name" required maxlength="100" placeholder="My script";
                    button type="submit" id="create-key" { "Create key" }
                }
            }
            section.panel id="privacy" {
                h2 { "Privacy" }
                h3 id="cookies" { "Cookies and analytics" }
                @if view.privacy_signal {
                    p id="consent-state" { "Your browser sends Do Not Track or Global Privacy Control, so analytics never load." }
                } @else {
                    p id="consent-state" {
                        @match view.analytics_consent {
                            Some(true) => "Analytics: allowed. You can withdraw this at any time.",
                            Some(false) => "Analytics: off. Only essential cookies are used.",
                            None => "Analytics: off (no choice made). Only essential cookies are used.",
                        }
                    }
                    form method="post" action="/consent" {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="next" value="/account#privacy";
                        @if view.analytics_consent == Some(true) {
                            button type="submit" name="analytics" value="no" id="withdraw-consent" { "Withdraw analytics consent" }
                        } @else {
                            button type="submit" name="analytics" value="yes" id="give-consent" { "Allow analytics" }
                        }
                    }
                }
                h3 { "Sessions" }
                p { "Signed in on " (view.sessions) " browser(s)." }
                form method="post" action="/account/sessions/revoke" {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" id="sign-out-everywhere" { "Sign out everywhere" }
                }
                h3 { "Export your data" }
                p { "A zip of your account, prompts, generations, usage log, payments, consents and images. We e-mail you when it is ready; the link expires after 7 days." }
                @for (id, status, created, expires) in &view.exports {
                    p.export {
                        "Requested " (created.format("%Y-%m-%d %H:%M")) ": " (status)
                        @if *status == ExportStatus::Ready {
                            " · " a href={ "/account/exports/" (id) "/download" } { "Download" }
                            @if let Some(expires) = expires { span.muted { " (until " (expires.format("%Y-%m-%d")) ")" } }
                        }
                    }
                }
                form method="post" action="/account/export" {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" id="export" { "Export my data" }
                }
                h3 { "Delete your account" }
                p { a.button.danger href="/account/delete" id="delete-account" { "Delete my account…" } }
            }
        },
    )
}

pub fn confirm_account_delete(chrome: &Chrome, csrf: &str, email: &str) -> Markup {
    page(
        "Delete your account",
        chrome,
        html! {
            section.narrow {
                h1 { "Delete your account?" }
                p { "Your account, prompts, images, reference uploads, usage log, sessions and API keys are deleted, and your Stripe customer is redacted. Payment records are kept without your name or address for tax law (typically 7 years). Remaining credits are lost. This cannot be undone." }
                form method="post" action="/account/delete" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="confirm-email" { "Type your e-mail address (" (email) ") to confirm" }
                    input type="email" id="confirm-email" name="confirm_email" required;
                    button.danger type="submit" id="confirm-delete-account" { "Delete my account" }
                    " " a href="/account" { "Cancel" }
                }
            }
        },
    )
}

pub fn pricing(
    chrome: &Chrome,
    csrf: Option<&str>,
    packs: &[Product],
    plans: &[Product],
    billing: bool,
) -> Markup {
    let buy = |product: &Product, label: &str| {
        html! {
            @if let Some(csrf) = csrf {
                form method="post" action="/billing/checkout" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="product" value=(product.id);
                    button.primary type="submit" id={ "buy-" (product.id) } disabled[!billing] { (label) }
                }
            } @else {
                a.button.primary href={ "/sign-in?next=/pricing" } { "Sign in to buy" }
            }
        }
    };
    page(
        "Pricing",
        chrome,
        html! {
            h1 { "Pricing" }
            p.lead { "A 1K image costs 10 credits, 2K 20, 4K 40. Failed generations cost nothing. You own every image, with full commercial rights." }
            @if !billing { p.muted { "Payments are not available right now." } }
            h2 { "Credit packs" }
            p.muted { "One payment; the credits never expire." }
            ul.products {
                @for pack in packs {
                    li.card {
                        h3 { (pack.credits) " credits" }
                        p.price { (pack.price_label()) }
                        (buy(pack, "Buy"))
                    }
                }
            }
            h2 { "Monthly plans" }
            p.muted { "Credits every paid month; cancel any time in the billing portal." }
            ul.products {
                @for plan in plans {
                    li.card {
                        h3 { (plan.credits) " credits / month" }
                        p.price { (plan.price_label()) " / month" }
                        (buy(plan, "Subscribe"))
                    }
                }
            }
        },
    )
}

/// The page that waits for the worker to create a Stripe session, then sends the browser there.
/// `portal`: the intent opens the billing portal (from the account page) rather than a checkout.
pub fn checkout_waiting(
    chrome: &Chrome,
    intent: Uuid,
    portal: bool,
    failed: Option<&str>,
) -> Markup {
    page(
        if portal {
            "Opening the billing portal"
        } else {
            "Opening checkout"
        },
        chrome,
        html! {
            section.narrow id="checkout-intent" data-intent=(intent) {
                @if let Some(error) = failed {
                    @if portal {
                        h1 { "The billing portal could not be opened" }
                        p.error { (error) }
                        p { a href="/account#credits" { "Back to your account" } }
                    } @else {
                        h1 { "Checkout could not be opened" }
                        p.error { (error) }
                        p { a href="/pricing" { "Back to pricing" } }
                    }
                } @else {
                    h1 { @if portal { "Opening the billing portal…" } @else { "Opening secure checkout…" } }
                    div.spinner aria-hidden="true" {}
                    p.muted { "Payments are handled by Stripe; we never see your card." }
                }
            }
        },
    )
}

/// The privacy policy as a page. `text` is the policy document; paragraphs are kept as written.
pub fn privacy_policy(
    chrome: &Chrome,
    text: &str,
    last_updated: &str,
    upcoming: Option<(String, String)>,
) -> Markup {
    page(
        "Privacy policy",
        chrome,
        html! {
            article.legal {
                @if let Some((effective, summary)) = upcoming {
                    aside.notice id="upcoming-policy" { "An updated policy takes effect on " (effective) ": " (summary) }
                }
                p.muted id="last-updated" { "Last updated: " (last_updated) }
                (render_document(text))
            }
        },
    )
}

/// Plain-text legal document to HTML: numbered headings, bullet items (`<ul>`) and numbered items (`<ol>`, whose
/// numbers the list shows, so the text's own are dropped), paragraphs. The document's own date line is left out:
/// the page shows the date once, as "Last updated".
fn render_document(text: &str) -> Markup {
    let mut blocks = String::new();
    let mut open_list: Option<&'static str> = None;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        let escaped = html_escape(trimmed);
        if trimmed.is_empty() || chrono::NaiveDate::parse_from_str(trimmed, "%b %d, %Y").is_ok() {
            continue;
        }
        let item = line.starts_with("  ").then(|| list_item(trimmed));
        let wanted = item.map(|(kind, _)| kind);
        if let Some(open) = open_list
            && wanted != Some(open)
        {
            blocks.push_str(&format!("</{open}>"));
            open_list = None;
        }
        if index == 0 {
            blocks.push_str(&format!("<h1>{escaped}</h1>"));
        } else if let Some((kind, text)) = item {
            if open_list.is_none() {
                blocks.push_str(&format!("<{kind}>"));
                open_list = Some(kind);
            }
            blocks.push_str(&format!("<li>{}</li>", html_escape(text)));
        } else if is_heading(trimmed) {
            let id = if trimmed.contains("Cookies") {
                " id=\"cookies\""
            } else {
                ""
            };
            blocks.push_str(&format!("<h2{id}>{escaped}</h2>"));
        } else {
            blocks.push_str(&format!("<p>{escaped}</p>"));
        }
    }
    if let Some(open) = open_list {
        blocks.push_str(&format!("</{open}>"));
    }
    PreEscaped(blocks)
}

/// A list item's kind (`ol` when the text numbers it, else `ul`) and its text without the number or bullet.
fn list_item(text: &str) -> (&'static str, &str) {
    match text.split_once(". ") {
        Some((number, rest))
            if !number.is_empty() && number.chars().all(|c| c.is_ascii_digit()) =>
        {
            ("ol", rest)
        }
        _ => ("ul", text.trim_start_matches(['•', ' '])),
    }
}

fn is_heading(line: &str) -> bool {
    let numbered = line
        .split_once(". ")
        .is_some_and(|(n, rest)| n.chars().all(|c| c.is_ascii_digit()) && !rest.ends_with('.'));
    numbered || matches!(line, "Introduction" | "Contact")
}

fn html_escape(text: &str) -> String {
    maud::html! { (text) }.into_string()
}

pub fn terms(chrome: &Chrome) -> Markup {
    page(
        "Terms of service",
        chrome,
        html! {
            article.legal {
                h1 { "Terms of service" }
                p.muted { "Last updated: 2026-04-29" }
                h2 { "1. The service" }
                p { "createimage2 generates images from your prompts with OpenAI's gpt-image-2, brokered by kie.ai. You need to be at least 13 years old to use it." }
                h2 { "2. Your images" }
                p { "You own the images you generate, with full commercial rights, on every plan including the free trial. We claim no copyright in your output." }
                h2 { "3. Credits and payments" }
                p { "Credits are bought as packs (they never expire) or through monthly plans (an allowance each paid month). A generation reserves its credits when you start it; a failed generation returns them. Payments are processed by Stripe. A refunded or disputed payment removes the credits it bought; credits already spent are owed until settled." }
                h2 { "4. Acceptable use" }
                p { "Do not use the service for anything unlawful, to infringe others' rights, or to get around the model provider's content policies. We may suspend accounts that do." }
                h2 { "5. Your data" }
                p { "The " a href="/privacy-policy" { "privacy policy" } " says what we store, for how long, and how to export or delete it." }
                h2 { "6. Contact" }
                p { "support@createimage2.com" }
            }
        },
    )
}

/// Dev-only: the e-mail outbox.
pub fn dev_outbox(chrome: &Chrome, rows: &[(Uuid, String, String, DateTime<Utc>)]) -> Markup {
    page(
        "Outbox (dev)",
        chrome,
        html! {
            h1 { "E-mail outbox" }
            p.muted { "Development only: every e-mail the system would send." }
            table {
                thead { tr { th { "When" } th { "To" } th { "Subject" } } }
                tbody {
                    @for (id, to, subject, at) in rows {
                        tr {
                            td { (at.format("%H:%M:%S")) } td { (to) }
                            td { a href={ "/dev/outbox/" (id) } { (subject) } }
                        }
                    }
                }
            }
        },
    )
}

pub fn dev_outbox_message(chrome: &Chrome, to: &str, subject: &str, text: &str) -> Markup {
    page(
        "Outbox (dev)",
        chrome,
        html! {
            h1 { (subject) }
            p { "To: " (to) }
            pre.mail id="mail-body" { (linkify(text)) }
        },
    )
}

/// Makes the URLs of a plain-text e-mail clickable.
fn linkify(text: &str) -> Markup {
    html! {
        @for (i, word) in text.split(' ').enumerate() {
            @if i > 0 { " " }
            @if word.starts_with("http://") || word.starts_with("https://") {
                @let (url, rest) = word.split_at(word.find('\n').unwrap_or(word.len()));
                a href=(url) { (url) } (rest)
            } @else { (word) }
        }
    }
}
