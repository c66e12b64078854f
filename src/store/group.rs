//! Group commit on SQLite: write transactions that arrive while another is running
//! share one database transaction, and so one fsync.
//!
//! SQLite has one writer at a time and, with `synchronous = FULL`, every commit waits
//! for the disk. Committing each API write on its own caps the hub at the disk's
//! flush rate. Here each [`Tx`](super::Tx) is a *member* of the group transaction
//! open on the writer connection:
//!
//! - A member takes the group's lock, opens `SAVEPOINT member` and does its work
//!   alone on the connection, exactly as if it were the only transaction: reads see
//!   the members before it, etags and idempotency records are checked as usual.
//! - Committing releases the savepoint. If no other transaction is queued for the
//!   lock (or the group is full), the member commits the group; otherwise it leaves
//!   the group open for the next one. Either way it returns only once the group has
//!   committed, with the group's result: a member never reports a write that is not
//!   on disk.
//! - A member that fails or is dropped is rolled back to its savepoint; the others
//!   are unaffected.
//! - A member left waiting (the transaction it counted on to commit was cancelled,
//!   say) commits the group itself after [`STALL`]; if that member is cancelled
//!   meanwhile, a task does it in its place. At exit the store commits any group
//!   still open ([`Group::close`]): an open group holds the writer connection, and
//!   closing the pool waits for it (it once waited forever).
//!
//! Under no contention a group has one member and nothing changes. Under load the
//! group grows to the number of writers queued, up to [`MAX_MEMBERS`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::Any;
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

use super::error;
use crate::domain::error::{Error, Result};

/// Members per group at most: bounds how long the first one waits for the commit.
const MAX_MEMBERS: usize = 64;
/// How long a finished member waits for another to commit the group before doing it.
const STALL: Duration = Duration::from_millis(20);

type Transaction = sqlx::Transaction<'static, Any>;
/// A group's outcome: `None` until it commits (or fails to).
type Outcome = Option<std::result::Result<(), Arc<sqlx::Error>>>;

/// The writer connection's group transaction.
#[derive(Default)]
pub struct Group {
    state: Arc<Mutex<State>>,
    /// Transactions waiting for the lock.
    queued: AtomicUsize,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("queued", &self.queued.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// The open transaction, while no member holds it.
    tx: Option<Transaction>,
    /// A member ended without committing; its savepoint is still open.
    abandoned: bool,
    /// Members committed into the open transaction, waiting for it.
    members: usize,
    /// Counts groups, so a late helper does not commit a newer one.
    generation: u64,
    done: Option<watch::Sender<Outcome>>,
}

/// A transaction's place in the group: it holds the lock until it ends.
pub struct Member {
    guard: OwnedMutexGuard<State>,
    group: Arc<Group>,
}

/// Counts a transaction as queued until it gets the lock or gives up.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Group {
    /// Joins the open group, or opens one with `begin`; returns the transaction, with
    /// this member's savepoint open, and the membership.
    pub async fn join(
        self: &Arc<Self>,
        wait: Duration,
        begin: impl AsyncFnOnce() -> std::result::Result<Transaction, sqlx::Error>,
    ) -> Result<(Transaction, Member)> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let queued = Queued(&self.queued);
        let mut guard = tokio::time::timeout(wait, self.state.clone().lock_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?;
        drop(queued);
        if guard.abandoned
            && let Err(e) = settle(&mut guard).await
        {
            let e = Arc::new(e);
            finish(&mut guard, Err(e.clone()));
            return Err(failed(&e));
        }
        if guard.tx.is_none() {
            guard.tx = Some(begin().await?);
            guard.done = Some(watch::channel(None).0);
        }
        let mut tx = guard.tx.take().expect("the open transaction");
        if let Err(e) = sqlx::query("SAVEPOINT member").execute(&mut *tx).await {
            guard.tx = Some(tx);
            return Err(fail(&mut guard, e).await);
        }
        Ok((
            tx,
            Member {
                guard,
                group: self.clone(),
            },
        ))
    }
}

impl Group {
    /// At exit: commits a group left open, so the writer connection it holds goes
    /// back to its pool. A group stays open when every member that committed into it
    /// was cancelled while waiting for another to commit it (callers gone at
    /// shutdown); while the hub runs, the next writer would carry it on.
    pub async fn close(&self) {
        let mut state = self.state.clone().lock_owned().await;
        if state.tx.is_some() {
            flush(&mut state).await;
        }
    }
}

impl Member {
    /// Keeps this member's work and waits until the group is on disk.
    pub async fn commit(self, mut tx: Transaction) -> Result<()> {
        let Member { mut guard, group } = self;
        if let Err(e) = sqlx::query("RELEASE SAVEPOINT member")
            .execute(&mut *tx)
            .await
        {
            guard.tx = Some(tx);
            return Err(fail(&mut guard, e).await);
        }
        guard.tx = Some(tx);
        guard.members += 1;
        let generation = guard.generation;
        let mut done = guard
            .done
            .as_ref()
            .expect("an open group has an outcome")
            .subscribe();
        if group.queued.load(Ordering::SeqCst) == 0 || guard.members >= MAX_MEMBERS {
            flush(&mut guard).await;
        }
        drop(guard);
        // If this wait is cancelled (its caller gone), the group is still committed
        // once STALL has passed, by a task, should nobody else have done it.
        let mut watchman = Watchman {
            group: Some(group.clone()),
            generation,
        };
        loop {
            if let Some(outcome) = done.borrow_and_update().clone() {
                watchman.group = None;
                return outcome.map_err(|e| failed(&e));
            }
            match tokio::time::timeout(STALL, done.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(Error::Internal(anyhow::anyhow!(
                        "the group transaction ended without an outcome"
                    )));
                }
                // Nobody committed the group in time: do it.
                Err(_) => flush_if_open(&group, generation).await,
            }
        }
    }

    /// Hands the transaction back with this member's savepoint open, to be rolled
    /// back by the next member or, if none comes first, by a task that finishes the
    /// group (so SQLite's write lock is not held while nothing happens).
    pub fn abandon(self, tx: Transaction) {
        let Member { mut guard, group } = self;
        guard.tx = Some(tx);
        guard.abandoned = true;
        let generation = guard.generation;
        drop(guard);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { flush_if_open(&group, generation).await });
        }
    }
}

