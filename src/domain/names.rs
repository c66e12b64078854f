//! Resource names (AIP-122): parsing what callers send, formatting what they get.

use uuid::Uuid;

use crate::domain::Slug;
use crate::domain::error::FieldViolation;
use crate::domain::ids::{
    AccessRequestId, ApiKeyId, CaseId, CertificateId, CustomerId, EndpointId, GrantId, Id,
    InteractionId, MappingId, MatchId, MemberId, OperationId, PartnershipId, PresetId, RuleId,
    SegmentId, TaskId,
};

pub fn organization(slug: &Slug) -> String {
    format!("organizations/{slug}")
}

pub fn member(org: &Slug, id: &str) -> String {
    format!("organizations/{org}/members/{id}")
}

pub fn webhook_endpoint(org: &Slug, id: &str) -> String {
    format!("organizations/{org}/webhookEndpoints/{id}")
}

/// `organizations/{org}/webhookEndpoints/{endpoint}`.
pub fn parse_webhook_endpoint(name: &str) -> Result<(Slug, EndpointId), FieldViolation> {
    const FORM: &str = "organizations/{organization}/webhookEndpoints/{endpoint}";
    parse_child(name, "webhookEndpoints", FORM)
}

pub fn field_preset(org: &Slug, id: &str) -> String {
    format!("organizations/{org}/fieldPresets/{id}")
}

/// `organizations/{org}/fieldPresets/{preset}`.
pub fn parse_field_preset(name: &str) -> Result<(Slug, PresetId), FieldViolation> {
    const FORM: &str = "organizations/{organization}/fieldPresets/{preset}";
    parse_child(name, "fieldPresets", FORM)
}

pub fn segment(org: &Slug, id: &str) -> String {
    format!("organizations/{org}/segments/{id}")
}

/// `organizations/{org}/segments/{segment}`.
pub fn parse_segment(name: &str) -> Result<(Slug, SegmentId), FieldViolation> {
    const FORM: &str = "organizations/{organization}/segments/{segment}";
    parse_child(name, "segments", FORM)
}

pub fn sharing_rule(org: &Slug, id: &str) -> String {
    format!("organizations/{org}/sharingRules/{id}")
}

/// `organizations/{org}/sharingRules/{rule}`.
pub fn parse_sharing_rule(name: &str) -> Result<(Slug, RuleId), FieldViolation> {
    const FORM: &str = "organizations/{organization}/sharingRules/{rule}";
    parse_child(name, "sharingRules", FORM)
}

pub fn client_certificate(org: &Slug, id: &str) -> String {
    format!("organizations/{org}/clientCertificates/{id}")
}

/// `organizations/{org}/clientCertificates/{certificate}`.
pub fn parse_client_certificate(name: &str) -> Result<(Slug, CertificateId), FieldViolation> {
    const FORM: &str = "organizations/{organization}/clientCertificates/{certificate}";
    parse_child(name, "clientCertificates", FORM)
}

pub fn partnership(id: &str) -> String {
    format!("partnerships/{id}")
}

/// Whose key: an organization's, or the operator's (`None`).
pub fn api_key(owner: Option<&Slug>, id: &str) -> String {
    match owner {
        Some(org) => format!("organizations/{org}/apiKeys/{id}"),
        None => format!("operator/apiKeys/{id}"),
    }
}

fn bad(expected: &str) -> FieldViolation {
    FieldViolation::new(
        "",
        format!("must be a resource name of the form {expected}"),
    )
}

/// A server-assigned id: a UUID, in its hyphenated form.
fn id<I: Id>(raw: &str, expected: &str) -> Result<I, FieldViolation> {
    Uuid::parse_str(raw)
        .map(|u| I::from_stored(u.hyphenated().to_string()))
        .map_err(|_| bad(expected))
}

/// `organizations/{org}`.
pub fn parse_organization(name: &str) -> Result<Slug, FieldViolation> {
    const FORM: &str = "organizations/{organization}";
    if name.is_empty() {
        return Err(FieldViolation::required(""));
    }
    let slug = name
        .strip_prefix("organizations/")
        .filter(|s| !s.contains('/'))
        .ok_or_else(|| bad(FORM))?;
    Slug::parse(slug).map_err(|_| bad(FORM))
}

/// `organizations/{org}/members/{member}`.
pub fn parse_member(name: &str) -> Result<(Slug, MemberId), FieldViolation> {
    const FORM: &str = "organizations/{organization}/members/{member}";
    parse_child(name, "members", FORM)
}

