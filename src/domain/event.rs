//! Event types and the filters consumers select them with.

use crate::domain::error::FieldViolation;

/// Declares [`EventType`] with each type's wire name, once.
macro_rules! event_types {
    ($($variant:ident => $wire:literal,)*) => {
        /// Every event type the hub emits; on the wire, `resource.verb`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType {
            $($variant,)*
        }

        impl EventType {
            /// Every type, in the order of the event catalogue.
            pub const ALL: &[EventType] = &[$(EventType::$variant,)*];

            /// The wire name (`customer.updated`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventType::$variant => $wire,)*
                }
            }

            /// The type of a wire name; `None` for a name the hub does not emit.
            pub fn parse(raw: &str) -> Option<EventType> {
                match raw {
                    $($wire => Some(EventType::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

event_types! {
    CustomerCreated => "customer.created",
    CustomerUpdated => "customer.updated",
    CustomerDeleted => "customer.deleted",
    CustomerUndeleted => "customer.undeleted",
    CustomerMerged => "customer.merged",
    CustomerErased => "customer.erased",
    CustomerOverlayUpdated => "customer_overlay.updated",
    GrantCreated => "grant.created",
    GrantRevoked => "grant.revoked",
    FieldPresetCreated => "field_preset.created",
    FieldPresetUpdated => "field_preset.updated",
    FieldPresetDeleted => "field_preset.deleted",
    SharingRuleCreated => "sharing_rule.created",
    SharingRuleUpdated => "sharing_rule.updated",
    SharingRuleRevoked => "sharing_rule.revoked",
    AccessRequestCreated => "access_request.created",
    AccessRequestApproved => "access_request.approved",
    AccessRequestDeclined => "access_request.declined",
    AccountMappingRequested => "account_mapping.requested",
    AccountMappingAccepted => "account_mapping.accepted",
    AccountMappingDeclined => "account_mapping.declined",
    AccountMappingUpdated => "account_mapping.updated",
    AccountMappingCompared => "account_mapping.compared",
    AccountMappingEnded => "account_mapping.ended",
    AccountMappingAccessRequested => "account_mapping.access_requested",
    AccountMappingAccessAnswered => "account_mapping.access_answered",
    InteractionLogged => "interaction.logged",
    PartnershipProposed => "partnership.proposed",
    PartnershipAccepted => "partnership.accepted",
    PartnershipDeclined => "partnership.declined",
    PartnershipSuspended => "partnership.suspended",
    PartnershipResumed => "partnership.resumed",
    PartnershipEnded => "partnership.ended",
    PartnershipUpdated => "partnership.updated",
    MemberCreated => "member.created",
    MemberUpdated => "member.updated",
    MemberDeleted => "member.deleted",
    ApiKeyCreated => "api_key.created",
    ApiKeyRevoked => "api_key.revoked",
    ClientCertificateRegistered => "client_certificate.registered",
    ClientCertificateRevoked => "client_certificate.revoked",
    WebhookEndpointCreated => "webhook_endpoint.created",
    WebhookEndpointUpdated => "webhook_endpoint.updated",
    WebhookEndpointSecretRotated => "webhook_endpoint.secret_rotated",
    WebhookEndpointDeleted => "webhook_endpoint.deleted",
    WebhookEndpointDisabled => "webhook_endpoint.disabled",
    CaseOpened => "case.opened",
    CaseTransitioned => "case.transitioned",
    CaseCommented => "case.commented",
    CaseParticipantAdded => "case.participant_added",
    CaseParticipantRemoved => "case.participant_removed",
    CaseSlaWarning => "case.sla_warning",
    CaseSlaBreached => "case.sla_breached",
    CaseConflictDetected => "case.conflict_detected",
    TaskAssigned => "task.assigned",
    TaskAccepted => "task.accepted",
    TaskDeclined => "task.declined",
    TaskCompleted => "task.completed",
    TaskOverdue => "task.overdue",
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The type of test events sent to one webhook endpoint on request; never in a feed.
pub const TEST_EVENT_TYPE: &str = "webhook.test";

/// Most entries in one type filter.
pub const MAX_TYPE_FILTERS: usize = 50;

/// Parses a consumer's type filter: exact types, `resource.*` wildcards, or `*`.
/// Returns exact types as they are and wildcards as their prefix with the dot
/// (`customer.*` → `customer.`); empty means every type. Unknown types are refused,
/// so a typo does not silently select nothing.
pub fn parse_type_filter(raw: &[String]) -> Result<Vec<String>, Vec<FieldViolation>> {
    let mut out = vec![];
    let mut bad = vec![];
    if raw.len() > MAX_TYPE_FILTERS {
        bad.push(FieldViolation::new(
            "",
            format!("must hold at most {MAX_TYPE_FILTERS} entries"),
        ));
        return Err(bad);
    }
    for (i, t) in raw.iter().enumerate() {
        if t == "*" {
            return if bad.is_empty() { Ok(vec![]) } else { Err(bad) };
        }
        if let Some(resource) = t.strip_suffix(".*") {
            let prefix = format!("{resource}.");
            if EventType::ALL
                .iter()
                .any(|known| known.as_str().starts_with(&prefix))
            {
                out.push(prefix);
                continue;
            }
        } else if EventType::parse(t).is_some() {
            out.push(t.clone());
            continue;
        }
        bad.push(FieldViolation::new(
            format!("[{i}]"),
            format!("{t:?} is not an event type; use e.g. customer.updated or customer.*"),
        ));
    }
    if bad.is_empty() {
        out.sort();
        out.dedup();
        Ok(out)
    } else {
        Err(bad)
    }
}

/// Whether `event_type` passes a filter from [`parse_type_filter`].
pub fn type_matches(filter: &[String], event_type: &str) -> bool {
    filter.is_empty()
        || filter.iter().any(|f| {
            if f.ends_with('.') {
                event_type.starts_with(f.as_str())
            } else {
                f == event_type
            }
        })
}

/// The field number of `sequence` in `liaison.v1.Event`.
pub const SEQUENCE_FIELD: u32 = 2;

/// An encoded `liaison.v1.Event` drafted without a sequence (field absent), numbered
/// `sequence`: the field is appended, which protobuf decoders read as setting it (for
/// a scalar the last occurrence wins). Numbering an event is then a copy, not a decode
/// and re-encode of the whole body.
pub fn numbered(body: &[u8], sequence: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 11);
    out.extend_from_slice(body);
    // Key: field number, wire type 0 (varint); then the value, as int64 encodes it.
    put_varint(&mut out, u64::from(SEQUENCE_FIELD << 3));
    put_varint(&mut out, sequence as u64);
    out
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering_appends_the_sequence_field_as_a_varint() {
        assert_eq!(numbered(&[], 1), [0x10, 0x01]);
        assert_eq!(numbered(&[0x0a, 0x00], 300), [0x0a, 0x00, 0x10, 0xac, 0x02]);
        assert_eq!(numbered(&[], 0), [0x10, 0x00]);
    }

    fn parse(raw: &[&str]) -> Result<Vec<String>, Vec<FieldViolation>> {
        parse_type_filter(&raw.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn filters_take_exact_types_wildcards_and_star() {
        assert_eq!(
            parse(&["customer.*", "grant.revoked"]).unwrap(),
            vec!["customer.", "grant.revoked"]
        );
        assert_eq!(parse(&["*"]).unwrap(), Vec::<String>::new());
        assert_eq!(parse(&[]).unwrap(), Vec::<String>::new());
        let f = parse(&["customer.*"]).unwrap();
        assert!(type_matches(&f, "customer.updated"));
        assert!(!type_matches(&f, "customer_overlay.updated"));
    }

    #[test]
    fn an_exact_type_selects_that_type_alone() {
        let f = parse(&["grant.revoked"]).unwrap();
        assert!(type_matches(&f, "grant.revoked"));
        assert!(!type_matches(&f, "grant.created"));
        assert!(
            type_matches(&[], "grant.created"),
            "empty selects every type"
        );
    }

    #[test]
    fn a_filter_holds_at_most_fifty_entries() {
        let many = |n| vec!["customer.updated"; n];
        assert!(parse(&many(MAX_TYPE_FILTERS)).is_ok());
        assert!(parse(&many(MAX_TYPE_FILTERS + 1)).is_err());
    }

    #[test]
    fn unknown_types_are_refused_by_position() {
        let bad = parse(&["customer.updated", "customer.changed", "kase.*"]).unwrap_err();
        let fields: Vec<&str> = bad.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["[1]", "[2]"]);
    }
}
