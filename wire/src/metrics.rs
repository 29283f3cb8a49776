//! Metrics: one registry per process (prometheus-client's [`Registry`]), into which each part
//! of iotmon registers a [`Collector`] that reads its counters when `/metrics` is scraped,
//! and [`render`], which encodes the registry in the OpenMetrics text format. The counters
//! themselves stay plain atomics on the hot path; the crate owns the format (types, escaping,
//! `_total`, the closing `# EOF`).

use std::fmt;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::DescriptorEncoder;
pub use prometheus_client::registry::Registry;

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether a metric only grows or goes up and down.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
}

/// Encodes one metric, with its help, its type and one sample per label value: `label` names
/// the label (`reason`), and each sample is `(value of the label, value)`; one sample with
/// an empty label name and value is an unlabelled metric. `name` is the sample's name as a
/// scraper sees it: a counter's ends in `_total`. An unlabelled metric takes the first
/// sample.
///
/// # Errors
/// Only the writer's, which for a `String` never fails.
pub fn encode(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: Kind,
    label: &str,
    samples: &[(&str, u64)],
) -> fmt::Result {
    let (family, metric_type) = match kind {
        // The encoder adds `_total` to a counter's samples.
        Kind::Counter => (
            name.strip_suffix("_total").unwrap_or(name),
            ConstCounter::new(0u64).metric_type(),
        ),
        Kind::Gauge => (name, ConstGauge::new(0i64).metric_type()),
    };
    let mut metric = encoder.encode_descriptor(family, help, None, metric_type)?;
    if label.is_empty() {
        let value = samples.first().map_or(0, |(_, value)| *value);
        return encode_value(metric, kind, value);
    }
    for (label_value, value) in samples {
        encode_value(
            metric.encode_family(&[(label, *label_value)])?,
            kind,
            *value,
        )?;
    }
    Ok(())
}

fn encode_value(encoder: MetricEncoder, kind: Kind, value: u64) -> fmt::Result {
    match kind {
        Kind::Counter => ConstCounter::new(value).encode(encoder),
        // Gauges are signed in the format; ours never exceed i64.
        Kind::Gauge => ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(encoder),
    }
}

/// Encodes one unlabelled metric: see [`encode`].
///
/// # Errors
/// Only the writer's.
pub fn encode_one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: Kind,
    value: u64,
) -> fmt::Result {
    encode(encoder, name, help, kind, "", &[("", value)])
}

/// `registries` in the OpenMetrics text format, one after the other, ended once by `# EOF`.
pub fn render(registries: &[&Registry]) -> String {
    let mut text = String::new();
    for registry in registries {
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut text, registry);
    }
    let _ = prometheus_client::encoding::text::encode_eof(&mut text);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Sample;

    impl Collector for Sample {
        fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
            encode_one(&mut encoder, "x_total", "Xs.", Kind::Counter, 3)?;
            encode(
                &mut encoder,
                "y",
                "Ys.",
                Kind::Gauge,
                "r",
                &[("a", 1), ("b\"", 2)],
            )
        }
    }

    #[test]
    fn writes_the_openmetrics_text_format() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Sample));
        assert_eq!(
            render(&[&registry]),
            "# HELP x Xs.\n# TYPE x counter\nx_total 3\n\
             # HELP y Ys.\n# TYPE y gauge\ny{r=\"a\"} 1\ny{r=\"b\\\"\"} 2\n# EOF\n"
        );
    }
}
