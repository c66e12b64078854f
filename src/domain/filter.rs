//! AIP-160 filters, the subset the hub supports: comparisons joined by `AND`.
//!
//! ```text
//! filter     := comparison { "AND" comparison }
//! comparison := FIELD OP VALUE          OP: = != < <= > >= :
//! VALUE      := "quoted \"string\"" | bare-word
//! ```
//!
//! Values holding `:` or spaces (times, names) must be quoted, as AIP-160 asks.
//! `OR`, `NOT` and parentheses are refused with a message saying so, rather than
//! misread. Each resource types the comparisons it allows (see [`CustomerFilter`]).

use jiff::{SignedDuration, Timestamp};

use super::customer::CustomerView;
use super::customer::{CustomerKind, PhoneNumber, PhoneRegion};
use super::interaction::InteractionType;
use super::metrics::{CustomerMetrics, RfmBoundaries, RfmScores, Total, decimal};
use super::text::{self, Lines};
use super::{EmailAddress, Slug};
use crate::domain::error::FieldViolation;

/// Longest filter accepted; a longer one is a mistake or an attack.
pub const MAX_FILTER_CHARS: usize = 2000;
/// Most comparisons in one filter.
pub const MAX_COMPARISONS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Has,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Has => ":",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    pub field: String,
    pub op: Op,
    pub value: String,
}

/// The largest number `open_cases` compares with.
pub const MAX_OPEN_CASES: i64 = 1_000_000;

fn bad(message: impl Into<String>) -> FieldViolation {
    FieldViolation::new("filter", message)
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || "_.-+@*/".contains(c)
}

/// Splits `filter` into comparisons; empty means no filter. The filter is one line of
/// text under the one text rule, so no value taken from it (a name, an external id)
/// holds a control character.
pub fn parse(filter: &str) -> Result<Vec<Comparison>, FieldViolation> {
    text::check(filter, MAX_FILTER_CHARS, Lines::One).map_err(|v| v.under("filter"))?;
    let tokens = tokenize(filter)?;
    let mut comparisons = vec![];
    let mut rest = tokens.as_slice();
    while !rest.is_empty() {
        let [Token::Word(field), Token::Op(op), value, tail @ ..] = rest else {
            return Err(bad(format!(
                "expected `field OPERATOR value` near {:?}",
                describe(rest)
            )));
        };
        if ["AND", "OR", "NOT"].contains(&field.as_str()) {
            return Err(bad(format!("expected a field name, found {field}")));
        }
        let value = match value {
            Token::Word(w) | Token::Quoted(w) => w.clone(),
            Token::Op(_) => {
                return Err(bad(format!(
                    "expected a value after {field} {}",
                    op.symbol()
                )));
            }
        };
        comparisons.push(Comparison {
            field: field.clone(),
            op: *op,
            value,
        });
        rest = match tail {
            [] => tail,
            [Token::Word(and), after @ ..] if and == "AND" && !after.is_empty() => after,
            [Token::Word(or), ..] if or == "OR" => {
                return Err(bad("OR is not supported; send one request per alternative"));
            }
            _ => return Err(bad(format!("expected AND near {:?}", describe(tail)))),
        };
    }
    if comparisons.len() > MAX_COMPARISONS {
        return Err(bad(format!(
            "may have at most {MAX_COMPARISONS} comparisons"
        )));
    }
    Ok(comparisons)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Op(Op),
}

fn describe(tokens: &[Token]) -> String {
    tokens
        .iter()
        .take(3)
        .map(|t| match t {
            Token::Word(w) => w.clone(),
            Token::Quoted(q) => format!("{q:?}"),
            Token::Op(op) => op.symbol().to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn tokenize(filter: &str) -> Result<Vec<Token>, FieldViolation> {
    let mut tokens = vec![];
    let mut chars = filter.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '"' => {
                chars.next();
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => {
                            value.push(chars.next().ok_or_else(|| bad("ends inside an escape"))?)
                        }
                        Some(c) => value.push(c),
                        None => return Err(bad("has an unterminated quoted string")),
                    }
                }
                tokens.push(Token::Quoted(value));
            }
            '=' | '!' | '<' | '>' | ':' => {
                chars.next();
                let eq = chars.next_if_eq(&'=').is_some();
                let op = match (c, eq) {
                    ('=', false) => Op::Eq,
                    ('!', true) => Op::Ne,
                    ('<', false) => Op::Lt,
                    ('<', true) => Op::Le,
                    ('>', false) => Op::Gt,
                    ('>', true) => Op::Ge,
                    (':', false) => Op::Has,
                    _ => return Err(bad(format!("has an unknown operator near {c:?}"))),
                };
                tokens.push(Token::Op(op));
            }
            '(' | ')' => {
                return Err(bad(
                    "parentheses are not supported; join comparisons with AND",
                ));
            }
            c if is_word_char(c) => {
                let mut word = String::new();
                while let Some(c) = chars.next_if(|&c| is_word_char(c)) {
                    word.push(c);
                }
                tokens.push(Token::Word(word));
            }
            c => return Err(bad(format!("has an unexpected character {c:?}"))),
        }
    }
    Ok(tokens)
}

/// How a customer's display name is matched: case-insensitively, whole or by prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameMatch {
    Exact(String),
    Prefix(String),
}

/// A time in a filter: fixed, or relative to the moment the filter is read
/// (`now-90d`), so a condition such as "a purchase in the past 90 days" holds at
/// every read as of that read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    At(Timestamp),
    /// `now` minus this much; written `now-{n}{d|h|m|s}` with the unit it was given in.
    Ago(i64, char),
}

