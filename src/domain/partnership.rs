//! Partnerships: the only thing that lets two organizations share records.
//!
//! ```text
//!  propose ─▶ PROPOSED ──accept──▶ ACTIVE ◀──resume── SUSPENDED
//!                │ │                 │ └────suspend────▲    │
//!          decline end              end                     end
//!                ▼ ▼                 ▼                      ▼
//!          DECLINED ENDED          ENDED                  ENDED
//! ```

use jiff::Timestamp;

use super::calendar::Zone;

use super::{OrgRef, Reason};
use crate::domain::error::Error;

/// How the proposer relates to the recipient: "proposer SUPPLIES recipient".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relationship {
    Supplies,
    DistributesFor,
    SellsFor,
    ServicesFor,
}

impl Relationship {
    pub const ALL: [Self; 4] = [
        Self::Supplies,
        Self::DistributesFor,
        Self::SellsFor,
        Self::ServicesFor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Supplies => "supplies",
            Self::DistributesFor => "distributes_for",
            Self::SellsFor => "sells_for",
            Self::ServicesFor => "services_for",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(raw))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartnershipState {
    Proposed,
    Active,
    Declined { reason: Reason },
    Suspended { by: OrgRef, reason: Reason },
    Ended { by: OrgRef, reason: Reason },
}

impl PartnershipState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Proposed => "proposed",
            Self::Active => "active",
            Self::Declined { .. } => "declined",
            Self::Suspended { .. } => "suspended",
            Self::Ended { .. } => "ended",
        }
    }

    /// Declined and ended partnerships never change again.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Declined { .. } | Self::Ended { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartnershipAction {
    Accept,
    Decline,
    Suspend,
    Resume,
    End,
}

