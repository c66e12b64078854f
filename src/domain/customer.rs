//! Shared customer records: the value types of a customer's profile, each validated on
//! construction, and the names of the fields that grants share.
//!
//! Not yet served over gRPC: the customer API builds on these types.

use std::collections::BTreeMap;

use super::EmailAddress;
use crate::error::{FieldViolation, Violations};

/// Limits on one profile; each keeps a record small enough to fan out to many partners.
pub const MAX_EMAILS: usize = 20;
pub const MAX_PHONES: usize = 20;
pub const MAX_ADDRESSES: usize = 10;
pub const MAX_ADDRESS_LINES: usize = 4;
pub const MAX_TAGS: usize = 50;
pub const MAX_ATTRIBUTES: usize = 50;
pub const MAX_LABEL_CHARS: usize = 50;
pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_ADDRESS_PART_CHARS: usize = 200;
pub const MAX_ATTRIBUTE_KEY_CHARS: usize = 100;
pub const MAX_ATTRIBUTE_VALUE_CHARS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomerKind {
    Person,
    Company,
}

/// A phone number in E.164 form (`+4930901820`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber(String);

/// An ISO 3166-1 alpha-2 region used for numbers written without a country code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhoneRegion(phonenumber::country::Id);

impl PhoneRegion {
    pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
        raw.trim()
            .to_ascii_uppercase()
            .parse()
            .map(Self)
            .map_err(|_| {
                FieldViolation::new("", format!("{raw:?} is not a region code such as DE or US"))
            })
    }
}

