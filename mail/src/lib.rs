//! E-mail templates: pure functions from data to a [`Message`] (subject, plain text, HTML rendered with maud).
//! Kept out of `jobs` so the domain crate stays free of maud; `jobs` stores rendered messages in the outbox.

/// A rendered e-mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// A stable template name, stored with the outbox row.
    pub template: &'static str,
    pub subject: String,
    pub text: String,
    pub html: String,
}
