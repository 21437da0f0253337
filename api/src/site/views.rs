//! The site's pages: plain functions from data to markup (maud). No inline script or style (the CSP forbids
//! both): behaviour lives in `static/app.js`, looks in `static/app.css`.

use chrono::{DateTime, Utc};
use jobs::{
    config::{Product, money_label},
    export_requests::ExportStatus,
    generations::{
        AspectRatio, MAX_VARIATIONS, Resolution, Status, StatusFilter, combination_allowed,
    },
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
    /// How many images (1–4); a refused submission's number outside that range is shown as 1.
    pub variations: i64,
    /// Reference uploads already attached: `(upload id, preview URL)`.
    pub references: Vec<(Uuid, String)>,
    pub error: Option<String>,
}

impl GeneratorForm {
    /// Credits the chosen resolution and number of images cost (a word that is no resolution, from a refused
    /// submission, costs what the default does).
    pub fn cost(&self) -> i64 {
        self.resolution
            .parse::<Resolution>()
            .unwrap_or(Resolution::R1K)
            .cost()
            * self.images()
    }

    /// The number of images chosen, within 1–4.
    pub fn images(&self) -> i64 {
        if (1..=i64::from(MAX_VARIATIONS)).contains(&self.variations) {
            self.variations
        } else {
            1
        }
    }
}