impl PhoneNumber {
    /// Parses a number with or without a country code (then read in `region`) and
    /// normalizes it to E.164. Numbers that cannot exist in their region are refused.
    pub fn parse(raw: &str, region: PhoneRegion) -> Result<Self, FieldViolation> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(FieldViolation::new("", "is required"));
        }
        let parsed = phonenumber::parse(Some(region.0), raw)
            .map_err(|_| FieldViolation::new("", format!("{raw:?} is not a phone number")))?;
        if !phonenumber::is_valid(&parsed) {
            return Err(FieldViolation::new(
                "",
                format!("{raw:?} is not a valid phone number for its region"),
            ));
        }
        Ok(Self(
            parsed.format().mode(phonenumber::Mode::E164).to_string(),
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailContact {
    pub address: EmailAddress,
    pub label: String,
    pub primary: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneContact {
    pub number: PhoneNumber,
    pub label: String,
    pub primary: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PostalAddress {
    pub label: String,
    pub lines: Vec<String>,
    pub locality: String,
    pub region: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, upper case; may be empty.
    pub country_code: String,
}

/// Everything about a customer that a grant can share, field by field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Profile {
    pub given_name: String,
    pub family_name: String,
    pub legal_name: String,
    pub emails: Vec<EmailContact>,
    pub phones: Vec<PhoneContact>,
    pub addresses: Vec<PostalAddress>,
    pub tags: Vec<String>,
    pub attributes: BTreeMap<String, String>,
}

impl Profile {
    /// Given and family name for a person, legal name for a company.
    pub fn display_name(&self, kind: CustomerKind) -> String {
        match kind {
            CustomerKind::Person => [self.given_name.as_str(), self.family_name.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" "),
            CustomerKind::Company => self.legal_name.clone(),
        }
    }

    /// Checks what no single field can: a person needs a name, a company a legal name,
    /// and at most one contact of each kind is primary. Violations name the field.
    pub fn check(&self, kind: CustomerKind, v: &mut Violations) {
        match kind {
            CustomerKind::Person if self.given_name.is_empty() && self.family_name.is_empty() => {
                v.add("given_name", "a person needs a given or a family name")
            }
            CustomerKind::Company if self.legal_name.is_empty() => {
                v.add("legal_name", "a company needs a legal name")
            }
            _ => {}
        }
        if self.emails.iter().filter(|e| e.primary).count() > 1 {
            v.add("emails", "at most one email may be primary");
        }
        if self.phones.iter().filter(|p| p.primary).count() > 1 {
            v.add("phones", "at most one phone may be primary");
        }
    }
}

/// Trims `raw` and checks it is at most `max` characters with no control characters.
pub fn text(raw: &str, max: usize) -> Result<String, FieldViolation> {
    let value = raw.trim();
    if value.chars().count() > max {
        return Err(FieldViolation::new(
            "",
            format!("must be at most {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldViolation::new(
            "",
            "must not contain control characters",
        ));
    }
    Ok(value.to_owned())
}

/// A tag: 1 to 50 lower-case letters, digits, `-`, `_` or `:`; input is lower-cased.
pub fn tag(raw: &str) -> Result<String, FieldViolation> {
    let value = raw.trim().to_lowercase();
    let ok = !value.is_empty()
        && value.chars().count() <= MAX_LABEL_CHARS
        && value
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ':'));
    if ok {
        Ok(value)
    } else {
        Err(FieldViolation::new(
            "",
            "must be 1 to 50 letters, digits, '-', '_' or ':'",
        ))
    }
}

/// An ISO 3166-1 alpha-2 country code, upper-cased; empty stays empty.
pub fn country_code(raw: &str) -> Result<String, FieldViolation> {
    let value = raw.trim().to_ascii_uppercase();
    if value.is_empty() || (value.len() == 2 && value.bytes().all(|b| b.is_ascii_uppercase())) {
        Ok(value)
    } else {
        Err(FieldViolation::new(
            "",
            "must be a two-letter ISO 3166-1 country code such as DE",
        ))
    }
}

/// The customer fields a grant can share; their names are the protobuf field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CustomerField {
    DisplayName,
    GivenName,
    FamilyName,
    LegalName,
    Emails,
    Phones,
    Addresses,
    Tags,
    Attributes,
}

impl CustomerField {
    pub const ALL: [Self; 9] = [
        Self::DisplayName,
        Self::GivenName,
        Self::FamilyName,
        Self::LegalName,
        Self::Emails,
        Self::Phones,
        Self::Addresses,
        Self::Tags,
        Self::Attributes,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DisplayName => "display_name",
            Self::GivenName => "given_name",
            Self::FamilyName => "family_name",
            Self::LegalName => "legal_name",
            Self::Emails => "emails",
            Self::Phones => "phones",
            Self::Addresses => "addresses",
            Self::Tags => "tags",
            Self::Attributes => "attributes",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == raw)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of customer fields (what a grant shares).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSet(u16);

impl FieldSet {
    pub const ALL: Self = Self((1 << CustomerField::ALL.len()) - 1);
    pub const NONE: Self = Self(0);

    /// Parses field names; an empty list means every field.
    pub fn parse(names: &[String]) -> Result<Self, FieldViolation> {
        if names.is_empty() {
            return Ok(Self::ALL);
        }
        let mut set = Self::NONE;
        for name in names {
            let field = CustomerField::parse(name).ok_or_else(|| {
                let known: Vec<_> = CustomerField::ALL.iter().map(|f| f.as_str()).collect();
                FieldViolation::new(
                    "",
                    format!("{name:?} is not a customer field; use {}", known.join(", ")),
                )
            })?;
            set.0 |= field.bit();
        }
        Ok(set)
    }

    pub fn contains(self, field: CustomerField) -> bool {
        self.0 & field.bit() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = CustomerField> {
        CustomerField::ALL
            .into_iter()
            .filter(move |f| self.contains(*f))
    }

    /// Comma-separated names, as stored.
    pub fn to_csv(self) -> String {
        self.iter()
            .map(CustomerField::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn from_csv(csv: &str) -> Option<Self> {
        let names: Vec<String> = csv
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if names.is_empty() {
            Some(Self::NONE)
        } else {
            Self::parse(&names).ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_are_normalized_to_e164_in_the_default_region() {
        let de = PhoneRegion::parse("de").unwrap();
        assert_eq!(
            PhoneNumber::parse("030 901820", de).unwrap().as_str(),
            "+4930901820"
        );
        assert_eq!(
            PhoneNumber::parse("+1 (650) 253-0000", de)
                .unwrap()
                .as_str(),
            "+16502530000"
        );
        let us = PhoneRegion::parse("US").unwrap();
        assert_eq!(
            PhoneNumber::parse("650-253-0000", us).unwrap().as_str(),
            "+16502530000"
        );
        assert!(PhoneNumber::parse("12", de).is_err());
        assert!(PhoneNumber::parse("not a number", de).is_err());
        assert!(PhoneNumber::parse("", de).is_err());
        assert!(PhoneRegion::parse("Atlantis").is_err());
    }

    #[test]
    fn display_names_follow_the_kind() {
        let profile = Profile {
            given_name: "Jane".into(),
            family_name: "Doe".into(),
            legal_name: "Doe Ltd".into(),
            ..Default::default()
        };
        assert_eq!(profile.display_name(CustomerKind::Person), "Jane Doe");
        assert_eq!(profile.display_name(CustomerKind::Company), "Doe Ltd");
        let only_family = Profile {
            family_name: "Doe".into(),
            ..Default::default()
        };
        assert_eq!(only_family.display_name(CustomerKind::Person), "Doe");
    }

    #[test]
    fn profiles_need_a_name_and_one_primary_contact_at_most() {
        let mut v = Violations::new();
        Profile::default().check(CustomerKind::Company, &mut v);
        assert!(v.finish().is_err());
        let email = |primary| EmailContact {
            address: EmailAddress::parse("a@b.example").unwrap(),
            label: String::new(),
            primary,
        };
        let two_primaries = Profile {
            legal_name: "X".into(),
            emails: vec![email(true), email(true)],
            ..Default::default()
        };
        let mut v = Violations::new();
        two_primaries.check(CustomerKind::Company, &mut v);
        assert!(v.finish().is_err());
        let fine = Profile {
            legal_name: "X".into(),
            emails: vec![email(true), email(false)],
            ..Default::default()
        };
        let mut v = Violations::new();
        fine.check(CustomerKind::Company, &mut v);
        assert!(v.finish().is_ok());
    }

    #[test]
    fn small_values_are_checked() {
        assert_eq!(tag(" VIP ").unwrap(), "vip");
        assert!(tag("two words").is_err());
        assert_eq!(country_code("de").unwrap(), "DE");
        assert!(country_code("DEU").is_err());
        assert!(text(&"x".repeat(MAX_NAME_CHARS + 1), MAX_NAME_CHARS).is_err());
        assert!(text("a\nb", MAX_NAME_CHARS).is_err());
    }

    #[test]
    fn field_sets_parse_and_round_trip() {
        assert_eq!(FieldSet::parse(&[]).unwrap(), FieldSet::ALL);
        let set = FieldSet::parse(&["emails".into(), "display_name".into()]).unwrap();
        assert!(set.contains(CustomerField::Emails) && !set.contains(CustomerField::Phones));
        assert_eq!(set.to_csv(), "display_name,emails");
        assert_eq!(FieldSet::from_csv(&set.to_csv()), Some(set));
        let err = FieldSet::parse(&["phone".into()]).unwrap_err();
        assert!(err.description.contains("phones"), "{}", err.description);
    }
}
