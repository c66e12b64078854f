//! Partner scorecards: what each of two partners did for the other, per day, week,
//! month or quarter of the partnership's reporting time zone. The day is the unit: a
//! day is aggregated once it has closed and kept from then on (beyond the raw rows'
//! retention); longer periods merge their days. Medians and percentiles come from
//! DDSketches, which merge exactly and answer any quantile within a relative error of
//! [`RELATIVE_ERROR`].

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sketches_ddsketch::{Config, DDSketch};

use super::Partnership;

/// The most a sketch's quantile is off, relative to the true value (1 %): the
/// library's default configuration (2048 bins, which at 1 % span a microsecond to
/// far beyond a century), the one its binary encoding restores.
pub const RELATIVE_ERROR: f64 = 0.01;

/// A scorecard's period. Weeks start on Monday (ISO 8601); quarters in January, April,
/// July and October.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Week,
    Month,
    Quarter,
}

impl Period {
    pub const ALL: [Period; 4] = [Period::Day, Period::Week, Period::Month, Period::Quarter];

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Quarter => "quarter",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == raw)
    }

    /// The first and last local dates of the period holding `date`.
    pub fn dates(self, date: Date) -> (Date, Date) {
        let first = match self {
            Period::Day => date,
            Period::Week => {
                let back = date.weekday().since(Weekday::Monday);
                date.checked_sub(i64::from(back).days()).unwrap_or(date)
            }
            Period::Month => date.first_of_month(),
            Period::Quarter => {
                let month = (date.month() - 1) / 3 * 3 + 1;
                Date::new(date.year(), month, 1).unwrap_or(date)
            }
        };
        let next = match self {
            Period::Day => first.checked_add(1.day()),
            Period::Week => first.checked_add(7.days()),
            Period::Month => first.checked_add(1.month()),
            Period::Quarter => first.checked_add(3.months()),
        };
        let last = next.and_then(|n| n.checked_sub(1.day())).unwrap_or(first);
        (first, last)
    }

    /// The first date of the period after the one holding `date`.
    pub fn next(self, date: Date) -> Option<Date> {
        self.dates(date).1.checked_add(1.day()).ok()
    }
}

/// The instants `[start, end)` of local `date` in `zone`: from its first moment to
/// the next day's (23 or 25 hours across a DST change).
pub fn day_window(date: Date, zone: &TimeZone) -> Option<(Timestamp, Timestamp)> {
    let start = date.to_zoned(zone.clone()).ok()?.start_of_day().ok()?;
    let next = date.checked_add(1.day()).ok()?;
    let end = next.to_zoned(zone.clone()).ok()?.start_of_day().ok()?;
    Some((start.timestamp(), end.timestamp()))
}

/// The local date of `at` in `zone`.
pub fn date_of(at: Timestamp, zone: &TimeZone) -> Date {
    at.to_zoned(zone.clone()).date()
}

/// A distribution of durations in seconds.
#[derive(Clone)]
pub struct Sketch(DDSketch);

impl std::fmt::Debug for Sketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sketch")
            .field("count", &self.count())
            .field("median", &self.quantile(0.5))
            .finish()
    }
}

impl Default for Sketch {
    fn default() -> Self {
        Self(DDSketch::new(Config::defaults()))
    }
}

impl PartialEq for Sketch {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_java_bytes() == other.0.to_java_bytes()
    }
}

impl Sketch {
    pub fn add(&mut self, seconds: f64) {
        self.0.add(seconds.max(0.0));
    }

    pub fn merge(&mut self, other: &Sketch) {
        // Both come from the one config above, so merging cannot fail.
        let _ = self.0.merge(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.count() as u64
    }

    /// The `q` quantile (0.5: median) in seconds, within [`RELATIVE_ERROR`] of the
    /// value of rank `floor(q × (count − 1))`; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.0.quantile(q).ok().flatten()
    }

    /// The sketch in DataDog's binary encoding, base64.
    pub fn encode(&self) -> String {
        STANDARD.encode(self.0.to_java_bytes())
    }

    pub fn decode(raw: &str) -> Result<Self, String> {
        let bytes = STANDARD
            .decode(raw)
            .map_err(|e| format!("sketch is not base64: {e}"))?;
        let decoded = DDSketch::from_java_bytes(&bytes).map_err(|e| format!("sketch: {e:?}"))?;
        let mut sketch = Sketch::default();
        sketch
            .0
            .merge(&decoded)
            .map_err(|_| "sketch: not encoded at 1 % relative error".to_owned())?;
        Ok(sketch)
    }
}

impl Serialize for Sketch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.encode())
    }
}