impl Default for GeneratorForm {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            aspect_ratio: "auto".into(),
            resolution: "1K".into(),
            variations: 1,
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

/// The stylesheet's class that gives a box `ratio`'s shape (none for `auto`: the box's own).
fn ratio_class(ratio: AspectRatio) -> String {
    format!("r-{}", ratio.as_str().replace(':', "x"))
}

/// The stylesheet's classes that draw `ratio`'s shape in the picker, within the same square whatever its
/// orientation (`auto` is a dashed square).
fn shape_class(ratio: AspectRatio) -> String {
    let orientation = match ratio.as_str().split_once(':') {
        Some((w, h)) => match w.parse::<u32>().ok().cmp(&h.parse::<u32>().ok()) {
            std::cmp::Ordering::Greater => "wide",
            std::cmp::Ordering::Less => "tall",
            std::cmp::Ordering::Equal => "even",
        },
        None => "even",
    };
    format!("shape {orientation} {}", ratio_class(ratio))
}

/// The generator's aspect ratios as shapes to pick. The script disables the ones the chosen resolution does not
/// allow and says why under each; without it every choice is offered and a refused pair is explained after
/// submitting.
fn aspect_ratio_picker(selected: &str) -> Markup {
    html! {
        fieldset.ratios id="aspect-ratios" {
            legend { "Aspect ratio" }
            div.choices {
                @for ratio in AspectRatio::ALL {
                    @let id = format!("ratio-{}", ratio.as_str().replace(':', "x"));
                    label.choice for=(id) {
                        input type="radio" id=(id) name="aspect_ratio" value=(ratio)
                            checked[ratio.as_str() == selected] aria-describedby={ (id) "-why" };
                        span class=(shape_class(*ratio)) aria-hidden="true" {}
                        span.name { @if *ratio == AspectRatio::Auto { "Auto" } @else { (ratio) } }
                        span.why id={ (id) "-why" } {}
                    }
                }
            }
        }
    }
}

/// The generator's resolutions, each with its price; the script disables the ones the chosen ratio does not
/// allow and says why.
fn resolution_picker(selected: &str) -> Markup {
    html! {
        fieldset.resolutions id="resolutions" {
            legend { "Resolution" }
            div.choices {
                @for res in Resolution::ALL {
                    @let id = format!("resolution-{res}");
                    label.choice for=(id) {
                        input type="radio" id=(id) name="resolution" value=(res) data-cost=(res.cost())
                            checked[res.as_str() == selected] aria-describedby={ (id) "-why" };
                        span.name { (res) }
                        span.muted { (res.cost()) " credits" }
                        span.why id={ (id) "-why" } {}
                    }
                }
            }
        }
    }
}

/// How many images one request makes (each charged on its own).
fn variations_picker(selected: i64) -> Markup {
    html! {
        fieldset.variations id="variations" {
            legend { "Images " span.muted { "(each is charged on its own, and returned if it fails)" } }
            div.choices {
                @for n in 1..=i64::from(MAX_VARIATIONS) {
                    label.choice for={ "n-" (n) } {
                        input type="radio" id={ "n-" (n) } name="n" value=(n) checked[n == selected];
                        span.name { (n) }
                    }
                }
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
pub fn generator(
    chrome: &Chrome,
    csrf: &str,
    balance: i64,
    form: &GeneratorForm,
    recent: &[GalleryItem],
) -> Markup {
    page(
        "Generate images",
        chrome,
        html! {
            div.workspace {
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
                    (aspect_ratio_picker(&form.aspect_ratio))
                    div.row {
                        div { (resolution_picker(&form.resolution)) }
                        div { (variations_picker(form.images())) }
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
            aside.recent aria-labelledby="recent-title" {
                h2 id="recent-title" { "Recent" }
                @if recent.is_empty() {
                    p.muted { "Your images will appear here." }
                } @else {
                    ul.gallery.compact {
                        @for item in recent { (gallery_card(item, false)) }
                    }
                    p { a href="/gallery" { "All in the gallery" } }
                }
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
    /// Its place among its request's images, and how many the request asked for.
    pub variation: i16,
    pub variations: i16,
    /// Every image of its request (itself included), when the request made more than one.
    pub set: Vec<GalleryItem>,
    /// While it is unfinished: how long it usually takes and its place in line.
    pub wait: Option<Wait>,
}

impl GenerationView {
    pub fn finished(&self) -> bool {
        self.status.is_final()
    }

    /// Whether it and every other image of its request have finished.
    pub fn all_finished(&self) -> bool {
        self.finished() && self.set.iter().all(|tile| tile.status.is_final())
    }
}

/// What a waiting page says about the wait.
#[derive(Debug, Clone)]
pub struct Wait {
    /// The median time of recent successes at its resolution, if there were enough of them.
    pub typical: Option<std::time::Duration>,
    /// Queued requests ahead of it (the fleet sends kie.ai a few at a time).
    pub ahead: i64,
}

/// A duration as a person reads it: "45 s", "2 min 5 s", "1 h 3 min".
pub fn duration_words(duration: std::time::Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 if seconds.is_multiple_of(60) => format!("{} min", seconds / 60),
        60..3600 => format!("{} min {} s", seconds / 60, seconds % 60),
        _ => format!("{} h {} min", seconds / 3600, (seconds % 3600) / 60),
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
                data-events=[(!generation.all_finished()).then(|| format!("/generations/{}/events", generation.id))] {
                p.status {
                    span.badge id="status" data-status=(generation.status) role="status" aria-live="polite" {
                        (status_label(generation.status))
                    }
                    " " span.muted {
                        @if generation.variations > 1 { "Image " (generation.variation) " of " (generation.variations) " · " }
                        (generation.resolution) " · " (generation.aspect_ratio) " · " (generation.created_at.format("%Y-%m-%d %H:%M UTC"))
                    }
                }
                blockquote.prompt { (generation.prompt) }
                @if !generation.set.is_empty() {
                    (set_tiles(generation))
                }
                @if !generation.finished() {
                    div.spinner aria-hidden="true" {}
                    (waiting(generation, trial))
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
                            input type="hidden" name="n" value=(generation.variations);
                            @for (id, _) in &generation.references {
                                input type="hidden" name="reference_upload_ids" value=(id);
                            }
                            button type="submit" id="again" {
                                "Again " span.muted {
                                    @if generation.variations > 1 { "(" (generation.variations) " images, " } @else { "(" }
                                    (i64::from(generation.credits) * i64::from(generation.variations)) " credits)"
                                }
                            }
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

/// The request's images side by side, each linking to its own page; the script keeps their status live.
fn set_tiles(generation: &GenerationView) -> Markup {
    html! {
        nav.set id="set" aria-label="The images of this request" {
            ul {
                @for tile in &generation.set {
                    @let current = tile.id == generation.id;
                    li data-generation=(tile.id) data-status=(tile.status) {
                        a href={ "/generations/" (tile.id) } aria-current=[current.then_some("page")] {
                            @if let Some(url) = &tile.thumb_url {
                                img src=(url) alt={ "Image " (tile.variation) " of " (generation.variations) };
                            } @else {
                                span.placeholder { "Image " (tile.variation) }
                            }
                        }
                        span.badge data-status=(tile.status) { (status_label(tile.status)) }
                    }
                }
            }
        }
    }
}

/// While it is unfinished: how long it has waited (the script counts on), how long such images usually take,
/// and how many requests are ahead when the fleet is at its kie.ai budget.
fn waiting(generation: &GenerationView, trial: bool) -> Markup {
    let elapsed = (Utc::now() - generation.created_at)
        .to_std()
        .unwrap_or_default();
    html! {
        div.wait id="wait" {
            p {
                "Waiting for " span id="elapsed" data-seconds=(elapsed.as_secs()) { (duration_words(elapsed)) }
                @if let Some(Wait { typical: Some(typical), .. }) = &generation.wait {
                    " · " (generation.resolution) " images take about " strong id="typical" { (duration_words(*typical)) } " lately"
                }
                "."
            }
            @if let Some(Wait { ahead, .. }) = &generation.wait && *ahead > 0 {
                p id="ahead" {
                    @if *ahead == 1 { "1 request is" } @else { (ahead) " requests are" }
                    " ahead of this one: the service sends the model a few at a time."
                }
            }
            @if trial {
                p.muted { "Keep this page open: a trial image lives only in this browser." }
            } @else {
                p.muted { "You can leave this page: the image will be in your gallery." }
            }
        }
    }
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
    pub aspect_ratio: AspectRatio,
    /// The first image's size in pixels, when known: the card keeps its shape.
    pub size: Option<(i32, i32)>,
    pub variation: i16,
    pub variations: i16,
    pub thumb_url: Option<String>,
}

/// One card: the image in its own shape (its pixel size, or the ratio asked for until it exists), the prompt,
/// the status; with `selectable`, a box to select it for a bulk action once it has finished.
fn gallery_card(item: &GalleryItem, selectable: bool) -> Markup {
    let label = item.prompt.chars().take(120).collect::<String>();
    html! {
        li.card data-status=(item.status) {
            a href={ "/generations/" (item.id) } {
                @if let Some(url) = &item.thumb_url {
                    @if let Some((width, height)) = item.size {
                        img src=(url) alt=(label) loading="lazy" width=(width) height=(height);
                    } @else {
                        img src=(url) alt=(label) loading="lazy";
                    }
                } @else {
                    div class={ "placeholder " (ratio_class(item.aspect_ratio)) } { (status_label(item.status)) }
                }
                p.prompt-snippet { (label) }
            }
            p.muted {
                span.badge data-status=(item.status) { (status_label(item.status)) }
                @if item.variations > 1 { " " span.badge { (item.variation) " of " (item.variations) } }
                " " time datetime=(item.created_at.to_rfc3339()) { (item.created_at.format("%Y-%m-%d %H:%M")) }
            }
            @if selectable && item.status.is_final() {
                label.select for={ "select-" (item.id) } {
                    input type="checkbox" id={ "select-" (item.id) } name="id" value=(item.id) form="bulk"
                        aria-label={ "Select “" (label) "”" };
                    " Select"
                }
            }
        }
    }
}

/// The gallery page's content and where it is in the list.
pub struct GalleryPage<'a> {
    pub items: &'a [GalleryItem],
    pub next: Option<&'a str>,
    pub first_page: bool,
    pub search: Option<&'a str>,
    pub status: Option<StatusFilter>,
}

impl GalleryPage<'_> {
    /// The query that keeps the search and the filter (for the pager), `&`-led or empty.
    fn kept(&self) -> String {
        let mut kept = String::new();
        if let Some(q) = self.search {
            kept.push_str(&format!("&q={}", urlencode(q)));
        }
        if let Some(status) = self.status {
            kept.push_str(&format!("&status={status}"));
        }
        kept
    }
}

fn status_filter_label(filter: StatusFilter) -> &'static str {
    match filter {
        StatusFilter::Ready => "Ready",
        StatusFilter::InProgress => "In progress",
        StatusFilter::Failed => "Failed",
        StatusFilter::Cancelled => "Cancelled",
    }
}

pub fn gallery(chrome: &Chrome, view: &GalleryPage<'_>) -> Markup {
    let filtered = view.search.is_some() || view.status.is_some();
    let kept = view.kept();
    page(
        "Your gallery",
        chrome,
        html! {
            h1 { "Your gallery" }
            form.filters method="get" action="/gallery" role="search" {
                div {
                    label for="q" { "Search your prompts" }
                    input type="search" id="q" name="q" value=[view.search] maxlength="200"
                        placeholder="lighthouse -night \"at dawn\"";
                }
                div {
                    label for="status-filter" { "Show" }
                    select id="status-filter" name="status" {
                        option value="" selected[view.status.is_none()] { "Everything" }
                        @for filter in StatusFilter::ALL {
                            option value=(filter) selected[view.status == Some(*filter)] { (status_filter_label(*filter)) }
                        }
                    }
                }
                button type="submit" id="apply-filters" { "Search" }
            }
            @if filtered {
                p.muted id="filter-summary" role="status" {
                    @match view.items.len() {
                        0 => { "Nothing matches" }
                        1 => { "1 match" }
                        n => { (n) @if view.next.is_some() { "+" } " matches" }
                    }
                    @if let Some(q) = view.search { " for “" (q) "”" }
                    @if let Some(status) = view.status { " · " (status_filter_label(status)) }
                    " · " a href="/gallery" id="clear-filters" { "Show everything" }
                }
            } @else if view.items.is_empty() && view.first_page {
                p { "Nothing here yet. " a href="/" { "Generate your first image" } "." }
            }
            form id="bulk" method="get" action="/gallery/delete" {
                @if view.items.iter().any(|i| i.status.is_final()) {
                    p.bulk-actions { button type="submit" id="delete-selected" { "Delete selected…" } }
                }
            }
            ul.gallery {
                @for item in view.items { (gallery_card(item, true)) }
            }
            nav.pager aria-label="Pages" {
                @if !view.first_page { a href={ "/gallery?" (kept.trim_start_matches('&')) } { "Newest" } }
                @if let Some(cursor) = view.next { a href={ "/gallery?before=" (cursor) (kept) } rel="next" id="older" { "Older" } }
            }
        },
    )
}

/// Confirms deleting several images at once.
pub fn confirm_bulk_delete(
    chrome: &Chrome,
    csrf: &str,
    generations: &[GalleryItem],
    left_out: usize,
) -> Markup {
    let count = generations.len();
    page(
        "Delete images",
        chrome,
        html! {
            section.narrow {
                h1 { @if count == 1 { "Delete this image?" } @else { "Delete these " (count) " images?" } }
                @if left_out > 0 {
                    p.muted { (left_out) " of the selection cannot be deleted (still in progress, or gone) and is left as it is." }
                }
                ul.previews.bulk {
                    @for generation in generations {
                        li {
                            @if let Some(url) = &generation.thumb_url {
                                img.thumb src=(url) alt=(generation.prompt.chars().take(120).collect::<String>());
                            } @else {
                                span.badge data-status=(generation.status) { (status_label(generation.status)) }
                            }
                            p.prompt-snippet { (generation.prompt.chars().take(80).collect::<String>()) }
                        }
                    }
                }
                p { "The images and their prompts are removed from your gallery and our storage. This cannot be undone." }
                form method="post" action="/gallery/delete" {
                    input type="hidden" name="csrf" value=(csrf);
                    @for generation in generations { input type="hidden" name="id" value=(generation.id); }
                    button.danger type="submit" id="confirm-bulk-delete" {
                        @if count == 1 { "Delete it for good" } @else { "Delete " (count) " images for good" }
                    }
                    " " a href="/gallery" { "Keep them" }
                }
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

/// A credit movement and what it was for.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LedgerLine {
    pub created_at: DateTime<Utc>,
    pub kind: String,
    pub amount: i64,
    pub detail: serde_json::Value,
    /// The payment it came from (a purchase's grant).
    pub payment_id: Option<Uuid>,
    /// The generation it was for, unless deleted.
    pub generation_id: Option<Uuid>,
    pub generation_prompt: Option<String>,
}

/// A payment, as the account's purchases list shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PaymentLine {
    pub id: Uuid,
    pub product_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub paid_at: DateTime<Utc>,
    pub credits: i64,
    pub refunded_minor: i64,
    pub disputed: bool,
}

impl AccountView {
    fn product_name<'a>(&'a self, id: &'a str) -> &'a str {
        self.product_names.get(id).map_or(id, String::as_str)
    }
}

/// A credit movement in a sentence, with a link to the generation or the purchase it was for.
fn ledger_sentence(view: &AccountView, line: &LedgerLine) -> Markup {
    let detail = |key: &str| line.detail.get(key).and_then(|v| v.as_str());
    let image = html! {
        @match (&line.generation_id, &line.generation_prompt) {
            (Some(id), Some(prompt)) => {
                a href={ "/generations/" (id) } { "“" (prompt.chars().take(40).collect::<String>()) @if prompt.chars().count() > 40 { "…" } "”" }
            }
            _ => { "an image since deleted" }
        }
    };
    let product = detail("product").map(|id| view.product_name(id).to_owned());
    // Linked only to a purchase the page lists.
    let listed = line
        .payment_id
        .filter(|id| view.payments.iter().any(|p| p.id == *id));
    let purchase = |words: Markup| {
        html! {
            @if let Some(payment) = listed { a href={ "#purchase-" (payment) } { (words) } } @else { (words) }
        }
    };
    html! {
        @match line.kind.as_str() {
            "reserve" => { "Held for " (image) },
            "settle" => { "Charged for " (image) " (the credits held for it)" },
            "refund" => {
                "Returned: " (image)
                @if detail("reason") == Some("cancelled") { " was cancelled" } @else { " did not succeed" }
            },
            "grant" => {
                @if detail("reason") == Some("signup") {
                    "Welcome credits for signing up"
                } @else if detail("invoice").is_some() {
                    (purchase(html! { (product.clone().unwrap_or_else(|| "Your plan".into())) ": a paid month" }))
                } @else if let Some(product) = &product {
                    (purchase(html! { "Bought " (product) }))
                } @else {
                    "Credits added"
                }
            },
            "clawback" => { "Taken back after a refunded or disputed payment" },
            "freeze" => { "Held while a payment is disputed" },
            "release" => { "Given back: the dispute closed in your favour" },
            "expire" => { "Expired" },
            other => { (other) },
        }
    }
}

/// Everything the account page shows.
#[derive(Debug, Clone, Default)]
pub struct AccountView {
    pub email: String,
    pub display_name: Option<String>,
    pub balance: i64,
    pub shortfall: i64,
    pub ledger: Vec<LedgerLine>,
    pub payments: Vec<PaymentLine>,
    /// Product ids to the names people read (`CREDIT_PACKS`, `PLANS`).
    pub product_names: std::collections::HashMap<String, String>,
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
                    p id="plan" { "Plan: " strong { (view.product_name(plan)) } " (" (status) ")" @if let Some(end) = end { ", current period ends " (end.format("%Y-%m-%d")) } }
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
                        table id="ledger" {
                            caption { "Recent credit movements" }
                            thead { tr { th { "Date" } th { "What happened" } th.num { "Credits" } } }
                            tbody {
                                @for line in &view.ledger {
                                    tr data-kind=(line.kind) {
                                        td { (line.created_at.format("%Y-%m-%d %H:%M")) }
                                        td.breakable { (ledger_sentence(view, line)) }
                                        td.num {
                                            @if line.kind == "settle" { span.muted { "no change" } }
                                            @else if line.amount > 0 { "+" (line.amount) }
                                            @else { "−" (line.amount.abs()) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                @if !view.payments.is_empty() {
                    div.table-scroll role="region" tabindex="0" aria-label="Purchases" {
                        table id="purchases" {
                            caption { "Purchases" }
                            thead { tr { th { "Date" } th { "What" } th.num { "Paid" } th.num { "Credits" } } }
                            tbody {
                                @for payment in &view.payments {
                                    tr id={ "purchase-" (payment.id) } {
                                        td { (payment.paid_at.format("%Y-%m-%d")) }
                                        td {
                                            (view.product_name(&payment.product_id))
                                            @if payment.refunded_minor > 0 { " " span.muted { "(" (money_label(payment.refunded_minor, &payment.currency)) " refunded)" } }
                                            @if payment.disputed { " " span.muted { "(disputed)" } }
                                        }
                                        td.num { (money_label(payment.amount_minor, &payment.currency)) }
                                        td.num { "+" (payment.credits) }
                                    }
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
                        h3 { (pack.name) }
                        p { strong { (pack.credits) " credits" } }
                        p.price { (pack.price_label()) }
                        (buy(pack, &format!("Buy {}", pack.name)))
                    }
                }
            }
            h2 { "Monthly plans" }
            p.muted { "Credits every paid month; cancel any time in the billing portal." }
            ul.products {
                @for plan in plans {
                    li.card {
                        h3 { (plan.name) }
                        p { strong { (plan.credits) " credits every month" } }
                        p.price { (plan.price_label()) " / month" }
                        (buy(plan, &format!("Subscribe to {}", plan.name)))
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

/// What a checkout bought, for the notice Stripe sends the member back to.
#[derive(Debug, Clone)]
pub struct Purchase {
    pub intent: Uuid,
    /// A monthly plan rather than a pack.
    pub plan: bool,
    /// The product's name (`CREDIT_PACKS` / `PLANS`).
    pub name: String,
    pub credits: i64,
    pub price: Option<String>,
    /// What the payment's credits did, once the worker has processed it.
    pub credited: Option<jobs::checkout::Credited>,
    /// The credits have not arrived and the page still follows them (for an hour after the checkout).
    pub waiting: bool,
    pub balance: i64,
}

/// After checkout: what was bought, and the balance — live while the payment's credits are on their way.
pub fn checkout_done(chrome: &Chrome, purchase: &Purchase) -> Markup {
    page(
        "Thank you",
        chrome,
        html! {
            section.narrow id="purchase" data-intent=(purchase.intent)
                data-events=[purchase.waiting.then(|| format!("/billing/intents/{}/events?follow=purchase", purchase.intent))] {
                h1 { "Thank you" }
                p.lead id="bought" {
                    @if purchase.plan {
                        "You subscribed to " strong { (purchase.name) } ": " (purchase.credits) " credits every paid month"
                    } @else {
                        "You bought " strong { (purchase.name) } ": " (purchase.credits) " credits"
                    }
                    @if let Some(price) = &purchase.price { " for " (price) }
                    "."
                }
                div.panel role="status" aria-live="polite" id="purchase-status" data-credited=[purchase.credited.map(|c| c.added)] {
                    @if let Some(credited) = purchase.credited {
                        p id="credits-arrived" {
                            strong { (credited.added) " credits" } " were added to your balance."
                            @if credited.granted > credited.added {
                                " The other " (credited.granted - credited.added) " settled credits owed after a refunded or disputed payment."
                            }
                        }
                    } @else if purchase.waiting {
                        p id="credits-pending" { "Stripe is confirming the payment; the credits arrive in a few seconds." }
                    } @else {
                        p id="credits-pending" { "Stripe has not confirmed the payment yet. Some payment methods take longer: the credits appear in your account as soon as it is confirmed, and you will find the payment under Purchases." }
                    }
                    p { "Your balance: " strong id="live-balance" { (purchase.balance) } " credits." }
                }
                p.actions {
                    a.button.primary href="/" { "Generate an image" }
                    a.button href="/account#credits" { "Your credits" }
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
