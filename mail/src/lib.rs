//! E-mail templates: pure functions from data to a [`Message`] (subject, plain text, HTML rendered with maud).
//! Kept out of `jobs` so the domain crate stays free of maud; `jobs` stores rendered messages in the outbox.

use maud::{DOCTYPE, Markup, html};

/// A rendered e-mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// A stable template name, stored with the outbox row.
    pub template: &'static str,
    pub subject: String,
    pub text: String,
    pub html: String,
}

const FOOTER_TEXT: &str =
    "createimage2 · https://createimage2.com/privacy-policy · support@createimage2.com";

fn layout(title: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (title) } }
            body style="margin:0;padding:24px;background:#f5f5f7;font:16px/1.5 system-ui,sans-serif;color:#1d1d1f" {
                div style="max-width:560px;margin:0 auto;background:#fff;border-radius:12px;padding:32px" {
                    (body)
                }
                p style="max-width:560px;margin:16px auto;font-size:12px;color:#6e6e73" {
                    "createimage2 · " a href="https://createimage2.com/privacy-policy" { "Privacy policy" }
                    " · support@createimage2.com"
                }
            }
        }
    }
    .into_string()
}

fn button(url: &str, label: &str) -> Markup {
    html! {
        p { a href=(url) style="display:inline-block;background:#0071e3;color:#fff;padding:10px 18px;border-radius:8px;text-decoration:none" { (label) } }
        p style="font-size:13px;color:#6e6e73" { "Or open this link: " (url) }
    }
}

/// Confirms a new e-mail address for an account (single use, expiring).
pub fn email_change(link_url: &str, expires_minutes: u32) -> Message {
    let subject = "Confirm your new e-mail address for createimage2".to_owned();
    let text = format!(
        "Someone (hopefully you) asked to use this address for a createimage2 account. Confirm it with this \
         link (valid for {expires_minutes} minutes, once):\n\n{link_url}\n\nIf it was not you, ignore this e-mail.\n\n{FOOTER_TEXT}\n"
    );
    let html = layout(
        &subject,
        html! {
            h1 style="font-size:20px" { "Confirm your new address" }
            p { "Use this address for your createimage2 account. The link works once and expires in " (expires_minutes) " minutes." }
            (button(link_url, "Confirm address"))
            p { "If it was not you, ignore this e-mail: nothing changes." }
        },
    );
    Message {
        template: "email_change",
        subject,
        text,
        html,
    }
}

/// A payment did not go through (a delayed checkout payment, or a plan's renewal).
pub fn payment_failed() -> Message {
    let subject = "Your createimage2 payment did not go through".to_owned();
    let text = format!(
        "A payment for createimage2 failed, so no credits were added. If it was a plan renewal, Stripe will \
         retry; you can update your card in the billing portal from your account page.\n\n\
         https://createimage2.com/account\n\n{FOOTER_TEXT}\n"
    );
    let html = layout(
        &subject,
        html! {
            h1 style="font-size:20px" { "Your payment did not go through" }
            p { "No credits were added. If it was a plan renewal, Stripe will retry; you can update your card in the billing portal from your account page." }
            (button("https://createimage2.com/account", "Open your account"))
        },
    );
    Message {
        template: "payment_failed",
        subject,
        text,
        html,
    }
}

/// A sign-in link (single use, expiring).
pub fn sign_in_link(link_url: &str, expires_minutes: u32) -> Message {
    let subject = "Your sign-in link for createimage2".to_owned();
    let text = format!(
        "Sign in to createimage2 with this link (valid for {expires_minutes} minutes, once):\n\n{link_url}\n\n\
         If you did not ask for it, ignore this e-mail.\n\n{FOOTER_TEXT}\n"
    );
    let html = layout(
        &subject,
        html! {
            h1 style="font-size:20px" { "Sign in to createimage2" }
            p { "This link works once and expires in " (expires_minutes) " minutes." }
            (button(link_url, "Sign in"))
            p { "If you did not ask for it, ignore this e-mail." }
        },
    );
    Message {
        template: "sign_in_link",
        subject,
        text,
        html,
    }
}

/// The GDPR export is ready to download.
pub fn export_ready(download_page_url: &str, expires_at: &str) -> Message {
    let subject = "Your createimage2 data export is ready".to_owned();
    let text = format!(
        "The export of your data is ready. Sign in and download it here (available until {expires_at}):\n\n\
         {download_page_url}\n\n{FOOTER_TEXT}\n"
    );
    let html = layout(
        &subject,
        html! {
            h1 style="font-size:20px" { "Your data export is ready" }
            p { "Sign in to download it. It is available until " (expires_at) "." }
            (button(download_page_url, "Download my data"))
        },
    );
    Message {
        template: "export_ready",
        subject,
        text,
        html,
    }
}

/// A new privacy-policy version, sent at least 30 days before it takes effect.
pub fn policy_notice(
    version: &str,
    effective_date: &str,
    summary: &str,
    policy_url: &str,
) -> Message {
    let subject = format!("Our privacy policy changes on {effective_date}");
    let text = format!(
        "We are updating the createimage2 privacy policy (version {version}). It takes effect on {effective_date}.\n\n\
         What changes: {summary}\n\nRead it here: {policy_url}\n\n{FOOTER_TEXT}\n"
    );
    let html = layout(
        &subject,
        html! {
            h1 style="font-size:20px" { "Our privacy policy is changing" }
            p { "Version " (version) " takes effect on " strong { (effective_date) } "." }
            p { "What changes: " (summary) }
            (button(policy_url, "Read the policy"))
        },
    );
    Message {
        template: "policy_notice",
        subject,
        text,
        html,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_supplied_text_is_escaped_in_html_and_kept_verbatim_in_text() {
        let message = policy_notice(
            "v2",
            "March 1, 2027",
            "<script>alert(1)</script>",
            "https://x/p",
        );
        assert!(!message.html.contains("<script>alert(1)"));
        assert!(message.html.contains("&lt;script&gt;"));
        assert!(message.text.contains("<script>alert(1)</script>"));
    }

    #[test]
    fn text_and_html_carry_the_same_link() {
        let message = sign_in_link("https://createimage2.com/sign-in/abc", 15);
        assert!(
            message
                .text
                .contains("https://createimage2.com/sign-in/abc")
        );
        assert!(
            message
                .html
                .contains("href=\"https://createimage2.com/sign-in/abc\"")
        );
        assert_eq!(message.template, "sign_in_link");
    }
}
