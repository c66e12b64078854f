//! Members: an organization's account coordinators, who receive the hub's email.

use jiff::Timestamp;

use super::{DisplayName, OrganizationId};
use crate::domain::error::FieldViolation;

/// The longest address SMTP can carry (RFC 5321: 254 octets in a path).
const MAX_EMAIL_LEN: usize = 254;
/// RFC 5321's limit on the part before the `@`.
const MAX_LOCAL_PART_LEN: usize = 64;

/// A deliverable-looking email address, lower-cased.
///
/// Accepts the dot-atom form people actually use (`first.last+tag@example.co.uk`);
/// quoted local parts and IP-literal domains are refused, as no coordinator needs them.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

impl TryFrom<String> for EmailAddress {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        Self::parse(&value).map_err(|v| v.description)
    }
}

impl From<EmailAddress> for String {
    fn from(value: EmailAddress) -> Self {
        value.0
    }
}

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
        let value = raw.trim().to_lowercase();
        if value.is_empty() {
            return Err(FieldViolation::required(""));
        }
        let invalid = |why: &str| {
            Err(FieldViolation::new(
                "",
                format!("is not a valid email address: {why}"),
            ))
        };
        if value.len() > MAX_EMAIL_LEN {
            return invalid("longer than 254 characters");
        }
        let Some((local, domain)) = value.rsplit_once('@') else {
            return invalid("missing @");
        };
        if local.is_empty() || local.len() > MAX_LOCAL_PART_LEN {
            return invalid("the part before @ must be 1 to 64 characters");
        }
        let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
        if local
            .split('.')
            .any(|atom| atom.is_empty() || !atom.chars().all(atext))
        {
            return invalid("the part before @ has a character or dot that is not allowed");
        }
        let labels: Vec<&str> = domain.split('.').collect();
        let label_ok = |l: &&str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        };
        if labels.len() < 2 || !labels.iter().all(label_ok) {
            return invalid("the domain must be a name such as example.com");
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An IANA time zone name that the time zone database knows (`Europe/Berlin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeZoneName(String);

impl TimeZoneName {
    pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
        let value = raw.trim();
        if value.is_empty() {
            return Err(FieldViolation::required(""));
        }
        match jiff::tz::TimeZone::get(value) {
            Ok(tz) => Ok(Self(tz.iana_name().unwrap_or(value).to_owned())),
            Err(_) => Err(FieldViolation::new(
                "",
                format!("unknown time zone {value:?}; use an IANA name such as Europe/Berlin"),
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberRole {
    Coordinator,
    Manager,
    Administrator,
}

impl MemberRole {
    pub const ALL: [Self; 3] = [Self::Coordinator, Self::Manager, Self::Administrator];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Coordinator => "coordinator",
            Self::Manager => "manager",
            Self::Administrator => "administrator",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(raw))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub organization_id: OrganizationId,
    pub display_name: DisplayName,
    pub email: EmailAddress,
    pub role: MemberRole,
    pub time_zone: TimeZoneName,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
    pub revision: i64,
    /// Why the last email to `email` was refused for good; empty if none was. No
    /// email goes to a bounced address until the address changes.
    pub email_bounce: String,
    pub email_bounce_time: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_to_lower_case() {
        let email = EmailAddress::parse("  Jane.Doe+CRM@Example.COM ").unwrap();
        assert_eq!(email.as_str(), "jane.doe+crm@example.com");
    }

    #[test]
    fn malformed_emails_are_refused_with_a_reason() {
        for bad in [
            "",
            "jane",
            "jane@",
            "@example.com",
            "jane@example",
            "ja..ne@example.com",
            "jane doe@example.com",
            "jane@-example.com",
            "jane@exa_mple.com",
        ] {
            let err = EmailAddress::parse(bad).unwrap_err();
            assert!(!err.description.is_empty(), "{bad}");
        }
        let long = format!("{}@example.com", "a".repeat(65));
        assert!(EmailAddress::parse(&long).is_err());
    }

    #[test]
    fn an_address_may_be_as_long_as_smtp_carries_and_no_longer() {
        // 64 + 1 + 189 = 254 octets, RFC 5321's limit.
        let address = |last_label: usize| {
            format!(
                "{}@{}.{}.{}.com",
                "a".repeat(64),
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(last_label)
            )
        };
        assert_eq!(address(57).len(), 254);
        assert!(EmailAddress::parse(&address(57)).is_ok());
        assert!(EmailAddress::parse(&address(58)).is_err());
    }

    #[test]
    fn addresses_are_stored_as_plain_json_strings_and_checked_when_read() {
        let email = EmailAddress::parse("Jane@Doe.example").unwrap();
        let json = serde_json::to_string(&email).unwrap();
        assert_eq!(json, r#""jane@doe.example""#);
        assert_eq!(serde_json::from_str::<EmailAddress>(&json).unwrap(), email);
        assert!(serde_json::from_str::<EmailAddress>(r#""jane""#).is_err());
    }

    #[test]
    fn roles_read_back_as_stored() {
        for (role, name) in [
            (MemberRole::Coordinator, "coordinator"),
            (MemberRole::Manager, "manager"),
            (MemberRole::Administrator, "administrator"),
        ] {
            assert_eq!(role.as_str(), name);
            assert_eq!(MemberRole::parse(name), Some(role));
            assert_eq!(MemberRole::parse(&name.to_uppercase()), Some(role));
        }
        assert_eq!(MemberRole::parse("owner"), None);
    }

    #[test]
    fn time_zones_must_be_known() {
        assert_eq!(
            TimeZoneName::parse("Europe/Berlin").unwrap().as_str(),
            "Europe/Berlin"
        );
        assert!(TimeZoneName::parse("UTC").is_ok());
        assert!(TimeZoneName::parse("Mars/Olympus").is_err());
        assert!(TimeZoneName::parse("").is_err());
    }
}
