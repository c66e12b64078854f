//! Partner scorecards (see `domain::scorecard`): a partnership's figures for a day,
//! week, month or quarter of its reporting time zone, merged from its days. A closed
//! day is aggregated from the raw rows once (by the job below, or by the first read
//! that needs it) and kept; the running day is read from the raw rows each time.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use jiff::civil::Date;
use jiff::{SignedDuration, Timestamp, ToSpan};

use super::customers::CustomerSettings;
use crate::domain::caller::Caller;
use crate::domain::case::workflow::Workflows;
use crate::domain::error::{Error, Result};
use crate::domain::filter::{CustomerCondition, CustomerFilter};
use crate::domain::ids::PartnershipId;
use crate::domain::names;
use crate::domain::scorecard::{Figures, Period, Scorecard, date_of, day_window, seconds_between};
use crate::domain::{OrgRef, Partnership, PartnershipState};
use crate::store::{ScorecardDay, ScorecardRows, Store};

/// How long after a day's end it is aggregated: writes that took their time before
/// midnight have committed by then.
const GRACE: SignedDuration = SignedDuration::from_secs(120);
/// Closed days a read computes from the raw rows when the job has not kept them yet
/// (the job runs behind after an outage, or for a partnership from before scorecards).
const MAX_LIVE_DAYS: usize = 3;
/// Days the job aggregates per partnership and round, so that a long backlog (a
/// partnership from long ago, a hub that was down) is caught up in steps.
const DAYS_PER_ROUND: usize = 100;

/// The scorecard of partnership `id` (named `name`) for the `period` holding local
/// `date` (today if `None`), if the caller's organization is a party to it.
pub async fn scorecard(
    store: &Store,
    workflows: &Workflows,
    caller: &Caller,
    (id, name): (&PartnershipId, &str),
    period: Period,
    date: Option<Date>,
) -> Result<Scorecard> {
    let org = caller.organization()?;
    let p = store
        .partnership(&org.id, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("partnership {name:?}")))?;
    let now = store.clock().now();
    let date = date.unwrap_or_else(|| date_of(now, &p.reporting_time_zone.tz));
    of_period(store, workflows, &p, (period, date), now).await
}

/// Figures of `p` for the `period` holding local `date`, as of `now`. Kept days are
/// read; the running day, and closed days the job has not kept yet (at most
/// [`MAX_LIVE_DAYS`] of them, or UNAVAILABLE), are computed from the raw rows.
/// Reads never write: the job alone keeps days, in order.
pub async fn of_period(
    store: &Store,
    workflows: &Workflows,
    p: &Partnership,
    (period, date): (Period, Date),
    now: Timestamp,
) -> Result<Scorecard> {
    let (first, last) = period.dates(date);
    let before = first.checked_sub(1.day()).unwrap_or(first);
    let after = last.checked_add(1.day()).unwrap_or(last);
    let kept: BTreeMap<String, ScorecardDay> = store
        .scorecard_days(&p.id, (&before.to_string(), &after.to_string()))
        .await?
        .into_iter()
        .map(|d| (d.day.clone(), d))
        .collect();
    let (born, ended) = lifetime(p);
    let mut figures = Figures::of(&p.proposer.id, &p.recipient.id);
    let (mut start, mut end) = (None, None);
    let mut closed = true;
    let mut live = vec![];
    let mut day = first;
    while day <= last {
        let (s, e) = match kept.get(&day.to_string()) {
            Some(d) => {
                figures.merge(&d.figures);
                (d.start, d.end)
            }
            None => {
                let (s, e) = window(p, day, &kept)?;
                if s >= now {
                    closed = false;
                    break;
                }
                if e > now {
                    closed = false;
                }
                let upto = e.min(now);
                // Outside the partnership's life nothing happened between the two.
                if upto > born && ended.is_none_or(|t| s < t) {
                    live.push((day, s, upto));
                }
                (s, upto)
            }
        };
        start.get_or_insert(s);
        end = Some(e);
        let Ok(next) = day.checked_add(1.day()) else {
            break;
        };
        day = next;
    }
    if live.len() > MAX_LIVE_DAYS {
        let (from, to) = (live[0].0, live[live.len() - 1].0);
        return Err(Error::Unavailable(format!(
            "the scorecard's days from {from} to {to} are still being aggregated; retry in a few minutes"
        )));
    }
    for (_, s, upto) in live {
        figures.merge(&day_figures(store, workflows, p, (s, upto)).await?);
    }
    let tz = &p.reporting_time_zone.tz;
    let start = start.unwrap_or_else(|| day_window(first, tz).map_or(now, |w| w.0));
    Ok(Scorecard {
        partnership: p.clone(),
        period,
        first,
        last,
        start,
        end: end.unwrap_or(start),
        closed,
        figures,
    })
}

