//! Account mapping: two partners compare segments of theirs by match keys and learn
//! counts only, never identities.
//!
//! This module holds the rules: which keys a record is matched by, how the counts of
//! one pair of segments are computed from both sides' members, how they are shown
//! (anything under the threshold as "fewer than"), and when a mapping may be compared
//! again. The store lists members; nothing here reads a database.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::customer::{CustomerField, CustomerKind, FieldSet, Profile};

/// What a comparison is called in its operation.
pub const COMPARE_VERB: &str = "compare_accounts";

/// Segments one side may name.
pub const MAX_SEGMENTS_PER_SIDE: usize = 10;

/// The smallest threshold a hub may be configured with: 1 would show every count.
pub const MIN_THRESHOLD: u32 = 2;

/// Email domains of consumer mailbox providers: a company's address there says
/// nothing about which company it is, so it is no domain key.
const FREE_MAIL: &[&str] = &[
    "163.com",
    "aol.com",
    "gmail.com",
    "gmx.de",
    "gmx.net",
    "googlemail.com",
    "hotmail.com",
    "icloud.com",
    "live.com",
    "mail.ru",
    "me.com",
    "msn.com",
    "outlook.com",
    "proton.me",
    "protonmail.com",
    "qq.com",
    "web.de",
    "yahoo.com",
    "yandex.ru",
];

/// Where a mapping stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingState {
    Proposed,
    Active,
    Declined,
    Ended,
}

impl MappingState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proposed => "proposed",
            Self::Active => "active",
            Self::Declined => "declined",
            Self::Ended => "ended",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "proposed" => Self::Proposed,
            "active" => Self::Active,
            "declined" => Self::Declined,
            "ended" => Self::Ended,
            _ => return None,
        })
    }

    /// Proposed or active: it may still change.
    pub fn open(self) -> bool {
        matches!(self, Self::Proposed | Self::Active)
    }
}

/// The two sides of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Side {
    Requester,
    Partner,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requester => "requester",
            Self::Partner => "partner",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "requester" => Some(Self::Requester),
            "partner" => Some(Self::Partner),
            _ => None,
        }
    }

    pub fn other(self) -> Self {
        match self {
            Self::Requester => Self::Partner,
            Self::Partner => Self::Requester,
        }
    }
}

/// How a shown count relates to the true one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Bound {
    Exact,
    /// Fewer than the value (the threshold), perhaps none.
    FewerThan,
    /// More than the value.
    MoreThan,
}

/// A count as a mapping shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    pub value: i64,
    pub bound: Bound,
}

impl Count {
    fn shown(value: i64, threshold: i64) -> Self {
        if value < threshold {
            Self {
                value: threshold,
                bound: Bound::FewerThan,
            }
        } else {
            Self {
                value,
                bound: Bound::Exact,
            }
        }
    }
}

/// The shown figures of one pair of segments (by segment id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlap {
    pub requester_segment: String,
    pub partner_segment: String,
    pub both: Count,
    pub only_requester: Count,
    pub only_partner: Count,
}

/// What one pair of segments holds, exactly: the sizes, the requester's members
/// matching some partner member (`both`), and the partner's members matching some
/// requester member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PairCounts {
    pub requester_size: i64,
    pub partner_size: i64,
    pub both: i64,
    pub partner_matched: i64,
}

impl PairCounts {
    /// Whether the overlap is under the threshold on either side: `both` counts the
    /// requester's records, and a requester holding many records with one key (say
    /// N companies at one domain) could otherwise reach the threshold on its side
    /// with a single record of the partner's.
    pub fn small(self, threshold: u32) -> bool {
        let n = i64::from(threshold);
        self.both < n || self.partner_matched < n
    }

    /// The figures as both sides may see them. Under the threshold (on either side:
    /// [`PairCounts::small`]) the overlap is "fewer than" it, and the one-sided counts
    /// become bounds: each side knows its own segment's size, so an exact "only mine"
    /// would give the overlap away.
    pub fn shown(self, threshold: u32) -> (Count, Count, Count) {
        let n = i64::from(threshold);
        if self.small(threshold) {
            let more_than = |size: i64| Count {
                value: (size - n).max(0),
                bound: Bound::MoreThan,
            };
            return (
                Count {
                    value: n,
                    bound: Bound::FewerThan,
                },
                more_than(self.requester_size),
                more_than(self.partner_size),
            );
        }
        (
            Count::shown(self.both, n),
            Count::shown(self.requester_size - self.both, n),
            Count::shown(self.partner_size - self.partner_matched, n),
        )
    }
}

