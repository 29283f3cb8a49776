//! Turning one MQTT message into readings: the device payload contract, and every way a
//! payload can be refused.
//!
//! A payload is UTF-8 JSON: an object with an optional `"ts"` (ms since the Unix epoch) and
//! metrics as numeric or boolean fields, or an array of such objects (a batch). Other fields
//! (strings, nulls, nested values) are not metrics and are ignored.

use std::sync::Arc;

use iotmon_wire::MetricValue;
use serde_json::{Map, Value};

use crate::config::IngestLimits;

/// One reading of one device, with its timestamp resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Milliseconds since the Unix epoch: the device's `ts`, or the receipt time.
    pub ts: i64,
    pub metrics: Vec<(Arc<str>, MetricValue)>,
}

/// Why a message, or one element of a batch, was refused. Each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The topic is not `sensors/<1..8 group levels>/<device-id>`.
    BadTopic,
    /// The payload exceeds `max_payload_bytes`.
    TooLarge,
    /// The payload is not valid UTF-8 JSON.
    NotJson,
    /// The payload (or a batch element) is not a JSON object.
    NotAnObject,
    /// The object carries no numeric or boolean field.
    NoMetrics,
    /// The object carries more metrics than `max_metrics`.
    TooManyMetrics,
    /// A number is not finite or a metric name is unusable.
    BadValue,
    /// `ts` is present but not an integer number of milliseconds.
    BadTimestamp,
    /// `ts` is further in the past or future than the limits allow.
    TimestampOutOfRange,
    /// The array holds no element, or more than `max_batch`.
    BadBatch,
    /// A `status/...` payload other than `online` or `offline`.
    BadStatus,
}

impl RejectReason {
    /// Every reason, for exporting one counter each.
    pub const ALL: [RejectReason; 11] = [
        RejectReason::BadTopic,
        RejectReason::TooLarge,
        RejectReason::NotJson,
        RejectReason::NotAnObject,
        RejectReason::NoMetrics,
        RejectReason::TooManyMetrics,
        RejectReason::BadValue,
        RejectReason::BadTimestamp,
        RejectReason::TimestampOutOfRange,
        RejectReason::BadBatch,
        RejectReason::BadStatus,
    ];

    /// A stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::BadTopic => "bad_topic",
            RejectReason::TooLarge => "too_large",
            RejectReason::NotJson => "not_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::NoMetrics => "no_metrics",
            RejectReason::TooManyMetrics => "too_many_metrics",
            RejectReason::BadValue => "bad_value",
            RejectReason::BadTimestamp => "bad_timestamp",
            RejectReason::TimestampOutOfRange => "timestamp_out_of_range",
            RejectReason::BadBatch => "bad_batch",
            RejectReason::BadStatus => "bad_status",
        }
    }

    /// Position in [`RejectReason::ALL`], to index counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The outcome of parsing one payload: the readings kept and the elements refused. A batch
/// with one bad element still delivers the good ones.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub readings: Vec<Reading>,
    pub rejected: Vec<RejectReason>,
}

impl Parsed {
    fn refused(reason: RejectReason) -> Self {
        Parsed {
            readings: Vec::new(),
            rejected: vec![reason],
        }
    }
}

/// Parses a device payload received at `now_ms`.
pub fn parse_payload(payload: &[u8], now_ms: i64, limits: &IngestLimits) -> Parsed {
    if payload.len() > limits.max_payload_bytes {
        return Parsed::refused(RejectReason::TooLarge);
    }
    let value: Value = match serde_json::from_slice(payload) {
        Ok(value) => value,
        Err(_) => return Parsed::refused(RejectReason::NotJson),
    };
    match value {
        Value::Object(object) => collect([parse_object(&object, now_ms, limits)]),
        Value::Array(elements) if elements.is_empty() || elements.len() > limits.max_batch => {
            Parsed::refused(RejectReason::BadBatch)
        }
        Value::Array(elements) => collect(elements.iter().map(|element| match element {
            Value::Object(object) => parse_object(object, now_ms, limits),
            _ => Err(RejectReason::NotAnObject),
        })),
        _ => Parsed::refused(RejectReason::NotAnObject),
    }
}

fn collect(results: impl IntoIterator<Item = Result<Reading, RejectReason>>) -> Parsed {
    let mut parsed = Parsed::default();
    for result in results {
        match result {
            Ok(reading) => parsed.readings.push(reading),
            Err(reason) => parsed.rejected.push(reason),
        }
    }
    parsed
}

