//! Business hours: the working windows of a calendar in its own time zone, and time
//! arithmetic over them (add working time to an instant; count the working time
//! between two instants). Windows are local wall-clock times, so a DST change moves
//! them in UTC, and a day whose window falls in a DST gap or fold keeps the hours
//! the clocks actually show.

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};

/// How far ahead arithmetic looks for working time before giving up: a calendar
/// with some working day always finds one within a week, so this only bounds work
/// on absurd targets.
const MAX_DAYS: i64 = 366 * 10;

/// An IANA time zone, with the name it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    pub name: String,
    pub tz: TimeZone,
}

impl Default for Zone {
    fn default() -> Self {
        Self {
            name: "UTC".into(),
            tz: TimeZone::UTC,
        }
    }
}

impl Zone {
    /// A zone by its IANA name (`Europe/Berlin`, `UTC`); the message says what is wrong.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > 64 {
            return Err("must be an IANA time zone such as \"Europe/Berlin\" or \"UTC\"".into());
        }
        let tz = TimeZone::get(raw)
            .map_err(|_| format!("{raw:?} is not an IANA time zone (such as \"Europe/Berlin\")"))?;
        Ok(Self {
            name: raw.to_owned(),
            tz,
        })
    }
}

/// Working hours: `open`..`close` local time on the working weekdays.
#[derive(Debug, Clone, PartialEq)]
pub struct Calendar {
    pub time_zone: TimeZone,
    /// The zone's IANA name, as configured.
    pub time_zone_name: String,
    /// Monday first.
    pub days: [bool; 7],
    pub open: Time,
    pub close: Time,
}

fn day_index(w: Weekday) -> usize {
    w.to_monday_zero_offset() as usize
}

/// Parses a weekday as written in a template: `mon`, `tue`, … (or the full name).
pub fn parse_weekday(raw: &str) -> Option<Weekday> {
    Some(match raw.to_ascii_lowercase().get(..3)? {
        "mon" => Weekday::Monday,
        "tue" => Weekday::Tuesday,
        "wed" => Weekday::Wednesday,
        "thu" => Weekday::Thursday,
        "fri" => Weekday::Friday,
        "sat" => Weekday::Saturday,
        "sun" => Weekday::Sunday,
        _ => return None,
    })
}

impl Calendar {
    /// A calendar from its parts; the message says what is wrong.
    pub fn new(time_zone: &str, days: &[String], open: &str, close: &str) -> Result<Self, String> {
        let tz = TimeZone::get(time_zone)
            .map_err(|_| format!("time_zone {time_zone:?} is not an IANA time zone"))?;
        let mut set = [false; 7];
        for d in days {
            let w = parse_weekday(d).ok_or_else(|| format!("{d:?} is not a weekday"))?;
            set[day_index(w)] = true;
        }
        if !set.contains(&true) {
            return Err("days must name at least one weekday".into());
        }
        let time = |field: &str, raw: &str| {
            raw.parse::<Time>()
                .map_err(|_| format!("{field} {raw:?} is not a time such as \"09:00\""))
        };
        let (open, close) = (time("open", open)?, time("close", close)?);
        if close <= open {
            return Err(format!("close ({close}) must be after open ({open})"));
        }
        Ok(Self {
            time_zone: tz,
            time_zone_name: time_zone.to_owned(),
            days: set,
            open,
            close,
        })
    }

    /// The working window of a local date, as instants; `None` on a day off.
    fn window(&self, date: Date) -> Option<(Timestamp, Timestamp)> {
        if !self.days[day_index(date.weekday())] {
            return None;
        }
        let at = |t: Time| {
            date.to_datetime(t)
                .to_zoned(self.time_zone.clone())
                .ok()
                .map(|z| z.timestamp())
        };
        let (start, end) = (at(self.open)?, at(self.close)?);
        (end > start).then_some((start, end))
    }

    fn local_date(&self, t: Timestamp) -> Date {
        t.to_zoned(self.time_zone.clone()).date()
    }

    /// The instant at which `work` of working time has passed since `start`.
    pub fn add(&self, start: Timestamp, work: SignedDuration) -> Timestamp {
        let mut left = work;
        let mut date = self.local_date(start);
        if left <= SignedDuration::ZERO {
            return start;
        }
        for _ in 0..MAX_DAYS {
            if let Some((open, close)) = self.window(date) {
                let from = open.max(start);
                if from < close {
                    let available = close.duration_since(from);
                    if left <= available {
                        return from + left;
                    }
                    left -= available;
                }
            }
            date = match date.checked_add(1.day()) {
                Ok(d) => d,
                Err(_) => break,
            };
        }
        Timestamp::MAX
    }

    /// The working time between `from` and `to` (zero if `to` is not after `from`).
    pub fn worked(&self, from: Timestamp, to: Timestamp) -> SignedDuration {
        let mut total = SignedDuration::ZERO;
        if to <= from {
            return total;
        }
        let mut date = self.local_date(from);
        let last = self.local_date(to);
        for _ in 0..MAX_DAYS {
            if date > last {
                break;
            }
            if let Some((open, close)) = self.window(date) {
                let (a, b) = (open.max(from), close.min(to));
                if b > a {
                    total += b.duration_since(a);
                }
            }
            date = match date.checked_add(1.day()) {
                Ok(d) => d,
                Err(_) => break,
            };
        }
        total
    }
}

/// Calendar hours (every hour counts) or the business hours of a calendar.
#[derive(Debug, Clone, PartialEq)]
pub enum Hours {
    Calendar,
    Business(Calendar),
}

impl Hours {
    pub fn add(&self, start: Timestamp, work: SignedDuration) -> Timestamp {
        match self {
            Hours::Calendar => start.checked_add(work).unwrap_or(Timestamp::MAX),
            Hours::Business(c) => c.add(start, work),
        }
    }