impl Moment {
    /// An RFC 3339 time, `now`, or `now-` a whole number of days, hours, minutes or
    /// seconds (at most ten years back).
    fn parse(raw: &str) -> Option<Moment> {
        if raw == "now" {
            return Some(Moment::Ago(0, 's'));
        }
        if let Some(ago) = raw.strip_prefix("now-") {
            let unit = ago.chars().last()?;
            let n: i64 = ago[..ago.len() - unit.len_utf8()].parse().ok()?;
            let moment = Moment::Ago(n, unit);
            let ten_years = SignedDuration::from_hours(24 * 3660);
            return (n >= 0 && moment.span()? <= ten_years).then_some(moment);
        }
        raw.parse::<Timestamp>().ok().map(Moment::At)
    }

    fn span(self) -> Option<SignedDuration> {
        match self {
            Moment::At(_) => None,
            Moment::Ago(n, 'd') => SignedDuration::try_from_hours(n.checked_mul(24)?),
            Moment::Ago(n, 'h') => SignedDuration::try_from_hours(n),
            Moment::Ago(n, 'm') => SignedDuration::try_from_mins(n),
            Moment::Ago(n, 's') => Some(SignedDuration::from_secs(n)),
            Moment::Ago(..) => None,
        }
    }

    /// The time this moment is at `now`.
    pub fn at(self, now: Timestamp) -> Timestamp {
        match self {
            Moment::At(t) => t,
            ago => now - ago.span().unwrap_or_default(),
        }
    }

    fn to_text(self) -> String {
        match self {
            Moment::At(t) => t.to_string(),
            Moment::Ago(0, _) => "now".into(),
            Moment::Ago(n, unit) => format!("now-{n}{unit}"),
        }
    }
}

/// What one organization knows of a customer beyond the record: when it last had an
/// interaction of each type (among those the organization can see: its own and the
/// shared ones), how many open cases on it the organization takes part in, and the
/// organization's own overlay status and account number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Activity {
    /// The running totals of the interactions the organization sees (the shared
    /// scope's and its own), by type and currency.
    pub totals: Vec<Total>,
    pub open_cases: i64,
    /// The organization's RFM quintiles, once computed.
    pub rfm: Option<RfmBoundaries>,
    /// Empty without an overlay.
    pub status: String,
    pub account_number: String,
}

impl Activity {
    /// The last interaction of `kind` (any type: `None`), if any.
    pub fn last(&self, kind: Option<InteractionType>) -> Option<Timestamp> {
        self.of_kind(kind).map(|t| t.last).max()
    }

    /// The first interaction of `kind` (any type: `None`), if any.
    pub fn first(&self, kind: Option<InteractionType>) -> Option<Timestamp> {
        self.of_kind(kind).map(|t| t.first).min()
    }

    fn of_kind(&self, kind: Option<InteractionType>) -> impl Iterator<Item = &Total> {
        self.totals
            .iter()
            .filter(move |t| kind.is_none_or(|k| k == t.kind))
    }

    /// The organization's metrics of the customer, with its RFM scores once the
    /// quintiles are computed.
    pub fn metrics(&self) -> CustomerMetrics {
        let mut m = CustomerMetrics::from_totals(&self.totals, self.open_cases);
        m.rfm = self.rfm.as_ref().map(|b| RfmScores::of(&m, b));
        m
    }
}

fn compare(op: Op, left: Timestamp, right: Timestamp) -> bool {
    match op {
        Op::Lt => left < right,
        Op::Le => left <= right,
        Op::Gt => left > right,
        Op::Ge => left >= right,
        Op::Eq | Op::Ne | Op::Has => false,
    }
}

/// One typed condition on customers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerCondition {
    DisplayName(NameMatch),
    Email(EmailAddress),
    Phone(PhoneNumber),
    Tag(String),
    ExternalId(String),
    Owner(Slug),
    Kind(CustomerKind),
    UpdateTime(Op, Moment),
    /// The time of the last interaction of a type (any type: `None`) the viewer can
    /// see; a customer without one does not match.
    LastInteraction(Option<InteractionType>, Op, Moment),
    /// The time of the first such interaction; without one, no match.
    FirstInteraction(Option<InteractionType>, Op, Moment),
    /// How many purchases the viewer sees.
    PurchaseCount(Op, i64),
    /// The viewer's RFM score (1 to 5) of one kind; a customer without that score (no
    /// purchase, none in the reporting currency, quintiles not yet computed) does not
    /// match.
    Rfm(RfmPart, Op, u8),
    /// The viewer's purchase value (`purchase_value.EUR`) or lifetime value
    /// (`lifetime_value.EUR`) in one currency, in billionths; no amounts in that
    /// currency count as zero.
    Value(ValueKind, String, Op, i128),
    /// `granted = true`: only customers granted to the viewer; `false`: only its own.
    Granted(bool),
    /// How many open cases on the customer the viewer takes part in.
    OpenCases(Op, i64),
    /// The viewer's own overlay status (`status = "key account"`).
    Status(String),
    /// The viewer's own overlay account number.
    AccountNumber(String),
}

/// Which RFM score a [`CustomerCondition::Rfm`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RfmPart {
    Recency,
    Frequency,
    Monetary,
}

impl RfmPart {
    pub fn as_str(self) -> &'static str {
        match self {
            RfmPart::Recency => "rfm_recency",
            RfmPart::Frequency => "rfm_frequency",
            RfmPart::Monetary => "rfm_monetary",
        }
    }

    /// This score among `s`; 0 for none.
    pub fn of(self, s: &RfmScores) -> u8 {
        match self {
            RfmPart::Recency => s.recency,
            RfmPart::Frequency => s.frequency,
            RfmPart::Monetary => s.monetary,
        }
    }
}

/// Which sum of amounts a [`CustomerCondition::Value`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Purchase,
    Lifetime,
}

