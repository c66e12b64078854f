//! The one decision of who may see a customer, and which of its fields.
//!
//! Every path that shows a customer to an organization (Get, List, Search, the event
//! stream, webhook payloads, email bodies) asks [`access`] and then shows only
//! [`Access::view`]. Queries may narrow their rows in SQL for speed, but the answer
//! here is the final word.

use super::customer::{CustomerField, CustomerKind, FieldSet, Profile, RecordState};

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

/// How an organization may see a customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Owner,
    Grantee {
        level: AccessLevel,
        fields: FieldSet,
    },
}

/// Whether `viewer_id` may see a customer owned by `owner_id` in `state`, given the
/// viewer's grant on it (if any), and how. `None` means the viewer must be told
/// NOT_FOUND, exactly as for a record that does not exist.
pub fn access(
    viewer_id: &str,
    owner_id: &str,
    state: RecordState,
    grant: Option<&GrantStanding>,
) -> Option<Access> {
    if viewer_id == owner_id {
        return (state != RecordState::Merged).then_some(Access::Owner);
    }
    if state != RecordState::Active {
        return None;
    }
    let grant =
        grant.filter(|g| g.grantee_id == viewer_id && !g.revoked && g.partnership_active)?;
    Some(Access::Grantee {
        level: grant.level,
        fields: grant.fields,
    })
}

/// A customer as one organization may see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerView {
    /// `None` if the display name is not shared with the viewer.
    pub display_name: Option<String>,
    /// The profile with every field the viewer may not see emptied.
    pub profile: Profile,
    pub fields: FieldSet,
}

impl CustomerView {
    /// The fields that read differently in this view than in `before` (the same
    /// viewer's view of the previous version): what a change looks like to someone
    /// who sees only this much. A change to a hidden field is no change here.
    pub fn changes_since(&self, before: &CustomerView) -> Vec<CustomerField> {
        CustomerField::ALL
            .into_iter()
            .filter(|f| self.fields.contains(*f))
            .filter(|f| match f {
                CustomerField::DisplayName => self.display_name != before.display_name,
                _ => self.profile.value_of(*f) != before.profile.value_of(*f),
            })
            .collect()
    }
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
            Access::Grantee {
                level: AccessLevel::ReadWrite,
                fields,
            } => fields.contains(field),
            Access::Grantee {
                level: AccessLevel::Read,
                ..
            } => false,
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
}
