//! Validated free-text values shared by several resources.

use crate::error::FieldViolation;

/// Longest display name, in characters: enough for a legal company name.
pub const MAX_DISPLAY_NAME_CHARS: usize = 200;
/// Longest reason or note attached to a state change, in characters.
pub const MAX_REASON_CHARS: usize = 2000;

/// A human-readable name: trimmed, 1 to 200 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
        let value = raw.trim();
        if value.is_empty() {
            return Err(FieldViolation::new("", "is required"));
        }
        check_text(value, MAX_DISPLAY_NAME_CHARS)?;
        Ok(Self(value.to_owned()))
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
        let value = raw.trim();
        check_text(value, MAX_REASON_CHARS)?;
        Ok(Self(value.to_owned()))
    }

    /// Like `parse`, but empty is an error.
    pub fn parse_required(raw: &str) -> Result<Self, FieldViolation> {
        let reason = Self::parse(raw)?;
        if reason.0.is_empty() {
            return Err(FieldViolation::new("", "is required"));
        }
        Ok(reason)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_text(value: &str, max_chars: usize) -> Result<(), FieldViolation> {
    if value.chars().count() > max_chars {
        return Err(FieldViolation::new(
            "",
            format!("must be at most {max_chars} characters"),
        ));
    }
    // Newlines are fine in a reason; other control characters only break logs and mail.
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(FieldViolation::new(
            "",
            "must not contain control characters",
        ));
    }
    Ok(())
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
    fn reasons_may_be_empty_unless_required() {
        assert_eq!(Reason::parse("").unwrap().as_str(), "");
        assert!(Reason::parse_required(" ").is_err());
        assert!(Reason::parse("line one\nline two").is_ok());
    }
}