impl ValueKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ValueKind::Purchase => "purchase_value",
            ValueKind::Lifetime => "lifetime_value",
        }
    }

    /// The value of this kind in `currency` among `m`, in billionths.
    pub fn of(self, m: &CustomerMetrics, currency: &str) -> i128 {
        let values = match self {
            ValueKind::Purchase => &m.purchase_value,
            ValueKind::Lifetime => &m.lifetime_value,
        };
        values.get(currency).copied().unwrap_or_default()
    }
}

/// The largest amount a value condition compares with, in whole units: sums stay
/// exact in 64-bit billionths below it.
pub const MAX_VALUE_UNITS: i128 = 9_000_000_000;

/// A decimal amount (`1250`, `-19.99`, up to nine decimals) in billionths.
fn amount(raw: &str) -> Option<i128> {
    let (negative, digits) = match raw.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) || fraction.len() > 9 {
        return None;
    }
    if digits.contains('.') && fraction.is_empty() {
        return None;
    }
    let units: i128 = whole.parse().ok()?;
    if units > MAX_VALUE_UNITS {
        return None;
    }
    let nanos: i128 = format!("{fraction:0<9}").parse().ok()?;
    let value = units * 1_000_000_000 + nanos;
    Some(if negative { -value } else { value })
}

/// A count or amount comparison (`=` and the orderings).
fn compare_number<T: Ord>(op: Op, left: T, right: T) -> bool {
    match op {
        Op::Eq => left == right,
        Op::Lt => left < right,
        Op::Le => left <= right,
        Op::Gt => left > right,
        Op::Ge => left >= right,
        Op::Ne | Op::Has => false,
    }
}

/// A customer list filter: every condition must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CustomerFilter {
    pub conditions: Vec<CustomerCondition>,
}

impl CustomerFilter {
    /// Parses and types a filter; phones without a country code are read in `region`.
    pub fn parse(filter: &str, region: PhoneRegion) -> Result<Self, FieldViolation> {
        let mut conditions = vec![];
        for Comparison { field, op, value } in parse(filter)? {
            let only = |allowed: &[Op]| {
                if allowed.contains(&op) {
                    Ok(())
                } else {
                    let ops: Vec<_> = allowed.iter().map(|o| o.symbol()).collect();
                    Err(bad(format!("{field} supports {} only", ops.join(" "))))
                }
            };
            let within = |e: FieldViolation| bad(format!("{field}: {}", e.description));
            let condition = match field.as_str() {
                "display_name" => {
                    only(&[Op::Eq])?;
                    let lower = value.to_lowercase();
                    match lower.strip_suffix('*') {
                        Some(prefix) if !prefix.contains('*') => {
                            CustomerCondition::DisplayName(NameMatch::Prefix(prefix.to_owned()))
                        }
                        None if !lower.contains('*') => {
                            CustomerCondition::DisplayName(NameMatch::Exact(lower))
                        }
                        _ => return Err(bad("display_name takes `*` only at the end")),
                    }
                }
                "email" => {
                    only(&[Op::Eq])?;
                    CustomerCondition::Email(EmailAddress::parse(&value).map_err(within)?)
                }
                "phone" => {
                    only(&[Op::Eq])?;
                    CustomerCondition::Phone(PhoneNumber::parse(&value, region).map_err(within)?)
                }
                "tag" | "tags" => {
                    only(&[Op::Eq, Op::Has])?;
                    CustomerCondition::Tag(super::customer::tag(&value).map_err(within)?)
                }
                "external_id" => {
                    only(&[Op::Eq])?;
                    CustomerCondition::ExternalId(value)
                }
                "owner" => {
                    only(&[Op::Eq])?;
                    let slug = value
                        .strip_prefix("organizations/")
                        .and_then(|s| Slug::parse(s).ok());
                    CustomerCondition::Owner(
                        slug.ok_or_else(|| bad("owner must be organizations/{organization}"))?,
                    )
                }
                "kind" => {
                    only(&[Op::Eq])?;
                    match value.as_str() {
                        "PERSON" => CustomerCondition::Kind(CustomerKind::Person),
                        "COMPANY" => CustomerCondition::Kind(CustomerKind::Company),
                        _ => return Err(bad("kind must be PERSON or COMPANY")),
                    }
                }
                "granted" => {
                    only(&[Op::Eq])?;
                    match value.as_str() {
                        "true" => CustomerCondition::Granted(true),
                        "false" => CustomerCondition::Granted(false),
                        _ => return Err(bad("granted must be true or false")),
                    }
                }
                "update_time" => {
                    only(&[Op::Lt, Op::Le, Op::Gt, Op::Ge])?;
                    CustomerCondition::UpdateTime(op, moment(&field, &value)?)
                }
                "open_cases" => {
                    only(&[Op::Eq, Op::Lt, Op::Le, Op::Gt, Op::Ge])?;
                    let n: i64 = value
                        .parse()
                        .ok()
                        .filter(|n| (0..=MAX_OPEN_CASES).contains(n))
                        .ok_or_else(|| {
                            bad(format!(
                                "open_cases compares with a whole number from 0 to {MAX_OPEN_CASES}"
                            ))
                        })?;
                    CustomerCondition::OpenCases(op, n)
                }
                // Not empty: no overlay and an empty one read alike, so "" matches
                // nothing anywhere.
                "status" => {
                    only(&[Op::Eq])?;
                    let v = super::customer::label(&value).map_err(within)?;
                    if v.is_empty() {
                        return Err(bad("status compares with a status, not an empty one"));
                    }
                    CustomerCondition::Status(v)
                }
                "account_number" => {
                    only(&[Op::Eq])?;
                    let v = super::customer::account_number(&value).map_err(within)?;
                    if v.is_empty() {
                        return Err(bad(
                            "account_number compares with an account number, not an empty one",
                        ));
                    }
                    CustomerCondition::AccountNumber(v)
                }
                "last_interaction_time" => {
                    only(&[Op::Lt, Op::Le, Op::Gt, Op::Ge])?;
                    CustomerCondition::LastInteraction(None, op, moment(&field, &value)?)
                }
                "first_interaction_time" => {
                    only(&[Op::Lt, Op::Le, Op::Gt, Op::Ge])?;
                    CustomerCondition::FirstInteraction(None, op, moment(&field, &value)?)
                }
                "rfm_recency" | "rfm_frequency" | "rfm_monetary" => {
                    only(&[Op::Eq, Op::Lt, Op::Le, Op::Gt, Op::Ge])?;
                    let part = match field.as_str() {
                        "rfm_recency" => RfmPart::Recency,
                        "rfm_frequency" => RfmPart::Frequency,
                        _ => RfmPart::Monetary,
                    };
                    let n: u8 = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=5).contains(n))
                        .ok_or_else(|| bad(format!("{field} compares with a score from 1 to 5")))?;
                    CustomerCondition::Rfm(part, op, n)
                }
                "purchase_count" => {
                    only(&[Op::Eq, Op::Lt, Op::Le, Op::Gt, Op::Ge])?;
                    let n: i64 = value
                        .parse()
                        .ok()
                        .filter(|n| *n >= 0)
                        .ok_or_else(|| bad("purchase_count compares with a whole number"))?;
                    CustomerCondition::PurchaseCount(op, n)
                }
                other => {
                    let value_of =
                        |prefix: &str| other.strip_prefix(prefix).and_then(|c| c.strip_prefix('.'));
                    if let Some((kind, currency)) = [ValueKind::Purchase, ValueKind::Lifetime]
                        .into_iter()
                        .find_map(|k| value_of(k.as_str()).map(|c| (k, c)))
                    {
                        only(&[Op::Eq, Op::Lt, Op::Le, Op::Gt, Op::Ge])?;
                        let currency = super::interaction::Money::new(currency, 0, 0)
                            .map_err(|_| {
                                bad(format!(
                                    "{other}: {currency:?} is not an ISO 4217 currency code such as EUR"
                                ))
                            })?
                            .currency;
                        let n = amount(&value).ok_or_else(|| {
                            bad(format!(
                                "{other} compares with an amount such as 1250 or 19.99 (at most 9 decimals, at most {MAX_VALUE_UNITS} units)"
                            ))
                        })?;
                        CustomerCondition::Value(kind, currency, op, n)
                    } else if let Some(kind) = last_of(other) {
                        only(&[Op::Lt, Op::Le, Op::Gt, Op::Ge])?;
                        CustomerCondition::LastInteraction(Some(kind), op, moment(&field, &value)?)
                    } else if let Some(kind) = first_of(other) {
                        only(&[Op::Lt, Op::Le, Op::Gt, Op::Ge])?;
                        CustomerCondition::FirstInteraction(Some(kind), op, moment(&field, &value)?)
                    } else {
                        return Err(bad(format!(
                            "unknown field {other:?}; use display_name, email, phone, tag, external_id, owner, kind, granted, update_time, open_cases, status, account_number, purchase_count, purchase_value.{{currency}}, lifetime_value.{{currency}}, first_ or last_interaction_time, or first_ or last_{{call|meeting|email|purchase|complaint|incident|note}}_time"
                        )));
                    }
                }
            };
            conditions.push(condition);
        }
        Ok(Self { conditions })
    }
}

