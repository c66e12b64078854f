//! Customer metrics: what one organization's interactions with a customer add up to,
//! from the interactions it can see (its own, and the shared ones of anyone).
//!
//! The store keeps running totals per customer, scope, type and currency, updated by
//! one upsert as each interaction is logged; scope [`SHARED`] holds the shared
//! interactions, an organization's id its private ones. An organization's metrics are
//! the totals of the shared scope and of its own, merged here.

use std::collections::BTreeMap;

use jiff::Timestamp;

use super::interaction::{InteractionType, InteractionVisibility};

/// The scope of the totals every organization that sees the customer counts.
pub const SHARED: &str = "";

/// The scope an interaction's totals go to: the shared one, or its author's own.
pub fn scope_of(visibility: InteractionVisibility, author_id: &str) -> &str {
    match visibility {
        InteractionVisibility::Shared => SHARED,
        InteractionVisibility::Organization => author_id,
    }
}

/// One row of running totals: the interactions of one type (and, where they carry an
/// amount, one currency) in one scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Total {
    pub kind: InteractionType,
    /// `None` for interactions without an amount.
    pub currency: Option<String>,
    pub count: i64,
    /// The sum of the amounts, in billionths of a unit.
    pub amount: i128,
    pub first: Timestamp,
    pub last: Timestamp,
}

/// The interactions of one type an organization sees on a customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub count: i64,
    pub first: Timestamp,
    pub last: Timestamp,
}

/// Where one organization's customers split into quintiles, by the hourly job: the
/// values at the 20th, 40th, 60th and 80th percentile of recency (the last purchase,
/// in microseconds), frequency (purchases) and monetary value (purchase value in the
/// reporting currency, in billionths), among the customers it sees that bought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RfmBoundaries {
    pub recency: [i128; 4],
    pub frequency: [i128; 4],
    /// `None` without a reporting currency, or with no purchases in it.
    pub monetary: Option<[i128; 4]>,
    /// The reporting currency when they were computed.
    pub currency: String,
    /// How many customers they were computed over.
    pub customers: i64,
    pub compute_time: Timestamp,
}

/// The quintile boundaries of `values`: the values at the 20th, 40th, 60th and 80th
/// percentile; `None` for no values.
pub fn quintiles(mut values: Vec<i128>) -> Option<[i128; 4]> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let n = values.len();
    Some([1, 2, 3, 4].map(|k| values[k * n / 5]))
}

/// The score 1 to 5 of `value` against quintile `boundaries`: 1 plus the number of
/// boundaries at or below it, so the top fifth scores 5.
pub fn score(value: i128, boundaries: &[i128; 4]) -> u8 {
    1 + boundaries.iter().filter(|b| **b <= value).count() as u8
}

/// A customer's RFM scores, 1 (lowest fifth) to 5 (highest) within the organization;
/// 0 where there is none (no purchase; no purchase in the reporting currency).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RfmScores {
    pub recency: u8,
    pub frequency: u8,
    pub monetary: u8,
}

impl RfmScores {
    /// The scores of `m` against `b`.
    pub fn of(m: &CustomerMetrics, b: &RfmBoundaries) -> RfmScores {
        let Some(last) = m.last_purchase() else {
            return RfmScores::default();
        };
        let monetary = match (&b.monetary, m.purchase_value.get(&b.currency)) {
            (Some(bounds), Some(value)) => score(*value, bounds),
            _ => 0,
        };
        RfmScores {
            recency: score(i128::from(last.as_microsecond()), &b.recency),
            frequency: score(i128::from(m.purchases), &b.frequency),
            monetary,
        }
    }
}

/// One organization's metrics of one customer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerMetrics {
    /// Purchases, with or without an amount.
    pub purchases: i64,
    /// The amounts of the purchases, per currency, in billionths (a negative amount,
    /// a refund logged as a purchase, takes away). Never converted.
    pub purchase_value: BTreeMap<String, i128>,
    /// Every amount on any interaction, per currency, in billionths: purchases less
    /// refunds and credits, whatever type they were logged as.
    pub lifetime_value: BTreeMap<String, i128>,
    /// First and last interaction of each type.
    pub spans: BTreeMap<InteractionType, Span>,
    /// Open cases on the customer the organization takes part in.
    pub open_cases: i64,
    /// Against the organization's quintiles, once the hourly job has computed them.
    pub rfm: Option<RfmScores>,
}

impl CustomerMetrics {
    /// Merges the totals of the scopes an organization sees.
    pub fn from_totals<'a>(totals: impl IntoIterator<Item = &'a Total>, open_cases: i64) -> Self {
        let mut m = CustomerMetrics {
            open_cases,
            ..Default::default()
        };
        for t in totals {
            if t.kind == InteractionType::Purchase {
                m.purchases += t.count;
            }
            if let Some(currency) = &t.currency {
                *m.lifetime_value.entry(currency.clone()).or_default() += t.amount;
                if t.kind == InteractionType::Purchase {
                    *m.purchase_value.entry(currency.clone()).or_default() += t.amount;
                }
            }
            m.spans
                .entry(t.kind)
                .and_modify(|s| {
                    s.count += t.count;
                    s.first = s.first.min(t.first);
                    s.last = s.last.max(t.last);
                })
                .or_insert(Span {
                    count: t.count,
                    first: t.first,
                    last: t.last,
                });
        }
        m
    }

    /// The last purchase, if any.
    pub fn last_purchase(&self) -> Option<Timestamp> {
        self.spans.get(&InteractionType::Purchase).map(|s| s.last)
    }
}

