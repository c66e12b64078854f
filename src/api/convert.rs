//! Conversions shared by the services: times, etag checks and update masks.

use jiff::Timestamp;

use crate::domain::error::{Error, FieldViolation, Result};
use crate::domain::{MemberRole, OrganizationKind, Relationship, Scope};
use crate::pb;

/// Maps a domain enum to its protobuf enum and back; the protobuf's UNSPECIFIED (or any
/// value not listed) reads as "is required", an unknown number as not known.
macro_rules! enum_mapping {
    ($to:ident, $from:ident, $domain:ty, $pb:ty, $what:literal, { $($d:path => $p:path),+ $(,)? }) => {
        pub fn $to(value: $domain) -> $pb {
            match value {
                $($d => $p,)+
            }
        }

        pub fn $from(raw: i32) -> Result<$domain, FieldViolation> {
            match <$pb>::try_from(raw) {
                $(Ok($p) => Ok($d),)+
                Ok(_) => Err(FieldViolation::required("")),
                Err(_) => Err(FieldViolation::new("", format!("{raw} is not a known {}", $what))),
            }
        }
    };
}

enum_mapping!(kind_to_pb, kind_from_pb, OrganizationKind, pb::OrganizationKind, "organization kind", {
    OrganizationKind::Vendor => pb::OrganizationKind::Vendor,
    OrganizationKind::Distributor => pb::OrganizationKind::Distributor,
    OrganizationKind::Retailer => pb::OrganizationKind::Retailer,
    OrganizationKind::Other => pb::OrganizationKind::Other,
});

enum_mapping!(scope_to_pb, scope_from_pb, Scope, pb::ApiKeyScope, "scope; use READ, WRITE or ADMIN", {
    Scope::Read => pb::ApiKeyScope::Read,
    Scope::Write => pb::ApiKeyScope::Write,
    Scope::Admin => pb::ApiKeyScope::Admin,
});

enum_mapping!(role_to_pb, role_from_pb, MemberRole, pb::MemberRole, "member role", {
    MemberRole::Coordinator => pb::MemberRole::Coordinator,
    MemberRole::Manager => pb::MemberRole::Manager,
    MemberRole::Administrator => pb::MemberRole::Administrator,
});

enum_mapping!(relationship_to_pb, relationship_from_pb, Relationship, pb::Relationship, "relationship", {
    Relationship::Supplies => pb::Relationship::Supplies,
    Relationship::DistributesFor => pb::Relationship::DistributesFor,
    Relationship::SellsFor => pb::Relationship::SellsFor,
    Relationship::ServicesFor => pb::Relationship::ServicesFor,
});

pub fn parse_timestamp(t: &prost_types::Timestamp) -> Result<Timestamp, FieldViolation> {
    Timestamp::new(t.seconds, t.nanos).map_err(|_| FieldViolation::new("", "is not a valid time"))
}

/// Checks an etag sent with a write against the resource's current revision.
/// An empty etag means "whatever is current".
pub fn check_etag(sent: &str, current_revision: i64, resource: &str) -> Result<()> {
    if sent.is_empty() {
        return Ok(());
    }
    let revision: i64 = sent
        .trim_matches('"')
        .parse()
        .map_err(|_| Error::invalid("etag", "is not an etag this API returned"))?;
    if revision == current_revision {
        Ok(())
    } else {
        Err(Error::StaleEtag(resource.to_owned()))
    }
}

/// The fields an update touches: the mask's paths, each of which must be in
/// `updatable`; or, with an empty mask, the updatable fields the request populated
/// (AIP-134).
pub fn update_paths(
    mask: Option<&prost_types::FieldMask>,
    updatable: &[&str],
    populated: &[&str],
) -> Result<Vec<String>> {
    let paths: Vec<String> = mask.map(|m| m.paths.clone()).unwrap_or_default();
    if paths.is_empty() {
        if populated.is_empty() {
            return Err(Error::invalid("update_mask", "names no field to update"));
        }
        return Ok(populated.iter().map(|p| p.to_string()).collect());
    }
    if paths.iter().any(|p| p == "*") {
        return Ok(updatable.iter().map(|p| p.to_string()).collect());
    }
    let unknown: Vec<&String> = paths
        .iter()
        .filter(|p| !updatable.contains(&p.as_str()))
        .collect();
    if !unknown.is_empty() {
        return Err(Error::invalid(
            "update_mask",
            format!(
                "cannot update {unknown:?}; updatable fields are {}",
                updatable.join(", ")
            ),
        ));
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::render::etag;

    #[test]
    fn etags_reject_stale_revisions() {
        assert!(check_etag(&etag(3), 3, "x").is_ok());
        assert!(matches!(
            check_etag(&etag(2), 3, "x"),
            Err(Error::StaleEtag(_))
        ));
        assert!(matches!(
            check_etag("nonsense", 3, "x"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(check_etag("", 3, "x").is_ok());
    }

    #[test]
    fn masks_name_only_updatable_fields() {
        let mask = prost_types::FieldMask {
            paths: vec!["display_name".into(), "slug".into()],
        };
        assert!(update_paths(Some(&mask), &["display_name", "kind"], &[]).is_err());
        assert_eq!(
            update_paths(None, &["display_name", "kind"], &["kind"]).unwrap(),
            vec!["kind"]
        );
        assert!(update_paths(None, &["display_name"], &[]).is_err());
    }
}
