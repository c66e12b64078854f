//! The ids of the hub's records, one type each, so one kind of id cannot be passed
//! where another is meant. An id from a caller is parsed once, at the edge, from a
//! resource name ([`super::names`]); ids read back from the store are trusted as
//! stored ([`Id::from_stored`]). Every id is a UUID in its hyphenated form.

use std::fmt;
use std::ops::Deref;

use uuid::Uuid;

/// What every id type can do.
pub trait Id: Sized {
    /// An id as the hub stored (or parsed) it.
    fn from_stored(id: String) -> Self;

    /// A fresh id: a version 7 UUID, so ids sort in creation order.
    fn generate() -> Self {
        Self::from_stored(Uuid::now_v7().to_string())
    }
}

macro_rules! id_types {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => { $(
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl Id for $name {
            fn from_stored(id: String) -> Self {
                Self(id)
            }
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        /// Where a plain `&str` is asked for (SQL parameters, names, logs).
        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }
    )* };
}

id_types!(
    /// A shared customer record.
    CustomerId,
    /// A member of an organization.
    MemberId,
    /// A partnership between two organizations.
    PartnershipId,
    /// A grant of a customer to a partner.
    GrantId,
    /// An interaction logged on a customer.
    InteractionId,
    /// An access request through a match.
    AccessRequestId,
    /// A match handle.
    MatchId,
    /// A field preset.
    PresetId,
    /// A segment: a saved customer filter.
    SegmentId,
    /// A sharing rule.
    RuleId,
    /// An account mapping between two partners.
    MappingId,
    /// A long-running operation.
    OperationId,
    /// A case.
    CaseId,
    /// A task of a case.
    TaskId,
    /// A webhook endpoint.
    EndpointId,
    /// An API key.
    ApiKeyId,
    /// A client certificate registration.
    CertificateId,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_id_is_a_uuid_and_reads_as_its_text() {
        let id = CustomerId::generate();
        let parsed = Uuid::parse_str(id.as_str()).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert_eq!(id.to_string(), parsed.hyphenated().to_string());
        assert_eq!(&*id, id.as_str());
        assert_eq!(String::from(id.clone()), id.into_string());
    }

    #[test]
    fn ids_compare_with_their_text() {
        let text = String::from("0190a0a0-0000-7000-8000-000000000000");
        let id = CaseId::from_stored(text.clone());
        assert!(id == *text.as_str());
        assert!(id == text);
        assert!(id != *"another");
        assert!(id != String::new());
    }
}
