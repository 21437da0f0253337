//! maud views: plain functions from data to markup. Handlers load data; views only render it.

use maud::{DOCTYPE, Markup, html};

/// The page frame shared by every page.
pub fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · createimage2" }
            }
            body {
                header { a href="/" { "createimage2" } }
                main { (body) }
                footer { p { "Images by gpt-image-2. Your gallery is private." } }
            }
        }
    }
}

pub fn home() -> Markup {
    layout(
        "Generate images",
        html! {
            h1 { "Generate images with gpt-image-2" }
            p { "Type a prompt, add reference images, and find your results in a private gallery." }
        },
    )
}