/// `organizations/{org}/apiKeys/{key}` or `operator/apiKeys/{key}`.
pub fn parse_api_key(name: &str) -> Result<(Option<Slug>, ApiKeyId), FieldViolation> {
    const FORM: &str = "organizations/{organization}/apiKeys/{key}";
    if let Some(rest) = name.strip_prefix("operator/apiKeys/") {
        return Ok((None, id(rest, FORM)?));
    }
    parse_child(name, "apiKeys", FORM).map(|(org, key)| (Some(org), key))
}

/// `partnerships/{partnership}`.
pub fn parse_partnership(name: &str) -> Result<PartnershipId, FieldViolation> {
    const FORM: &str = "partnerships/{partnership}";
    if name.is_empty() {
        return Err(FieldViolation::required(""));
    }
    id(
        name.strip_prefix("partnerships/")
            .ok_or_else(|| bad(FORM))?,
        FORM,
    )
}

pub fn case(id: &str) -> String {
    format!("cases/{id}")
}

pub fn task(case_id: &str, id: &str) -> String {
    format!("cases/{case_id}/tasks/{id}")
}

pub fn workflow_template(name: &str) -> String {
    format!("workflowTemplates/{name}")
}

pub fn customer(id: &str) -> String {
    format!("customers/{id}")
}

pub fn overlay(customer_id: &str) -> String {
    format!("customers/{customer_id}/overlay")
}

pub fn grant(customer_id: &str, id: &str) -> String {
    format!("customers/{customer_id}/grants/{id}")
}

pub fn interaction(customer_id: &str, id: &str) -> String {
    format!("customers/{customer_id}/interactions/{id}")
}

pub fn access_request(id: &str) -> String {
    format!("accessRequests/{id}")
}

pub fn customer_match(id: &str) -> String {
    format!("customerMatches/{id}")
}

pub fn account_mapping(id: &str) -> String {
    format!("accountMappings/{id}")
}

pub fn operation(id: &str) -> String {
    format!("operations/{id}")
}

/// `{collection}/{id}` with a server-assigned id.
fn parse_top<I: Id>(name: &str, collection: &str, form: &str) -> Result<I, FieldViolation> {
    if name.is_empty() {
        return Err(FieldViolation::required(""));
    }
    let rest = name
        .strip_prefix(collection)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| bad(form))?;
    id(rest, form)
}

/// `customers/{customer}`.
pub fn parse_customer(name: &str) -> Result<CustomerId, FieldViolation> {
    parse_top(name, "customers", "customers/{customer}")
}

/// `customers/{customer}/overlay`.
pub fn parse_overlay(name: &str) -> Result<CustomerId, FieldViolation> {
    const FORM: &str = "customers/{customer}/overlay";
    let customer = name.strip_suffix("/overlay").ok_or_else(|| {
        if name.is_empty() {
            FieldViolation::required("")
        } else {
            bad(FORM)
        }
    })?;
    parse_top(customer, "customers", FORM)
}

/// `customers/{customer}/{collection}/{id}`: `(customer, id)`.
fn parse_under_customer<I: Id>(
    name: &str,
    collection: &str,
    form: &str,
) -> Result<(CustomerId, I), FieldViolation> {
    if name.is_empty() {
        return Err(FieldViolation::required(""));
    }
    match name.split('/').collect::<Vec<_>>().as_slice() {
        ["customers", c, coll, child] if *coll == collection => {
            Ok((id(c, form)?, id(child, form)?))
        }
        _ => Err(bad(form)),
    }
}

pub fn parse_grant(name: &str) -> Result<(CustomerId, GrantId), FieldViolation> {
    parse_under_customer(name, "grants", "customers/{customer}/grants/{grant}")
}

pub fn parse_interaction(name: &str) -> Result<(CustomerId, InteractionId), FieldViolation> {
    parse_under_customer(
        name,
        "interactions",
        "customers/{customer}/interactions/{interaction}",
    )
}

pub fn parse_access_request(name: &str) -> Result<AccessRequestId, FieldViolation> {
    parse_top(name, "accessRequests", "accessRequests/{request}")
}

pub fn parse_customer_match(name: &str) -> Result<MatchId, FieldViolation> {
    parse_top(name, "customerMatches", "customerMatches/{match}")
}

pub fn parse_account_mapping(name: &str) -> Result<MappingId, FieldViolation> {
    parse_top(name, "accountMappings", "accountMappings/{mapping}")
}

pub fn parse_operation(name: &str) -> Result<OperationId, FieldViolation> {
    parse_top(name, "operations", "operations/{operation}")
}

/// `cases/{case}`.
pub fn parse_case(name: &str) -> Result<CaseId, FieldViolation> {
    parse_top(name, "cases", "cases/{case}")
}

