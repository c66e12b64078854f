//! What members hear about by email, and when: categories of events, each member's
//! mode per category (falling back to the organization's defaults, then to the hub's),
//! the thread an event belongs to, and when a daily digest falls due.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use jiff::{SignedDuration, Timestamp, civil::Date, tz::TimeZone};

use super::event::EventType;

/// Kinds of news a member chooses a mode for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// Work for the member's organization: access requests to decide, partnerships
    /// proposed, tasks and cases handed to it.
    Work,
    /// SLA warnings and breaches on the organization's cases.
    Sla,
    /// Changes to customer records the member follows.
    Customers,
    /// The organization's integrations: webhook endpoints disabled.
    Integration,
}

impl Category {
    pub const ALL: [Category; 4] = [
        Category::Work,
        Category::Sla,
        Category::Customers,
        Category::Integration,
    ];

    /// The category of an event type, if members hear about it at all. Exhaustive, so
    /// a new event type must be placed here.
    pub fn of(event_type: EventType) -> Option<Category> {
        use EventType::*;
        match event_type {
            AccessRequestCreated | PartnershipProposed => Some(Category::Work),
            CaseOpened
            | CaseTransitioned
            | CaseCommented
            | CaseParticipantAdded
            | CaseParticipantRemoved
            | TaskAssigned
            | TaskAccepted
            | TaskDeclined
            | TaskCompleted
            | TaskOverdue => Some(Category::Work),
            CaseSlaWarning | CaseSlaBreached => Some(Category::Sla),
            CustomerCreated
            | CustomerUpdated
            | CustomerDeleted
            | CustomerUndeleted
            | CustomerMerged
            | CustomerErased
            | CustomerOverlayUpdated
            | InteractionLogged => Some(Category::Customers),
            WebhookEndpointDisabled => Some(Category::Integration),
            GrantCreated
            | GrantRevoked
            | AccessRequestApproved
            | AccessRequestDeclined
            | PartnershipAccepted
            | PartnershipDeclined
            | PartnershipSuspended
            | PartnershipResumed
            | PartnershipEnded
            | MemberCreated
            | MemberUpdated
            | MemberDeleted => None,
        }
    }
}

/// How a member hears about a category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Immediate,
    DailyDigest,
    Off,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Immediate => "immediate",
            Mode::DailyDigest => "digest",
            Mode::Off => "off",
        }
    }

    /// `None` for the empty string (inherit) or anything unknown.
    pub fn parse(raw: &str) -> Option<Mode> {
        match raw {
            "immediate" => Some(Mode::Immediate),
            "digest" => Some(Mode::DailyDigest),
            "off" => Some(Mode::Off),
            _ => None,
        }
    }
}

/// A member's or an organization's settings; `None` inherits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preferences {
    pub work: Option<Mode>,
    pub sla: Option<Mode>,
    pub customers: Option<Mode>,
    pub integration: Option<Mode>,
    /// Local hour (0–23) of the daily digest.
    pub digest_hour: Option<u8>,
}

/// Digests go out at this local hour unless someone chose another.
pub const DEFAULT_DIGEST_HOUR: u8 = 8;

impl Preferences {
    pub fn mode(&self, category: Category) -> Option<Mode> {
        match category {
            Category::Work => self.work,
            Category::Sla => self.sla,
            Category::Customers => self.customers,
            Category::Integration => self.integration,
        }
    }

    /// The member's mode: theirs, else the organization's, else immediate.
    pub fn effective_mode(&self, defaults: &Preferences, category: Category) -> Mode {
        self.mode(category)
            .or(defaults.mode(category))
            .unwrap_or(Mode::Immediate)
    }

    pub fn effective_digest_hour(&self, defaults: &Preferences) -> u8 {
        self.digest_hour
            .or(defaults.digest_hour)
            .unwrap_or(DEFAULT_DIGEST_HOUR)
    }
}

/// The thread an event's email belongs to: its case, else its customer, else the
/// resource itself. Every email about one thread replies to the same root.
pub fn thread_key(resource: &str) -> String {
    let mut parts = resource.split('/');
    match (parts.next(), parts.next()) {
        (Some(kind @ ("customers" | "cases")), Some(id)) => format!("{kind}/{id}"),
        _ => resource.to_owned(),
    }
}

/// The first `hour`:00 in `time_zone` strictly after `after`: today's if it is still
/// ahead, else tomorrow's (which always is). At the end of representable time, where
/// there is no tomorrow, the last representable instant.
pub fn next_digest_time(after: Timestamp, time_zone: &str, hour: u8) -> Timestamp {
    let tz = TimeZone::get(time_zone).unwrap_or(TimeZone::UTC);
    let at = |day: Date| {
        day.at(hour.min(23) as i8, 0, 0, 0)
            .to_zoned(tz.clone())
            .ok()
            .map(|z| z.timestamp())
    };
    let today = after.to_zoned(tz.clone()).date();
    match at(today) {
        Some(t) if t > after => t,
        _ => today.tomorrow().ok().and_then(at).unwrap_or(Timestamp::MAX),
    }
}

/// The time as the email worker sees it. The system clock, shifted by an offset that
/// tests move forward to reach digest hours and coalescing windows without waiting.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_micros: Arc<AtomicI64>,
}