/// Billionths as a decimal: `129.5`, `-20`, `0.000000001`.
pub fn decimal(amount: i128) -> String {
    let sign = if amount < 0 { "-" } else { "" };
    let (units, nanos) = (amount.abs() / 1_000_000_000, amount.abs() % 1_000_000_000);
    if nanos == 0 {
        format!("{sign}{units}")
    } else {
        let fraction = format!("{nanos:09}");
        format!("{sign}{units}.{}", fraction.trim_end_matches('0'))
    }
}

/// Splits billionths into whole units and billionths of the same sign, as
/// `google.type.Money` holds them; `None` past what 64-bit units hold.
pub fn units_and_nanos(amount: i128) -> Option<(i64, i32)> {
    let units = i64::try_from(amount / 1_000_000_000).ok()?;
    let nanos = (amount % 1_000_000_000) as i32;
    Some((units, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn total(kind: InteractionType, currency: Option<&str>, count: i64, amount: i128) -> Total {
        Total {
            kind,
            currency: currency.map(str::to_owned),
            count,
            amount,
            first: at("2026-01-01T00:00:00Z"),
            last: at("2026-02-01T00:00:00Z"),
        }
    }

    #[test]
    fn totals_of_several_scopes_and_currencies_merge_without_conversion() {
        use InteractionType::*;
        let shared = total(Purchase, Some("EUR"), 2, 150_000_000_000);
        let mut private = total(Purchase, Some("EUR"), 1, -20_500_000_000);
        private.first = at("2025-12-24T00:00:00Z");
        let dollars = total(Purchase, Some("USD"), 1, 9_990_000_000);
        let unpriced = total(Purchase, None, 3, 0);
        let mut credit = total(Complaint, Some("EUR"), 1, -5_000_000_000);
        credit.last = at("2026-03-01T00:00:00Z");
        let m = CustomerMetrics::from_totals([&shared, &private, &dollars, &unpriced, &credit], 2);
        assert_eq!(m.purchases, 7);
        assert_eq!(
            m.purchase_value,
            BTreeMap::from([
                ("EUR".to_owned(), 129_500_000_000),
                ("USD".to_owned(), 9_990_000_000)
            ])
        );
        assert_eq!(m.lifetime_value["EUR"], 124_500_000_000);
        assert_eq!(m.lifetime_value["USD"], 9_990_000_000);
        let purchases = m.spans[&Purchase];
        assert_eq!(purchases.count, 7);
        assert_eq!(purchases.first, at("2025-12-24T00:00:00Z"));
        assert_eq!(m.last_purchase(), Some(at("2026-02-01T00:00:00Z")));
        assert_eq!(m.spans[&Complaint].last, at("2026-03-01T00:00:00Z"));
        assert!(!m.spans.contains_key(&Call));
        assert_eq!(m.open_cases, 2);
        assert_eq!(CustomerMetrics::from_totals([], 0).last_purchase(), None);
    }

    #[test]
    fn quintiles_split_the_customers_in_fifths_and_scores_place_them() {
        assert_eq!(quintiles(vec![]), None);
        let b = quintiles((1..=10).rev().collect()).unwrap();
        assert_eq!(b, [3, 5, 7, 9]);
        let scores: Vec<u8> = (1..=10).map(|v| score(v, &b)).collect();
        assert_eq!(scores, [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);
        // Ties share a score; one customer alone is in the top fifth.
        let same = quintiles(vec![4; 7]).unwrap();
        assert_eq!(score(4, &same), 5);
        assert_eq!(score(3, &same), 1);
        assert_eq!(score(9, &quintiles(vec![9]).unwrap()), 5);
    }

    #[test]
    fn rfm_scores_need_a_purchase_and_monetary_one_in_the_reporting_currency() {
        use InteractionType::*;
        let bounds = RfmBoundaries {
            recency: [10, 20, 28, 30]
                .map(|d| i128::from(at(&format!("2026-01-{d}T00:00:00Z")).as_microsecond())),
            frequency: [1, 2, 4, 8],
            monetary: Some([10, 100, 1_000, 10_000].map(|u| u * 1_000_000_000)),
            currency: "EUR".into(),
            customers: 100,
            compute_time: at("2026-03-01T00:00:00Z"),
        };
        let mut t = total(Purchase, Some("EUR"), 3, 500_000_000_000);
        t.last = at("2026-01-25T00:00:00Z");
        let m = CustomerMetrics::from_totals([&t], 0);
        assert_eq!(
            RfmScores::of(&m, &bounds),
            RfmScores {
                recency: 3,
                frequency: 3,
                monetary: 3
            }
        );
        // Dollars only: no monetary score.
        let mut usd = t.clone();
        usd.currency = Some("USD".into());
        let m = CustomerMetrics::from_totals([&usd], 0);
        assert_eq!(RfmScores::of(&m, &bounds).monetary, 0);
        assert_eq!(RfmScores::of(&m, &bounds).frequency, 3);
        // No purchase: no scores at all.
        let call = total(Call, None, 9, 0);
        let m = CustomerMetrics::from_totals([&call], 0);
        assert_eq!(RfmScores::of(&m, &bounds), RfmScores::default());
    }

    #[test]
    fn amounts_split_into_units_and_nanos_of_one_sign() {
        assert_eq!(units_and_nanos(129_500_000_000), Some((129, 500_000_000)));
        assert_eq!(units_and_nanos(-20_500_000_000), Some((-20, -500_000_000)));
        assert_eq!(units_and_nanos(-1), Some((0, -1)));
        assert_eq!(units_and_nanos(i128::MAX), None);
    }

    #[test]
    fn shared_interactions_count_for_everyone_and_private_ones_for_their_author() {
        assert_eq!(scope_of(InteractionVisibility::Shared, "o1"), SHARED);
        assert_eq!(scope_of(InteractionVisibility::Organization, "o1"), "o1");
    }
}
