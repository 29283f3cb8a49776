//! Reading `/metrics` (OpenMetrics or Prometheus text) the way a scraper does, for the
//! benches and tests that check a counter.

/// The value of the sample `name` (with its labels if it has any, as in
/// `iotmon_ingest_rejected_total{reason="not_json"}`), if the text has it.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (metric, value) = line.rsplit_once(' ')?;
            (metric == name).then(|| value.trim().parse().ok())?
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x Xs.\n# TYPE x counter\nx_total 3\n\
                        # TYPE y gauge\ny{r=\"a b\"} 1.5\ny 7\n# EOF\n";

    #[test]
    fn reads_a_sample_by_name_and_labels() {
        assert_eq!(sample(TEXT, "x_total"), Some(3.0));
        assert_eq!(sample(TEXT, "y{r=\"a b\"}"), Some(1.5));
        assert_eq!(sample(TEXT, "y"), Some(7.0));
        assert_eq!(sample(TEXT, "x"), None);
        assert_eq!(sample(TEXT, "# TYPE"), None);
    }
}
