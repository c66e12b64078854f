//! SLA clocks: time counted against a target while a case is in states that count,
//! paused where the template says, met on reaching a stop state. A clock knows when
//! its warning and its breach fall due from the time already used and the hours it
//! counts in (calendar or business hours).

use jiff::{SignedDuration, Timestamp};

use super::priority::Priority;
use super::workflow::{SlaPolicy, Template};
use crate::domain::calendar::Hours;

/// Where a clock stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Counting since `since`.
    Running { since: Timestamp },
    /// Not counting (a pause state) since `since`.
    Paused { since: Timestamp },
    /// Target reached (a stop or final state) at `at`.
    Met { at: Timestamp },
}

/// One SLA policy's clock on one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaClock {
    pub policy: String,
    pub target: SignedDuration,
    /// When the warning fires, as time used.
    pub warn_after: SignedDuration,
    /// Time used before the current phase began.
    pub used: SignedDuration,
    pub phase: Phase,
    pub warn_time: Option<Timestamp>,
    pub breach_time: Option<Timestamp>,
}

/// What a clock wants to happen next, at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Warning(Timestamp),
    Breach(Timestamp),
}

/// What the state says a clock should be doing.
fn wanted(template: &Template, policy: &SlaPolicy, state: &str) -> Want {
    if policy.stop_states.iter().any(|s| s == state) || template.is_final(state) {
        Want::Met
    } else if template.sla_pause_states.iter().any(|s| s == state) {
        Want::Paused
    } else {
        Want::Running
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Want {
    Running,
    Paused,
    Met,
}

impl SlaClock {
    /// The clocks of a case opened now in `state` at `priority` (policies with no
    /// target for the priority have none).
    pub fn start_all(
        template: &Template,
        priority: Priority,
        state: &str,
        now: Timestamp,
    ) -> Vec<SlaClock> {
        template
            .sla
            .iter()
            .filter_map(|p| {
                let target = *p.targets.get(&priority)?;
                let mut clock = SlaClock {
                    policy: p.name.clone(),
                    target,
                    warn_after: p.warn_after(target),
                    used: SignedDuration::ZERO,
                    phase: Phase::Running { since: now },
                    warn_time: None,
                    breach_time: None,
                };
                clock.enter(template, state, now);
                Some(clock)
            })
            .collect()
    }

    /// The hours this clock counts in (calendar hours if its policy is gone from a
    /// reloaded template).
    pub fn hours<'t>(&self, template: &'t Template) -> &'t Hours {
        template
            .sla
            .iter()
            .find(|p| p.name == self.policy)
            .map_or(&Hours::Calendar, |p| &p.hours)
    }

    /// Time used up to `now`.
    pub fn used_at(&self, hours: &Hours, now: Timestamp) -> SignedDuration {
        match self.phase {
            Phase::Running { since } => self.used + hours.worked(since, now),
            _ => self.used,
        }
    }

    /// Follows the case into `state` at `now`: pauses, resumes, meets or (on a reopen
    /// the policy allows) restarts counting.
    pub fn enter(&mut self, template: &Template, state: &str, now: Timestamp) {
        let Some(policy) = template.sla.iter().find(|p| p.name == self.policy) else {
            return;
        };
        let want = wanted(template, policy, state);
        let next = match (self.phase, want) {
            (Phase::Met { at }, _) if want == Want::Met || !policy.resume_on_reopen => {
                Phase::Met { at }
            }
            (_, Want::Met) => Phase::Met { at: now },
            (Phase::Running { since }, Want::Running) => Phase::Running { since },
            (Phase::Paused { since }, Want::Paused) => Phase::Paused { since },
            (_, Want::Running) => Phase::Running { since: now },
            (_, Want::Paused) => Phase::Paused { since: now },
        };
        if next != self.phase {
            // Bank the time the ending phase used.
            self.used = self.used_at(&policy.hours, now);
            self.phase = next;
        }
    }

    /// The warning or breach this clock will reach next while it runs, if any.
    pub fn next_due(&self, hours: &Hours) -> Option<Due> {
        let Phase::Running { since } = self.phase else {
            return None;
        };
        if self.warn_time.is_none() && self.breach_time.is_none() {
            let left = self.warn_after - self.used;
            return Some(Due::Warning(
                hours.add(since, left.max(SignedDuration::ZERO)),
            ));
        }
        if self.breach_time.is_none() {
            let left = self.target - self.used;
            return Some(Due::Breach(
                hours.add(since, left.max(SignedDuration::ZERO)),
            ));
        }
        None
    }

    /// When the target is breached if the clock keeps running (while running).
    pub fn due_time(&self, hours: &Hours) -> Option<Timestamp> {
        match self.phase {
            Phase::Running { since } => {
                Some(hours.add(since, (self.target - self.used).max(SignedDuration::ZERO)))
            }
            _ => None,
        }
    }

    /// When the warning fires while running (or when it fired).
    pub fn warning_time(&self, hours: &Hours) -> Option<Timestamp> {
        match (self.warn_time, self.phase) {
            (Some(t), _) => Some(t),
            (None, Phase::Running { since }) => Some(hours.add(
                since,
                (self.warn_after - self.used).max(SignedDuration::ZERO),
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::case::workflow::Workflows;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// The built-in service case template and the clocks of a high-priority case
    /// opened on 2026-01-05 at 10:00 UTC.
    fn high_priority_service_case() -> (Template, Vec<SlaClock>) {
        let sc = Workflows::built_in().get("service_case").unwrap().clone();
        let clocks = SlaClock::start_all(&sc, Priority::High, "new", t("2026-01-05T10:00:00Z"));
        (sc, clocks)
    }

    #[test]
    fn a_pause_moves_the_deadline_by_the_paused_time() {
        let (sc, mut clocks) = high_priority_service_case();
        let sc = &sc;
        let names: Vec<&str> = clocks.iter().map(|c| c.policy.as_str()).collect();
        assert_eq!(names, ["first_response", "resolution"]);
        let resolution = &mut clocks[1];
        let hours = Hours::Calendar;
        // 24 h target, warning at 80 %.
        assert_eq!(
            resolution.next_due(&hours),
            Some(Due::Warning(t("2026-01-06T05:12:00Z")))
        );
        // Two hours in, waiting on the customer for three hours.
        resolution.enter(sc, "in_progress", t("2026-01-05T11:00:00Z"));
        resolution.enter(sc, "waiting_on_customer", t("2026-01-05T12:00:00Z"));
        assert_eq!(resolution.next_due(&hours), None);
        assert_eq!(resolution.used, SignedDuration::from_hours(2));
        resolution.enter(sc, "in_progress", t("2026-01-05T15:00:00Z"));
        assert_eq!(resolution.due_time(&hours), Some(t("2026-01-06T13:00:00Z")));
        // The warning, too, comes later by the paused time: 19 h 12 min of 24 h,
        // 2 h of them used.
        assert_eq!(
            resolution.next_due(&hours),
            Some(Due::Warning(t("2026-01-06T08:12:00Z")))
        );
        assert_eq!(
            resolution.warning_time(&hours),
            Some(t("2026-01-06T08:12:00Z"))
        );
        // Resolved: met; a reopen resumes it (resume_on_reopen), with the time used.
        resolution.enter(sc, "resolved", t("2026-01-05T16:00:00Z"));
        assert_eq!(
            resolution.phase,
            Phase::Met {
                at: t("2026-01-05T16:00:00Z")
            }
        );
        assert_eq!(resolution.used, SignedDuration::from_hours(3));
        resolution.enter(sc, "in_progress", t("2026-01-06T16:00:00Z"));
        assert_eq!(resolution.due_time(&hours), Some(t("2026-01-07T13:00:00Z")));
        // First response is met by triage and stays met.
        let first = &mut clocks[0];
        first.enter(sc, "triaged", t("2026-01-05T10:30:00Z"));
        first.enter(sc, "in_progress", t("2026-01-05T11:00:00Z"));
        assert_eq!(
            first.phase,
            Phase::Met {
                at: t("2026-01-05T10:30:00Z")
            },
            "met when first met, not again later"
        );
    }

    #[test]
    fn the_warning_time_is_when_it_fired_or_will_fire_while_running() {
        let (sc, mut clocks) = high_priority_service_case();
        let sc = &sc;
        let hours = Hours::Calendar;
        let resolution = &mut clocks[1];
        // Running, 19 h 12 min to the warning.
        assert_eq!(
            resolution.warning_time(&hours),
            Some(t("2026-01-06T05:12:00Z"))
        );
        // Paused: no warning is coming.
        resolution.enter(sc, "waiting_on_customer", t("2026-01-05T12:00:00Z"));
        assert_eq!(resolution.warning_time(&hours), None);
        // Once fired, the time it fired, paused or not.
        resolution.warn_time = Some(t("2026-01-05T11:11:00Z"));
        assert_eq!(
            resolution.warning_time(&hours),
            Some(t("2026-01-05T11:11:00Z"))
        );
        resolution.enter(sc, "in_progress", t("2026-01-05T13:00:00Z"));
        assert_eq!(
            resolution.warning_time(&hours),
            Some(t("2026-01-05T11:11:00Z"))
        );
    }

    #[test]
    fn a_met_clock_keeps_the_time_it_was_met() {
        let (sc, mut clocks) = high_priority_service_case();
        let sc = &sc;
        // Resolution (resumes on reopen): resolved, then closed, is met when resolved.
        let resolution = &mut clocks[1];
        resolution.enter(sc, "resolved", t("2026-01-05T16:00:00Z"));
        resolution.enter(sc, "closed", t("2026-01-05T17:00:00Z"));
        assert_eq!(
            resolution.phase,
            Phase::Met {
                at: t("2026-01-05T16:00:00Z")
            }
        );
        assert_eq!(resolution.used, SignedDuration::from_hours(6));
        // First response (does not resume): met stays met whatever comes after,
        // even a state that would run a fresh clock.
        let first = &mut clocks[0];
        first.enter(sc, "triaged", t("2026-01-05T10:30:00Z"));
        first.enter(sc, "new", t("2026-01-05T12:00:00Z"));
        assert_eq!(
            first.phase,
            Phase::Met {
                at: t("2026-01-05T10:30:00Z")
            }
        );
        assert_eq!(first.next_due(&Hours::Calendar), None);
    }

    #[test]
    fn business_hours_clocks_skip_the_weekend_and_follow_dst() {
        let text = r#"
            name = "office"
            roles = ["vendor"]
            initial = "open"
            sla_pause_states = ["waiting"]
            [[states]]
            name = "open"
            [[states]]
            name = "waiting"
            [[states]]
            name = "done"
            final = true
            [[transitions]]
            name = "wait"
            from = ["open"]
            to = "waiting"
            roles = ["vendor"]
            [[transitions]]
            name = "resume"
            from = ["waiting"]
            to = "open"
            roles = ["vendor"]
            [[transitions]]
            name = "finish"
            from = ["open", "waiting"]
            to = "done"
            roles = ["vendor"]
            [calendars.berlin]
            time_zone = "Europe/Berlin"
            days = ["mon", "tue", "wed", "thu", "fri"]
            open = "09:00"
            close = "17:00"
            [[sla]]
            name = "resolution"
            calendar = "berlin"
            target_hours = { normal = 8 }
            warn_at_percent = 50
            stop_states = ["done"]
        "#;
        let tpl = crate::domain::case::workflow::Template::from_toml(text).unwrap();
        // Opened Friday 27 March 2026 at 13:00 CET (12:00 UTC); clocks go forward on
        // Sunday. 4 h used on Friday (warning at 17:00 CET = 16:00 UTC), the other 4
        // on Monday from 09:00 CEST (07:00 UTC): breach at 11:00 UTC.
        let mut clocks =
            SlaClock::start_all(&tpl, Priority::Normal, "open", t("2026-03-27T12:00:00Z"));
        let c = &mut clocks[0];
        let hours = c.hours(&tpl).clone();
        assert_eq!(
            c.next_due(&hours),
            Some(Due::Warning(t("2026-03-27T16:00:00Z")))
        );
        assert_eq!(c.due_time(&hours), Some(t("2026-03-30T11:00:00Z")));
        // Paused from Monday 08:00 UTC (1 h of Monday used) until Tuesday 08:00 UTC.
        c.warn_time = Some(t("2026-03-27T16:00:00Z"));
        c.enter(&tpl, "waiting", t("2026-03-30T08:00:00Z"));
        assert_eq!(c.used, SignedDuration::from_hours(5));
        c.enter(&tpl, "open", t("2026-03-31T08:00:00Z"));
        assert_eq!(
            c.next_due(&hours),
            Some(Due::Breach(t("2026-03-31T11:00:00Z")))
        );
    }
}
