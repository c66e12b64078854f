//! Conversions shared by the services: times, etag checks and update masks.

use jiff::Timestamp;

use crate::domain::error::{Error, FieldViolation, Result, Violations};
use crate::domain::ids::PresetId;
use crate::domain::visibility::AccessLevel;
use crate::domain::{Slug, names};
use crate::pb;

pub use crate::feed::render::{
    org_kind_from_pb, org_kind_to_pb, relationship_from_pb, role_from_pb, scope_from_pb,
    scope_to_pb,
};

pub fn parse_timestamp(t: &prost_types::Timestamp) -> Result<Timestamp, FieldViolation> {
    Timestamp::new(t.seconds, t.nanos).map_err(|_| FieldViolation::new("", "is not a valid time"))
}

pub use crate::app::check_etag;

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

/// A grant's or rule's access level: READ or READ_WRITE.
pub fn level_from_pb(raw: i32) -> Result<AccessLevel, FieldViolation> {
    match pb::AccessLevel::try_from(raw) {
        Ok(pb::AccessLevel::Read) => Ok(AccessLevel::Read),
        Ok(pb::AccessLevel::ReadWrite) => Ok(AccessLevel::ReadWrite),
        Ok(pb::AccessLevel::Unspecified) => Err(FieldViolation::required("")),
        _ => Err(FieldViolation::new(
            "",
            "must be ACCESS_LEVEL_READ or ACCESS_LEVEL_READ_WRITE",
        )),
    }
}

/// One of the owner's resources named in a grant or rule (`organizations/{owner}/…`): its id,
/// or a violation if another organization's.
pub fn owners<T>(
    parsed: Option<(Slug, T)>,
    owner: &Slug,
    v: &mut Violations,
    field: &str,
    what: &str,
) -> Option<T> {
    match parsed {
        Some((slug, id)) if &slug == owner => Some(id),
        Some(_) => {
            v.add(field, format!("must be one of the owner's {what}"));
            None
        }
        None => None,
    }
}

/// The owner's field preset a grant or rule names in `field`; empty: none.
pub fn owners_preset(
    raw: &str,
    owner: &Slug,
    v: &mut Violations,
    field: &str,
) -> Option<Option<PresetId>> {
    if raw.is_empty() {
        return Some(None);
    }
    let parsed = v.check(field, names::parse_field_preset(raw));
    owners(parsed, owner, v, field, "field presets").map(Some)
}

/// A scorecard's period; the message says what is wrong.
pub fn period_from_pb(raw: i32) -> std::result::Result<crate::domain::scorecard::Period, String> {
    use pb::ScorecardPeriod as P;
    match P::try_from(raw) {
        Ok(P::Day) => Ok(crate::domain::scorecard::Period::Day),
        Ok(P::Week) => Ok(crate::domain::scorecard::Period::Week),
        Ok(P::Month) => Ok(crate::domain::scorecard::Period::Month),
        Ok(P::Quarter) => Ok(crate::domain::scorecard::Period::Quarter),
        Ok(P::Unspecified) => Err("is required: DAY, WEEK, MONTH or QUARTER".into()),
        Err(_) => Err(format!("{raw} is not a known period")),
    }
}

/// A local date of a report (`2026-12-03`), in the years 1970 to 9998 (so that every
/// period holding it has an end).
pub fn report_date(raw: &str) -> std::result::Result<jiff::civil::Date, FieldViolation> {
    match raw.parse::<jiff::civil::Date>() {
        Ok(d) if (1970..=9998).contains(&d.year()) => Ok(d),
        Ok(_) => Err(FieldViolation::new("", "must be in the years 1970 to 9998")),
        Err(_) => Err(FieldViolation::new("", "must be a date such as 2026-12-03")),
    }
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