impl PartnershipAction {
    pub const ALL: [Self; 5] = [
        Self::Accept,
        Self::Decline,
        Self::Suspend,
        Self::Resume,
        Self::End,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Decline => "decline",
            Self::Suspend => "suspend",
            Self::Resume => "resume",
            Self::End => "end",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partnership {
    pub id: String,
    pub proposer: OrgRef,
    pub recipient: OrgRef,
    pub relationship: Relationship,
    pub message: Reason,
    pub state: PartnershipState,
    /// The organization behind the last state change (the proposer while proposed).
    pub state_changed_by: OrgRef,
    /// The zone whose days, weeks, months and quarters its scorecards count in.
    pub reporting_time_zone: Zone,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
    pub revision: i64,
}

impl Partnership {
    pub fn involves(&self, org_id: &str) -> bool {
        self.proposer.id == org_id || self.recipient.id == org_id
    }

    /// The state `action` by `actor` leads to, if it is allowed now.
    fn next_state(
        &self,
        actor: &OrgRef,
        action: PartnershipAction,
        reason: Reason,
    ) -> Option<PartnershipState> {
        use PartnershipAction as A;
        use PartnershipState as S;
        let is_recipient = actor.id == self.recipient.id;
        match (&self.state, action) {
            (S::Proposed, A::Accept) if is_recipient => Some(S::Active),
            (S::Proposed, A::Decline) if is_recipient => Some(S::Declined { reason }),
            (S::Active, A::Suspend) => Some(S::Suspended {
                by: actor.clone(),
                reason,
            }),
            // Only the side that suspended may lift its own suspension.
            (S::Suspended { by, .. }, A::Resume) if by.id == actor.id => Some(S::Active),
            (S::Proposed | S::Active | S::Suspended { .. }, A::End) => Some(S::Ended {
                by: actor.clone(),
                reason,
            }),
            _ => None,
        }
    }

    /// The actions `actor` may take now, for error messages and clients.
    pub fn allowed_actions(&self, actor: &OrgRef) -> Vec<PartnershipAction> {
        PartnershipAction::ALL
            .into_iter()
            .filter(|&a| self.next_state(actor, a, Reason::default()).is_some())
            .collect()
    }

    /// Applies `action` by `actor` (one of the two parties) at `now`.
    pub fn apply(
        &mut self,
        actor: &OrgRef,
        action: PartnershipAction,
        reason: Reason,
        now: Timestamp,
    ) -> Result<(), Error> {
        let Some(next) = self.next_state(actor, action, reason) else {
            let allowed: Vec<String> = self
                .allowed_actions(actor)
                .iter()
                .map(|a| a.as_str().to_owned())
                .collect();
            let listed = if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            };
            return Err(Error::WrongState {
                reason: "PARTNERSHIP_TRANSITION_NOT_ALLOWED",
                message: format!(
                    "cannot {} a partnership that is {} from your side; allowed now: {listed}",
                    action.as_str(),
                    self.state.name().to_uppercase()
                ),
                subject: format!("partnerships/{}", self.id),
                allowed,
            });
        };
        self.state = next;
        self.state_changed_by = actor.clone();
        self.update_time = now;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Slug;

    fn org(slug: &str) -> OrgRef {
        OrgRef {
            id: format!("id-{slug}"),
            slug: Slug::parse(slug).unwrap(),
        }
    }

    fn proposal() -> Partnership {
        Partnership {
            id: "p1".into(),
            proposer: org("acme"),
            recipient: org("shop"),
            relationship: Relationship::Supplies,
            message: Reason::default(),
            state: PartnershipState::Proposed,
            state_changed_by: org("acme"),
            reporting_time_zone: Zone::default(),
            create_time: Timestamp::UNIX_EPOCH,
            update_time: Timestamp::UNIX_EPOCH,
            revision: 1,
        }
    }

    #[test]
    fn a_partnership_involves_its_two_organizations_alone() {
        let p = proposal();
        assert!(p.involves("id-acme"));
        assert!(p.involves("id-shop"));
        assert!(!p.involves("id-other"));
        assert!(!p.involves(""));
    }

    #[test]
    fn only_the_recipient_accepts_or_declines() {
        let mut p = proposal();
        let err = p.apply(
            &org("acme"),
            PartnershipAction::Accept,
            Reason::default(),
            Timestamp::now(),
        );
        assert!(err.unwrap_err().to_string().contains("allowed now: end"));
        p.apply(
            &org("shop"),
            PartnershipAction::Accept,
            Reason::default(),
            Timestamp::now(),
        )
        .unwrap();
        assert_eq!(p.state, PartnershipState::Active);
        assert_eq!(p.state_changed_by, org("shop"));
    }

    #[test]
    fn only_the_suspending_side_resumes() {
        let mut p = proposal();
        p.state = PartnershipState::Active;
        p.apply(
            &org("acme"),
            PartnershipAction::Suspend,
            Reason::parse("audit").unwrap(),
            Timestamp::now(),
        )
        .unwrap();
        assert!(
            p.apply(
                &org("shop"),
                PartnershipAction::Resume,
                Reason::default(),
                Timestamp::now()
            )
            .is_err()
        );
        assert_eq!(
            p.allowed_actions(&org("shop")),
            vec![PartnershipAction::End]
        );
        p.apply(
            &org("acme"),
            PartnershipAction::Resume,
            Reason::default(),
            Timestamp::now(),
        )
        .unwrap();
        assert_eq!(p.state, PartnershipState::Active);
    }

    #[test]
    fn relationships_and_states_read_back_as_stored() {
        for (relationship, name) in [
            (Relationship::Supplies, "supplies"),
            (Relationship::DistributesFor, "distributes_for"),
            (Relationship::SellsFor, "sells_for"),
            (Relationship::ServicesFor, "services_for"),
        ] {
            assert_eq!(relationship.as_str(), name);
            assert_eq!(Relationship::parse(name), Some(relationship));
        }
        assert_eq!(Relationship::parse("owns"), None);
        let reason = Reason::default();
        let names: Vec<&str> = [
            PartnershipState::Proposed,
            PartnershipState::Active,
            PartnershipState::Declined {
                reason: reason.clone(),
            },
            PartnershipState::Suspended {
                by: org("acme"),
                reason: reason.clone(),
            },
            PartnershipState::Ended {
                by: org("acme"),
                reason,
            },
        ]
        .iter()
        .map(PartnershipState::name)
        .collect();
        assert_eq!(
            names,
            ["proposed", "active", "declined", "suspended", "ended"]
        );
    }

    #[test]
    fn final_states_allow_nothing() {
        let mut p = proposal();
        p.apply(
            &org("shop"),
            PartnershipAction::Decline,
            Reason::default(),
            Timestamp::now(),
        )
        .unwrap();
        assert!(p.state.is_final());
        for open in [
            PartnershipState::Proposed,
            PartnershipState::Active,
            PartnershipState::Suspended {
                by: org("acme"),
                reason: Reason::default(),
            },
        ] {
            assert!(!open.is_final(), "{open:?}");
        }
        assert!(p.allowed_actions(&org("acme")).is_empty());
        assert!(p.allowed_actions(&org("shop")).is_empty());
    }
}
