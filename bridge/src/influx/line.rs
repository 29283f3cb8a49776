//! The InfluxDB mapping, as line protocol.
//!
//! One line per device, tier window and (closed) window:
//!
//! ```text
//! rollup_10s,device=temp-0042,group=hq/building-a,level1=hq,level2=building-a temperature_count=3i,temperature_mean=23.5,temperature_min=23.1,temperature_max=23.9,temperature_last=23.4 1704723840000
//! ```
//!
//! - measurement: `rollup_<tier>` (`rollup_10s`, `rollup_1m`, `rollup_1h`);
//! - tags: `device`, `group` (the whole path) and `level1`..`level8` (each level);
//! - fields: `<metric>_count` (integer), `_mean`, `_min`, `_max`, `_last`;
//! - timestamp: the window start, in milliseconds.

use std::fmt::Write as _;

/// One stored rollup row, with names resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportRow {
    pub device: String,
    pub group: String,
    pub metric: String,
    pub start: i64,
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
}

/// The measurement name of a tier of `width_ms`.
pub fn measurement(width_ms: i64) -> String {
    let seconds = width_ms / 1000;
    if width_ms % 3_600_000 == 0 {
        format!("rollup_{}h", width_ms / 3_600_000)
    } else if width_ms % 60_000 == 0 {
        format!("rollup_{}m", width_ms / 60_000)
    } else if width_ms % 1000 == 0 {
        format!("rollup_{seconds}s")
    } else {
        format!("rollup_{width_ms}ms")
    }
}

/// Escapes a tag key, tag value or field key (commas, equals signs and spaces).
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, ',' | '=' | ' ' | '\\') {
            escaped.push('\\');
        }
        if !c.is_control() {
            escaped.push(c);
        }
    }
    escaped
}

/// Lines for `rows` of one tier, which must be sorted by window start, then device: rows of
/// the same device and window share a line.
pub fn to_lines(width_ms: i64, rows: &[ExportRow]) -> Vec<String> {
    let measurement = measurement(width_ms);
    let mut lines = Vec::new();
    let mut rest = rows;
    while let Some(first) = rest.first() {
        let same = rest
            .iter()
            .take_while(|row| row.start == first.start && row.device == first.device)
            .count();
        let (line_rows, tail) = rest.split_at(same);
        lines.push(line(&measurement, line_rows));
        rest = tail;
    }
    lines
}

fn line(measurement: &str, rows: &[ExportRow]) -> String {
    let mut out = String::new();
    let Some(first) = rows.first() else {
        return out;
    };
    let _ = write!(
        out,
        "{measurement},device={},group={}",
        escape(&first.device),
        escape(&first.group)
    );
    for (level, name) in first.group.split('/').enumerate() {
        let _ = write!(out, ",level{}={}", level + 1, escape(name));
    }
    for (i, row) in rows.iter().enumerate() {
        let metric = escape(&row.metric);
        let separator = if i == 0 { ' ' } else { ',' };
        let mean = row.sum / row.count.max(1) as f64;
        let _ = write!(
            out,
            "{separator}{metric}_count={}i,{metric}_mean={mean:?},{metric}_min={:?},{metric}_max={:?},{metric}_last={:?}",
            row.count, row.min, row.max, row.last
        );
    }
    let _ = write!(out, " {}", first.start);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(device: &str, metric: &str, start: i64) -> ExportRow {
        ExportRow {
            device: device.into(),
            group: "hq/building a".into(),
            metric: metric.into(),
            start,
            count: 2,
            sum: 47.0,
            min: 23.0,
            max: 24.0,
            last: 24.0,
        }
    }

    #[test]
    fn names_tiers_by_width() {
        assert_eq!(measurement(10_000), "rollup_10s");
        assert_eq!(measurement(60_000), "rollup_1m");
        assert_eq!(measurement(3_600_000), "rollup_1h");
        assert_eq!(measurement(1_500), "rollup_1500ms");
    }

    #[test]
    fn one_line_per_device_and_window_with_escaped_tags() {
        let rows = [
            row("d1", "t", 0),
            row("d1", "h", 0),
            row("d2", "t", 0),
            row("d1", "t", 10_000),
        ];
        let lines = to_lines(10_000, &rows);
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "rollup_10s,device=d1,group=hq/building\\ a,level1=hq,level2=building\\ a \
             t_count=2i,t_mean=23.5,t_min=23.0,t_max=24.0,t_last=24.0,\
             h_count=2i,h_mean=23.5,h_min=23.0,h_max=24.0,h_last=24.0 0"
        );
        assert!(lines[2].ends_with(" 10000"));
    }
}
