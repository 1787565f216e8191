//! Free text clients send (names, addresses, descriptions, reasons): shown to other
//! people and written to logs, so it may not carry control characters (newlines,
//! escape sequences, NUL) or bidirectional-text controls, which can make a shown text
//! read differently from what it is (`"\u{202e}evil"`), and a required one may not be
//! blank. Such text is refused, not silently cleaned, so what is stored is what was
//! sent.

use super::Error;

/// Characters that reorder how text is shown: the Arabic letter mark, the
/// left-to-right and right-to-left marks, embeddings, overrides and isolates.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Checks free text `value` of `field`: at most `max` characters, no control or
/// bidirectional-control character, and not blank if `required`.
pub fn check_text(field: &str, value: &str, max: usize, required: bool) -> Result<(), Error> {
    let n = value.chars().count();
    if n > max {
        return Err(Error::invalid(
            field,
            format!("is {n} characters; at most {max} are allowed"),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| c.is_control() || is_bidi_control(*c))
    {
        return Err(Error::invalid(
            field,
            format!(
                "contains U+{:04X}: control and bidirectional-control characters are not allowed",
                bad as u32
            ),
        ));
    }
    if required && value.trim().is_empty() {
        return Err(Error::invalid(field, "must not be blank"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_bidi_blank_and_long_texts_are_refused_naming_why() {
        assert!(check_text("name", "Wanda Plaza 万达广场 P2", 200, true).is_ok());
        assert!(check_text("address", "", 300, false).is_ok());
        for (value, why) in [
            ("\u{202e}evil", "U+202E"),
            ("a\nb", "U+000A"),
            ("nul\0", "U+0000"),
            ("\u{1b}[31mred", "U+001B"),
            ("   ", "blank"),
            ("", "blank"),
        ] {
            let err = check_text("name", value, 200, true)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("name: ") && err.contains(why),
                "{value:?}: {err}"
            );
        }
        let err = check_text("name", &"x".repeat(201), 200, true).unwrap_err();
        assert!(err.to_string().contains("201 characters"), "{err}");
    }
}
