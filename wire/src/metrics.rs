//! Metrics in the Prometheus text format: the trait each part of iotmon implements to show
//! its counters on `/metrics`, and the one function that writes a sample.

use std::fmt::Write as _;

/// Something with counters to export on `/metrics`.
pub trait MetricsSource: Send + Sync {
    /// Appends metrics in the Prometheus text format.
    fn render_prometheus(&self, out: &mut String);
}

/// Several sources exported as one, in order.
impl MetricsSource for Vec<std::sync::Arc<dyn MetricsSource>> {
    fn render_prometheus(&self, out: &mut String) {
        for source in self {
            source.render_prometheus(out);
        }
    }
}

/// Whether a metric only grows or goes up and down.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
}

/// Appends one metric with its help line, type line and a sample per label set
/// (`labels` like `reason="not_json"`, or empty for an unlabelled sample).
pub fn write_metric(out: &mut String, name: &str, help: &str, kind: Kind, samples: &[(&str, u64)]) {
    let kind = match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
    };
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_text_format() {
        let mut out = String::new();
        write_metric(&mut out, "x_total", "Xs.", Kind::Counter, &[("", 3)]);
        write_metric(
            &mut out,
            "y",
            "Ys.",
            Kind::Gauge,
            &[("r=\"a\"", 1), ("r=\"b\"", 2)],
        );
        assert_eq!(
            out,
            "# HELP x_total Xs.\n# TYPE x_total counter\nx_total 3\n\
             # HELP y Ys.\n# TYPE y gauge\ny{r=\"a\"} 1\ny{r=\"b\"} 2\n"
        );
    }
}
