//! Events in the protobuf JSON mapping: the body of a webhook.

use crate::pb;

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
