//! Plausible environmental readings, pure and seeded: the same seed and clock give the same
//! readings. Which metrics a device reports is configurable ([`Metric`]); an anomaly pushes
//! every reported metric well past any sensible alert threshold for a few readings.

use std::f64::consts::TAU;
use std::fmt::{self, Write as _};
use std::str::FromStr;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Range of a device's base temperature, °C (rooms differ).
const BASE_TEMPERATURE: (f64, f64) = (18.0, 24.0);
/// Amplitude of the daily cycle, °C: warmest at 15:00 UTC, coolest at 03:00.
const DAILY_SWING: f64 = 2.0;
/// Hour of the day at which the daily cycle peaks.
const WARMEST_HOUR: f64 = 15.0;
/// Half-width of the temperature noise per reading, °C.
const TEMPERATURE_NOISE: f64 = 0.2;
/// Largest drift of a device's temperature sensor per reading, °C (a slow calibration creep).
const TEMPERATURE_DRIFT_STEP: f64 = 0.002;
/// How far the drift may take a sensor from the truth, °C.
const TEMPERATURE_DRIFT_BOUND: f64 = 1.0;
/// Humidity bounds, %.
const HUMIDITY: (f64, f64) = (30.0, 60.0);
/// Range of a device's humidity at its base temperature, %.
const BASE_HUMIDITY: (f64, f64) = (40.0, 50.0);
/// Humidity lost per °C above the base temperature (warm air is relatively drier).
const HUMIDITY_PER_DEGREE: f64 = 2.0;
/// Half-width of the humidity noise per reading, %.
const HUMIDITY_NOISE: f64 = 1.0;
/// Pressure the walk is drawn back to, hPa.
const MEAN_PRESSURE: f64 = 1013.0;
/// How far the pressure may wander from the mean, hPa.
const PRESSURE_BOUND: f64 = 13.0;
/// Largest step of the pressure walk per reading, hPa.
const PRESSURE_STEP: f64 = 0.3;
/// Fraction of the distance to the mean the pressure recovers each reading.
const PRESSURE_PULL: f64 = 0.02;
/// Outdoor CO₂, ppm: an empty room's level.
const OUTDOOR_CO2: f64 = 420.0;
/// Extra CO₂ at the busiest hour of an occupied room, ppm (range over rooms).
const OCCUPIED_CO2: (f64, f64) = (300.0, 700.0);
/// Half-width of the CO₂ noise, ppm.
const CO2_NOISE: f64 = 15.0;
/// Battery charge lost per reading, % (range over devices).
const BATTERY_DRAIN: (f64, f64) = (0.001, 0.01);
/// A battery at or below this is replaced by a full one.
const BATTERY_REPLACED_AT: f64 = 5.0;
/// Readings an anomaly lasts once it starts, so a for-duration alert rule can fire.
pub const ANOMALY_READINGS: u32 = 3;
/// What an anomaly adds to the temperature, °C: from ~20 °C to above 40 °C.
const ANOMALY_HEAT: f64 = 22.0;
/// Humidity during an anomaly, %.
const ANOMALY_HUMIDITY: f64 = 92.0;
/// Pressure drop during an anomaly, hPa.
const ANOMALY_PRESSURE_DROP: f64 = 40.0;
/// CO₂ during an anomaly, ppm.
const ANOMALY_CO2: f64 = 3500.0;
/// Battery during an anomaly, % (a failing cell).
const ANOMALY_BATTERY: f64 = 1.0;
const MS_PER_DAY: i64 = 86_400_000;

/// A metric a simulated device can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Metric {
    /// °C, with a daily cycle, noise and a slow drift.
    Temperature,
    /// Relative humidity %, anti-correlated with temperature.
    Humidity,
    /// hPa, a random walk drawn back to the mean.
    Pressure,
    /// ppm, following office occupancy over the day.
    Co2,
    /// %, draining slowly; replaced when nearly empty.
    Battery,
}

impl Metric {
    /// Every metric, in payload order.
    pub const ALL: [Metric; 5] = [
        Metric::Temperature,
        Metric::Humidity,
        Metric::Pressure,
        Metric::Co2,
        Metric::Battery,
    ];
    /// The metrics a fleet reports unless told otherwise.
    pub const DEFAULT: [Metric; 3] = [Metric::Temperature, Metric::Humidity, Metric::Pressure];

