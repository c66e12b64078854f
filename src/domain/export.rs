//! Exports: files of what an organization sees (its customers, their interactions,
//! a partnership's scorecards), written by a long-running operation in chunks and read
//! back until they expire.

use jiff::SignedDuration;
use serde::{Deserialize, Serialize};

/// How long a finished export's file is kept.
pub const RETENTION: SignedDuration = SignedDuration::from_hours(24);
/// A file is written and read in chunks of about this many bytes.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Most periods one scorecard export covers.
pub const MAX_PERIODS: usize = 1000;

/// What an export holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    Customers,
    Interactions,
    Scorecards,
}

impl ExportKind {
    pub const ALL: [ExportKind; 3] = [
        ExportKind::Customers,
        ExportKind::Interactions,
        ExportKind::Scorecards,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExportKind::Customers => "customers",
            ExportKind::Interactions => "interactions",
            ExportKind::Scorecards => "scorecards",
        }
    }

    /// The verb of its operation (`export_customers`, …).
    pub fn verb(self) -> &'static str {
        match self {
            ExportKind::Customers => "export_customers",
            ExportKind::Interactions => "export_interactions",
            ExportKind::Scorecards => "export_scorecards",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == raw)
    }

    pub fn of_verb(verb: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.verb() == verb)
    }
}

/// How an export is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    JsonLines,
}

impl ExportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::JsonLines => "jsonl",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [ExportFormat::Csv, ExportFormat::JsonLines]
            .into_iter()
            .find(|f| f.as_str() == raw)
    }
}

/// What the request asked for, kept with the export for the worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExportParams {
    /// A ListCustomers filter (customers and interactions).
    pub filter: String,
    /// The partnership's id (scorecards).
    pub partnership_id: String,
    /// `day`, `week`, `month` or `quarter` (scorecards).
    pub period: String,
    /// Local dates (scorecards).
    pub first_date: String,
    pub last_date: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_formats_and_params_round_trip() {
        for k in ExportKind::ALL {
            assert_eq!(ExportKind::parse(k.as_str()), Some(k));
            assert_eq!(ExportKind::of_verb(k.verb()), Some(k));
        }
        assert_eq!(ExportKind::of_verb("compare_accounts"), None);
        assert_eq!(ExportFormat::parse("jsonl"), Some(ExportFormat::JsonLines));
        assert_eq!(ExportFormat::parse("xml"), None);
        let p = ExportParams {
            filter: "tag = vip".into(),
            ..Default::default()
        };
        let back: ExportParams = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
