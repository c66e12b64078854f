//! Conflicts: two open cases of one template that are the same piece of work (two
//! resellers registering the same deal), told to the organization that judges them,
//! and only to it: neither side learns of the other's case from the hub.

use std::collections::BTreeMap;

use jiff::Timestamp;

/// What happens to the later of two conflicting cases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictPolicy {
    /// Both stay open; the judge decides between them.
    JudgeDecides,
    /// The hub fires `transition` on the later case at once (a rejection), writing
    /// why into `reason_field`.
    FirstCome {
        transition: String,
        reason_field: Option<String>,
    },
}

impl ConflictPolicy {
    pub fn as_str(&self) -> &'static str {
        match self {
            ConflictPolicy::JudgeDecides => "judge_decides",
            ConflictPolicy::FirstCome { .. } => "first_come",
        }
    }
}

/// A template's rule for when two of its cases conflict: both open, on the same
/// customer, opened by different organizations, with the same values of `fields`, and
/// an organization in the `judge` role on both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictRule {
    /// Fields required at open, fixed from then on.
    pub fields: Vec<String>,
    pub judge: String,
    pub policy: ConflictPolicy,
}

/// One conflict of a case, as its judge sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The other case.
    pub case_id: String,
    /// The organization told, the only one that sees the conflict.
    pub judge_id: String,
    pub detect_time: Timestamp,
}

impl ConflictRule {
    /// The values of the rule's fields among a case's `fields`, compared without
    /// regard to case and surrounding space; `None` if one is unset.
    pub fn key(&self, fields: &BTreeMap<String, String>) -> Option<Vec<String>> {
        self.fields
            .iter()
            .map(|f| {
                fields
                    .get(f)
                    .map(|v| v.trim().to_lowercase())
                    .filter(|v| !v.is_empty())
            })
            .collect()
    }

    /// Why the hub turned down the later case, in words that name neither the earlier
    /// case nor the organization that opened it.
    pub fn reason(&self) -> String {
        format!(
            "another organization's open registration for this customer and {} came first",
            self.fields.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_for_a_first_come_rejection_names_no_one() {
        let rule = ConflictRule {
            fields: vec!["product_line".into()],
            judge: "vendor".into(),
            policy: ConflictPolicy::JudgeDecides,
        };
        assert_eq!(
            rule.reason(),
            "another organization's open registration for this customer and product_line \
             came first"
        );
        let fields = |v: &str| BTreeMap::from([("product_line".to_owned(), v.to_owned())]);
        assert_eq!(
            rule.key(&fields(" Blenders ")),
            rule.key(&fields("blenders"))
        );
        assert_eq!(rule.key(&fields("  ")), None);
        assert_eq!(rule.key(&BTreeMap::new()), None);
    }
}