    /// The JSON field name.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Temperature => "temperature",
            Metric::Humidity => "humidity",
            Metric::Pressure => "pressure",
            Metric::Co2 => "co2",
            Metric::Battery => "battery",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Metric::ALL
            .into_iter()
            .find(|metric| metric.name() == text)
            .ok_or_else(|| {
                let names: Vec<_> = Metric::ALL.iter().map(|m| m.name()).collect();
                format!("unknown metric {text:?}: use {}", names.join(", "))
            })
    }
}

impl TryFrom<String> for Metric {
    type Error = String;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        name.parse()
    }
}

/// One reading, as published: a timestamp and one value per configured metric, in the
/// configured order. Values are rounded to two decimals.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    /// The metrics' values.
    pub values: Vec<(Metric, f64)>,
}

impl Reading {
    /// The value of `metric`, if reported.
    pub fn get(&self, metric: Metric) -> Option<f64> {
        self.values
            .iter()
            .find(|(name, _)| *name == metric)
            .map(|(_, value)| *value)
    }

    /// The MQTT payload: `{"ts":...,"temperature":...,...}`.
    pub fn to_payload(&self) -> Vec<u8> {
        let mut text = String::with_capacity(24 + 20 * self.values.len());
        // Writing to a String cannot fail; the values are finite (clamped models).
        let _ = write!(text, "{{\"ts\":{}", self.ts);
        for (metric, value) in &self.values {
            let _ = write!(text, ",\"{}\":{}", metric.name(), value);
        }
        text.push('}');
        text.into_bytes()
    }
}

/// The MQTT payload of a batch: a JSON array of readings (one reading alone is sent as an
/// object).
pub fn batch_payload(readings: &[Reading]) -> Vec<u8> {
    if let [reading] = readings {
        return reading.to_payload();
    }
    let mut payload = Vec::with_capacity(readings.len() * 80 + 2);
    payload.push(b'[');
    for (index, reading) in readings.iter().enumerate() {
        if index > 0 {
            payload.push(b',');
        }
        payload.extend_from_slice(&reading.to_payload());
    }
    payload.push(b']');
    payload
}

/// One device's sensors: a base temperature and humidity of its own, a daily cycle, noise,
/// drift, a pressure that wanders, a room's occupancy and a battery.
#[derive(Debug, Clone)]
pub struct SensorModel {
    rng: SmallRng,
    metrics: Vec<Metric>,
    base_temperature: f64,
    base_humidity: f64,
    drift: f64,
    pressure: f64,
    occupied_co2: f64,
    battery: f64,
    battery_drain: f64,
    /// Readings left in the current anomaly.
    anomaly_left: u32,
}

impl SensorModel {
    /// A device reporting the default metrics, drawn from `seed`: equal seeds give equal
    /// readings.
    pub fn new(seed: u64) -> Self {
        Self::with_metrics(seed, &Metric::DEFAULT)
    }

    /// A device reporting `metrics` (in that order), drawn from `seed`.
    pub fn with_metrics(seed: u64, metrics: &[Metric]) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        SensorModel {
            metrics: metrics.to_vec(),
            base_temperature: rng.random_range(BASE_TEMPERATURE.0..BASE_TEMPERATURE.1),
            base_humidity: rng.random_range(BASE_HUMIDITY.0..BASE_HUMIDITY.1),
            drift: 0.0,
            pressure: MEAN_PRESSURE + rng.random_range(-3.0..3.0),
            occupied_co2: rng.random_range(OCCUPIED_CO2.0..OCCUPIED_CO2.1),
            battery: rng.random_range(60.0..100.0),
            battery_drain: rng.random_range(BATTERY_DRAIN.0..BATTERY_DRAIN.1),
            anomaly_left: 0,
            rng,
        }
    }

    /// Starts an anomaly now: the next [`ANOMALY_READINGS`] readings are far out of range.
    pub fn start_anomaly(&mut self) {
        self.anomaly_left = ANOMALY_READINGS;
    }

    /// Whether the next reading is anomalous.
    pub fn in_anomaly(&self) -> bool {
        self.anomaly_left > 0
    }

    /// The reading at `now_ms` (milliseconds since the Unix epoch); advances the walks.
    pub fn next_reading(&mut self, now_ms: i64) -> Reading {
        let anomalous = self.anomaly_left > 0;
        self.anomaly_left = self.anomaly_left.saturating_sub(1);
        self.drift = (self.drift + self.noise(TEMPERATURE_DRIFT_STEP))
            .clamp(-TEMPERATURE_DRIFT_BOUND, TEMPERATURE_DRIFT_BOUND);
        let temperature = self.base_temperature
            + DAILY_SWING * daily_cycle(now_ms)
            + self.drift
            + self.noise(TEMPERATURE_NOISE);
        let humidity = (self.base_humidity
            - HUMIDITY_PER_DEGREE * (temperature - self.base_temperature)
            + self.noise(HUMIDITY_NOISE))
        .clamp(HUMIDITY.0, HUMIDITY.1);
        self.step_pressure();
        let co2 = OUTDOOR_CO2 + self.occupied_co2 * occupancy(now_ms) + self.noise(CO2_NOISE);
        self.step_battery();
        let values = self
            .metrics
            .iter()
            .map(|&metric| {
                let normal = match metric {
                    Metric::Temperature => temperature,
                    Metric::Humidity => humidity,
                    Metric::Pressure => self.pressure,
                    Metric::Co2 => co2,
                    Metric::Battery => self.battery,
                };
                let value = if anomalous {
                    anomalous_value(metric, normal)
                } else {
                    normal
                };
                (metric, round2(value))
            })
            .collect();
        Reading { ts: now_ms, values }
    }

    /// One step of a random walk drawn back towards the mean and kept within its bound.
    fn step_pressure(&mut self) {
        let pull = PRESSURE_PULL * (MEAN_PRESSURE - self.pressure);
        let step = self.noise(PRESSURE_STEP);
        self.pressure = (self.pressure + pull + step).clamp(
            MEAN_PRESSURE - PRESSURE_BOUND,
            MEAN_PRESSURE + PRESSURE_BOUND,
        );
    }

    fn step_battery(&mut self) {
        self.battery -= self.battery_drain;
        if self.battery <= BATTERY_REPLACED_AT {
            self.battery = 100.0;
        }
    }

    /// Uniform noise in `[-half_width, half_width]`.
    fn noise(&mut self, half_width: f64) -> f64 {
        self.rng.random_range(-half_width..=half_width)
    }
}

