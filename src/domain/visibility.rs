//! The one decision of who may see a customer, and which of its fields.
//!
//! Every path that shows a customer to an organization (Get, List, Search, the event
//! stream, webhook payloads, email bodies) asks [`access`] and then shows only
//! [`Access::view`]. Queries may narrow their rows in SQL for speed, but the answer
//! here is the final word.

use std::sync::Arc;

use jiff::Timestamp;

pub use super::customer::CustomerView;
use super::customer::{Customer, CustomerField, CustomerKind, FieldSet, Profile, RecordState};
use super::filter::{Activity, CustomerFacts, CustomerFilter};

/// What a grant allows besides seeing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLevel {
    Read,
    ReadWrite,
}

/// A grant of the customer to the viewer, with what decides whether it works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantStanding {
    pub grantee_id: String,
    pub level: AccessLevel,
    pub fields: FieldSet,
    pub revoked: bool,
    /// Whether the partnership the grant rests on is ACTIVE now.
    pub partnership_active: bool,
}

/// A sharing rule of the customer's owner that names the viewer (or the viewer's
/// relationship with the owner), with what decides whether it covers the customer.
#[derive(Debug, Clone)]
pub struct RuleStanding {
    pub rule_id: String,
    pub grantee_id: String,
    pub level: AccessLevel,
    pub fields: FieldSet,
    /// The owner's segment the rule shares; `None`: every customer of the owner.
    /// One that filters on interactions is weighed with the owner's
    /// [`Activity`] on the customer.
    pub segment: Option<Arc<CustomerFilter>>,
    pub expire_time: Option<Timestamp>,
    pub revoked: bool,
    /// Whether a partnership the rule reaches the viewer through is ACTIVE now.
    pub partnership_active: bool,
}

impl RuleStanding {
    /// Whether the rule shares `customer` with `viewer_id` at `now`: live, not
    /// expired, through an ACTIVE partnership, and the customer, as its owner sees
    /// it now (with its interactions as the owner sees them), in the rule's segment.
    fn covers(
        &self,
        viewer_id: &str,
        customer: &Customer,
        owner_activity: Option<&Activity>,
        now: Timestamp,
    ) -> bool {
        let live = self.grantee_id == viewer_id
            && !self.revoked
            && self.partnership_active
            && self.expire_time.is_none_or(|t| now < t);
        live && self.segment.as_ref().is_none_or(|segment| {
            let view = Access::Owner.view(customer.kind, &customer.profile);
            segment.matches(&CustomerFacts {
                view: &view,
                kind: customer.kind,
                owner: &customer.owner.slug,
                // Segments that rules share do not filter on external ids.
                external_id: None,
                update_time: customer.update_time,
                granted: false,
                activity: owner_activity,
                now,
            })
        })
    }
}

/// How an organization may see a customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Owner,
    Grantee {
        /// READ_WRITE when some field is writable.
        level: AccessLevel,
        /// What the viewer sees.
        fields: FieldSet,
        /// What the viewer may change: within `fields`.
        writable: FieldSet,
    },
}

/// Whether `viewer_id` may see `customer`, given the viewer's grant on it (if any),
/// its owner's sharing rules that name the viewer and the customer's interactions as
/// its owner sees them (read when a rule's segment filters on them), and how, at
/// `now`. `None` means
/// the viewer must be told NOT_FOUND, exactly as for a record that does not exist.
///
/// A partner's access is the union of every source that works: the grant (live, its
/// partnership ACTIVE) and each rule that covers the customer now. It sees every
/// field any of them shows, and may change a field only where a READ_WRITE source
/// shows that field: a READ rule never widens what a READ_WRITE grant may change.
pub fn access(
    viewer_id: &str,
    customer: &Customer,
    grant: Option<&GrantStanding>,
    rules: &[RuleStanding],
    owner_activity: Option<&Activity>,
    now: Timestamp,
) -> Option<Access> {
    if viewer_id == customer.owner.id {
        return (customer.state != RecordState::Merged).then_some(Access::Owner);
    }
    if customer.state != RecordState::Active {
        return None;
    }
    let grant = grant
        .filter(|g| g.grantee_id == viewer_id && !g.revoked && g.partnership_active)
        .map(|g| (g.level, g.fields));
    let ruled = rules
        .iter()
        .filter(|r| r.covers(viewer_id, customer, owner_activity, now))
        .map(|r| (r.level, r.fields));
    let mut found = false;
    let (mut fields, mut writable) = (FieldSet::NONE, FieldSet::NONE);
    for (level, shown) in grant.into_iter().chain(ruled) {
        found = true;
        fields = fields.union(shown);
        if level == AccessLevel::ReadWrite {
            writable = writable.union(shown);
        }
    }
    found.then(|| Access::Grantee {
        level: if writable == FieldSet::NONE {
            AccessLevel::Read
        } else {
            AccessLevel::ReadWrite
        },
        fields,
        writable,
    })
}

