//! Interactions: what happened with a customer, logged by an organization.

use std::collections::BTreeMap;

use jiff::Timestamp;

use super::OrgRef;
use super::text;
use crate::domain::error::FieldViolation;

pub const MAX_SUMMARY_CHARS: usize = 200;
pub const MAX_BODY_CHARS: usize = 10_000;
pub const MAX_CHANNEL_CHARS: usize = 50;

/// What happened, in brief: 1 to 200 characters, trimmed; it may span lines.
pub fn summary(raw: &str) -> Result<String, FieldViolation> {
    text::paragraph(raw, MAX_SUMMARY_CHARS).and_then(text::required)
}

/// The full account: at most 10,000 characters over any number of lines, trimmed;
/// may be empty.
pub fn body(raw: &str) -> Result<String, FieldViolation> {
    text::paragraph(raw, MAX_BODY_CHARS)
}

/// Where it happened (`phone`, `web shop`): one line of at most 50 characters,
/// trimmed; may be empty.
pub fn channel(raw: &str) -> Result<String, FieldViolation> {
    text::line(raw, MAX_CHANNEL_CHARS)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum InteractionType {
    Call,
    Meeting,
    Email,
    Purchase,
    Complaint,
    Incident,
    Note,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Unspecified,
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InteractionVisibility {
    /// Only the author's organization.
    Organization,
    /// Everyone who can see the customer.
    Shared,
}

macro_rules! names {
    ($t:ty { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s,)+ }
            }

            pub fn parse(raw: &str) -> Option<Self> {
                match raw { $($s => Some(Self::$v),)+ _ => None }
            }
        }
    };
}

names!(InteractionType { Call => "call", Meeting => "meeting", Email => "email", Purchase => "purchase",
    Complaint => "complaint", Incident => "incident", Note => "note" });
names!(Direction { Unspecified => "", Inbound => "inbound", Outbound => "outbound" });
names!(InteractionVisibility { Organization => "organization", Shared => "shared" });

/// An amount in a currency, as `google.type.Money`: whole units and billionths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    pub currency: String,
    pub units: i64,
    pub nanos: i32,
}

/// The largest amount one interaction carries, in whole units either way.
pub const MAX_UNITS: u64 = 1_000_000_000_000;

impl Money {
    pub fn new(currency: &str, units: i64, nanos: i32) -> Result<Self, FieldViolation> {
        let currency = currency.trim().to_ascii_uppercase();
        if !CURRENCIES.contains(&currency.as_str()) {
            return Err(FieldViolation::new(
                "currency_code",
                format!("{currency:?} is not an ISO 4217 currency code such as EUR or USD"),
            ));
        }
        if !(-999_999_999..=999_999_999).contains(&nanos) {
            return Err(FieldViolation::new(
                "nanos",
                "must be between -999,999,999 and 999,999,999",
            ));
        }
        if (units > 0 && nanos < 0) || (units < 0 && nanos > 0) {
            return Err(FieldViolation::new("nanos", "must have the sign of units"));
        }
        // Sums of millions of amounts per customer stay exact in 64 bits.
        if units.unsigned_abs() > MAX_UNITS {
            return Err(FieldViolation::new(
                "units",
                "must be at most 1,000,000,000,000 either way",
            ));
        }
        Ok(Self {
            currency,
            units,
            nanos,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interaction {
    pub id: String,
    pub customer_id: String,
    /// The author's organization.
    pub organization: OrgRef,
    pub kind: InteractionType,
    pub occur_time: Timestamp,
    /// The author, a member of `organization`.
    pub member_id: Option<String>,
    pub channel: String,
    pub direction: Direction,
    pub summary: String,
    pub body: String,
    pub amount: Option<Money>,
    pub attributes: BTreeMap<String, String>,
    pub visibility: InteractionVisibility,
    pub create_time: Timestamp,
}

impl Interaction {
    /// Whether `viewer_id`, who can see the customer, may see this interaction.
    pub fn visible_to(&self, viewer_id: &str) -> bool {
        self.visibility == InteractionVisibility::Shared || self.organization.id == viewer_id
    }
}

/// The active ISO 4217 codes (list of 2024), plus precious metals and special drawing
/// rights that invoices use.
const CURRENCIES: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD",
    "CAD", "CDF", "CHE", "CHF", "CHW", "CLF", "CLP", "CNY", "COP", "COU", "CRC", "CUP", "CVE",
    "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL",
    "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR",
    "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD",
    "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK",
    "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO",
    "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON",
    "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD",
    "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD",
    "TZS", "UAH", "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED", "VES", "VND", "VUV",
    "WST", "XAF", "XAG", "XAU", "XCD", "XDR", "XOF", "XPD", "XPF", "XPT", "XSU", "XUA", "YER",
    "ZAR", "ZMW", "ZWG",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_takes_iso_codes_and_consistent_signs() {
        assert_eq!(Money::new("eur", 12, 500_000_000).unwrap().currency, "EUR");
        assert_eq!(Money::new("XYZ", 1, 0).unwrap_err().field, "currency_code");
        assert_eq!(Money::new("EUR", 1, -5).unwrap_err().field, "nanos");
        assert!(Money::new("EUR", -1, -5).is_ok());
        assert!(Money::new("EUR", 1_000_000_000_000, 0).is_ok());
        assert_eq!(
            Money::new("EUR", -1_000_000_000_001, 0).unwrap_err().field,
            "units"
        );
        assert_eq!(Money::new("EUR", i64::MIN, 0).unwrap_err().field, "units");
        assert!(Money::new("EUR", 0, 1_000_000_000).is_err());
        assert!(
            CURRENCIES.windows(2).all(|w| w[0] < w[1]),
            "sorted, no duplicates"
        );
    }

    #[test]
    fn texts_follow_the_one_text_rule() {
        let reason = |r: Result<String, FieldViolation>| r.unwrap_err().reason();
        assert_eq!(summary(" Called\r\nback ").unwrap(), "Called\nback");
        assert_eq!(reason(summary("  ")), "FIELD_REQUIRED");
        assert_eq!(reason(summary("a\0b")), "INVALID_TEXT");
        assert_eq!(reason(body("a\u{1b}[2Jb")), "INVALID_TEXT");
        assert_eq!(
            body(&"é".repeat(MAX_BODY_CHARS)).unwrap().chars().count(),
            MAX_BODY_CHARS
        );
        assert_eq!(
            reason(body(&"é".repeat(MAX_BODY_CHARS + 1))),
            "TEXT_TOO_LONG"
        );
        assert_eq!(reason(channel("web\nshop")), "INVALID_TEXT");
        assert_eq!(channel(" phone ").unwrap(), "phone");
    }

    #[test]
    fn organization_interactions_stay_with_their_author() {
        let org = OrgRef {
            id: "o1".into(),
            slug: super::super::Slug::parse("acme").unwrap(),
        };
        let mut i = Interaction {
            id: "i".into(),
            customer_id: "c".into(),
            organization: org,
            kind: InteractionType::Call,
            occur_time: Timestamp::UNIX_EPOCH,
            member_id: None,
            channel: String::new(),
            direction: Direction::Inbound,
            summary: "s".into(),
            body: String::new(),
            amount: None,
            attributes: BTreeMap::new(),
            visibility: InteractionVisibility::Organization,
            create_time: Timestamp::UNIX_EPOCH,
        };
        assert!(i.visible_to("o1") && !i.visible_to("o2"));
        i.visibility = InteractionVisibility::Shared;
        assert!(i.visible_to("o2"));
    }
}