/// `cases/{case}/tasks/{task}`: `(case, task)`.
pub fn parse_task(name: &str) -> Result<(CaseId, TaskId), FieldViolation> {
    const FORM: &str = "cases/{case}/tasks/{task}";
    if name.is_empty() {
        return Err(FieldViolation::required(""));
    }
    match name.split('/').collect::<Vec<_>>().as_slice() {
        ["cases", c, "tasks", t] => Ok((id(c, FORM)?, id(t, FORM)?)),
        _ => Err(bad(FORM)),
    }
}

/// `workflowTemplates/{template}`: the template's name (not checked against the
/// loaded templates here).
pub fn parse_template(name: &str) -> Result<String, FieldViolation> {
    if name.is_empty() {
        return Err(FieldViolation::required(""));
    }
    name.strip_prefix("workflowTemplates/")
        .filter(|t| !t.is_empty() && !t.contains('/'))
        .map(str::to_owned)
        .ok_or_else(|| bad("workflowTemplates/{template}"))
}

fn parse_child<I: Id>(
    name: &str,
    collection: &str,
    form: &str,
) -> Result<(Slug, I), FieldViolation> {
    if name.is_empty() {
        return Err(FieldViolation::required(""));
    }
    let parts: Vec<&str> = name.split('/').collect();
    match parts.as_slice() {
        ["organizations", org, c, child] if *c == collection => {
            Ok((Slug::parse(org).map_err(|_| bad(form))?, id(child, form)?))
        }
        _ => Err(bad(form)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `raw` as whichever id type is expected.
    fn id_of<I: Id>(raw: &str) -> I {
        I::from_stored(raw.to_owned())
    }

    #[test]
    fn names_round_trip() {
        let slug = Slug::parse("acme").unwrap();
        let id = Uuid::now_v7().to_string();
        assert_eq!(parse_organization(&organization(&slug)).unwrap(), slug);
        assert_eq!(
            parse_member(&member(&slug, &id)).unwrap(),
            (slug.clone(), id_of(&id))
        );
        assert_eq!(parse_partnership(&partnership(&id)).unwrap(), id);
        assert_eq!(
            parse_api_key(&api_key(Some(&slug), &id)).unwrap(),
            (Some(slug.clone()), id_of(&id))
        );
        assert_eq!(
            parse_api_key(&api_key(None, &id)).unwrap(),
            (None, id_of(&id))
        );
        assert_eq!(parse_customer(&customer(&id)).unwrap(), id);
        assert_eq!(parse_overlay(&overlay(&id)).unwrap(), id);
        assert_eq!(
            parse_grant(&grant(&id, &id)).unwrap(),
            (id_of(&id), id_of(&id))
        );
        assert_eq!(
            parse_interaction(&interaction(&id, &id)).unwrap(),
            (id_of(&id), id_of(&id))
        );
        assert_eq!(parse_access_request(&access_request(&id)).unwrap(), id);
        assert_eq!(parse_customer_match(&customer_match(&id)).unwrap(), id);
        assert_eq!(
            parse_webhook_endpoint(&webhook_endpoint(&slug, &id)).unwrap(),
            (slug.clone(), id_of(&id))
        );
        assert_eq!(
            parse_client_certificate(&client_certificate(&slug, &id)).unwrap(),
            (slug.clone(), id_of(&id))
        );
        assert_eq!(parse_case(&case(&id)).unwrap(), id);
        assert_eq!(
            parse_task(&task(&id, &id)).unwrap(),
            (id_of(&id), id_of(&id))
        );
        assert_eq!(
            parse_template(&workflow_template("service_case")).unwrap(),
            "service_case"
        );
        // And they read as the API documents them.
        assert_eq!(
            webhook_endpoint(&slug, "e1"),
            "organizations/acme/webhookEndpoints/e1"
        );
        assert_eq!(
            client_certificate(&slug, "c1"),
            "organizations/acme/clientCertificates/c1"
        );
        assert_eq!(task("k1", "t1"), "cases/k1/tasks/t1");
        assert_eq!(workflow_template("deal"), "workflowTemplates/deal");
        assert!(parse_customer("customers/x/y").is_err());
        assert!(parse_grant(&interaction(&id, &id)).is_err());
    }

    #[test]
    fn malformed_names_say_the_expected_form() {
        let err = parse_member("organizations/acme/people/x").unwrap_err();
        assert!(
            err.description
                .contains("organizations/{organization}/members/{member}")
        );
        assert!(parse_organization("organizations/acme/extra").is_err());
        assert!(parse_partnership("partnerships/not-a-uuid").is_err());
        assert_eq!(
            parse_organization("").unwrap_err().description,
            "is required"
        );
    }
}