/// A time value of `field`: RFC 3339, `now` or `now-90d`.
fn moment(field: &str, value: &str) -> Result<Moment, FieldViolation> {
    Moment::parse(value).ok_or_else(|| {
        bad(format!(
            "{field} needs an RFC 3339 time such as \"2026-01-01T00:00:00Z\", or now-{{n}}{{d|h|m|s}} such as now-90d"
        ))
    })
}

/// The interaction type of a `last_{type}_time` field.
fn last_of(field: &str) -> Option<InteractionType> {
    InteractionType::parse(field.strip_prefix("last_")?.strip_suffix("_time")?)
}

/// The interaction type of a `first_{type}_time` field.
fn first_of(field: &str) -> Option<InteractionType> {
    InteractionType::parse(field.strip_prefix("first_")?.strip_suffix("_time")?)
}

impl CustomerFilter {
    /// Whether checking the filter needs what the organization knows beyond the record
    /// ([`Activity`]: interactions, open cases, its overlay).
    pub fn needs_activity(&self) -> bool {
        self.conditions.iter().any(|c| {
            matches!(
                c,
                CustomerCondition::LastInteraction(..)
                    | CustomerCondition::FirstInteraction(..)
                    | CustomerCondition::PurchaseCount(..)
                    | CustomerCondition::Value(..)
                    | CustomerCondition::Rfm(..)
                    | CustomerCondition::OpenCases(..)
                    | CustomerCondition::Status(_)
                    | CustomerCondition::AccountNumber(_)
            )
        })
    }
}

impl CustomerFilter {
    /// A segment's filter: [`CustomerFilter::parse`], with at least one comparison and
    /// none on `external_id` (each organization's own, so no rule could read it for a
    /// partner).
    pub fn parse_segment(filter: &str, region: PhoneRegion) -> Result<Self, FieldViolation> {
        let parsed = Self::parse(filter, region)?;
        if parsed.conditions.is_empty() {
            return Err(bad(
                "a segment needs at least one comparison (a sharing rule without a segment shares every customer)",
            ));
        }
        if parsed
            .conditions
            .iter()
            .any(|c| matches!(c, CustomerCondition::Rfm(..)))
        {
            return Err(bad(
                "a segment cannot filter on RFM scores: they move when the hourly job recomputes the quintiles, which no partner would hear of; use purchase_count, purchase_value or last_purchase_time",
            ));
        }
        if parsed
            .conditions
            .iter()
            .any(|c| matches!(c, CustomerCondition::ExternalId(_)))
        {
            return Err(bad(
                "a segment cannot filter on external_id: external ids are each organization's own; use a tag",
            ));
        }
        // It is stored as its canonical text, which must read back.
        let canonical = parsed.to_text().chars().count();
        if canonical > MAX_FILTER_CHARS {
            return Err(bad(format!(
                "is {canonical} characters once written out in canonical form; a segment's filter may have at most {MAX_FILTER_CHARS}"
            )));
        }
        Ok(parsed)
    }