/// When `p` began, and when it ended (if it did).
fn lifetime(p: &Partnership) -> (Timestamp, Option<Timestamp>) {
    let ended = matches!(p.state, PartnershipState::Ended { .. }).then_some(p.update_time);
    (p.create_time, ended)
}

/// The instants local `day` covers for `p`: its window in the reporting zone, begun
/// where the day before ended and ended where the day after begins if those were kept
/// (in a zone since changed), so that no moment counts twice or is missed.
fn window(
    p: &Partnership,
    day: Date,
    kept: &BTreeMap<String, ScorecardDay>,
) -> Result<(Timestamp, Timestamp)> {
    let (mut s, mut e) = day_window(day, &p.reporting_time_zone.tz)
        .ok_or_else(|| Error::invalid("date", format!("{day} is out of range")))?;
    let neighbour =
        |d: std::result::Result<Date, jiff::Error>| d.ok().and_then(|d| kept.get(&d.to_string()));
    if let Some(prev) = neighbour(day.checked_sub(1.day())) {
        s = prev.end;
    }
    if let Some(next) = neighbour(day.checked_add(1.day())) {
        e = next.start;
    }
    Ok((s, e.max(s)))
}

async fn keep(
    store: &Store,
    p: &Partnership,
    day: Date,
    (start, end): (Timestamp, Timestamp),
    figures: &Figures,
    now: Timestamp,
) -> Result<ScorecardDay> {
    let d = ScorecardDay {
        day: day.to_string(),
        time_zone: p.reporting_time_zone.name.clone(),
        start,
        end,
        figures: figures.clone(),
    };
    let mut tx = store.begin().await?;
    tx.save_scorecard_day(&p.id, &d, now).await?;
    tx.commit().await?;
    Ok(d)
}

/// The figures of `p` from `start` up to `end`, from the raw rows.
pub async fn day_figures(
    store: &Store,
    workflows: &Workflows,
    p: &Partnership,
    window: (Timestamp, Timestamp),
) -> Result<Figures> {
    let (a, b) = (&p.proposer, &p.recipient);
    let rows = store.scorecard_rows((&a.id, &b.id), &p.id, window).await?;
    let mut figures = tally(workflows, (&a.id, &b.id), &rows);
    // Interactions count only on customers the other side sees, as the hub's
    // visibility function decides now.
    let mut seen: HashMap<(&str, &str), bool> = HashMap::new();
    for l in &rows.logged {
        let other: &OrgRef = if l.author == a.id { b } else { a };
        let key = (other.id.as_str(), l.customer_id.as_str());
        let sees = match seen.get(&key) {
            Some(s) => *s,
            None => {
                let name = names::customer(&l.customer_id);
                let s = match super::customers::visible(store, other, &l.customer_id, &name).await {
                    Ok(_) => true,
                    Err(Error::NotFound(_)) => false,
                    Err(e) => return Err(e),
                };
                seen.insert(key, s);
                s
            }
        };
        if sees && let Some(party) = figures.party(&l.author) {
            party.interactions_logged += l.count;
        }
    }
    Ok(figures)
}

/// Sets how many of each side's customers the other sees now (one by one or by
/// rules), through the visibility function: the day has just closed.
async fn reach(
    store: &Store,
    settings: &CustomerSettings,
    p: &Partnership,
    figures: &mut Figures,
) -> Result<()> {
    for (owner, viewer) in [(&p.proposer, &p.recipient), (&p.recipient, &p.proposer)] {
        let owned = CustomerFilter {
            conditions: vec![CustomerCondition::Owner(owner.slug.clone())],
        };
        let viewer = Caller::job(viewer.clone());
        let n = super::customers::count(store, settings, &viewer, &owned).await?;
        if let Some(side) = figures.party(&owner.id) {
            side.customers_visible = Some(n);
        }
    }
    Ok(())
}

