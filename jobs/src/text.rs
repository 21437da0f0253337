//! What text a person may type into a field: what Postgres can store (no NUL in `text` or `jsonb`) and what
//! the field can mean. One check for every text input, so the answer is always a 422 that names the field,
//! never a 500 from the database or a refusal from upstream after credits moved.
//!
//! (Unpaired surrogates cannot reach here: a Rust `String` is valid UTF-8, and JSON or form bodies carrying
//! them are refused when they are decoded.)

use crate::generations::Invalid;

/// Whether line breaks make sense in the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    /// A name, an address, a label: no control character at all.
    One,
    /// A prompt: line breaks and tabs are text; every other control character is refused.
    Many,
}

/// Refuses `value` for `field` if it holds a character that field cannot hold.
pub fn check(field: &'static str, value: &str, lines: Lines) -> Result<(), Invalid> {
    let refused = value.chars().find(|&c| match c {
        '\n' | '\r' | '\t' => lines == Lines::One,
        // NUL and the other C0/C1 controls, DEL; and the noncharacters U+FFFE/U+FFFF.
        c => c.is_control() || c == '\u{fffe}' || c == '\u{ffff}',
    });
    match refused {
        None => Ok(()),
        Some(c) => Err(Invalid {
            field,
            message: format!(
                "contains the control character U+{:04X}, which this field cannot hold",
                u32::from(c)
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::{Lines, check};

    #[test]
    fn a_nul_byte_is_refused_naming_the_field() {
        let refused = check("prompt", "a cat\0", Lines::Many).unwrap_err();
        assert_eq!(refused.field, "prompt");
        assert!(refused.message.contains("U+0000"), "{}", refused.message);
    }

    #[test]
    fn line_breaks_are_text_in_a_prompt_but_not_in_a_name() {
        assert!(check("prompt", "a cat\r\nin a hat\t!", Lines::Many).is_ok());
        assert!(check("display_name", "Ada\nLovelace", Lines::One).is_err());
        assert!(check("display_name", "Ada Lovelace — 🐈 日本", Lines::One).is_ok());
    }

    #[test]
    fn other_controls_are_refused_everywhere() {
        for c in ['\u{7}', '\u{1b}', '\u{7f}', '\u{85}', '\u{9b}', '\u{ffff}'] {
            assert!(
                check("prompt", &format!("x{c}y"), Lines::Many).is_err(),
                "{c:?}"
            );
        }
    }
}