impl Access {
    pub fn fields(self) -> FieldSet {
        match self {
            Access::Owner => FieldSet::ALL,
            Access::Grantee { fields, .. } => fields,
        }
    }

    pub fn sees(self, field: CustomerField) -> bool {
        self.fields().contains(field)
    }

    /// The owner changes anything; a READ_WRITE grantee only the fields it sees.
    pub fn may_change(self, field: CustomerField) -> bool {
        match self {
            Access::Owner => true,
            Access::Grantee { writable, .. } => writable.contains(field),
        }
    }

    pub fn is_owner(self) -> bool {
        self == Access::Owner
    }

    /// The part of `profile` this access shows.
    pub fn view(self, kind: CustomerKind, profile: &Profile) -> CustomerView {
        use CustomerField as F;
        let sees = |f| self.sees(f);
        let keep = |f, value: &String| {
            if sees(f) {
                value.clone()
            } else {
                String::new()
            }
        };
        let masked = Profile {
            given_name: keep(F::GivenName, &profile.given_name),
            family_name: keep(F::FamilyName, &profile.family_name),
            legal_name: keep(F::LegalName, &profile.legal_name),
            emails: if sees(F::Emails) {
                profile.emails.clone()
            } else {
                vec![]
            },
            phones: if sees(F::Phones) {
                profile.phones.clone()
            } else {
                vec![]
            },
            addresses: if sees(F::Addresses) {
                profile.addresses.clone()
            } else {
                vec![]
            },
            tags: if sees(F::Tags) {
                profile.tags.clone()
            } else {
                vec![]
            },
            attributes: if sees(F::Attributes) {
                profile.attributes.clone()
            } else {
                Default::default()
            },
        };
        CustomerView {
            display_name: sees(F::DisplayName).then(|| profile.display_name(kind)),
            profile: masked,
            fields: self.fields(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EmailAddress;
    use crate::domain::customer::{EmailContact, PhoneContact, PhoneNumber, PhoneRegion};
    use crate::domain::{OrgRef, Slug};

    fn customer(owner: &str, state: RecordState) -> Customer {
        Customer {
            id: "c1".into(),
            owner: OrgRef {
                id: owner.into(),
                slug: Slug::parse(owner).unwrap(),
            },
            kind: CustomerKind::Person,
            state,
            profile: profile(),
            merged_into: None,
            create_time: Timestamp::UNIX_EPOCH,
            update_time: Timestamp::UNIX_EPOCH,
            delete_time: None,
            revision: 1,
        }
    }

    /// [`super::access`] with a grant alone.
    fn access(
        viewer: &str,
        owner: &str,
        state: RecordState,
        grant: Option<&GrantStanding>,
    ) -> Option<Access> {
        super::access(
            viewer,
            &customer(owner, state),
            grant,
            &[],
            None,
            Timestamp::UNIX_EPOCH,
        )
    }

    fn rule(level: AccessLevel, fields: &[&str], segment: &str) -> RuleStanding {
        let names: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
        let region = PhoneRegion::parse("DE").unwrap();
        RuleStanding {
            rule_id: "r1".into(),
            grantee_id: "shop".into(),
            level,
            fields: FieldSet::parse(&names).unwrap(),
            segment: (!segment.is_empty())
                .then(|| Arc::new(CustomerFilter::parse(segment, region).unwrap())),
            expire_time: None,
            revoked: false,
            partnership_active: true,
        }
    }

    fn grant(level: AccessLevel, fields: &[&str]) -> GrantStanding {
        let names: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
        GrantStanding {
            grantee_id: "shop".into(),
            level,
            fields: FieldSet::parse(&names).unwrap(),
            revoked: false,
            partnership_active: true,
        }
    }

    fn profile() -> Profile {
        let region = PhoneRegion::parse("DE").unwrap();
        Profile {
            given_name: "Jane".into(),
            family_name: "Doe".into(),
            emails: vec![EmailContact {
                address: EmailAddress::parse("jane@doe.example").unwrap(),
                label: "work".into(),
                primary: true,
            }],
            phones: vec![PhoneContact {
                number: PhoneNumber::parse("030 901820", region).unwrap(),
                label: String::new(),
                primary: false,
            }],
            tags: vec!["vip".into()],
            ..Default::default()
        }
    }

    #[test]
    fn the_owner_sees_everything_but_a_merged_record() {
        use RecordState::*;
        for state in [Active, Deleted, Erased] {
            assert_eq!(
                access("acme", "acme", state, None),
                Some(Access::Owner),
                "{state:?}"
            );
        }
        assert_eq!(access("acme", "acme", Merged, None), None);
        assert!(Access::Owner.is_owner());
        let grantee = Access::Grantee {
            level: AccessLevel::ReadWrite,
            fields: FieldSet::ALL,
            writable: FieldSet::ALL,
        };
        assert!(
            !grantee.is_owner(),
            "a grant of everything is still a grant"
        );
        let view = Access::Owner.view(CustomerKind::Person, &profile());
        assert_eq!(view.profile, profile());
        assert_eq!(view.display_name.as_deref(), Some("Jane Doe"));
    }

    #[test]
    fn a_grant_works_only_while_live_and_active() {
        let g = grant(AccessLevel::Read, &[]);
        assert!(access("shop", "acme", RecordState::Active, Some(&g)).is_some());
        assert_eq!(access("shop", "acme", RecordState::Active, None), None);
        assert_eq!(access("shop", "acme", RecordState::Deleted, Some(&g)), None);
        assert_eq!(access("shop", "acme", RecordState::Erased, Some(&g)), None);
        let revoked = GrantStanding {
            revoked: true,
            ..g.clone()
        };
        assert_eq!(
            access("shop", "acme", RecordState::Active, Some(&revoked)),
            None
        );
        let suspended = GrantStanding {
            partnership_active: false,
            ..g.clone()
        };
        assert_eq!(
            access("shop", "acme", RecordState::Active, Some(&suspended)),
            None
        );
        // Someone else's grant is no grant for this viewer.
        assert_eq!(access("nosy", "acme", RecordState::Active, Some(&g)), None);
    }

    #[test]
    fn a_field_masked_grant_shows_only_its_fields() {
        let g = grant(AccessLevel::Read, &["display_name", "emails"]);
        let a = access("shop", "acme", RecordState::Active, Some(&g)).unwrap();
        let view = a.view(CustomerKind::Person, &profile());
        assert_eq!(view.display_name.as_deref(), Some("Jane Doe"));
        assert_eq!(view.profile.emails, profile().emails);
        assert!(view.profile.phones.is_empty() && view.profile.tags.is_empty());
        // The display name may be shared without the names it is made of.
        assert!(view.profile.given_name.is_empty() && view.profile.family_name.is_empty());

        let no_name = grant(AccessLevel::Read, &["phones"]);
        let view = access("shop", "acme", RecordState::Active, Some(&no_name))
            .unwrap()
            .view(CustomerKind::Person, &profile());
        assert_eq!(view.display_name, None);
        assert!(view.profile.emails.is_empty());
    }

    #[test]
    fn a_change_shows_only_in_the_fields_the_viewer_sees() {
        use CustomerField as F;
        let before = profile();
        let after = Profile {
            family_name: "Smith".into(),
            phones: vec![],
            ..profile()
        };
        let changes = |access: Access| {
            let kind = CustomerKind::Person;
            access
                .view(kind, &after)
                .changes_since(&access.view(kind, &before))
        };
        assert_eq!(
            changes(Access::Owner),
            [F::DisplayName, F::FamilyName, F::Phones]
        );
        let name_and_emails = grant(AccessLevel::Read, &["display_name", "emails"]);
        let a = access("shop", "acme", RecordState::Active, Some(&name_and_emails));
        assert_eq!(changes(a.unwrap()), [F::DisplayName]);
        // A change to hidden fields only is no change at all for this viewer.
        let tags = grant(AccessLevel::Read, &["tags"]);
        let a = access("shop", "acme", RecordState::Active, Some(&tags));
        assert!(changes(a.unwrap()).is_empty());
    }

    #[test]
    fn only_read_write_grantees_change_and_only_their_fields() {
        let read = access(
            "shop",
            "acme",
            RecordState::Active,
            Some(&grant(AccessLevel::Read, &[])),
        )
        .unwrap();
        assert!(!read.may_change(CustomerField::Emails));
        let rw = access(
            "shop",
            "acme",
            RecordState::Active,
            Some(&grant(AccessLevel::ReadWrite, &["emails"])),
        )
        .unwrap();
        assert!(rw.may_change(CustomerField::Emails));
        assert!(!rw.may_change(CustomerField::Phones));
        assert!(Access::Owner.may_change(CustomerField::Phones));
    }

    #[test]
    fn a_rule_covers_what_its_segment_holds_while_it_lives() {
        let now = Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_hours(1);
        let vip = customer("acme", RecordState::Active);
        let sees = |r: &RuleStanding, c: &Customer| {
            super::access("shop", c, None, std::slice::from_ref(r), None, now)
        };
        let in_segment = rule(AccessLevel::Read, &["emails"], "tag = vip");
        let a = sees(&in_segment, &vip).expect("a vip is in the segment");
        assert!(a.sees(CustomerField::Emails) && !a.sees(CustomerField::Phones));
        assert!(!a.may_change(CustomerField::Emails));
        let outside = Customer {
            profile: Profile {
                tags: vec!["lead".into()],
                ..profile()
            },
            ..vip.clone()
        };
        assert_eq!(sees(&in_segment, &outside), None, "left the segment");
        assert!(
            sees(&rule(AccessLevel::Read, &[], ""), &outside).is_some(),
            "every customer"
        );
        // A segment is read on the owner's record, whatever the rule shows: a rule
        // that shares emails only still selects by tag.
        assert!(sees(&rule(AccessLevel::Read, &["emails"], "tag = vip"), &vip).is_some());
        let expired = RuleStanding {
            expire_time: Some(now),
            ..in_segment.clone()
        };
        assert_eq!(sees(&expired, &vip), None, "expired at its expire_time");
        let later = RuleStanding {
            expire_time: Some(now + jiff::SignedDuration::from_secs(1)),
            ..in_segment.clone()
        };
        assert!(sees(&later, &vip).is_some());
        for dead in [
            RuleStanding {
                revoked: true,
                ..in_segment.clone()
            },
            RuleStanding {
                partnership_active: false,
                ..in_segment.clone()
            },
            RuleStanding {
                grantee_id: "nosy".into(),
                ..in_segment.clone()
            },
        ] {
            assert_eq!(sees(&dead, &vip), None, "{dead:?}");
        }
        assert_eq!(
            sees(&in_segment, &customer("acme", RecordState::Deleted)),
            None
        );
    }

    #[test]
    fn grants_and_rules_add_up_but_only_read_write_sources_make_fields_writable() {
        let now = Timestamp::UNIX_EPOCH;
        let c = customer("acme", RecordState::Active);
        let g = grant(AccessLevel::ReadWrite, &["emails"]);
        let rules = [
            rule(AccessLevel::Read, &["phones", "emails"], "tag = vip"),
            rule(AccessLevel::ReadWrite, &["addresses"], "tag = vip"),
            rule(AccessLevel::ReadWrite, &["tags"], "tag = nobody"),
        ];
        let a = super::access("shop", &c, Some(&g), &rules, None, now).unwrap();
        use CustomerField as F;
        for (field, seen, writable) in [
            (F::Emails, true, true),
            (F::Phones, true, false),
            (F::Addresses, true, true),
            (F::Tags, false, false),
            (F::GivenName, false, false),
        ] {
            assert_eq!(a.sees(field), seen, "{field:?}");
            assert_eq!(a.may_change(field), writable, "{field:?}");
        }
        let Access::Grantee { level, .. } = a else {
            panic!("{a:?}")
        };
        assert_eq!(level, AccessLevel::ReadWrite);
        // A READ rule alone: read only, however much it shows.
        let read = super::access("shop", &c, None, &rules[..1], None, now).unwrap();
        assert!(matches!(
            read,
            Access::Grantee {
                level: AccessLevel::Read,
                ..
            }
        ));
        assert!(!read.may_change(F::Emails));
        // The owner is the owner, whatever rules say.
        assert_eq!(
            super::access("acme", &c, None, &rules, None, now),
            Some(Access::Owner)
        );
    }
}
