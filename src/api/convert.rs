//! Conversions shared by the services: times, etags and update masks.

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

pub fn timestamp(t: Timestamp) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    })
}

pub fn parse_timestamp(t: &prost_types::Timestamp) -> Result<Timestamp, FieldViolation> {
    Timestamp::new(t.seconds, t.nanos).map_err(|_| FieldViolation::new("", "is not a valid time"))
}

/// The etag of a resource at `revision`: opaque to callers.
pub fn etag(revision: i64) -> String {
    format!("\"{revision}\"")
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

/// An event in the protobuf JSON mapping (lowerCamelCase names, enums by name, int64
/// as strings, RFC 3339 times): the body of a webhook. Read through the compiled
/// descriptors, so the JSON follows the proto contract with no hand-written mapping.
pub fn event_json(event: &pb::Event) -> crate::domain::error::Result<Vec<u8>> {
    use prost::Message;
    use std::sync::OnceLock;
    static POOL: OnceLock<prost_reflect::DescriptorPool> = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        prost_reflect::DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set compiled into the binary decodes")
    });
    let descriptor = pool
        .get_message_by_name("liaison.v1.Event")
        .ok_or_else(|| anyhow::anyhow!("liaison.v1.Event is missing from the descriptors"))?;
    let message =
        prost_reflect::DynamicMessage::decode(descriptor, event.encode_to_vec().as_slice())
            .map_err(|e| anyhow::anyhow!("an event does not decode against its descriptor: {e}"))?;
    Ok(serde_json::to_vec(&message).map_err(|e| anyhow::anyhow!("event to JSON: {e}"))?)
}

#[cfg(test)]
mod json_tests {
    use super::*;

    #[test]
    fn events_become_protobuf_json() {
        let event = pb::Event {
            id: "0198e1f2-7c3a-7def-8000-000000000001".into(),
            sequence: 42,
            r#type: "customer.updated".into(),
            create_time: Some(prost_types::Timestamp {
                seconds: 1_790_000_000,
                nanos: 0,
            }),
            resource: "customers/x".into(),
            changed_fields: vec!["given_name".into()],
            payload: Some(pb::event::Payload::Customer(pb::Customer {
                name: "customers/x".into(),
                given_name: "Ada".into(),
                kind: pb::CustomerKind::Person as i32,
                ..Default::default()
            })),
            ..Default::default()
        };
        let json: serde_json::Value = serde_json::from_slice(&event_json(&event).unwrap()).unwrap();
        assert_eq!(json["sequence"], "42");
        assert_eq!(json["type"], "customer.updated");
        assert_eq!(json["createTime"], "2026-09-21T14:13:20Z");
        assert_eq!(json["changedFields"][0], "given_name");
        assert_eq!(json["customer"]["givenName"], "Ada");
        assert_eq!(json["customer"]["kind"], "PERSON");
    }

    #[test]
    fn case_events_become_protobuf_json_with_durations() {
        let event = pb::Event {
            r#type: "case.sla_warning".into(),
            payload: Some(pb::event::Payload::Case(pb::Case {
                name: "cases/x".into(),
                priority: pb::CasePriority::High as i32,
                sla_clocks: vec![pb::SlaClock {
                    policy: "resolution".into(),
                    state: pb::SlaClockState::Running as i32,
                    target: Some(prost_types::Duration {
                        seconds: 86_400,
                        nanos: 0,
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        };
        let json: serde_json::Value = serde_json::from_slice(&event_json(&event).unwrap()).unwrap();
        assert_eq!(json["case"]["priority"], "HIGH");
        assert_eq!(json["case"]["slaClocks"][0]["target"], "86400s");
        assert_eq!(json["case"]["slaClocks"][0]["state"], "RUNNING");
    }
}
