//! Validated free-text values shared by several resources.

use crate::domain::error::FieldViolation;

/// Longest display name, in characters: enough for a legal company name.
pub const MAX_DISPLAY_NAME_CHARS: usize = 200;
/// Longest reason or note attached to a state change, in characters.
pub const MAX_REASON_CHARS: usize = 2000;

/// A human-readable name: trimmed, 1 to 200 characters, one line (see [`check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
        let value = raw.trim();
        if value.is_empty() {
            return Err(FieldViolation::required(""));
        }
        Ok(Self(check(value, MAX_DISPLAY_NAME_CHARS, Lines::One)?))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An optional explanation (a reason to suspend, a note to a partner): trimmed, at
/// most 2000 characters, possibly empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reason(String);

impl Reason {
    pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
        Ok(Self(paragraph(raw, MAX_REASON_CHARS)?))
    }

    /// Like `parse`, but empty is an error.
    pub fn parse_required(raw: &str) -> Result<Self, FieldViolation> {
        let reason = Self::parse(raw)?;
        if reason.0.is_empty() {
            return Err(FieldViolation::required(""));
        }
        Ok(reason)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How a free-text field may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    /// Names, labels, tags, ids, subjects: no control characters at all, and no
    /// bidirectional overrides (which make a name read differently than it sorts and
    /// matches).
    One,
    /// Notes, bodies, descriptions: tab and newline allowed (CRLF is stored as LF).
    Many,
}

/// The one rule for free text, shared by every field: at most `max_chars` characters,
/// no NUL, no C0 or C1 control characters (but tab and newline in multi-line text), no
/// bidirectional overrides or isolates in single-line text. Returns the text as stored:
/// CRLF becomes LF in multi-line text; nothing else is changed (callers trim where the
/// field's type says so).
pub fn check(value: &str, max_chars: usize, lines: Lines) -> Result<String, FieldViolation> {
    let value = match lines {
        Lines::Many if value.contains("\r\n") => value.replace("\r\n", "\n"),
        _ => value.to_owned(),
    };
    if value.chars().count() > max_chars {
        return Err(
            FieldViolation::new("", format!("must be at most {max_chars} characters"))
                .because("TEXT_TOO_LONG"),
        );
    }
    for c in value.chars() {
        let bad = match c {
            '\0' => Some("must not contain NUL characters"),
            '\t' | '\n' if lines == Lines::Many => None,
            c if c.is_control() => Some(match lines {
                Lines::One => "must be one line without control characters",
                Lines::Many => "must not contain control characters other than tab and newline",
            }),
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' if lines == Lines::One => {
                Some("must not contain bidirectional overrides")
            }
            _ => None,
        };
        if let Some(description) = bad {
            return Err(FieldViolation::new("", description).because("INVALID_TEXT"));
        }
    }
    Ok(value)
}

/// Single-line text of at most `max_chars`, trimmed; empty allowed.
pub fn line(raw: &str, max_chars: usize) -> Result<String, FieldViolation> {
    check(raw.trim(), max_chars, Lines::One)
}

/// Multi-line text of at most `max_chars`, trimmed; empty allowed.
pub fn paragraph(raw: &str, max_chars: usize) -> Result<String, FieldViolation> {
    check(raw.trim(), max_chars, Lines::Many)
}