/// What `metric` reads during an anomaly, given its normal value.
fn anomalous_value(metric: Metric, normal: f64) -> f64 {
    match metric {
        Metric::Temperature => normal + ANOMALY_HEAT,
        Metric::Humidity => ANOMALY_HUMIDITY,
        Metric::Pressure => normal - ANOMALY_PRESSURE_DROP,
        Metric::Co2 => ANOMALY_CO2,
        Metric::Battery => ANOMALY_BATTERY,
    }
}

/// Where `now_ms` falls in the daily cycle: 1 at [`WARMEST_HOUR`], -1 twelve hours later.
fn daily_cycle(now_ms: i64) -> f64 {
    let hours = now_ms.rem_euclid(MS_PER_DAY) as f64 / 3_600_000.0;
    (TAU * (hours - WARMEST_HOUR) / 24.0).cos()
}

/// How occupied an office is at `now_ms`, 0 to 1: empty from 19:00 to 07:00 UTC, busiest at
/// 13:00.
fn occupancy(now_ms: i64) -> f64 {
    let hours = now_ms.rem_euclid(MS_PER_DAY) as f64 / 3_600_000.0;
    if (7.0..19.0).contains(&hours) {
        (std::f64::consts::PI * (hours - 7.0) / 12.0).sin()
    } else {
        0.0
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-01-08 00:00:00 UTC.
    const MIDNIGHT: i64 = 1_704_672_000_000;
    const HOUR: i64 = 3_600_000;

    fn value(reading: &Reading, metric: Metric) -> f64 {
        reading.get(metric).expect("metric reported")
    }

    #[test]
    fn readings_stay_in_range_over_many_steps() {
        for seed in 0..20 {
            let mut sensor = SensorModel::with_metrics(seed, &Metric::ALL);
            for step in 0..5_000 {
                let reading = sensor.next_reading(MIDNIGHT + step * 60_000);
                let t = value(&reading, Metric::Temperature);
                assert!((14.8..=27.2).contains(&t), "{reading:?}");
                let h = value(&reading, Metric::Humidity);
                assert!((30.0..=60.0).contains(&h), "{reading:?}");
                let p = value(&reading, Metric::Pressure);
                assert!((1000.0..=1026.0).contains(&p), "{reading:?}");
                let c = value(&reading, Metric::Co2);
                assert!((400.0..=1140.0).contains(&c), "{reading:?}");
                let b = value(&reading, Metric::Battery);
                assert!((BATTERY_REPLACED_AT..=100.0).contains(&b), "{reading:?}");
            }
        }
    }

    #[test]
    fn afternoons_are_warmer_drier_and_busier_than_nights() {
        let mut sensor = SensorModel::with_metrics(7, &Metric::ALL);
        let day: Vec<_> = (0..24)
            .map(|hour| sensor.next_reading(MIDNIGHT + hour * HOUR))
            .collect();
        let (night, afternoon) = (&day[3], &day[15]);
        assert!(value(afternoon, Metric::Temperature) > value(night, Metric::Temperature) + 3.0);
        assert!(value(afternoon, Metric::Humidity) < value(night, Metric::Humidity));
        assert!(value(&day[13], Metric::Co2) > value(night, Metric::Co2) + 200.0);
    }

    #[test]
    fn equal_seeds_give_equal_readings() {
        let (mut a, mut b) = (SensorModel::new(42), SensorModel::new(42));
        let mut c = SensorModel::new(43);
        let first: Vec<_> = (0..10).map(|i| a.next_reading(MIDNIGHT + i)).collect();
        let again: Vec<_> = (0..10).map(|i| b.next_reading(MIDNIGHT + i)).collect();
        let other: Vec<_> = (0..10).map(|i| c.next_reading(MIDNIGHT + i)).collect();
        assert_eq!(first, again);
        assert_ne!(first, other);
    }

    #[test]
    fn an_anomaly_crosses_thresholds_for_a_few_readings_then_ends() {
        let mut sensor = SensorModel::with_metrics(5, &Metric::ALL);
        let normal = sensor.next_reading(MIDNIGHT);
        assert!(value(&normal, Metric::Temperature) < 30.0);
        sensor.start_anomaly();
        for _ in 0..ANOMALY_READINGS {
            assert!(sensor.in_anomaly());
            let hot = sensor.next_reading(MIDNIGHT);
            assert!(value(&hot, Metric::Temperature) > 35.0, "{hot:?}");
            assert!(value(&hot, Metric::Humidity) > 90.0, "{hot:?}");
            assert!(value(&hot, Metric::Pressure) < 990.0, "{hot:?}");
            assert!(value(&hot, Metric::Co2) > 3000.0, "{hot:?}");
            assert!(value(&hot, Metric::Battery) < 5.0, "{hot:?}");
        }
        assert!(!sensor.in_anomaly());
        let after = sensor.next_reading(MIDNIGHT);
        assert!(value(&after, Metric::Temperature) < 30.0, "{after:?}");
    }

    #[test]
    fn payload_is_the_documented_json_object() {
        let reading = Reading {
            ts: 1_704_723_845_000,
            values: vec![
                (Metric::Temperature, 23.51),
                (Metric::Humidity, 45.2),
                (Metric::Pressure, 1013.25),
            ],
        };
        assert_eq!(
            String::from_utf8(reading.to_payload()).expect("UTF-8"),
            r#"{"ts":1704723845000,"temperature":23.51,"humidity":45.2,"pressure":1013.25}"#
        );
    }

    #[test]
    fn reports_exactly_the_configured_metrics_with_two_decimals() {
        let metrics = [Metric::Co2, Metric::Temperature];
        let mut sensor = SensorModel::with_metrics(3, &metrics);
        let payload = sensor.next_reading(MIDNIGHT).to_payload();
        let json: serde_json::Value = serde_json::from_slice(&payload).expect("JSON");
        let object = json.as_object().expect("an object");
        let mut keys: Vec<_> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["co2", "temperature", "ts"]);
        assert_eq!(object["ts"].as_i64(), Some(MIDNIGHT));
        for metric in ["temperature", "co2"] {
            let text = object[metric].to_string();
            let decimals = text
                .split_once('.')
                .map_or(0, |(_, fraction)| fraction.len());
            assert!(decimals <= 2, "{metric} = {text}");
        }
    }

    #[test]
    fn a_batch_is_an_array_of_readings_and_one_reading_an_object() {
        let mut sensor = SensorModel::new(9);
        let readings: Vec<_> = (0..3)
            .map(|i| sensor.next_reading(MIDNIGHT + i * 1000))
            .collect();
        let json: serde_json::Value =
            serde_json::from_slice(&batch_payload(&readings)).expect("JSON");
        let array = json.as_array().expect("an array");
        assert_eq!(array.len(), 3);
        assert_eq!(array[2]["ts"].as_i64(), Some(MIDNIGHT + 2000));
        assert_eq!(batch_payload(&readings[..1]), readings[0].to_payload());
    }

    #[test]
    fn metric_names_parse_back() {
        for metric in Metric::ALL {
            assert_eq!(metric.name().parse::<Metric>(), Ok(metric));
        }
        assert!("dance".parse::<Metric>().is_err());
    }
}