impl<'de> Deserialize<'de> for Sketch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Sketch::decode(&raw).map_err(serde::de::Error::custom)
    }
}

/// One SLA clock's outcomes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClockFigures {
    /// Stopped within their target.
    pub met: i64,
    /// Breached.
    pub breached: i64,
}

/// Deal registrations an organization opened.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DealFigures {
    pub submitted: i64,
    pub approved: i64,
    pub won: i64,
    pub lost: i64,
}

/// What one organization of a partnership did for the other in a period. Case
/// figures are about the cases the other side opened with it (it is the handler);
/// deal figures about the registrations it opened.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PartyFigures {
    pub cases_received: i64,
    pub cases_resolved: i64,
    /// From a case's opening to this side's first comment or transition on it.
    pub first_response: Sketch,
    /// From opening to a final state, for the cases resolved.
    pub resolution: Sketch,
    /// Per SLA policy name.
    pub sla_clocks: BTreeMap<String, ClockFigures>,
    /// Tasks assigned to this side that went overdue.
    pub tasks_overdue: i64,
    /// Shared interactions it logged on customers the other side sees.
    pub interactions_logged: i64,
    /// Customers it newly shared with the other side, one by one (grants).
    pub customers_shared: i64,
    /// Its customers the other side sees (one by one or by rules), counted by the
    /// visibility function as the day was kept; for a longer period, its last kept
    /// day's count.
    pub customers_visible: Option<i64>,
    /// The other side's access requests to its customers it approved or denied.
    pub access_requests_answered: i64,
    pub time_to_answer: Sketch,
    /// Attempts to deliver to its webhook endpoints, and how many succeeded.
    pub webhook_attempts: i64,
    pub webhook_succeeded: i64,
    pub webhook_latency: Sketch,
    pub deals: DealFigures,
}

impl PartyFigures {
    pub fn merge(&mut self, o: &PartyFigures) {
        self.cases_received += o.cases_received;
        self.cases_resolved += o.cases_resolved;
        self.first_response.merge(&o.first_response);
        self.resolution.merge(&o.resolution);
        for (policy, c) in &o.sla_clocks {
            let mine = self.sla_clocks.entry(policy.clone()).or_default();
            mine.met += c.met;
            mine.breached += c.breached;
        }
        self.tasks_overdue += o.tasks_overdue;
        self.interactions_logged += o.interactions_logged;
        self.customers_shared += o.customers_shared;
        if o.customers_visible.is_some() {
            self.customers_visible = o.customers_visible;
        }
        self.access_requests_answered += o.access_requests_answered;
        self.time_to_answer.merge(&o.time_to_answer);
        self.webhook_attempts += o.webhook_attempts;
        self.webhook_succeeded += o.webhook_succeeded;
        self.webhook_latency.merge(&o.webhook_latency);
        self.deals.submitted += o.deals.submitted;
        self.deals.approved += o.deals.approved;
        self.deals.won += o.deals.won;
        self.deals.lost += o.deals.lost;
    }

    /// The share of webhook attempts that succeeded; `None` without attempts.
    pub fn webhook_success_rate(&self) -> Option<f64> {
        (self.webhook_attempts > 0)
            .then(|| self.webhook_succeeded as f64 / self.webhook_attempts as f64)
    }
}

/// Both sides' figures for a stretch of time, by organization id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Figures {
    pub parties: BTreeMap<String, PartyFigures>,
}

impl Figures {
    /// Empty figures for the two organizations `a` and `b`.
    pub fn of(a: &str, b: &str) -> Self {
        let mut f = Figures::default();
        f.parties.insert(a.to_owned(), PartyFigures::default());
        f.parties.insert(b.to_owned(), PartyFigures::default());
        f
    }

    /// The figures of `org_id`, if it is a side.
    pub fn party(&mut self, org_id: &str) -> Option<&mut PartyFigures> {
        self.parties.get_mut(org_id)
    }

