//! What members hear about by email, and when: categories of events, each member's
//! mode per category (falling back to the organization's defaults, then to the hub's),
//! the thread an event belongs to, and when a daily digest falls due.

use std::collections::HashSet;
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
            // A partner's customers shared with the organization, or no longer.
            SharingRuleCreated | SharingRuleUpdated | SharingRuleRevoked => Some(Category::Work),
            // A mapping asked for or answered, access asked for or answered through one.
            AccountMappingRequested
            | AccountMappingAccepted
            | AccountMappingDeclined
            | AccountMappingEnded
            | AccountMappingAccessRequested
            | AccountMappingAccessAnswered => Some(Category::Work),
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
            // Two partners' registrations of one deal, for the vendor to decide.
            CaseConflictDetected => Some(Category::Work),
            CustomerCreated
            | CustomerUpdated
            | CustomerDeleted
            | CustomerUndeleted
            | CustomerMerged
            | CustomerErased
            | CustomerOverlayUpdated
            | InteractionLogged => Some(Category::Customers),
            WebhookEndpointDisabled => Some(Category::Integration),
            // The organization's own configuration, changed by its own keys (or the
            // operator): in the feed and the audit log, not worth an email.
            ApiKeyCreated
            | ApiKeyRevoked
            | ClientCertificateRegistered
            | ClientCertificateRevoked
            | WebhookEndpointCreated
            | WebhookEndpointUpdated
            | WebhookEndpointSecretRotated
            | WebhookEndpointDeleted
            | FieldPresetCreated
            | FieldPresetDeleted => None,
            GrantCreated
            | GrantRevoked
            | FieldPresetUpdated
            | AccessRequestApproved
            | AccessRequestDeclined
            | PartnershipAccepted
            | PartnershipDeclined
            | PartnershipSuspended
            | PartnershipResumed
            | PartnershipEnded
            | PartnershipUpdated
            | MemberCreated
            | MemberUpdated
            | MemberDeleted
            | AccountMappingUpdated
            | AccountMappingCompared => None,
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

/// One committed event, as notification routing sees it.
#[derive(Debug, Clone, Copy)]
pub struct Notifiable<'a> {
    pub event_type: EventType,
    pub resource: &'a str,
    pub sequence: i64,
    /// Members told at once whatever their preferences (a breach's escalation
    /// contacts), by id.
    pub escalate_to: &'a [String],
}

impl Notifiable<'_> {
    /// The category members hear of this event under, if any.
    pub fn category(&self) -> Option<Category> {
        Category::of(self.event_type)
    }

    /// The customer this event is news about, for its followers (customer news only).
    pub fn followed_customer(&self) -> Option<&str> {
        if self.category()? != Category::Customers {
            return None;
        }
        let mut parts = self.resource.split('/');
        match (parts.next(), parts.next()) {
            (Some("customers"), Some(id)) => Some(id),
            _ => None,
        }
    }
}

/// A member of the receiving organization, as routing sees them.
#[derive(Debug, Clone)]
pub struct Recipient<'a> {
    pub member_id: &'a str,
    pub time_zone: &'a str,
    /// Mail to the member's address bounced: nothing is queued until it changes.
    pub bounced: bool,
    pub preferences: Preferences,
    /// The customers (by id) the member follows, among those the events are about.
    pub follows: HashSet<&'a str>,
}

/// A notification to queue: who hears of which event, how, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed<'a> {
    pub member_id: &'a str,
    pub sequence: i64,
    pub event_type: EventType,
    pub thread: String,
    pub mode: Mode,
    pub due: Timestamp,
}

