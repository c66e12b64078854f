//! Shared customer records: the value types of a customer's profile, each validated on
//! construction, and the names of the fields that grants share.
//!
//! Profiles are stored as JSON (serde) and served by `api::customers`.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::text::{self, Lines};
use super::{EmailAddress, OrgRef};
use crate::domain::error::{FieldViolation, Violations};

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
/// An organization's own id for a customer: enough for any CRM's key or a URN.
pub const MAX_EXTERNAL_ID_CHARS: usize = 100;
/// An organization's account number for a customer.
pub const MAX_ACCOUNT_NUMBER_CHARS: usize = 100;
/// An organization's private notes on a customer: a few pages, not a document store.
pub const MAX_NOTES_CHARS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomerKind {
    Person,
    Company,
}

impl CustomerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Person => "person",
            Self::Company => "company",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "person" => Some(Self::Person),
            "company" => Some(Self::Company),
            _ => None,
        }
    }
}

/// The lifecycle of a customer record as far as who may see it is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordState {
    Active,
    /// Soft-deleted: only the owner still sees the tombstone.
    Deleted,
    /// Folded into another record: no one sees it under this id.
    Merged,
    /// Personal data removed: only the owner sees that it was erased.
    Erased,
}

/// A shared customer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub id: String,
    pub owner: OrgRef,
    pub kind: CustomerKind,
    pub state: RecordState,
    pub profile: Profile,
    /// The survivor, once merged into another record.
    pub merged_into: Option<String>,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
    /// When it was deleted or erased.
    pub delete_time: Option<Timestamp>,
    pub revision: i64,
}

/// A phone number in E.164 form (`+4930901820`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneNumber(String);

/// Numbers read back from the store were normalized when written; this only checks
/// the E.164 shape rather than parsing again.
impl TryFrom<String> for PhoneNumber {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        let digits = value.strip_prefix('+').unwrap_or_default();
        if (2..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(value))
        } else {
            Err(format!("{value:?} is not an E.164 number"))
        }
    }
}

