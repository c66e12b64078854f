-- Conflicts between open cases of a template with a conflict rule (two partners'
-- registrations of one deal), one row per direction and judging organization. Rows
-- go when either case closes.
CREATE TABLE case_conflicts (
    case_id        TEXT    NOT NULL,
    other_case_id  TEXT    NOT NULL,
    judge_id       TEXT    NOT NULL,
    detect_time    BIGINT  NOT NULL,
    PRIMARY KEY (case_id, other_case_id, judge_id)
);
CREATE INDEX case_conflicts_by_other ON case_conflicts (other_case_id);