/// Who of an organization's members hears of which of its new events, and how: work
/// the organization did itself is not news to it; customer news reaches only the
/// customer's followers; a member whose mail bounced hears nothing; an escalation
/// contact hears at once whatever they chose; otherwise the member's preference for
/// the category, then the organization's (`defaults`), then at once. Digest news is
/// due at the member's next digest hour in their time zone.
pub fn route<'a>(
    events: &[Notifiable<'_>],
    own_work: bool,
    members: &[Recipient<'a>],
    defaults: &Preferences,
    now: Timestamp,
) -> Vec<Routed<'a>> {
    let mut out = vec![];
    for event in events {
        let Some(category) = event.category() else {
            continue;
        };
        if category == Category::Work && own_work {
            continue;
        }
        let thread = thread_key(event.resource);
        for member in members {
            if member.bounced {
                continue;
            }
            if category == Category::Customers
                && !event
                    .followed_customer()
                    .is_some_and(|c| member.follows.contains(c))
            {
                continue;
            }
            let mode = if event.escalate_to.iter().any(|m| m == member.member_id) {
                Mode::Immediate
            } else {
                member.preferences.effective_mode(defaults, category)
            };
            let due = match mode {
                Mode::Off => continue,
                Mode::Immediate => now,
                Mode::DailyDigest => next_digest_time(
                    now,
                    member.time_zone,
                    member.preferences.effective_digest_hour(defaults),
                ),
            };
            out.push(Routed {
                member_id: member.member_id,
                sequence: event.sequence,
                event_type: event.event_type,
                thread: thread.clone(),
                mode,
                due,
            });
        }
    }
    out
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
    fn routing_tells_each_member_what_they_asked_for() {
        let now: Timestamp = "2026-03-28T10:00:00Z".parse().unwrap();
        let none: &[String] = &[];
        let contacts = ["m-off".to_owned()];
        let event = |event_type, resource, sequence, escalate_to| Notifiable {
            event_type,
            resource,
            sequence,
            escalate_to,
        };
        let events = [
            event(EventType::TaskAssigned, "cases/k1/tasks/t1", 1, none),
            event(EventType::CaseSlaBreached, "cases/k1", 2, &contacts[..]),
            event(
                EventType::InteractionLogged,
                "customers/c1/interactions/i1",
                3,
                none,
            ),
            event(EventType::GrantCreated, "customers/c1/grants/g1", 4, none),
        ];
        let member = |id, follows: &[&'static str], preferences| Recipient {
            member_id: id,
            time_zone: "Asia/Tokyo",
            bounced: false,
            preferences,
            follows: follows.iter().copied().collect(),
        };
        let off = Preferences {
            work: Some(Mode::Off),
            sla: Some(Mode::Off),
            customers: Some(Mode::Off),
            ..Default::default()
        };
        let digest = Preferences {
            work: Some(Mode::DailyDigest),
            digest_hour: Some(18),
            ..Default::default()
        };
        let members = [
            member("m-default", &[], Preferences::default()),
            member("m-follower", &["c1"], Preferences::default()),
            member("m-off", &["c1"], off),
            member("m-digest", &[], digest),
            Recipient {
                bounced: true,
                ..member("m-bounced", &["c1"], Preferences::default())
            },
        ];
        let told = |own_work, defaults: &Preferences| -> Vec<(&str, i64, Mode, Timestamp)> {
            route(&events, own_work, &members, defaults, now)
                .into_iter()
                .map(|r| (r.member_id, r.sequence, r.mode, r.due))
                .collect()
        };
        // It is 19:00 in Tokyo: the next 18:00 there is tomorrow's.
        let evening: Timestamp = "2026-03-29T09:00:00Z".parse().unwrap();
        use Mode::*;
        assert_eq!(
            told(false, &Preferences::default()),
            [
                // Work: everyone but those who turned it off or bounced; the digest
                // member at their digest hour.
                ("m-default", 1, Immediate, now),
                ("m-follower", 1, Immediate, now),
                ("m-digest", 1, DailyDigest, evening),
                // A breach: the escalation contact hears at once despite "off".
                ("m-default", 2, Immediate, now),
                ("m-follower", 2, Immediate, now),
                ("m-off", 2, Immediate, now),
                ("m-digest", 2, Immediate, now),
                // Customer news: followers alone (and not one who turned it off).
                ("m-follower", 3, Immediate, now),
                // Grants are not told by email.
            ]
        );
        // Work the organization did itself is not news to it; the rest still is.
        // The organization's defaults apply to members who chose nothing.
        let org_digest = Preferences {
            sla: Some(DailyDigest),
            ..Default::default()
        };
        let thread_of = |own_work| -> Vec<String> {
            route(&events, own_work, &members, &org_digest, now)
                .into_iter()
                .map(|r| format!("{} {} {:?} {}", r.member_id, r.thread, r.mode, r.event_type))
                .collect()
        };
        assert_eq!(
            thread_of(true),
            [
                "m-default cases/k1 DailyDigest case.sla_breached",
                "m-follower cases/k1 DailyDigest case.sla_breached",
                "m-off cases/k1 Immediate case.sla_breached",
                "m-digest cases/k1 DailyDigest case.sla_breached",
                "m-follower customers/c1 Immediate interaction.logged",
            ]
        );
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