/// Everything but the interactions: counts and durations from the rows.
fn tally(workflows: &Workflows, (a, b): (&str, &str), rows: &ScorecardRows) -> Figures {
    let other = |x: &str| if x == a { b.to_owned() } else { a.to_owned() };
    let mut f = Figures::of(a, b);
    for c in &rows.opened {
        if let Some(handler) = f.party(&other(&c.opened_by)) {
            handler.cases_received += 1;
        }
        let deal = workflows
            .get(&c.template)
            .is_some_and(|t| t.deal_figures.is_some());
        if deal && let Some(opener) = f.party(&c.opened_by) {
            opener.deals.submitted += 1;
        }
    }
    for s in &rows.steps {
        let handler_id = other(&s.opened_by);
        let template = workflows.get(&s.template);
        match s.kind.as_str() {
            "case.sla_breached" => {
                if let Some(h) = f.party(&handler_id) {
                    h.sla_clocks.entry(s.subject.clone()).or_default().breached += 1;
                }
            }
            "task.overdue" => {
                if let Some(h) = s.assignee.as_deref().and_then(|x| f.party(x)) {
                    h.tasks_overdue += 1;
                }
            }
            kind => {
                let Some(h) = f.party(&handler_id) else {
                    continue;
                };
                if s.first_by_actor && s.actor.as_deref() == Some(handler_id.as_str()) {
                    h.first_response.add(seconds_between(s.opened, s.at));
                }
                if kind != "case.transitioned" {
                    continue;
                }
                if template.is_some_and(|t| t.is_final(&s.to_state)) {
                    h.cases_resolved += 1;
                    h.resolution.add(seconds_between(s.opened, s.at));
                }
                let figure = template
                    .and_then(|t| t.deal_figures.as_ref())
                    .and_then(|d| d.figure_of(&s.transition));
                if let (Some(figure), Some(opener)) = (figure, f.party(&s.opened_by)) {
                    match figure {
                        "approved" => opener.deals.approved += 1,
                        "won" => opener.deals.won += 1,
                        _ => opener.deals.lost += 1,
                    }
                }
            }
        }
    }
    for m in &rows.met {
        if let Some(h) = f.party(&other(&m.opened_by)) {
            h.sla_clocks.entry(m.policy.clone()).or_default().met += 1;
        }
    }

    for g in &rows.granted {
        if let Some(owner) = f.party(&g.owner_id) {
            owner.customers_shared += 1;
        }
    }
    for r in &rows.answered {
        if let Some(owner) = f.party(&r.owner_id) {
            owner.access_requests_answered += 1;
            owner
                .time_to_answer
                .add(seconds_between(r.asked, r.answered));
        }
    }
    for t in &rows.attempts {
        if let Some(side) = f.party(&t.organization_id) {
            side.webhook_attempts += 1;
            side.webhook_succeeded += i64::from(t.succeeded);
            side.webhook_latency
                .add(t.latency_micros.max(0) as f64 / 1e6);
        }
    }
    f
}

/// Aggregates the closed days of every active or suspended partnership not yet kept,
/// every `interval`, until the hub stops. Replicas may overlap: a day is kept once.
pub async fn run(
    store: Store,
    settings: std::sync::Arc<CustomerSettings>,
    workflows: std::sync::Arc<Workflows>,
    interval: Duration,
) {
    loop {
        match aggregate(&store, &settings, &workflows).await {
            Ok(0) => {}
            Ok(days) => tracing::info!(days, "scorecard days aggregated"),
            Err(error) => {
                tracing::warn!(%error, "scorecard aggregation failed; retrying next round")
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// One round of [`run`]: the number of days kept.
pub async fn aggregate(
    store: &Store,
    settings: &CustomerSettings,
    workflows: &Workflows,
) -> Result<usize> {
    let now = store.clock().now();
    let mut kept = 0;
    let week_ago = now - SignedDuration::from_hours(7 * 24);
    for id in store.scorecard_partnerships(week_ago).await? {
        let Some(p) = store.partnership_by_id(&id).await? else {
            continue;
        };
        match catch_up(store, (settings, workflows), &p, now).await {
            Ok(n) => kept += n,
            Err(error) => {
                tracing::warn!(partnership = %p.id, %error, "scorecard days not aggregated");
            }
        }
    }
    Ok(kept)
}

/// Keeps the closed days of `p` that are not kept yet, oldest first, at most
/// [`DAYS_PER_ROUND`]: from the day it began to the day it ended (or yesterday).
async fn catch_up(
    store: &Store,
    (settings, workflows): (&CustomerSettings, &Workflows),
    p: &Partnership,
    now: Timestamp,
) -> Result<usize> {
    let tz = &p.reporting_time_zone.tz;
    let (born, ended) = lifetime(p);
    let first = date_of(born, tz);
    let last = date_of(ended.unwrap_or(now), tz);
    let mut kept: BTreeMap<String, ScorecardDay> = store
        .scorecard_days(&p.id, (&first.to_string(), &last.to_string()))
        .await?
        .into_iter()
        .map(|d| (d.day.clone(), d))
        .collect();
    let mut n = 0;
    let mut day = first;
    while n < DAYS_PER_ROUND && day <= last {
        if !kept.contains_key(&day.to_string()) {
            let (s, e) = window(p, day, &kept)?;
            if e + GRACE > now {
                break;
            }
            let mut f = day_figures(store, workflows, p, (s, e)).await?;
            reach(store, settings, p, &mut f).await?;
            let d = keep(store, p, day, (s, e), &f, now).await?;
            kept.insert(d.day.clone(), d);
            n += 1;
        }
        let Ok(next) = day.checked_add(1.day()) else {
            break;
        };
        day = next;
    }
    Ok(n)
}