/// `value` unless it is empty, for fields that must be given: chain it after
/// [`line`] or [`paragraph`] (`line(raw, max).and_then(required)`).
pub fn required(value: String) -> Result<String, FieldViolation> {
    if value.is_empty() {
        Err(FieldViolation::required(""))
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_are_trimmed_and_bounded() {
        assert_eq!(
            DisplayName::parse("  Acme GmbH ").unwrap().as_str(),
            "Acme GmbH"
        );
        assert!(DisplayName::parse("   ").is_err());
        assert!(DisplayName::parse(&"x".repeat(201)).is_err());
        assert!(DisplayName::parse("a\u{7}b").is_err());
        assert!(DisplayName::parse(&"ü".repeat(200)).is_ok());
    }

    #[test]
    fn one_rule_for_every_text() {
        let reason = |r: Result<String, FieldViolation>| r.unwrap_err().reason();
        assert_eq!(reason(line("a\0b", 10)), "INVALID_TEXT");
        assert_eq!(reason(paragraph("a\0b", 10)), "INVALID_TEXT");
        // NUL is named as such (PostgreSQL cannot store it at all), not as one more
        // control character.
        assert_eq!(
            paragraph("a\0b", 10).unwrap_err().description,
            "must not contain NUL characters"
        );
        assert_eq!(reason(line("a\nb", 10)), "INVALID_TEXT");
        assert_eq!(reason(line("a\tb", 10)), "INVALID_TEXT");
        assert_eq!(paragraph("a\r\nb\tc", 10).unwrap(), "a\nb\tc");
        assert_eq!(reason(paragraph("a\rb", 10)), "INVALID_TEXT");
        // C1 controls (NEL, CSI) and DEL.
        for c in ['\u{85}', '\u{9b}', '\u{7f}', '\u{1b}'] {
            assert_eq!(reason(paragraph(&format!("a{c}b"), 10)), "INVALID_TEXT");
        }
        // Right-to-left override: not in a name, fine in a note (quoted Arabic text).
        assert_eq!(reason(line("abc\u{202E}fdp.exe", 20)), "INVALID_TEXT");
        assert_eq!(reason(line("a\u{2067}b", 20)), "INVALID_TEXT");
        assert!(paragraph("abc\u{202E}def", 20).is_ok());
        // Limits count characters, not bytes.
        assert!(line(&"ü".repeat(10), 10).is_ok());
        assert_eq!(reason(line(&"ü".repeat(11), 10)), "TEXT_TOO_LONG");
        assert_eq!(line("  Jane  ", 10).unwrap(), "Jane");
    }

    #[test]
    fn reasons_may_be_empty_unless_required() {
        assert_eq!(Reason::parse("").unwrap().as_str(), "");
        assert!(Reason::parse_required(" ").is_err());
        assert_eq!(
            Reason::parse(" line one\r\nline two \n").unwrap().as_str(),
            "line one\nline two"
        );
        assert_eq!(
            Reason::parse_required(" late delivery ").unwrap().as_str(),
            "late delivery"
        );
        assert!(Reason::parse(&"x".repeat(MAX_REASON_CHARS + 1)).is_err());
        assert!(Reason::parse(&"x".repeat(MAX_REASON_CHARS)).is_ok());
        assert_eq!(
            line(" ", 10).and_then(required).unwrap_err().reason(),
            "FIELD_REQUIRED"
        );
    }

    /// Whether `c` may never be stored in text written `lines`.
    fn forbidden(c: char, lines: Lines) -> bool {
        match lines {
            Lines::One => {
                c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
            }
            Lines::Many => c.is_control() && !matches!(c, '\t' | '\n'),
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        #[test]
        fn accepted_text_never_holds_a_forbidden_character(
            // Any char, weighted towards the ones the rule is about.
            value in r"(\PC|[\x00-\x1f\x7f-\x9f\u{202A}-\u{202E}\u{2066}-\u{2069}\r\n\t]){0,40}",
            max in 0usize..48,
        ) {
            for lines in [Lines::One, Lines::Many] {
                match check(&value, max, lines) {
                    Ok(stored) => {
                        proptest::prop_assert!(!stored.chars().any(|c| forbidden(c, lines)), "{stored:?}");
                        proptest::prop_assert!(stored.chars().count() <= max);
                    }
                    Err(v) => proptest::prop_assert!(
                        matches!(v.reason(), "INVALID_TEXT" | "TEXT_TOO_LONG"),
                        "{v:?}"
                    ),
                }
            }
        }
    }
}