fn parse_object(
    object: &Map<String, Value>,
    now_ms: i64,
    limits: &IngestLimits,
) -> Result<Reading, RejectReason> {
    let ts = match object.get("ts") {
        None => now_ms,
        Some(ts) => check_timestamp(ts, now_ms, limits)?,
    };
    let mut metrics = Vec::new();
    for (name, value) in object {
        if name == "ts" {
            continue;
        }
        let value = match value {
            Value::Bool(flag) => MetricValue::Bool(*flag),
            Value::Number(number) => match number.as_f64() {
                Some(n) if n.is_finite() => MetricValue::Number(n),
                _ => return Err(RejectReason::BadValue),
            },
            // Strings, nulls and nested values are not metrics.
            _ => continue,
        };
        if !valid_metric_name(name, limits) {
            return Err(RejectReason::BadValue);
        }
        if metrics.len() == limits.max_metrics {
            return Err(RejectReason::TooManyMetrics);
        }
        metrics.push((Arc::from(name.as_str()), value));
    }
    if metrics.is_empty() {
        return Err(RejectReason::NoMetrics);
    }
    Ok(Reading { ts, metrics })
}

fn check_timestamp(ts: &Value, now_ms: i64, limits: &IngestLimits) -> Result<i64, RejectReason> {
    let ts = ts.as_i64().ok_or(RejectReason::BadTimestamp)?;
    let oldest = now_ms.saturating_sub(duration_ms(limits.max_past));
    let newest = now_ms.saturating_add(duration_ms(limits.max_future));
    if (oldest..=newest).contains(&ts) {
        Ok(ts)
    } else {
        Err(RejectReason::TimestampOutOfRange)
    }
}

