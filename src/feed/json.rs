//! Events in the protobuf JSON mapping: the body of a webhook.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value};

use crate::domain::error::Result;
use crate::pb;

/// The descriptor set built into the binary, decoded once.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set compiled into the binary decodes")
    })
}

/// The compiled descriptor of message `name` (`liaison.v1.Event`).
pub fn message_descriptor(name: &str) -> MessageDescriptor {
    pool()
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("{name} is in the descriptor set"))
}

fn event_descriptor() -> &'static MessageDescriptor {
    static DESCRIPTOR: OnceLock<MessageDescriptor> = OnceLock::new();
    DESCRIPTOR.get_or_init(|| message_descriptor("liaison.v1.Event"))
}

/// A stored event (its protobuf bytes, as the feed keeps them) numbered `sequence`,
/// decoded once into a message read through the compiled descriptors. `Err` says why
/// the bytes do not decode.
pub fn stored_event(stored: &[u8], sequence: i64) -> Result<DynamicMessage, String> {
    let mut message = DynamicMessage::decode(event_descriptor().clone(), stored)
        .map_err(|e| format!("the stored event does not decode: {e}"))?;
    message.set_field_by_name("sequence", Value::I64(sequence));
    Ok(message)
}

/// An event in the protobuf JSON mapping (lowerCamelCase names, enums by name, int64
/// as strings, RFC 3339 times): the body of a webhook. The JSON follows the proto
/// contract with no hand-written mapping.
pub fn event_json(event: &DynamicMessage) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(event).map_err(|e| anyhow::anyhow!("event to JSON: {e}"))?)
}

#[cfg(test)]
mod json_tests {
    use prost::Message;

    use super::*;

    /// An event as the webhook worker sends it: stored as bytes, then numbered.
    fn sent(event: &pb::Event) -> serde_json::Value {
        let message = stored_event(&event.encode_to_vec(), event.sequence).unwrap();
        serde_json::from_slice(&event_json(&message).unwrap()).unwrap()
    }

    #[test]
    fn a_stored_body_numbered_by_the_sequencer_decodes_with_its_sequence() {
        let drafted = pb::Event {
            id: "e".into(),
            r#type: "customer.updated".into(),
            resource: "customers/x".into(),
            ..Default::default()
        };
        let body = crate::domain::event::numbered(&drafted.encode_to_vec(), 1_234_567_890_123);
        let decoded = pb::Event::decode(body.as_slice()).unwrap();
        assert_eq!(decoded.sequence, 1_234_567_890_123);
        assert_eq!(
            (&decoded.id, &decoded.resource),
            (&drafted.id, &drafted.resource)
        );
    }

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
        let json = sent(&event);
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
        let json = sent(&event);
        assert_eq!(json["case"]["priority"], "HIGH");
        assert_eq!(json["case"]["slaClocks"][0]["target"], "86400s");
        assert_eq!(json["case"]["slaClocks"][0]["state"], "RUNNING");
    }
}
