//! Plausible environmental readings, pure and seeded: the same seed and clock give the same
//! readings.

use std::f64::consts::TAU;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Range of a device's base temperature, °C (rooms differ).
const BASE_TEMPERATURE: (f64, f64) = (18.0, 24.0);
/// Amplitude of the daily cycle, °C: warmest at 15:00 UTC, coolest at 03:00.
const DAILY_SWING: f64 = 2.0;
/// Hour of the day at which the daily cycle peaks.
const WARMEST_HOUR: f64 = 15.0;
/// Half-width of the temperature noise per reading, °C.
const TEMPERATURE_NOISE: f64 = 0.2;
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
const MS_PER_DAY: i64 = 86_400_000;

/// One reading, as published. Values are rounded to two decimals.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Reading {
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    /// °C.
    pub temperature: f64,
    /// Relative humidity, %.
    pub humidity: f64,
    /// hPa.
    pub pressure: f64,
}

impl Reading {
    /// The MQTT payload: `{"ts":...,"temperature":...,"humidity":...,"pressure":...}`.
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a struct of numbers always serializes to JSON")
    }
}

/// One device's sensors: a base temperature and humidity of its own, a daily cycle, noise,
/// and a pressure that wanders.
#[derive(Debug, Clone)]
pub struct SensorModel {
    rng: SmallRng,
    base_temperature: f64,
    base_humidity: f64,
    pressure: f64,
}

impl SensorModel {
    /// A device's sensors, drawn from `seed`: equal seeds give equal readings.
    pub fn new(seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        SensorModel {
            base_temperature: rng.random_range(BASE_TEMPERATURE.0..BASE_TEMPERATURE.1),
            base_humidity: rng.random_range(BASE_HUMIDITY.0..BASE_HUMIDITY.1),
            pressure: MEAN_PRESSURE + rng.random_range(-3.0..3.0),
            rng,
        }
    }

    /// The reading at `now_ms` (milliseconds since the Unix epoch); advances the pressure walk.
    pub fn next_reading(&mut self, now_ms: i64) -> Reading {
        let temperature = self.base_temperature
            + DAILY_SWING * daily_cycle(now_ms)
            + self.noise(TEMPERATURE_NOISE);
        let humidity = (self.base_humidity
            - HUMIDITY_PER_DEGREE * (temperature - self.base_temperature)
            + self.noise(HUMIDITY_NOISE))
        .clamp(HUMIDITY.0, HUMIDITY.1);
        self.step_pressure();
        Reading {
            ts: now_ms,
            temperature: round2(temperature),
            humidity: round2(humidity),
            pressure: round2(self.pressure),
        }
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

    /// Uniform noise in `[-half_width, half_width]`.
    fn noise(&mut self, half_width: f64) -> f64 {
        self.rng.random_range(-half_width..=half_width)
    }
}

/// Where `now_ms` falls in the daily cycle: 1 at [`WARMEST_HOUR`], -1 twelve hours later.
fn daily_cycle(now_ms: i64) -> f64 {
    let hours = now_ms.rem_euclid(MS_PER_DAY) as f64 / 3_600_000.0;
    (TAU * (hours - WARMEST_HOUR) / 24.0).cos()
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

    #[test]
    fn readings_stay_in_range_over_many_steps() {
        for seed in 0..20 {
            let mut sensor = SensorModel::new(seed);
            for step in 0..5_000 {
                let reading = sensor.next_reading(MIDNIGHT + step * 60_000);
                assert!((15.8..=26.2).contains(&reading.temperature), "{reading:?}");
                assert!((30.0..=60.0).contains(&reading.humidity), "{reading:?}");
                assert!((1000.0..=1026.0).contains(&reading.pressure), "{reading:?}");
            }
        }
    }

    #[test]
    fn afternoons_are_warmer_and_drier_than_nights() {
        let mut sensor = SensorModel::new(7);
        let day: Vec<_> = (0..24)
            .map(|hour| sensor.next_reading(MIDNIGHT + hour * HOUR))
            .collect();
        let (night, afternoon) = (day[3], day[15]);
        assert!(afternoon.temperature > night.temperature + 3.0);
        assert!(afternoon.humidity < night.humidity);
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
    fn payload_is_the_documented_json_object() {
        let reading = Reading {
            ts: 1_704_723_845_000,
            temperature: 23.51,
            humidity: 45.2,
            pressure: 1013.25,
        };
        assert_eq!(
            String::from_utf8(reading.to_payload()).expect("UTF-8"),
            r#"{"ts":1704723845000,"temperature":23.51,"humidity":45.2,"pressure":1013.25}"#
        );
    }

    #[test]
    fn generated_payloads_parse_with_two_decimal_values() {
        let mut sensor = SensorModel::new(3);
        let payload = sensor.next_reading(MIDNIGHT).to_payload();
        let json: serde_json::Value = serde_json::from_slice(&payload).expect("JSON");
        let object = json.as_object().expect("an object");
        let mut keys: Vec<_> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["humidity", "pressure", "temperature", "ts"]);
        assert_eq!(object["ts"].as_i64(), Some(MIDNIGHT));
        for metric in ["temperature", "humidity", "pressure"] {
            let text = object[metric].to_string();
            let decimals = text
                .split_once('.')
                .map_or(0, |(_, fraction)| fraction.len());
            assert!(decimals <= 2, "{metric} = {text}");
        }
    }
}
