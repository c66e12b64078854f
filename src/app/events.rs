//! Reading an organization's feed: where a reader starts, a page of it, the partners
//! whose customers it no longer carries. Events are addressed when they are written
//! (one per organization that may see the change, already masked), so a reader sees
//! its own feed only.

use crate::domain::caller::Caller;
use crate::domain::error::{Error, Result};
use crate::store::{EventQuery, Store, StoredEvent};

/// Sequences one listing looks through at most, so a narrow filter over a long feed
/// costs a bounded amount; the reader continues from where the listing stopped.
const LIST_SCAN_WINDOW: i64 = 10_000;

/// Where a reader of `organization_id`'s feed starts after `after` (0: the oldest
/// event kept), and the feed's head. OUT_OF_RANGE if `after` was pruned or is ahead
/// of the feed.
pub async fn start_position(
    store: &Store,
    organization_id: &str,
    after: i64,
) -> Result<(i64, i64)> {
    if after < 0 {
        return Err(Error::invalid("after_sequence", "must not be negative"));
    }
    let head = store.feed_head(organization_id).await?;
    let oldest = store.feed_oldest(organization_id, head).await?;
    if after == 0 {
        return Ok((oldest - 1, head));
    }
    if after < oldest - 1 {
        return Err(Error::OutOfRange {
            reason: "EVENTS_PRUNED",
            message: format!(
                "events up to sequence {} were pruned; the oldest kept is {oldest}",
                oldest - 1
            ),
            metadata: vec![("oldest_sequence", oldest.to_string())],
        });
    }
    if after > head {
        return Err(Error::OutOfRange {
            reason: "SEQUENCE_AHEAD_OF_FEED",
            message: format!("after_sequence {after} is beyond the newest event, {head}"),
            metadata: vec![("oldest_sequence", oldest.to_string())],
        });
    }
    Ok((after, head))
}

/// The newest sequence of `organization_id`'s feed.
pub async fn head(store: &Store, organization_id: &str) -> Result<i64> {
    store.feed_head(organization_id).await
}

/// Partners whose customers `organization_id`'s feed no longer carries (their
/// partnership is suspended or ended).
pub async fn cut_off(store: &Store, organization_id: &str) -> Result<Vec<String>> {
    store.cut_off_partners(organization_id).await
}

/// Events of one feed after `query.after`, as the store keeps them.
pub async fn read(store: &Store, query: &EventQuery<'_>) -> Result<Vec<StoredEvent>> {
    store.events(query).await
}

/// What a listing asks for.
pub struct Listing<'a> {
    pub after_sequence: i64,
    /// Event types (or `prefix.*` families) to keep; empty keeps all.
    pub types: &'a [String],
    /// Only events about this resource name, if given.
    pub resource: Option<&'a str>,
    pub limit: usize,
}

/// A page of the caller's feed: the events, the sequence to continue after, and the
/// feed's head.
pub async fn list(
    store: &Store,
    caller: &Caller,
    l: Listing<'_>,
) -> Result<(Vec<StoredEvent>, i64, i64)> {
    let org = caller.organization()?;
    let (after, head) = start_position(store, &org.id, l.after_sequence).await?;
    let through = head.min(after.saturating_add(LIST_SCAN_WINDOW));
    let found = store
        .events(&EventQuery {
            organization_id: &org.id,
            after,
            through,
            types: l.types,
            resource: l.resource,
            limit: l.limit,
            cut_off: &cut_off(store, &org.id).await?,
        })
        .await?;
    let next_after = match found.last() {
        Some(last) if found.len() == l.limit => last.sequence,
        _ => through,
    };
    Ok((found, next_after, head))
}
