//! Organizations: the vendors, distributors and retailers that use the hub.

use jiff::Timestamp;

use super::{DisplayName, OrganizationId};
use crate::domain::error::FieldViolation;

/// An organization's immutable, unique handle and resource id (`organizations/{slug}`):
/// 3 to 63 lower-case letters, digits and hyphens, starting with a letter and not
/// ending with a hyphen (the AIP-122 resource id rules).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Slug(String);

impl Slug {
    pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
        let ok_len = (3..=63).contains(&raw.len());
        let ok_chars = raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let ok_ends = raw.starts_with(|c: char| c.is_ascii_lowercase()) && !raw.ends_with('-');
        if raw.is_empty() {
            return Err(FieldViolation::required(""));
        }
        if !(ok_len && ok_chars && ok_ends) {
            return Err(FieldViolation::new(
                "",
                "must be 3 to 63 lower-case letters, digits or hyphens, start with a letter \
                 and not end with a hyphen",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Slug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An organization as other records point at it: internal id for storage, slug for names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrgRef {
    pub id: OrganizationId,
    pub slug: Slug,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrganizationKind {
    Vendor,
    Distributor,
    Retailer,
    Other,
}

impl OrganizationKind {
    pub const ALL: [Self; 4] = [Self::Vendor, Self::Distributor, Self::Retailer, Self::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vendor => "vendor",
            Self::Distributor => "distributor",
            Self::Retailer => "retailer",
            Self::Other => "other",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(raw))
            .ok_or_else(|| {
                FieldViolation::new("", "must be vendor, distributor, retailer or other")
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrganizationState {
    Active,
    /// Its keys stop working; its data stays.
    Suspended {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organization {
    pub id: OrganizationId,
    pub slug: Slug,
    pub display_name: DisplayName,
    pub kind: OrganizationKind,
    pub state: OrganizationState,
    /// ISO 4217 code RFM monetary scores are computed in; empty for none.
    pub reporting_currency: String,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
    /// Increases by one on every change; the etag is derived from it.
    pub revision: i64,
}

impl Organization {
    pub fn is_active(&self) -> bool {
        self.state == OrganizationState::Active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_follow_resource_id_rules() {
        for good in ["acme", "acme-gmbh", "a1b", "x".repeat(63).as_str()] {
            assert!(Slug::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "ab",
            "Acme",
            "1acme",
            "acme-",
            "ac_me",
            "x".repeat(64).as_str(),
            "acmé",
        ] {
            assert!(Slug::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_an_active_organization_is_active() {
        let mut org = Organization {
            id: "o1".into(),
            slug: Slug::parse("acme").unwrap(),
            display_name: DisplayName::parse("Acme").unwrap(),
            kind: OrganizationKind::Vendor,
            state: OrganizationState::Active,
            reporting_currency: String::new(),
            create_time: Timestamp::UNIX_EPOCH,
            update_time: Timestamp::UNIX_EPOCH,
            revision: 1,
        };
        assert!(org.is_active());
        org.state = OrganizationState::Suspended {
            reason: "unpaid".into(),
        };
        assert!(!org.is_active());
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in OrganizationKind::ALL {
            assert_eq!(OrganizationKind::parse(kind.as_str()).unwrap(), kind);
        }
        assert!(OrganizationKind::parse("wholesaler").is_err());
    }
}