impl From<PhoneNumber> for String {
    fn from(value: PhoneNumber) -> Self {
        value.0
    }
}

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
            return Err(FieldViolation::required(""));
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailContact {
    pub address: EmailAddress,
    pub label: String,
    pub primary: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhoneContact {
    pub number: PhoneNumber,
    pub label: String,
    pub primary: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
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

// Every free-text value of a profile or an overlay goes through the one text rule
// (`text::check`): trimmed, within its limit, no control characters, and names,
// labels and ids on one line without bidirectional overrides.

/// A given, family or legal name: one line of at most 200 characters, trimmed; may be
/// empty (the profile check says which name each kind needs).
pub fn name(raw: &str) -> Result<String, FieldViolation> {
    text::line(raw, MAX_NAME_CHARS)
}

/// The label of a contact point or address (`work`), or an overlay's status: one line
/// of at most 50 characters, trimmed; may be empty.
pub fn label(raw: &str) -> Result<String, FieldViolation> {
    text::line(raw, MAX_LABEL_CHARS)
}

/// A line, locality, region or postal code of a postal address: one line of at most
/// 200 characters, trimmed; may be empty.
pub fn address_part(raw: &str) -> Result<String, FieldViolation> {
    text::line(raw, MAX_ADDRESS_PART_CHARS)
}

/// An organization's own id for a customer: one line of at most 100 characters,
/// trimmed; `None` when empty.
pub fn external_id(raw: &str) -> Result<Option<String>, FieldViolation> {
    let value = text::line(raw, MAX_EXTERNAL_ID_CHARS)?;
    Ok((!value.is_empty()).then_some(value))
}

/// An organization's account number for a customer: one line of at most 100
/// characters, trimmed; may be empty.
pub fn account_number(raw: &str) -> Result<String, FieldViolation> {
    text::line(raw, MAX_ACCOUNT_NUMBER_CHARS)
}

/// An organization's notes on a customer: at most 10,000 characters over any number
/// of lines, trimmed; may be empty.
pub fn notes(raw: &str) -> Result<String, FieldViolation> {
    text::paragraph(raw, MAX_NOTES_CHARS)
}

/// A tag: 1 to 50 lower-case letters, digits, `-`, `_` or `:`; input is lower-cased.
pub fn tag(raw: &str) -> Result<String, FieldViolation> {
    let value = text::line(raw, MAX_LABEL_CHARS)?.to_lowercase();
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

/// An attribute key: 1 to 100 ASCII letters, digits, `_`, `-` or `.`, as written.
pub fn attribute_key(raw: &str) -> Result<String, FieldViolation> {
    let key = text::check(raw, MAX_ATTRIBUTE_KEY_CHARS, Lines::One)?;
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(key)
    } else {
        Err(FieldViolation::new(
            "",
            "keys must be 1 to 100 letters, digits, '_', '-' or '.'",
        ))
    }
}

/// An attribute value: one line of at most 1000 characters, trimmed; may be empty.
pub fn attribute_value(raw: &str) -> Result<String, FieldViolation> {
    text::line(raw, MAX_ATTRIBUTE_VALUE_CHARS)
}

/// Attributes (of a profile, an overlay or an interaction): at most 50, each key and
/// value checked; violations are recorded under `field[<key>]`.
pub fn attributes(
    v: &mut Violations,
    field: &str,
    raw: &HashMap<String, String>,
) -> BTreeMap<String, String> {
    if raw.len() > MAX_ATTRIBUTES {
        v.add(field, format!("may hold at most {MAX_ATTRIBUTES} entries"));
    }
    let mut out = BTreeMap::new();
    for (key, value) in raw {
        let at = format!("{field}[{key:?}]");
        let Some(key) = v.check(&at, attribute_key(key)) else {
            continue;
        };
        if let Some(value) = v.check(&at, attribute_value(value)) {
            out.insert(key, value);
        }
    }
    out
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
    /// The owner's metrics of the customer (`CustomerMetrics`), computed from what
    /// the owner sees, its private interactions included: shown to a partner only
    /// where a grant names it.
    OwnerMetrics,
}

impl CustomerField {
    pub const ALL: [Self; 10] = [
        Self::DisplayName,
        Self::GivenName,
        Self::FamilyName,
        Self::LegalName,
        Self::Emails,
        Self::Phones,
        Self::Addresses,
        Self::Tags,
        Self::Attributes,
        Self::OwnerMetrics,
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
            Self::OwnerMetrics => "owner_metrics",
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
    /// Every field of the record itself: what an empty list shares. The owner's
    /// metrics are shared only where named.
    pub const PROFILE: Self = Self(Self::ALL.0 & !(1 << CustomerField::OwnerMetrics as u16));

    /// Parses field names; an empty list means every field of the record
    /// ([`FieldSet::PROFILE`]: not the owner's metrics, which must be named).
    pub fn parse(names: &[String]) -> Result<Self, FieldViolation> {
        if names.is_empty() {
            return Ok(Self::PROFILE);
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

    /// Every field in either set.
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
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

impl CustomerField {
    /// The fields a caller sets; `display_name` is derived from the names.
    pub const SETTABLE: [Self; 8] = [
        Self::GivenName,
        Self::FamilyName,
        Self::LegalName,
        Self::Emails,
        Self::Phones,
        Self::Addresses,
        Self::Tags,
        Self::Attributes,
    ];
}

/// One field's change, with both values as JSON (for history).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<serde_json::Value>,
}

impl Profile {
    /// The value of a settable field as JSON; `None` when empty.
    pub fn value_of(&self, field: CustomerField) -> Option<serde_json::Value> {
        use serde_json::to_value;
        let value = match field {
            CustomerField::DisplayName | CustomerField::OwnerMetrics => return None,
            CustomerField::GivenName => to_value(&self.given_name),
            CustomerField::FamilyName => to_value(&self.family_name),
            CustomerField::LegalName => to_value(&self.legal_name),
            CustomerField::Emails => to_value(&self.emails),
            CustomerField::Phones => to_value(&self.phones),
            CustomerField::Addresses => to_value(&self.addresses),
            CustomerField::Tags => to_value(&self.tags),
            CustomerField::Attributes => to_value(&self.attributes),
        }
        .ok()?;
        let empty = match &value {
            serde_json::Value::String(s) => s.is_empty(),
            serde_json::Value::Array(a) => a.is_empty(),
            serde_json::Value::Object(o) => o.is_empty(),
            _ => false,
        };
        (!empty).then_some(value)
    }

    /// Copies `field` from `other`.
    pub fn set_from(&mut self, field: CustomerField, other: &Profile) {
        match field {
            CustomerField::DisplayName | CustomerField::OwnerMetrics => {}
            CustomerField::GivenName => self.given_name = other.given_name.clone(),
            CustomerField::FamilyName => self.family_name = other.family_name.clone(),
            CustomerField::LegalName => self.legal_name = other.legal_name.clone(),
            CustomerField::Emails => self.emails = other.emails.clone(),
            CustomerField::Phones => self.phones = other.phones.clone(),
            CustomerField::Addresses => self.addresses = other.addresses.clone(),
            CustomerField::Tags => self.tags = other.tags.clone(),
            CustomerField::Attributes => self.attributes = other.attributes.clone(),
        }
    }

    /// The settable fields whose values differ from `before`, with both values.
    pub fn changes_since(&self, before: &Profile) -> Vec<(CustomerField, FieldChange)> {
        CustomerField::SETTABLE
            .into_iter()
            .filter_map(|field| {
                let (old, new) = (before.value_of(field), self.value_of(field));
                (old != new).then(|| {
                    let change = FieldChange {
                        field: field.as_str().to_owned(),
                        old,
                        new,
                    };
                    (field, change)
                })
            })
            .collect()
    }

    /// Folds a merged record into this one: contact points, addresses and tags it does
    /// not have yet are added (never as a second primary), names it lacks are taken,
    /// and attributes it does not set are copied. This record's values win.
    pub fn absorb(&mut self, other: &Profile) {
        for name in [
            (&mut self.given_name, &other.given_name),
            (&mut self.family_name, &other.family_name),
            (&mut self.legal_name, &other.legal_name),
        ] {
            if name.0.is_empty() {
                name.0.clone_from(name.1);
            }
        }
        let had_primary = self.emails.iter().any(|e| e.primary);
        for e in &other.emails {
            if !self.emails.iter().any(|x| x.address == e.address) {
                let primary = e.primary && !had_primary;
                self.emails.push(EmailContact {
                    primary,
                    ..e.clone()
                });
            }
        }
        let had_primary = self.phones.iter().any(|p| p.primary);
        for p in &other.phones {
            if !self.phones.iter().any(|x| x.number == p.number) {
                let primary = p.primary && !had_primary;
                self.phones.push(PhoneContact {
                    primary,
                    ..p.clone()
                });
            }
        }
        for a in &other.addresses {
            if !self.addresses.contains(a) {
                self.addresses.push(a.clone());
            }
        }
        for t in &other.tags {
            if !self.tags.contains(t) {
                self.tags.push(t.clone());
            }
        }
        for (k, v) in &other.attributes {
            self.attributes
                .entry(k.clone())
                .or_insert_with(|| v.clone());
        }
        // A merge may exceed the per-record limits; keep the survivor's first ones.
        self.emails.truncate(MAX_EMAILS);
        self.phones.truncate(MAX_PHONES);
        self.addresses.truncate(MAX_ADDRESSES);
        self.tags.truncate(MAX_TAGS);
        while self.attributes.len() > MAX_ATTRIBUTES {
            self.attributes.pop_last();
        }
    }

    /// The normalized name and postal codes duplicate detection compares: the
    /// display name lower-cased with single spaces, and each postal code upper-cased
    /// without spaces, with its country.
    pub fn name_postal_pairs(&self, kind: CustomerKind) -> Vec<String> {
        let name = self
            .display_name(kind)
            .to_lowercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if name.is_empty() {
            return vec![];
        }
        let mut pairs: Vec<String> = self
            .addresses
            .iter()
            .filter(|a| !a.postal_code.is_empty())
            .map(|a| {
                let code: String = a
                    .postal_code
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect::<String>()
                    .to_uppercase();
                format!("{name}|{}|{code}", a.country_code)
            })
            .collect();
        pairs.sort();
        pairs.dedup();
        pairs
    }
}

/// A customer as one organization may see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerView {
    /// `None` if the display name is not shared with the viewer.
    pub display_name: Option<String>,
    /// The profile with every field the viewer may not see emptied.
    pub profile: Profile,
    pub fields: FieldSet,
}

impl CustomerView {
    /// The fields that read differently in this view than in `before` (the same
    /// viewer's view of the previous version): what a change looks like to someone
    /// who sees only this much. A change to a field hidden in both is no change here;
    /// a field it saw before and no longer does reads as emptied.
    pub fn changes_since(&self, before: &CustomerView) -> Vec<CustomerField> {
        CustomerField::ALL
            .into_iter()
            .filter(|f| self.fields.contains(*f) || before.fields.contains(*f))
            .filter(|f| match f {
                CustomerField::DisplayName => self.display_name != before.display_name,
                _ => self.profile.value_of(*f) != before.profile.value_of(*f),
            })
            .collect()
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

    /// The fields `check` finds fault with.
    fn violated_fields(profile: &Profile, kind: CustomerKind) -> Vec<String> {
        let mut v = Violations::new();
        profile.check(kind, &mut v);
        match v.finish() {
            Ok(()) => vec![],
            Err(crate::domain::error::Error::InvalidArgument(found)) => {
                found.into_iter().map(|f| f.field).collect()
            }
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_person_needs_either_name_and_each_kind_of_contact_one_primary_at_most() {
        use CustomerKind::Person;
        let person = |given: &str, family: &str| Profile {
            given_name: given.into(),
            family_name: family.into(),
            ..Default::default()
        };
        assert!(violated_fields(&person("", "Doe"), Person).is_empty());
        assert!(violated_fields(&person("Jane", ""), Person).is_empty());
        assert_eq!(violated_fields(&person("", ""), Person), ["given_name"]);

        let de = PhoneRegion::parse("DE").unwrap();
        let phone = |number: &str, primary| PhoneContact {
            number: PhoneNumber::parse(number, de).unwrap(),
            label: String::new(),
            primary,
        };
        let one_primary = Profile {
            phones: vec![phone("030 901820", true), phone("+16502530000", false)],
            ..person("Jane", "")
        };
        assert!(violated_fields(&one_primary, Person).is_empty());
        let two_primaries = Profile {
            phones: vec![phone("030 901820", true), phone("+16502530000", true)],
            ..person("Jane", "")
        };
        assert_eq!(violated_fields(&two_primaries, Person), ["phones"]);
    }

    #[test]
    fn small_values_are_checked() {
        assert_eq!(tag(" VIP ").unwrap(), "vip");
        assert!(tag("two words").is_err());
        assert_eq!(country_code("de").unwrap(), "DE");
        assert!(country_code("DEU").is_err());
    }

    #[test]
    fn profile_texts_follow_the_one_text_rule() {
        let reason = |r: Result<String, FieldViolation>| r.unwrap_err().reason();
        assert_eq!(name(" Jane ").unwrap(), "Jane");
        assert_eq!(
            reason(name(&"ü".repeat(MAX_NAME_CHARS + 1))),
            "TEXT_TOO_LONG"
        );
        assert!(name(&"ü".repeat(MAX_NAME_CHARS)).is_ok());
        for bad in ["a\0b", "a\nb", "a\u{1b}b", "a\u{202E}b"] {
            assert_eq!(reason(name(bad)), "INVALID_TEXT", "{bad:?}");
            assert_eq!(reason(label(bad)), "INVALID_TEXT", "{bad:?}");
            assert_eq!(reason(address_part(bad)), "INVALID_TEXT", "{bad:?}");
            assert_eq!(reason(account_number(bad)), "INVALID_TEXT", "{bad:?}");
            assert_eq!(reason(tag(bad)), "INVALID_TEXT", "{bad:?}");
            assert_eq!(reason(attribute_key(bad)), "INVALID_TEXT", "{bad:?}");
            assert_eq!(reason(attribute_value(bad)), "INVALID_TEXT", "{bad:?}");
            assert_eq!(
                external_id(bad).unwrap_err().reason(),
                "INVALID_TEXT",
                "{bad:?}"
            );
        }
        assert_eq!(external_id("  ").unwrap(), None);
        assert_eq!(notes(" one\r\ntwo\n").unwrap(), "one\ntwo");
        assert_eq!(reason(notes("a\0b")), "INVALID_TEXT");
        assert_eq!(reason(attribute_key("tier level")), "INVALID_FIELD_VALUE");

        let mut v = Violations::new();
        let raw: HashMap<String, String> = [
            ("tier".to_owned(), " gold ".to_owned()),
            ("note".to_owned(), "a\0b".to_owned()),
        ]
        .into();
        let kept = attributes(&mut v, "attributes", &raw);
        assert_eq!(kept, [("tier".to_owned(), "gold".to_owned())].into());
        let Err(crate::domain::error::Error::InvalidArgument(found)) = v.finish() else {
            panic!("a NUL in a value is a violation");
        };
        assert_eq!(found[0].field, r#"attributes["note"]"#);
    }

    #[test]
    fn a_profile_holds_at_most_fifty_attributes() {
        let many = |n: usize| -> HashMap<String, String> {
            (0..n).map(|i| (format!("k{i}"), "v".to_owned())).collect()
        };
        let mut v = Violations::new();
        assert_eq!(
            attributes(&mut v, "attributes", &many(MAX_ATTRIBUTES)).len(),
            50
        );
        assert!(v.finish().is_ok());
        let mut v = Violations::new();
        attributes(&mut v, "attributes", &many(MAX_ATTRIBUTES + 1));
        let Err(crate::domain::error::Error::InvalidArgument(found)) = v.finish() else {
            panic!("51 attributes are too many");
        };
        assert_eq!(found[0].field, "attributes");
    }

    #[test]
    fn an_update_copies_exactly_the_field_it_names() {
        let region = PhoneRegion::parse("DE").unwrap();
        let source = Profile {
            given_name: "Jane".into(),
            family_name: "Doe".into(),
            legal_name: "Doe Ltd".into(),
            emails: vec![EmailContact {
                address: EmailAddress::parse("jane@doe.example").unwrap(),
                label: String::new(),
                primary: true,
            }],
            phones: vec![PhoneContact {
                number: PhoneNumber::parse("030 901820", region).unwrap(),
                label: String::new(),
                primary: true,
            }],
            addresses: vec![PostalAddress {
                locality: "Berlin".into(),
                ..Default::default()
            }],
            tags: vec!["vip".into()],
            attributes: [("tier".to_owned(), "gold".to_owned())].into(),
        };
        for field in CustomerField::SETTABLE {
            let mut target = Profile::default();
            target.set_from(field, &source);
            let changed: Vec<_> = target
                .changes_since(&Profile::default())
                .into_iter()
                .map(|(f, _)| f)
                .collect();
            assert_eq!(changed, [field]);
            assert_eq!(target.value_of(field), source.value_of(field), "{field:?}");
        }
    }

    #[test]
    fn changes_and_merges_keep_the_survivor_first() {
        let email = |a: &str, primary| EmailContact {
            address: EmailAddress::parse(a).unwrap(),
            label: String::new(),
            primary,
        };
        let before = Profile {
            given_name: "Jane".into(),
            emails: vec![email("jane@a.example", true)],
            ..Default::default()
        };
        let mut after = before.clone();
        after.family_name = "Doe".into();
        let changes = after.changes_since(&before);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].0, CustomerField::FamilyName);
        assert_eq!(changes[0].1.old, None);
        // An empty list or map is no value either, so history says "added", not "[]".
        let mut tagged = before.clone();
        tagged.tags = vec!["vip".into()];
        tagged.attributes = [("tier".to_owned(), "gold".to_owned())].into();
        let changes = tagged.changes_since(&before);
        let olds: Vec<_> = changes.iter().map(|(f, c)| (*f, c.old.clone())).collect();
        assert_eq!(
            olds,
            [
                (CustomerField::Tags, None),
                (CustomerField::Attributes, None)
            ]
        );

        let region = PhoneRegion::parse("DE").unwrap();
        let phone = |raw: &str, primary| PhoneContact {
            number: PhoneNumber::parse(raw, region).unwrap(),
            label: String::new(),
            primary,
        };
        let address = |locality: &str| PostalAddress {
            locality: locality.into(),
            ..Default::default()
        };
        let other = Profile {
            given_name: "Janet".into(),
            family_name: "Doe".into(),
            emails: vec![email("jane@a.example", false), email("jd@b.example", true)],
            phones: vec![phone("030 901820", false), phone("+16502530000", true)],
            addresses: vec![address("Berlin"), address("Paris")],
            tags: vec!["vip".into(), "gold".into()],
            attributes: [
                ("tier".to_owned(), "gold".to_owned()),
                ("since".to_owned(), "2020".to_owned()),
            ]
            .into(),
            ..Default::default()
        };
        let mut survivor = Profile {
            phones: vec![phone("030 901820", true)],
            addresses: vec![address("Berlin")],
            tags: vec!["vip".into()],
            attributes: [("tier".to_owned(), "silver".to_owned())].into(),
            ..before.clone()
        };
        survivor.absorb(&other);
        assert_eq!(survivor.given_name, "Jane");
        assert_eq!(survivor.family_name, "Doe");
        // What both hold is not added twice; what is new is added, never as a second
        // primary; the survivor's own values win.
        assert_eq!(
            survivor.emails,
            [email("jane@a.example", true), email("jd@b.example", false)]
        );
        assert_eq!(
            survivor.phones,
            [phone("030 901820", true), phone("+16502530000", false)]
        );
        assert_eq!(survivor.addresses, [address("Berlin"), address("Paris")]);
        assert_eq!(survivor.tags, ["vip", "gold"]);
        assert_eq!(
            survivor.attributes,
            [
                ("since".to_owned(), "2020".to_owned()),
                ("tier".to_owned(), "silver".to_owned()),
            ]
            .into()
        );
    }

    #[test]
    fn a_merge_keeps_a_profile_within_its_limits() {
        let attributes = |prefix: &str| -> BTreeMap<String, String> {
            (0..MAX_ATTRIBUTES)
                .map(|i| (format!("{prefix}{i:02}"), "v".to_owned()))
                .collect()
        };
        let tags = |prefix: &str| -> Vec<String> {
            (0..MAX_TAGS).map(|i| format!("{prefix}{i:02}")).collect()
        };
        let mut survivor = Profile {
            attributes: attributes("a"),
            tags: tags("a"),
            ..Default::default()
        };
        let other = Profile {
            attributes: attributes("b"),
            tags: tags("b"),
            ..Default::default()
        };
        survivor.absorb(&other);
        assert_eq!(survivor.tags, tags("a"));
        assert_eq!(survivor.attributes.len(), MAX_ATTRIBUTES);
    }

    #[test]
    fn name_and_postal_code_are_normalized_for_matching() {
        let profile = Profile {
            given_name: " Jane ".into(),
            family_name: "DOE".into(),
            addresses: vec![PostalAddress {
                postal_code: "sw1a 1aa".into(),
                country_code: "GB".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            profile.name_postal_pairs(CustomerKind::Person),
            vec!["jane doe|GB|SW1A1AA"]
        );
    }

    #[test]
    fn profiles_round_trip_through_json() {
        let region = PhoneRegion::parse("DE").unwrap();
        let profile = Profile {
            legal_name: "Doe Ltd".into(),
            phones: vec![PhoneContact {
                number: PhoneNumber::parse("030 901820", region).unwrap(),
                label: "desk".into(),
                primary: true,
            }],
            ..Default::default()
        };
        let json = serde_json::to_string(&profile).unwrap();
        assert_eq!(serde_json::from_str::<Profile>(&json).unwrap(), profile);
        assert!(serde_json::from_str::<PhoneNumber>("\"0301\"").is_err());
    }

    #[test]
    fn kinds_read_back_as_stored() {
        for (kind, name) in [
            (CustomerKind::Person, "person"),
            (CustomerKind::Company, "company"),
        ] {
            assert_eq!(kind.as_str(), name);
            assert_eq!(CustomerKind::parse(name), Some(kind));
        }
        assert_eq!(CustomerKind::parse("PERSON"), None);
    }

    #[test]
    fn field_sets_parse_and_round_trip() {
        assert_eq!(FieldSet::parse(&[]).unwrap(), FieldSet::PROFILE);
        assert!(!FieldSet::PROFILE.contains(CustomerField::OwnerMetrics));
        assert!(FieldSet::PROFILE.contains(CustomerField::Attributes));
        let set = FieldSet::parse(&["emails".into(), "display_name".into()]).unwrap();
        assert!(set.contains(CustomerField::Emails) && !set.contains(CustomerField::Phones));
        assert_eq!(set.to_csv(), "display_name,emails");
        assert_eq!(FieldSet::from_csv(&set.to_csv()), Some(set));
        let err = FieldSet::parse(&["phone".into()]).unwrap_err();
        assert!(err.description.contains("phones"), "{}", err.description);
    }
}