    /// The filter as canonical text: every value quoted, phones in E.164, names in
    /// lower case. Parsing it again, under any phone region, gives this filter.
    pub fn to_text(&self) -> String {
        let quoted = |v: &str| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
        self.conditions
            .iter()
            .map(|c| match c {
                CustomerCondition::DisplayName(NameMatch::Exact(v)) => {
                    format!("display_name = {}", quoted(v))
                }
                CustomerCondition::DisplayName(NameMatch::Prefix(p)) => {
                    format!("display_name = {}", quoted(&format!("{p}*")))
                }
                CustomerCondition::Email(e) => format!("email = {}", quoted(e.as_str())),
                CustomerCondition::Phone(p) => format!("phone = {}", quoted(p.as_str())),
                CustomerCondition::Tag(t) => format!("tag = {}", quoted(t)),
                CustomerCondition::ExternalId(x) => format!("external_id = {}", quoted(x)),
                CustomerCondition::Owner(o) => format!("owner = \"organizations/{o}\""),
                CustomerCondition::Kind(k) => format!(
                    "kind = {}",
                    match k {
                        CustomerKind::Person => "PERSON",
                        CustomerKind::Company => "COMPANY",
                    }
                ),
                CustomerCondition::UpdateTime(op, t) => {
                    format!("update_time {} {}", op.symbol(), quoted(&t.to_text()))
                }
                CustomerCondition::LastInteraction(kind, op, t) => format!(
                    "last_{}_time {} {}",
                    kind.map_or("interaction", |k| k.as_str()),
                    op.symbol(),
                    quoted(&t.to_text())
                ),
                CustomerCondition::FirstInteraction(kind, op, t) => format!(
                    "first_{}_time {} {}",
                    kind.map_or("interaction", |k| k.as_str()),
                    op.symbol(),
                    quoted(&t.to_text())
                ),
                CustomerCondition::PurchaseCount(op, n) => {
                    format!("purchase_count {} {n}", op.symbol())
                }
                CustomerCondition::Rfm(part, op, n) => {
                    format!("{} {} {n}", part.as_str(), op.symbol())
                }
                CustomerCondition::Value(kind, currency, op, n) => format!(
                    "{}.{currency} {} {}",
                    kind.as_str(),
                    op.symbol(),
                    decimal(*n)
                ),
                CustomerCondition::Granted(g) => format!("granted = {g}"),
                CustomerCondition::OpenCases(op, n) => format!("open_cases {} {n}", op.symbol()),
                CustomerCondition::Status(s) => format!("status = {}", quoted(s)),
                CustomerCondition::AccountNumber(a) => format!("account_number = {}", quoted(a)),
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }
}

/// What a filter is checked against: a customer as one organization sees it.
pub struct CustomerFacts<'a> {
    pub view: &'a CustomerView,
    pub kind: CustomerKind,
    pub owner: &'a Slug,
    /// The viewing organization's own external id for the customer.
    pub external_id: Option<&'a str>,
    pub update_time: Timestamp,
    /// Whether the customer is granted to the viewer (rather than owned by it).
    pub granted: bool,
    /// The customer's interactions as the viewer can see them; `None` if not read
    /// (a condition on them then does not match: see [`CustomerFilter::needs_activity`]).
    pub activity: Option<&'a Activity>,
    /// When the filter is read: relative times count back from it.
    pub now: Timestamp,
}

impl CustomerFilter {
    /// Whether the customer, as the viewer sees it, meets every condition. Queries may
    /// narrow rows in SQL first, but only this decides, so a filter on a field the
    /// viewer may not see never matches: no probing hidden emails through `filter`.
    pub fn matches(&self, facts: &CustomerFacts<'_>) -> bool {
        let profile = &facts.view.profile;
        self.conditions.iter().all(|condition| match condition {
            CustomerCondition::DisplayName(m) => {
                facts.view.display_name.as_deref().is_some_and(|name| {
                    let name = name.to_lowercase();
                    match m {
                        NameMatch::Exact(v) => name == *v,
                        NameMatch::Prefix(p) => name.starts_with(p.as_str()),
                    }
                })
            }
            CustomerCondition::Email(e) => profile.emails.iter().any(|c| c.address == *e),
            CustomerCondition::Phone(p) => profile.phones.iter().any(|c| c.number == *p),
            CustomerCondition::Tag(t) => profile.tags.contains(t),
            CustomerCondition::ExternalId(id) => facts.external_id == Some(id.as_str()),
            CustomerCondition::Owner(o) => facts.owner == o,
            CustomerCondition::Kind(k) => facts.kind == *k,
            CustomerCondition::Granted(g) => facts.granted == *g,
            CustomerCondition::UpdateTime(op, t) => {
                compare(*op, facts.update_time, t.at(facts.now))
            }
            CustomerCondition::LastInteraction(kind, op, t) => facts
                .activity
                .and_then(|a| a.last(*kind))
                .is_some_and(|last| compare(*op, last, t.at(facts.now))),
            CustomerCondition::FirstInteraction(kind, op, t) => facts
                .activity
                .and_then(|a| a.first(*kind))
                .is_some_and(|first| compare(*op, first, t.at(facts.now))),
            CustomerCondition::OpenCases(op, n) => facts
                .activity
                .is_some_and(|a| compare_number(*op, a.open_cases, *n)),
            CustomerCondition::PurchaseCount(op, n) => facts
                .activity
                .is_some_and(|a| compare_number(*op, a.metrics().purchases, *n)),
            CustomerCondition::Rfm(part, op, n) => facts.activity.is_some_and(|a| {
                a.metrics()
                    .rfm
                    .map(|s| part.of(&s))
                    .is_some_and(|score| score > 0 && compare_number(*op, score, *n))
            }),
            CustomerCondition::Value(kind, currency, op, n) => facts
                .activity
                .is_some_and(|a| compare_number(*op, kind.of(&a.metrics(), currency), *n)),
            CustomerCondition::Status(s) => facts
                .activity
                .is_some_and(|a| !a.status.is_empty() && a.status == *s),
            CustomerCondition::AccountNumber(x) => facts
                .activity
                .is_some_and(|a| !a.account_number.is_empty() && a.account_number == *x),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::domain::customer::Profile;

    fn de() -> PhoneRegion {
        PhoneRegion::parse("DE").unwrap()
    }

    #[test]
    fn conjunctions_parse_with_quotes_and_escapes() {
        let parsed = parse(r#"display_name = "Jane \"JD\" Doe" AND tag:vip AND update_time >= "2026-01-01T00:00:00Z""#).unwrap();
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[0].value, r#"Jane "JD" Doe"#);
        assert_eq!(
            parsed[1],
            Comparison {
                field: "tag".into(),
                op: Op::Has,
                value: "vip".into()
            }
        );
        assert_eq!(parsed[2].op, Op::Ge);
        assert!(parse("").unwrap().is_empty());
        assert!(parse("   ").unwrap().is_empty());
    }

    #[test]
    fn every_operator_is_read_as_itself() {
        let ops: Vec<Op> =
            parse("a = 1 AND b != 2 AND c < 3 AND d <= 4 AND e > 5 AND f >= 6 AND g : 7")
                .unwrap()
                .into_iter()
                .map(|c| c.op)
                .collect();
        assert_eq!(
            ops,
            [Op::Eq, Op::Ne, Op::Lt, Op::Le, Op::Gt, Op::Ge, Op::Has]
        );
    }

    #[test]
    fn unsupported_syntax_is_refused_with_a_reason() {
        for (filter, expected) in [
            ("tag = a OR tag = b", "OR is not supported"),
            ("(tag = a)", "parentheses"),
            ("tag = ", "expected"),
            ("tag = a AND", "expected AND"),
            ("tag a", r#"expected `field OPERATOR value` near "tag a""#),
            ("tag == a", "unknown operator"),
            ("tag = >", "expected a value"),
            (r#"email = "open"#, "unterminated"),
            ("tag = a; drop", "unexpected character"),
        ] {
            let err = parse(filter).unwrap_err();
            assert_eq!(err.field, "filter");
            assert!(
                err.description.contains(expected),
                "{filter:?}: {}",
                err.description
            );
        }
        let comparisons = |n: usize| vec!["tag = a"; n].join(" AND ");
        assert_eq!(parse(&comparisons(MAX_COMPARISONS)).unwrap().len(), 20);
        assert!(parse(&comparisons(MAX_COMPARISONS + 1)).is_err());
    }

    #[test]
    fn filters_are_one_line_of_text() {
        for filter in [
            "external_id = \"C\0-1\"",
            "tag = vip\nAND kind = PERSON",
            "display_name = \"\u{202E}enaJ\"",
            "display_name = \"\u{1b}[31mJane\"",
        ] {
            let err = parse(filter).unwrap_err();
            assert_eq!(
                (err.field.as_str(), err.reason()),
                ("filter", "INVALID_TEXT"),
                "{filter:?}"
            );
        }
        let long = format!("external_id = \"{}\"", "ü".repeat(MAX_FILTER_CHARS));
        assert_eq!(parse(&long).unwrap_err().reason(), "TEXT_TOO_LONG");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Never a panic, whatever arrives: NULs, deep nesting, stray quotes and escapes.
        #[test]
        fn customer_filters_never_panic(
            filter in r#"(display_name|email|phone|tag|external_id|owner|kind|granted|update_time|last_call_time|now-[0-9]{1,20}[dhms]|[ a-z_=!<>:*"\\()\x00\n\u{202E}]|\PC|AND|OR|NOT|"[^"]{0,8}"){0,64}"#,
        ) {
            let _ = CustomerFilter::parse(&filter, de());
            if let Ok(comparisons) = parse(&filter) {
                for c in comparisons {
                    proptest::prop_assert!(!c.value.chars().any(char::is_control), "{c:?}");
                }
            }
        }

        #[test]
        fn deep_nesting_and_long_quotes_never_panic(depth in 0usize..5_000, quotes in 0usize..5_000) {
            let nested = format!("{}tag = a{}", "(".repeat(depth), ")".repeat(depth));
            let _ = CustomerFilter::parse(&nested, de());
            let quoted = format!("display_name = {}", "\"\\".repeat(quotes));
            let _ = CustomerFilter::parse(&quoted, de());
        }
    }

    #[test]
    fn customer_filters_are_typed_and_normalized() {
        let f = CustomerFilter::parse(
            r#"email = "Jane@Doe.EXAMPLE" AND phone = "030 901820" AND display_name = "Jane*" AND owner = "organizations/acme" AND kind = PERSON"#,
            de(),
        )
        .unwrap();
        assert_eq!(
            f.conditions,
            vec![
                CustomerCondition::Email(EmailAddress::parse("jane@doe.example").unwrap()),
                CustomerCondition::Phone(PhoneNumber::parse("+4930901820", de()).unwrap()),
                CustomerCondition::DisplayName(NameMatch::Prefix("jane".into())),
                CustomerCondition::Owner(Slug::parse("acme").unwrap()),
                CustomerCondition::Kind(CustomerKind::Person),
            ]
        );
    }

    #[test]
    fn customer_filters_refuse_unknown_fields_and_wrong_operators() {
        for (filter, expected) in [
            ("phone_number = 1", "unknown field"),
            ("email > a@b.example", "supports = only"),
            (
                r#"update_time = "2026-01-01T00:00:00Z""#,
                "supports < <= > >= only",
            ),
            ("update_time > yesterday", "RFC 3339"),
            ("email = nope", "email:"),
            ("display_name = *ane", "only at the end"),
            ("display_name = Ja*ne*", "only at the end"),
            ("owner = acme", "organizations/"),
        ] {
            let err = CustomerFilter::parse(filter, de()).unwrap_err();
            assert!(
                err.description.contains(expected),
                "{filter:?}: {}",
                err.description
            );
        }
    }

    #[test]
    fn each_condition_matches_its_own_value_and_no_other() {
        use crate::domain::customer::{PhoneContact, Profile};
        use crate::domain::visibility::Access;
        let profile = Profile {
            given_name: "Jane".into(),
            family_name: "Doe".into(),
            phones: vec![PhoneContact {
                number: PhoneNumber::parse("030 901820", de()).unwrap(),
                label: String::new(),
                primary: true,
            }],
            ..Default::default()
        };
        let view = Access::Owner.view(CustomerKind::Person, &profile);
        let owner = Slug::parse("acme").unwrap();
        let facts = CustomerFacts {
            view: &view,
            kind: CustomerKind::Person,
            owner: &owner,
            external_id: Some("C-1"),
            update_time: "2026-01-01T00:00:00Z".parse().unwrap(),
            granted: false,
            activity: None,
            now: Timestamp::UNIX_EPOCH,
        };
        for (filter, expected) in [
            (r#"display_name = "jane doe""#, true),
            ("display_name = jane", false),
            (r#"phone = "030 901820""#, true),
            (r#"phone = "+16502530000""#, false),
            ("kind = PERSON", true),
            ("kind = COMPANY", false),
            ("granted = false", true),
            ("granted = true", false),
            ("external_id = C-2", false),
            ("owner = organizations/other", false),
            (r#"update_time < "2026-01-01T00:00:01Z""#, true),
            (r#"update_time < "2026-01-01T00:00:00Z""#, false),
            (r#"update_time <= "2026-01-01T00:00:00Z""#, true),
            (r#"update_time <= "2025-12-31T23:59:59Z""#, false),
            (r#"update_time > "2025-12-31T23:59:59Z""#, true),
            (r#"update_time > "2026-01-01T00:00:00Z""#, false),
            (r#"update_time >= "2026-01-01T00:00:00Z""#, true),
            (r#"update_time >= "2026-01-01T00:00:01Z""#, false),
        ] {
            let f = CustomerFilter::parse(filter, de()).unwrap();
            assert_eq!(f.matches(&facts), expected, "{filter}");
        }
    }

    #[test]
    fn filters_never_match_fields_the_viewer_cannot_see() {
        use crate::domain::customer::{EmailContact, FieldSet, Profile};
        use crate::domain::visibility::{Access, AccessLevel};
        let profile = Profile {
            given_name: "Jane".into(),
            family_name: "Doe".into(),
            emails: vec![EmailContact {
                address: EmailAddress::parse("jane@doe.example").unwrap(),
                label: String::new(),
                primary: true,
            }],
            tags: vec!["vip".into()],
            ..Default::default()
        };
        let owner = Slug::parse("acme").unwrap();
        let facts = |view| CustomerFacts {
            view,
            kind: CustomerKind::Person,
            owner: &owner,
            external_id: Some("C-1"),
            update_time: Timestamp::UNIX_EPOCH,
            granted: false,
            activity: None,
            now: Timestamp::UNIX_EPOCH,
        };
        let by_email = CustomerFilter::parse(
            "email = jane@doe.example AND owner = organizations/acme",
            de(),
        )
        .unwrap();
        let by_name = CustomerFilter::parse(
            r#"display_name = "jane d*" AND tag = vip AND external_id = C-1"#,
            de(),
        )
        .unwrap();

        let full = Access::Owner.view(CustomerKind::Person, &profile);
        assert!(by_email.matches(&facts(&full)));
        assert!(by_name.matches(&facts(&full)));

        let names: Vec<String> = ["display_name", "tags"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let masked = Access::Grantee {
            level: AccessLevel::Read,
            fields: FieldSet::parse(&names).unwrap(),
            writable: FieldSet::NONE,
        };
        let view = masked.view(CustomerKind::Person, &profile);
        assert!(
            !by_email.matches(&facts(&view)),
            "email is not shared, so it must not match"
        );
        assert!(by_name.matches(&facts(&view)));
        assert!(CustomerFilter::default().matches(&facts(&view)));
        let later = CustomerFilter::parse(r#"update_time > "2026-01-01T00:00:00Z""#, de()).unwrap();
        assert!(!later.matches(&facts(&view)));
    }

    #[test]
    fn a_segment_filter_round_trips_through_its_canonical_text() {
        let filter = CustomerFilter::parse_segment(
            r#"display_name = "Jane \"JD\" D*" AND email = Jane@Doe.example AND phone = "030 901820" AND tag:vip AND owner = organizations/acme AND kind = COMPANY AND update_time >= "2026-01-01T00:00:00Z" AND granted = false"#,
            de(),
        )
        .unwrap();
        let text = filter.to_text();
        assert!(text.contains(r#"phone = "+4930901820""#), "{text}");
        // Read back under another region, the phone is the same number.
        let us = PhoneRegion::parse("US").unwrap();
        assert_eq!(CustomerFilter::parse_segment(&text, us).unwrap(), filter);
        let long = format!("display_name = {}", "a".repeat(MAX_FILTER_CHARS - 15));
        assert!(long.len() <= MAX_FILTER_CHARS && CustomerFilter::parse(&long, de()).is_ok());
        for (bad_filter, expected) in [
            (long.as_str(), "once written out in canonical form"),
            ("", "at least one comparison"),
            (
                "external_id = C-1",
                "external ids are each organization's own",
            ),
            ("tag = a OR tag = b", "OR is not supported"),
        ] {
            let err = CustomerFilter::parse_segment(bad_filter, de()).unwrap_err();
            assert!(
                err.description.contains(expected),
                "{bad_filter}: {}",
                err.description
            );
        }
    }

    #[test]
    fn interaction_times_and_relative_moments_are_read_at_each_check() {
        let filter = CustomerFilter::parse_segment(
            "last_purchase_time >= now-90d AND last_interaction_time > \"2026-01-01T00:00:00Z\" AND update_time < now",
            de(),
        )
        .unwrap();
        assert!(filter.needs_activity());
        assert_eq!(
            filter.to_text(),
            r#"last_purchase_time >= "now-90d" AND last_interaction_time > "2026-01-01T00:00:00Z" AND update_time < "now""#
        );
        assert_eq!(
            CustomerFilter::parse(&filter.to_text(), de()).unwrap(),
            filter
        );
        for (bad_filter, expected) in [
            ("last_purchase_time > now-90x", "now-{n}{d|h|m|s}"),
            ("last_purchase_time > now-99999d", "now-{n}{d|h|m|s}"),
            ("update_time > now-9999999999999999h", "now-{n}{d|h|m|s}"),
            ("update_time > now-999999999999999d", "now-{n}{d|h|m|s}"),
            ("update_time > now-9999999999999999999m", "now-{n}{d|h|m|s}"),
            ("update_time > now-99999999999999999m", "now-{n}{d|h|m|s}"),
            ("update_time > now--5d", "now-{n}{d|h|m|s}"),
            ("update_time > now-5é", "now-{n}{d|h|m|s}"),
            ("last_purchase_time > yesterday", "RFC 3339"),
            ("last_purchase_time = now", "supports < <= > >= only"),
            ("last_shoe_time > now", "unknown field"),
        ] {
            let err = CustomerFilter::parse(bad_filter, de()).unwrap_err();
            assert!(
                err.description.contains(expected),
                "{bad_filter}: {}",
                err.description
            );
        }
        let now: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
        let day = SignedDuration::from_hours(24);
        let profile = Profile::default();
        let view = crate::domain::visibility::Access::Owner.view(CustomerKind::Person, &profile);
        let owner = Slug::parse("acme").unwrap();
        let check = |activity: Option<&Activity>, at: Timestamp| {
            filter.matches(&CustomerFacts {
                view: &view,
                kind: CustomerKind::Person,
                owner: &owner,
                external_id: None,
                update_time: now - day,
                granted: false,
                activity,
                now: at,
            })
        };
        let seen = |kind, at| Total {
            kind,
            currency: None,
            count: 1,
            amount: 0,
            first: at,
            last: at,
        };
        let bought = Activity {
            totals: vec![
                seen(InteractionType::Purchase, now - day * 10),
                seen(InteractionType::Call, now - day),
            ],
            ..Default::default()
        };
        assert!(check(Some(&bought), now));
        // The same facts 81 days later: the purchase is 91 days old.
        assert!(!check(Some(&bought), now + day * 81));
        let called_only = Activity {
            totals: vec![seen(InteractionType::Call, now - day)],
            ..Default::default()
        };
        assert!(!check(Some(&called_only), now), "no purchase at all");
        assert!(!check(None, now), "interactions not read: no match");
    }

    #[test]
    fn open_cases_and_the_overlay_are_what_the_organization_knows() {
        let filter =
            CustomerFilter::parse(r#"open_cases >= 2 AND status = "Key account""#, de()).unwrap();
        assert!(filter.needs_activity());
        assert_eq!(
            filter.to_text(),
            r#"open_cases >= 2 AND status = "Key account""#
        );
        assert_eq!(
            CustomerFilter::parse(&filter.to_text(), de()).unwrap(),
            filter
        );
        let numbered = CustomerFilter::parse(r#"account_number = "A-17""#, de()).unwrap();
        for (bad_filter, expected) in [
            ("open_cases > -1", "whole number from 0"),
            ("open_cases > many", "whole number from 0"),
            ("open_cases : 2", "supports = < <= > >= only"),
            ("status > \"x\"", "supports = only"),
            ("status = \"a\nb\"", "one line"),
            ("status = \"\"", "not an empty one"),
            ("account_number = \" \"", "not an empty one"),
        ] {
            let err = CustomerFilter::parse(bad_filter, de()).unwrap_err();
            assert!(
                err.description.contains(expected),
                "{bad_filter}: {}",
                err.description
            );
        }
        let profile = Profile::default();
        let view = crate::domain::visibility::Access::Owner.view(CustomerKind::Person, &profile);
        let owner = Slug::parse("acme").unwrap();
        let check = |filter: &CustomerFilter, activity: Option<&Activity>| {
            filter.matches(&CustomerFacts {
                view: &view,
                kind: CustomerKind::Person,
                owner: &owner,
                external_id: None,
                update_time: Timestamp::UNIX_EPOCH,
                granted: false,
                activity,
                now: Timestamp::UNIX_EPOCH,
            })
        };
        let known = |open_cases, status: &str| Activity {
            open_cases,
            status: status.into(),
            account_number: "A-17".into(),
            ..Default::default()
        };
        assert!(check(&filter, Some(&known(2, "Key account"))));
        assert!(!check(&filter, Some(&known(1, "Key account"))));
        assert!(
            !check(&filter, Some(&known(3, "key account"))),
            "exact status"
        );
        assert!(!check(&filter, None), "not read: no match");
        assert!(check(&numbered, Some(&known(0, ""))));
        assert!(!check(&numbered, Some(&Activity::default())), "no overlay");
    }
}