    pub fn worked(&self, from: Timestamp, to: Timestamp) -> SignedDuration {
        match self {
            Hours::Calendar if to > from => to.duration_since(from),
            Hours::Calendar => SignedDuration::ZERO,
            Hours::Business(c) => c.worked(from, to),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn berlin() -> Calendar {
        let days: Vec<String> = ["mon", "tue", "wed", "thu", "fri"]
            .iter()
            .map(|d| d.to_string())
            .collect();
        Calendar::new("Europe/Berlin", &days, "09:00", "17:00").unwrap()
    }

    #[test]
    fn working_time_skips_nights_and_weekends() {
        let c = berlin();
        // Friday 2026-01-16 15:00 Berlin (14:00 UTC) + 4 working hours: 2 on Friday,
        // then Monday 09:00 + 2 h = 11:00 Berlin = 10:00 UTC.
        let due = c.add(t("2026-01-16T14:00:00Z"), SignedDuration::from_hours(4));
        assert_eq!(due, t("2026-01-19T10:00:00Z"));
        assert_eq!(
            c.worked(t("2026-01-16T14:00:00Z"), due),
            SignedDuration::from_hours(4)
        );
        // Saturday start: begins Monday 09:00.
        assert_eq!(
            c.add(t("2026-01-17T12:00:00Z"), SignedDuration::from_mins(30)),
            t("2026-01-19T08:30:00Z")
        );
        // Before opening on a weekday.
        assert_eq!(
            c.worked(t("2026-01-19T05:00:00Z"), t("2026-01-19T09:00:00Z")),
            SignedDuration::from_hours(1)
        );
    }

    #[test]
    fn windows_follow_local_time_across_a_dst_change() {
        let c = berlin();
        // Friday 2026-03-27 16:00 CET (15:00 UTC); the clocks go forward on Sunday
        // 29 March. 3 working hours: 1 on Friday, then Monday 09:00 CEST (07:00 UTC)
        // + 2 h = 09:00 UTC, not 10:00 UTC as a fixed offset would say.
        let due = c.add(t("2026-03-27T15:00:00Z"), SignedDuration::from_hours(3));
        assert_eq!(due, t("2026-03-30T09:00:00Z"));
        // And back in October: Monday 26 October opens at 08:00 UTC (CET).
        let due = c.add(t("2026-10-23T14:00:00Z"), SignedDuration::from_hours(2));
        assert_eq!(due, t("2026-10-26T09:00:00Z"));
    }

    #[test]
    fn a_window_inside_the_dst_gap_keeps_the_hours_the_clocks_show() {
        // 01:00–04:00 on the night the clocks skip 02:00–03:00 holds two real hours.
        let days: Vec<String> = vec!["sun".into()];
        let c = Calendar::new("Europe/Berlin", &days, "01:00", "04:00").unwrap();
        assert_eq!(
            c.worked(t("2026-03-28T00:00:00Z"), t("2026-03-30T00:00:00Z")),
            SignedDuration::from_hours(2)
        );
    }

    #[test]
    fn calendar_hours_count_every_hour() {
        let h = Hours::Calendar;
        assert_eq!(
            h.add(t("2026-01-17T12:00:00Z"), SignedDuration::from_hours(30)),
            t("2026-01-18T18:00:00Z")
        );
        let (a, b) = (t("2026-01-19T10:00:00Z"), t("2026-01-19T12:30:00Z"));
        assert_eq!(h.worked(a, b), SignedDuration::from_mins(150));
        // A clock read before its phase began (the clocks of two hosts disagree) has
        // used nothing, not a negative time that would hand back SLA time.
        assert_eq!(h.worked(b, a), SignedDuration::ZERO);
        assert_eq!(Hours::Business(berlin()).worked(b, a), SignedDuration::ZERO);
    }

    #[test]
    fn a_target_more_than_a_year_of_working_days_away_is_still_found() {
        // 2,400 working hours are 300 working days, 60 weeks: from Monday 5 January
        // 2026 09:00 CET to the close of Friday 26 February 2027 (17:00 CET = 16:00
        // UTC). Templates allow targets up to 87,600 hours, so the search must not
        // give up after a year.
        let c = berlin();
        let start = t("2026-01-05T08:00:00Z");
        let due = c.add(start, SignedDuration::from_hours(2400));
        assert_eq!(due, t("2027-02-26T16:00:00Z"));
        assert_eq!(c.worked(start, due), SignedDuration::from_hours(2400));
    }

    #[test]
    fn every_weekday_is_read_by_its_short_or_full_name() {
        use Weekday::*;
        for (raw, day) in [
            ("mon", Monday),
            ("Tuesday", Tuesday),
            ("WED", Wednesday),
            ("thu", Thursday),
            ("friday", Friday),
            ("sat", Saturday),
            ("Sun", Sunday),
        ] {
            assert_eq!(parse_weekday(raw), Some(day), "{raw}");
        }
        assert_eq!(parse_weekday("mo"), None);
        assert_eq!(parse_weekday("holiday"), None);
    }

    #[test]
    fn bad_calendars_say_why() {
        let days = vec!["mon".to_string()];
        assert!(
            Calendar::new("Mars/Olympus", &days, "09:00", "17:00")
                .unwrap_err()
                .contains("IANA")
        );
        assert!(
            Calendar::new("UTC", &days, "17:00", "09:00")
                .unwrap_err()
                .contains("after open")
        );
        assert!(
            Calendar::new("UTC", &["someday".into()], "09:00", "17:00")
                .unwrap_err()
                .contains("weekday")
        );
    }
}