/// Commits a group after [`STALL`] if the member that would have done it (by waiting
/// that long) was cancelled first and the group is still the same and open.
struct Watchman {
    group: Option<Arc<Group>>,
    generation: u64,
}

impl Drop for Watchman {
    fn drop(&mut self) {
        let (Some(group), Ok(runtime)) = (self.group.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let generation = self.generation;
        runtime.spawn(async move {
            tokio::time::sleep(STALL).await;
            flush_if_open(&group, generation).await;
        });
    }
}

/// Commits (or, with no member committed, rolls back) group `generation` if it is
/// still the open one: a later group is none of the caller's business.
async fn flush_if_open(group: &Group, generation: u64) {
    let mut state = group.state.clone().lock_owned().await;
    if state.generation == generation && state.tx.is_some() {
        flush(&mut state).await;
    }
}

/// Rolls back an abandoned member's work.
async fn settle(state: &mut State) -> std::result::Result<(), sqlx::Error> {
    if let Some(tx) = state.tx.as_mut() {
        sqlx::query("ROLLBACK TO SAVEPOINT member")
            .execute(&mut **tx)
            .await?;
        sqlx::query("RELEASE SAVEPOINT member")
            .execute(&mut **tx)
            .await?;
    }
    state.abandoned = false;
    Ok(())
}

/// Commits the open group (rolls it back if no member committed) and tells its
/// members.
async fn flush(state: &mut State) {
    let outcome = async {
        if state.abandoned {
            settle(state).await?;
        }
        let tx = state.tx.take().expect("an open group");
        if state.members == 0 {
            tx.rollback().await
        } else {
            tx.commit().await
        }
    }
    .await;
    finish(state, outcome.map_err(Arc::new));
}

/// The group cannot go on: roll it back and fail its members.
async fn fail(state: &mut State, error: sqlx::Error) -> Error {
    if let Some(tx) = state.tx.take() {
        let _ = tx.rollback().await;
    }
    let error = Arc::new(error);
    finish(state, Err(error.clone()));
    failed(&error)
}

/// What a failed group means to each of its members: contention and an unavailable
/// database keep their meaning (ABORTED, UNAVAILABLE); anything else is INTERNAL.
fn failed(error: &sqlx::Error) -> Error {
    error::classify(error)
        .unwrap_or_else(|| Error::Internal(anyhow::anyhow!("group commit failed: {error}")))
}

fn finish(state: &mut State, outcome: std::result::Result<(), Arc<sqlx::Error>>) {
    state.tx = None;
    state.abandoned = false;
    state.members = 0;
    state.generation += 1;
    if let Some(done) = state.done.take() {
        done.send_replace(Some(outcome));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreOptions};

    #[tokio::test]
    async fn a_group_its_members_left_open_is_committed_soon_and_at_the_latest_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("group.db").display());
        let options = StoreOptions {
            url: url.clone(),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
        };
        let store = Store::connect(&options).await.unwrap();
        let group = store.group.clone().expect("SQLite groups its writes");
        // Another writer is queued, so the member leaves the group open for it...
        group.queued.fetch_add(1, Ordering::SeqCst);
        let mut tx = store.begin().await.unwrap();
        sqlx::query("CREATE TABLE probe (x INTEGER)")
            .execute(tx.conn())
            .await
            .unwrap();
        sqlx::query("INSERT INTO probe VALUES (1)")
            .execute(tx.conn())
            .await
            .unwrap();
        // ...and is cancelled while it waits (before it would commit the group itself),
        // as is the queued one: nobody is left to commit the group.
        let waited = tokio::time::timeout(STALL / 4, tx.commit()).await;
        assert!(waited.is_err(), "the member waits for the group");
        group.queued.fetch_sub(1, Ordering::SeqCst);
        // The group is committed all the same once the member's wait would have
        // ended, without waiting for another writer or the store to close.
        let mut seen = 0;
        for _ in 0..100 {
            tokio::time::sleep(STALL).await;
            if let Ok((n,)) = sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM probe")
                .fetch_one(store.reader())
                .await
            {
                seen = n;
                break;
            }
        }
        assert_eq!(seen, 1, "committed while the hub runs");

        let started = std::time::Instant::now();
        store.close().await;
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "the writer's connection came back at once ({:?})",
            started.elapsed()
        );
        let again = Store::connect(&options).await.unwrap();
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM probe")
            .fetch_one(again.reader())
            .await
            .expect("the member's work is committed");
        assert_eq!(n, 1);
        again.close().await;
    }
}