    pub fn merge(&mut self, other: &Figures) {
        for (org, p) in &other.parties {
            self.parties.entry(org.clone()).or_default().merge(p);
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(raw: &str) -> Result<Self, String> {
        serde_json::from_str(raw).map_err(|e| e.to_string())
    }
}

/// A partnership's figures for one period.
#[derive(Debug, Clone)]
pub struct Scorecard {
    pub partnership: Partnership,
    pub period: Period,
    pub first: Date,
    pub last: Date,
    /// The instants the figures cover (the end is now while the period runs).
    pub start: Timestamp,
    pub end: Timestamp,
    /// Whether the period has closed (its figures no longer change).
    pub closed: bool,
    pub figures: Figures,
}

/// Seconds between two instants (0 if `to` is earlier).
pub fn seconds_between(from: Timestamp, to: Timestamp) -> f64 {
    (to.as_microsecond() - from.as_microsecond()).max(0) as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(raw: &str) -> Date {
        raw.parse().unwrap()
    }

    #[test]
    fn periods_cover_their_dates() {
        let date = d("2026-12-03"); // a Thursday
        assert_eq!(Period::Day.dates(date), (date, date));
        assert_eq!(Period::Week.dates(date), (d("2026-11-30"), d("2026-12-06")));
        assert_eq!(
            Period::Month.dates(date),
            (d("2026-12-01"), d("2026-12-31"))
        );
        assert_eq!(
            Period::Quarter.dates(date),
            (d("2026-10-01"), d("2026-12-31"))
        );
        assert_eq!(Period::Quarter.dates(d("2026-02-28")).1, d("2026-03-31"));
        assert_eq!(Period::Week.dates(d("2026-11-30")).0, d("2026-11-30"));
        assert_eq!(Period::Month.next(date), Some(d("2027-01-01")));
        assert_eq!(Period::parse("quarter"), Some(Period::Quarter));
        assert_eq!(Period::parse("year"), None);
    }

    #[test]
    fn days_follow_the_zone_across_dst() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let (s, e) = day_window(d("2026-03-29"), &berlin).unwrap();
        assert_eq!(s.to_string(), "2026-03-28T23:00:00Z");
        assert_eq!(e.to_string(), "2026-03-29T22:00:00Z"); // 23 hours
        let (s, e) = day_window(d("2026-10-25"), &berlin).unwrap();
        assert_eq!((e.as_second() - s.as_second()) / 3600, 25);
        assert_eq!(date_of(s, &berlin), d("2026-10-25"));
        let utc = TimeZone::UTC;
        let (s, _) = day_window(d("2026-12-03"), &utc).unwrap();
        assert_eq!(s.to_string(), "2026-12-03T00:00:00Z");
    }

    /// The exact value of rank floor(q × (n − 1)), as the sketch defines its quantiles.
    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() as f64 - 1.0)) as usize]
    }

    #[test]
    fn sketches_merge_and_stay_within_their_bound() {
        // Durations from 2 seconds to about 9 days, in two halves merged.
        let values: Vec<f64> = (1..=5000).map(|i| (i * i) as f64 * 0.03 + 2.0).collect();
        let (mut a, mut b) = (Sketch::default(), Sketch::default());
        for (i, v) in values.iter().enumerate() {
            if i % 3 == 0 { a.add(*v) } else { b.add(*v) }
        }
        a.merge(&b);
        assert_eq!(a.count(), 5000);
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        for q in [0.5, 0.9, 0.95, 0.99] {
            let (got, want) = (a.quantile(q).unwrap(), exact(&sorted, q));
            assert!(
                (got - want).abs() <= want * RELATIVE_ERROR,
                "q{q}: {got} against {want}"
            );
        }
        // The encoding keeps every count.
        let back = Sketch::decode(&a.encode()).unwrap();
        assert_eq!(back.count(), 5000);
        assert_eq!(back.quantile(0.9), a.quantile(0.9));
        assert!(Sketch::default().quantile(0.5).is_none());
        assert!(Sketch::decode("not base64!").is_err());
    }

    #[test]
    fn figures_merge_and_round_trip() {
        let mut day1 = Figures::of("a", "b");
        let p = day1.party("a").unwrap();
        p.cases_received = 2;
        p.first_response.add(60.0);
        p.sla_clocks.entry("first_response".into()).or_default().met = 1;
        p.deals.won = 1;
        let mut day2 = Figures::of("a", "b");
        let p = day2.party("a").unwrap();
        p.cases_received = 3;
        p.first_response.add(120.0);
        p.sla_clocks
            .entry("first_response".into())
            .or_default()
            .breached = 2;
        p.webhook_attempts = 4;
        p.webhook_succeeded = 3;
        day1.merge(&day2);
        let a = &day1.parties["a"];
        assert_eq!(a.cases_received, 5);
        assert_eq!(a.first_response.count(), 2);
        assert_eq!(
            a.sla_clocks["first_response"],
            ClockFigures {
                met: 1,
                breached: 2
            }
        );
        assert_eq!(a.webhook_success_rate(), Some(0.75));
        assert_eq!(day1.parties["b"].webhook_success_rate(), None);
        let back = Figures::from_json(&day1.to_json()).unwrap();
        assert_eq!(back, day1);
        assert!(day1.party("c").is_none());
    }
}
