//! Pure rules of the hub: validated values and the state machines of its resources.
//! Nothing here knows of tonic or sqlx; a value that exists here is valid.

pub mod api_key;
pub mod audit;
pub mod calendar;
pub mod caller;
pub mod case;
pub mod client_cert;
pub mod customer;
pub mod error;
pub mod event;
pub mod export;
pub mod filter;
pub mod ids;
pub mod interaction;
pub mod mapping;
pub mod match_key;
pub mod member;
pub mod metrics;
pub mod names;
pub mod notify;
pub mod organization;
pub mod partnership;
pub mod scorecard;
pub mod text;
pub mod visibility;
pub mod webhook;

pub use api_key::{ApiKey, ApiKeySecret, KeyHash, Principal, Scope, Scopes};
pub use member::{EmailAddress, Member, MemberRole, TimeZoneName};
pub use organization::{OrgRef, Organization, OrganizationKind, OrganizationState, Slug};
pub use partnership::{Partnership, PartnershipAction, PartnershipState, Relationship};
pub use text::{DisplayName, Lines, Reason};

/// An organization's internal id (a UUIDv7). Resource names use the slug instead.
pub type OrganizationId = String;

/// The current time at the precision the store keeps (microseconds), so a resource
/// returned by a write equals the same resource read back later.
pub fn now() -> jiff::Timestamp {
    let t = jiff::Timestamp::now();
    jiff::Timestamp::from_microsecond(t.as_microsecond()).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_the_current_time_at_the_stores_precision() {
        let before = jiff::Timestamp::now();
        let stored = now();
        assert_eq!(stored.subsec_nanosecond() % 1_000, 0, "{stored}");
        // Truncated, so at most a microsecond before the clock was first read.
        let earliest = before
            .checked_sub(jiff::SignedDuration::from_micros(1))
            .unwrap();
        assert!(
            earliest <= stored && stored <= jiff::Timestamp::now(),
            "{stored}"
        );
    }
}
