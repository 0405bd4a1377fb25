//! The SQL of every stage, embedded from `queries/*.sql`. Rust only wires
//! these together; templates (`{{NAME}}`) take validated rule expressions or
//! other SQL fragments of this folder, never user values.

pub const CHECKED_EVENTS: &str = include_str!("../queries/checked_events.sql");
pub const VALID_EVENTS: &str = include_str!("../queries/valid_events.sql");
pub const DUPLICATE_IDS: &str = include_str!("../queries/duplicate_ids.sql");
pub const CANDIDATES: &str = include_str!("../queries/candidates.sql");
pub const RELEVANT_EVENTS: &str = include_str!("../queries/relevant_events.sql");
pub const REPORT_EVENTS: &str = include_str!("../queries/report_events.sql");
pub const LAST_TOUCH: &str = include_str!("../queries/last_touch.sql");
pub const ASSISTED: &str = include_str!("../queries/assisted.sql");
pub const ATTRIBUTED_EVENTS: &str = include_str!("../queries/attributed_events.sql");
pub const SUMMARY_METRICS: &str = include_str!("../queries/summary_metrics.sql");
pub const USER_ROLLUP: &str = include_str!("../queries/user_rollup.sql");
pub const CAMPAIGN_DAILY: &str = include_str!("../queries/campaign_daily.sql");
pub const DIMENSION_SUMMARY: &str = include_str!("../queries/dimension_summary.sql");
pub const CONVERSIONS_BY_NAME: &str = include_str!("../queries/conversions_by_name.sql");
pub const REJECTED_EVENTS: &str = include_str!("../queries/rejected_events.sql");
pub const INPUT_STATS: &str = include_str!("../queries/input_stats.sql");
pub const SCAN_FLOOR: &str = include_str!("../queries/scan_floor.sql");

/// Every embedded file, by name, so a test can prove none is left unused.
pub const ALL: &[(&str, &str)] = &[
    ("checked_events.sql", CHECKED_EVENTS),
    ("valid_events.sql", VALID_EVENTS),
    ("duplicate_ids.sql", DUPLICATE_IDS),
    ("candidates.sql", CANDIDATES),
    ("relevant_events.sql", RELEVANT_EVENTS),
    ("report_events.sql", REPORT_EVENTS),
    ("last_touch.sql", LAST_TOUCH),
    ("assisted.sql", ASSISTED),
    ("attributed_events.sql", ATTRIBUTED_EVENTS),
    ("summary_metrics.sql", SUMMARY_METRICS),
    ("user_rollup.sql", USER_ROLLUP),
    ("campaign_daily.sql", CAMPAIGN_DAILY),
    ("dimension_summary.sql", DIMENSION_SUMMARY),
    ("conversions_by_name.sql", CONVERSIONS_BY_NAME),
    ("rejected_events.sql", REJECTED_EVENTS),
    ("input_stats.sql", INPUT_STATS),
    ("scan_floor.sql", SCAN_FLOOR),
];

/// Replaces `{{NAME}}` markers; panics on a marker left unfilled, since that
/// is a bug in this crate, not in the user's input.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut sql = template.to_string();
    for (name, value) in values {
        sql = sql.replace(&format!("{{{{{name}}}}}"), value);
    }
    assert!(!sql.contains("{{"), "unfilled template marker in:\n{sql}");
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_queries_is_embedded() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/queries");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = ALL.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded, "queries/ and queries::ALL differ");
    }

    #[test]
    fn every_query_starts_with_a_header_comment() {
        for (name, sql) in ALL {
            assert!(sql.starts_with("-- "), "{name} lacks its header comment");
        }
    }
}