fn duration_ms(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A metric name is stored and shown as-is, so keep it printable and short.
fn valid_metric_name(name: &str, limits: &IngestLimits) -> bool {
    !name.is_empty()
        && name.len() <= limits.max_metric_name_bytes
        && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_704_723_845_000;

    fn parse(payload: &str) -> Parsed {
        parse_payload(payload.as_bytes(), NOW, &IngestLimits::default())
    }

    fn refused(payload: &str) -> Vec<RejectReason> {
        let parsed = parse(payload);
        assert!(parsed.readings.is_empty(), "{payload} should be refused");
        parsed.rejected
    }

    #[test]
    fn parses_an_object_with_timestamp_numbers_and_booleans() {
        let parsed = parse(
            r#"{"ts":1704723840000,"temperature":23.5,"door_open":true,"label":"x","n":null}"#,
        );
        assert!(parsed.rejected.is_empty());
        assert_eq!(
            parsed.readings,
            vec![Reading {
                ts: 1_704_723_840_000,
                metrics: vec![
                    ("door_open".into(), MetricValue::Bool(true)),
                    ("temperature".into(), MetricValue::Number(23.5)),
                ],
            }]
        );
    }

    #[test]
    fn missing_timestamp_means_receipt_time() {
        let parsed = parse(r#"{"humidity":45}"#);
        assert_eq!(parsed.readings[0].ts, NOW);
        assert_eq!(
            parsed.readings[0].metrics,
            vec![("humidity".into(), MetricValue::Number(45.0))]
        );
    }

    #[test]
    fn a_batch_keeps_good_elements_and_counts_bad_ones() {
        let parsed = parse(r#"[{"t":1},"oops",{"name":"no metrics"},{"t":2,"ts":-5}]"#);
        assert_eq!(parsed.readings.len(), 1);
        assert_eq!(
            parsed.rejected,
            vec![
                RejectReason::NotAnObject,
                RejectReason::NoMetrics,
                RejectReason::TimestampOutOfRange
            ]
        );
    }

    #[test]
    fn malformed_payloads_are_refused_with_their_reason() {
        assert_eq!(refused("not json"), vec![RejectReason::NotJson]);
        assert_eq!(refused(r#"{"t":1"#), vec![RejectReason::NotJson]);
        assert_eq!(refused("{\"t\":NaN}"), vec![RejectReason::NotJson]);
        assert_eq!(refused("{\"t\":1e999}"), vec![RejectReason::NotJson]);
        assert_eq!(refused("42"), vec![RejectReason::NotAnObject]);
        assert_eq!(refused(r#""text""#), vec![RejectReason::NotAnObject]);
        assert_eq!(refused("{}"), vec![RejectReason::NoMetrics]);
        assert_eq!(
            refused(r#"{"ts":1704723840000}"#),
            vec![RejectReason::NoMetrics]
        );
        assert_eq!(refused("[]"), vec![RejectReason::BadBatch]);
        assert_eq!(
            refused(r#"{"ts":"yesterday","t":1}"#),
            vec![RejectReason::BadTimestamp]
        );
        assert_eq!(
            refused(r#"{"ts":1.5,"t":1}"#),
            vec![RejectReason::BadTimestamp]
        );
        assert_eq!(
            refused(r#"{"ts":0,"t":1}"#),
            vec![RejectReason::TimestampOutOfRange]
        );
        let future = format!(r#"{{"ts":{},"t":1}}"#, NOW + 3_600_000);
        assert_eq!(refused(&future), vec![RejectReason::TimestampOutOfRange]);
        assert_eq!(refused("{\"\":1}"), vec![RejectReason::BadValue]);
        assert_eq!(refused("{\"a\\u0000b\":1}"), vec![RejectReason::BadValue]);
        assert_eq!(
            refused(&[0xff, 0xfe].map(char::from).iter().collect::<String>()),
            vec![RejectReason::NotJson]
        );
    }

    #[test]
    fn limits_are_enforced() {
        let limits = IngestLimits::default();
        let too_many: Vec<String> = (0..=limits.max_metrics)
            .map(|i| format!("\"m{i}\":1"))
            .collect();
        assert_eq!(
            refused(&format!("{{{}}}", too_many.join(","))),
            vec![RejectReason::TooManyMetrics]
        );
        let big = format!(
            r#"{{"t":1,"pad":"{}"}}"#,
            "x".repeat(limits.max_payload_bytes)
        );
        assert_eq!(refused(&big), vec![RejectReason::TooLarge]);
        let batch: Vec<&str> = vec![r#"{"t":1}"#; limits.max_batch + 1];
        assert_eq!(
            refused(&format!("[{}]", batch.join(","))),
            vec![RejectReason::BadBatch]
        );
        let long_name = format!(
            r#"{{"{}":1}}"#,
            "n".repeat(limits.max_metric_name_bytes + 1)
        );
        assert_eq!(refused(&long_name), vec![RejectReason::BadValue]);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn metric_name() -> impl Strategy<Value = String> {
            "[a-z][a-z0-9_]{0,15}".prop_filter("not the timestamp key", |name| name != "ts")
        }

        fn metric_value() -> impl Strategy<Value = MetricValue> {
            prop_oneof![
                // Quarters print and parse back exactly (serde_json's default float parsing
                // may differ from the shortest printed form in the last bit otherwise).
                (-4_000_000_000_000i64..4_000_000_000_000)
                    .prop_map(|n| MetricValue::Number(n as f64 / 4.0)),
                any::<bool>().prop_map(MetricValue::Bool),
            ]
        }

        fn reading() -> impl Strategy<Value = Reading> {
            (
                proptest::option::of(NOW - 86_400_000..NOW + 60_000),
                proptest::collection::btree_map(metric_name(), metric_value(), 1..10),
            )
                .prop_map(|(ts, metrics)| Reading {
                    ts: ts.unwrap_or(NOW),
                    metrics: metrics
                        .into_iter()
                        .map(|(name, value)| (Arc::from(name.as_str()), value))
                        .collect(),
                })
        }

        fn to_json(reading: &Reading) -> serde_json::Value {
            let mut object = serde_json::Map::new();
            object.insert("ts".into(), reading.ts.into());
            for (name, value) in &reading.metrics {
                let value = match value {
                    MetricValue::Number(n) => serde_json::Value::from(*n),
                    MetricValue::Bool(b) => serde_json::Value::from(*b),
                };
                object.insert(name.to_string(), value);
            }
            serde_json::Value::Object(object)
        }

        proptest! {
            #[test]
            fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let parsed = parse_payload(&bytes, NOW, &IngestLimits::default());
                prop_assert!(!parsed.readings.is_empty() || !parsed.rejected.is_empty());
            }

            #[test]
            fn never_panics_on_json_shaped_text(text in r#"[\[\]{}",:0-9a-z.eE+\- ]{0,200}"#) {
                let _ = parse_payload(text.as_bytes(), NOW, &IngestLimits::default());
            }

            #[test]
            fn valid_objects_round_trip(reading in reading()) {
                let payload = to_json(&reading).to_string();
                let parsed = parse_payload(payload.as_bytes(), NOW, &IngestLimits::default());
                prop_assert!(parsed.rejected.is_empty());
                let mut expected = reading.clone();
                expected.metrics.sort_by(|a, b| a.0.cmp(&b.0));
                prop_assert_eq!(parsed.readings, vec![expected]);
            }

            #[test]
            fn valid_batches_round_trip(readings in proptest::collection::vec(reading(), 1..20)) {
                let batch = serde_json::Value::Array(readings.iter().map(to_json).collect());
                let parsed = parse_payload(batch.to_string().as_bytes(), NOW, &IngestLimits::default());
                prop_assert!(parsed.rejected.is_empty());
                prop_assert_eq!(parsed.readings.len(), readings.len());
            }
        }
    }

    #[test]
    fn reasons_index_their_own_slot() {
        for (i, reason) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
    }
}