/// What a record is matched by: its normalized emails, phones and name with postal
/// code (as MatchCustomer matches), and for a company each email's domain (not a
/// free-mail provider's). Only keys of fields the side sees (`seen`) count. Keys are
/// 64-bit hashes under a comparison's own random `hasher`, never stored.
pub fn match_keys(
    hasher: &impl BuildHasher,
    kind: CustomerKind,
    p: &Profile,
    seen: FieldSet,
) -> Vec<u64> {
    let key = |kind: &str, value: &str| hasher.hash_one((kind, value));
    let mut keys = vec![];
    if seen.contains(CustomerField::Emails) {
        for e in &p.emails {
            keys.push(key("email", e.address.as_str()));
            if kind == CustomerKind::Company
                && let Some((_, domain)) = e.address.as_str().rsplit_once('@')
                && !FREE_MAIL.contains(&domain)
            {
                keys.push(key("domain", domain));
            }
        }
    }
    if seen.contains(CustomerField::Phones) {
        for ph in &p.phones {
            keys.push(key("phone", ph.number.as_str()));
        }
    }
    let named = match kind {
        CustomerKind::Person => {
            seen.contains(CustomerField::GivenName) && seen.contains(CustomerField::FamilyName)
        }
        CustomerKind::Company => seen.contains(CustomerField::LegalName),
    };
    if named && seen.contains(CustomerField::Addresses) {
        for pair in p.name_postal_pairs(kind) {
            keys.push(key("name_postal", &pair));
        }
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// One side's member of a comparison: a record, the side's segments it belongs to
/// (bit `i`: the side's segment `i`) and its keys.
#[derive(Debug, Clone)]
pub struct Member {
    pub customer_id: String,
    pub segments: u16,
    pub keys: Vec<u64>,
    /// Whether the side owns the record (rather than sees another's): only owned
    /// records can be asked for from the side.
    pub owned: bool,
}

/// The outcome of comparing both sides' members: per pair (requester segment `i`,
/// partner segment `j`), the counts and the records of each side that matched.
#[derive(Debug, Default)]
pub struct Compared {
    pub pairs: HashMap<(usize, usize), PairCounts>,
    /// (i, j, side) → the matched records that side owns.
    pub matched: HashMap<(usize, usize, Side), Vec<String>>,
}

/// Compares `requester` and `partner` members, with `sizes` the number of members
/// of each side's segments. Two records match when they share a key or are the same
/// record (a customer both sides can see).
pub fn compare(requester: &[Member], partner: &[Member], sizes: (&[i64], &[i64])) -> Compared {
    let (r_keys, r_ids) = index(requester);
    let (p_keys, p_ids) = index(partner);
    let mut out = Compared::default();
    for (i, &rs) in sizes.0.iter().enumerate() {
        for (j, &ps) in sizes.1.iter().enumerate() {
            out.pairs.insert(
                (i, j),
                PairCounts {
                    requester_size: rs,
                    partner_size: ps,
                    ..Default::default()
                },
            );
        }
    }
    // Each member against the other side's index: the other side's segments it
    // matches some member of.
    let mut tally =
        |members: &[Member], keys: &HashMap<u64, u16>, ids: &HashMap<&str, u16>, side: Side| {
            for m in members {
                let mut other = ids.get(m.customer_id.as_str()).copied().unwrap_or(0);
                for k in &m.keys {
                    other |= keys.get(k).copied().unwrap_or(0);
                }
                if other == 0 {
                    continue;
                }
                for mine in bits(m.segments) {
                    for theirs in bits(other) {
                        let (i, j) = match side {
                            Side::Requester => (mine, theirs),
                            Side::Partner => (theirs, mine),
                        };
                        let Some(pair) = out.pairs.get_mut(&(i, j)) else {
                            continue;
                        };
                        match side {
                            Side::Requester => pair.both += 1,
                            Side::Partner => pair.partner_matched += 1,
                        }
                        if !m.owned {
                            continue;
                        }
                        out.matched
                            .entry((i, j, side))
                            .or_default()
                            .push(m.customer_id.clone());
                    }
                }
            }
        };
    tally(requester, &p_keys, &p_ids, Side::Requester);
    tally(partner, &r_keys, &r_ids, Side::Partner);
    out
}

/// The segments (bits) of a side's members holding each key, and each record.
fn index(members: &[Member]) -> (HashMap<u64, u16>, HashMap<&str, u16>) {
    let mut by_key: HashMap<u64, u16> = HashMap::new();
    let mut by_id: HashMap<&str, u16> = HashMap::new();
    for m in members {
        for k in &m.keys {
            *by_key.entry(*k).or_default() |= m.segments;
        }
        *by_id.entry(m.customer_id.as_str()).or_default() |= m.segments;
    }
    (by_key, by_id)
}

fn bits(mask: u16) -> impl Iterator<Item = usize> {
    (0..16).filter(move |b| mask & (1 << b) != 0)
}

/// One segment's state at a comparison: what decides whether the next may run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentInput {
    pub segment_id: String,
    pub side: Side,
    pub revision: i64,
    pub members: i64,
}

/// Whether a mapping compared at `compared` (from `before`) may be compared again
/// at `now`: no sooner than `interval` after, and only when the segments taking part
/// changed (another set, or a filter edited) or their members changed by more than
/// the threshold (`changed`: members updated since, plus the change in each
/// segment's member count), so one record added and re-asked for is not singled
/// out. `Err` says when, or why not.
pub fn may_refresh(
    compared: Timestamp,
    interval: SignedDuration,
    now: Timestamp,
    (before, after): (&[SegmentInput], &[SegmentInput]),
    changed: i64,
    threshold: u32,
) -> Result<(), String> {
    let next = compared.saturating_add(interval).unwrap_or(compared);
    if now < next {
        return Err(format!("it may be compared again from {next}"));
    }
    let ids = |inputs: &[SegmentInput]| -> HashSet<(String, Side, i64)> {
        inputs
            .iter()
            .map(|s| (s.segment_id.clone(), s.side, s.revision))
            .collect()
    };
    if ids(before) != ids(after) {
        return Ok(());
    }
    let sizes: i64 = after
        .iter()
        .filter_map(|a| {
            let b = before
                .iter()
                .find(|b| b.segment_id == a.segment_id && b.side == a.side)?;
            Some((a.members - b.members).abs())
        })
        .sum();
    if changed + sizes > i64::from(threshold) {
        Ok(())
    } else {
        // Not how many: a few changes on the other side are what the threshold hides.
        Err(format!(
            "its inputs changed by at most {threshold} records since the last comparison; it is compared again only after more"
        ))
    }
}

/// Where a long-running operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationState {
    /// Waiting for a worker.
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl OperationState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    pub fn done(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

#[cfg(test)]
mod tests {
    use std::hash::RandomState;

    use super::*;
    use crate::domain::EmailAddress;
    use crate::domain::customer::EmailContact;

    fn member(id: &str, segments: u16, keys: &[u64]) -> Member {
        Member {
            customer_id: id.into(),
            segments,
            keys: keys.to_vec(),
            owned: !id.starts_with('x'),
        }
    }

    #[test]
    fn counts_per_pair_follow_keys_and_shared_records() {
        // Requester segments: 0 = {a1, a2, a3}, 1 = {a3, a4}; partner 0 = {b1, b2, a4}.
        let r = [
            member("a1", 0b01, &[1]),
            member("a2", 0b01, &[2, 3]),
            member("a3", 0b11, &[9]),
            member("a4", 0b10, &[]),
        ];
        let p = [
            member("b1", 0b1, &[1]),
            member("b2", 0b1, &[3, 7]),
            member("a4", 0b1, &[]),
            // A record the partner sees but does not own: counted, never asked for.
            member("x5", 0b1, &[2]),
        ];
        let out = compare(&r, &p, (&[3, 2], &[4]));
        let first = out.pairs[&(0, 0)];
        assert_eq!((first.both, first.partner_matched), (2, 3));
        let second = out.pairs[&(1, 0)];
        // a4 is a record both sides see: a match without a key.
        assert_eq!((second.both, second.partner_matched), (1, 1));
        let mut matched = out.matched[&(0, 0, Side::Partner)].clone();
        matched.sort();
        assert_eq!(matched, ["b1", "b2"]);
        assert_eq!(out.matched[&(1, 0, Side::Requester)], ["a4"]);
    }

    #[test]
    fn small_counts_show_as_fewer_than_and_hide_the_overlap_in_one_sided_counts() {
        let shown = |both, partner_matched| {
            PairCounts {
                requester_size: 40,
                partner_size: 12,
                both,
                partner_matched,
            }
            .shown(5)
        };
        let exact = |value| Count {
            value,
            bound: Bound::Exact,
        };
        let fewer = Count {
            value: 5,
            bound: Bound::FewerThan,
        };
        assert_eq!(shown(9, 9), (exact(9), exact(31), fewer));
        assert_eq!(shown(5, 6), (exact(5), exact(35), exact(6)));
        let (both, only_r, only_p) = shown(2, 2);
        assert_eq!(both, fewer);
        assert_eq!(
            (only_r, only_p),
            (
                Count {
                    value: 35,
                    bound: Bound::MoreThan
                },
                Count {
                    value: 7,
                    bound: Bound::MoreThan
                }
            )
        );
        // No overlap at all reads the same as a small one.
        assert_eq!(shown(0, 0), shown(4, 4));
        // Nine of the requester's records matching two of the partner's: small too
        // (the requester could hold nine records with one key).
        assert_eq!(shown(9, 2), shown(0, 0));
    }

    #[test]
    fn keys_come_from_what_the_side_sees_and_companies_match_by_domain() {
        let h = RandomState::new();
        let email = |a: &str| EmailContact {
            address: EmailAddress::parse(a).unwrap(),
            label: String::new(),
            primary: false,
        };
        let company = |a: &str| Profile {
            legal_name: "Acme".into(),
            emails: vec![email(a)],
            ..Default::default()
        };
        let keys = |p: &Profile, kind| match_keys(&h, kind, p, FieldSet::ALL);
        let ops = keys(&company("ops@acme.example"), CustomerKind::Company);
        let sales = keys(&company("sales@acme.example"), CustomerKind::Company);
        assert!(ops.iter().any(|k| sales.contains(k)), "same domain");
        let gmail_a = keys(&company("a@gmail.com"), CustomerKind::Company);
        let gmail_b = keys(&company("b@gmail.com"), CustomerKind::Company);
        assert!(!gmail_a.iter().any(|k| gmail_b.contains(k)), "free mail");
        // People do not match by domain.
        let p1 = keys(&company("ops@acme.example"), CustomerKind::Person);
        let p2 = keys(&company("sales@acme.example"), CustomerKind::Person);
        assert!(!p1.iter().any(|k| p2.contains(k)));
        // A side that does not see emails has no email keys.
        let unseen = match_keys(
            &h,
            CustomerKind::Company,
            &company("ops@acme.example"),
            FieldSet::NONE,
        );
        assert!(unseen.is_empty());
    }

    #[test]
    fn a_refresh_waits_for_the_interval_and_for_enough_change() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let hour = SignedDuration::from_hours(1);
        let input = |rev, members| SegmentInput {
            segment_id: "s".into(),
            side: Side::Requester,
            revision: rev,
            members,
        };
        let before = [input(1, 10)];
        let later = t0 + SignedDuration::from_mins(61);
        assert!(
            may_refresh(
                t0,
                hour,
                t0 + SignedDuration::from_mins(59),
                (&before, &before),
                100,
                5
            )
            .is_err()
        );
        // One record added: 1 change, not more than 5.
        assert!(may_refresh(t0, hour, later, (&before, &[input(1, 11)]), 0, 5).is_err());
        assert!(may_refresh(t0, hour, later, (&before, &[input(1, 11)]), 5, 5).is_ok());
        assert!(may_refresh(t0, hour, later, (&before, &before), 5, 5).is_err());
        // An edited filter is new input, however few records it moves.
        assert!(may_refresh(t0, hour, later, (&before, &[input(2, 10)]), 0, 5).is_ok());
    }
}
