//! Event types and the filters consumers select them with.

use crate::domain::error::FieldViolation;

/// Every event type the hub emits, `resource.verb`.
pub const EVENT_TYPES: &[&str] = &[
    "customer.created",
    "customer.updated",
    "customer.deleted",
    "customer.undeleted",
    "customer.merged",
    "customer.erased",
    "customer_overlay.updated",
    "grant.created",
    "grant.revoked",
    "access_request.created",
    "access_request.approved",
    "access_request.declined",
    "interaction.logged",
    "partnership.proposed",
    "partnership.accepted",
    "partnership.declined",
    "partnership.suspended",
    "partnership.resumed",
    "partnership.ended",
    "member.created",
    "member.updated",
    "member.deleted",
    "webhook_endpoint.disabled",
    "case.opened",
    "case.transitioned",
    "case.commented",
    "case.participant_added",
    "case.participant_removed",
    "case.sla_warning",
    "case.sla_breached",
    "task.assigned",
    "task.accepted",
    "task.declined",
    "task.completed",
    "task.overdue",
];

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
            if EVENT_TYPES.iter().any(|known| known.starts_with(&prefix)) {
                out.push(prefix);
                continue;
            }
        } else if EVENT_TYPES.contains(&t.as_str()) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