impl Clock {
    pub fn now(&self) -> Timestamp {
        super::now() + SignedDuration::from_micros(self.offset_micros.load(Ordering::SeqCst))
    }

    /// Moves this clock (and every copy of it) forward by `by`.
    pub fn advance(&self, by: SignedDuration) {
        self.offset_micros
            .fetch_add(by.as_micros() as i64, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_and_threads() {
        let of = |t: &str| Category::of(EventType::parse(t).unwrap());
        assert_eq!(of("access_request.created"), Some(Category::Work));
        assert_eq!(of("case.sla_breached"), Some(Category::Sla));
        assert_eq!(of("customer.updated"), Some(Category::Customers));
        assert_eq!(of("member.created"), None);
        for (event_type, category) in [
            ("partnership.proposed", Some(Category::Work)),
            ("task.assigned", Some(Category::Work)),
            ("case.opened", Some(Category::Work)),
            ("case.sla_warning", Some(Category::Sla)),
            ("customer_overlay.updated", Some(Category::Customers)),
            ("interaction.logged", Some(Category::Customers)),
            ("webhook_endpoint.disabled", Some(Category::Integration)),
            ("grant.created", None),
        ] {
            assert_eq!(of(event_type), category, "{event_type}");
        }
        assert_eq!(thread_key("customers/c1/interactions/i9"), "customers/c1");
        assert_eq!(thread_key("cases/k1/tasks/t1"), "cases/k1");
        assert_eq!(thread_key("partnerships/p1"), "partnerships/p1");
    }

    #[test]
    fn modes_read_back_as_stored_and_empty_inherits() {
        for (mode, name) in [
            (Mode::Immediate, "immediate"),
            (Mode::DailyDigest, "digest"),
            (Mode::Off, "off"),
        ] {
            assert_eq!(mode.as_str(), name);
            assert_eq!(Mode::parse(name), Some(mode));
        }
        assert_eq!(Mode::parse(""), None);
    }

    #[test]
    fn modes_fall_back_to_the_organization_then_immediate() {
        let member = Preferences {
            work: Some(Mode::Off),
            ..Default::default()
        };
        let org = Preferences {
            work: Some(Mode::DailyDigest),
            customers: Some(Mode::DailyDigest),
            digest_hour: Some(7),
            ..Default::default()
        };
        assert_eq!(member.effective_mode(&org, Category::Work), Mode::Off);
        assert_eq!(
            member.effective_mode(&org, Category::Customers),
            Mode::DailyDigest
        );
        assert_eq!(member.effective_mode(&org, Category::Sla), Mode::Immediate);
        assert_eq!(member.effective_digest_hour(&org), 7);
        assert_eq!(
            Preferences::default().effective_digest_hour(&Preferences::default()),
            8
        );
    }

    #[test]
    fn digests_fall_due_at_the_local_hour() {
        // 2026-03-28 10:00 UTC is 11:00 in Berlin: the next 08:00 there is the next
        // day, after the switch to summer time (06:00 UTC).
        let after: Timestamp = "2026-03-28T10:00:00Z".parse().unwrap();
        let due = next_digest_time(after, "Europe/Berlin", 8);
        assert_eq!(due, "2026-03-29T06:00:00Z".parse::<Timestamp>().unwrap());
        // Before the hour: the same day.
        let early: Timestamp = "2026-03-28T05:00:00Z".parse().unwrap();
        assert_eq!(
            next_digest_time(early, "Asia/Tokyo", 18),
            "2026-03-28T09:00:00Z".parse::<Timestamp>().unwrap()
        );
        // At the hour itself: that digest is being sent, so the next is tomorrow's.
        let on_the_hour: Timestamp = "2026-03-28T09:00:00Z".parse().unwrap();
        assert_eq!(
            next_digest_time(on_the_hour, "Asia/Tokyo", 18),
            "2026-03-29T09:00:00Z".parse::<Timestamp>().unwrap()
        );
        // In the hour the autumn change repeats (Berlin, 2026-10-25, 02:00 to 03:00
        // twice): that day's digest was at the first 02:00, so the next one is the
        // next day's, not the repeated 02:00.
        let between: Timestamp = "2026-10-25T00:30:00Z".parse().unwrap();
        assert_eq!(
            next_digest_time(between, "Europe/Berlin", 2),
            "2026-10-26T01:00:00Z".parse::<Timestamp>().unwrap()
        );
        // An unknown zone is read as UTC; an hour past 23 as 23.
        assert_eq!(
            next_digest_time(early, "Mars/Olympus", 6),
            "2026-03-28T06:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            next_digest_time(early, "UTC", 99),
            "2026-03-28T23:00:00Z".parse::<Timestamp>().unwrap()
        );
        // At the end of time there is no tomorrow.
        let last_day: Timestamp = "9999-12-30T12:00:00Z".parse().unwrap();
        assert_eq!(next_digest_time(last_day, "UTC", 8), Timestamp::MAX);
    }

    #[test]
    fn advancing_a_clock_moves_every_copy_of_it() {
        let clock = Clock::default();
        let copy = clock.clone();
        let before = super::super::now();
        assert!(copy.now() >= before);
        clock.advance(SignedDuration::from_hours(1));
        let moved = copy.now().duration_since(before);
        assert!(
            moved >= SignedDuration::from_hours(1) && moved < SignedDuration::from_mins(61),
            "{moved:?}"
        );
    }
}
