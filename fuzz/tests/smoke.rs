//! A short run of every surface, part of `cargo test`: a few thousand inputs each, so a
//! regression in a parser's robustness fails CI. The long runs are `iotmon-fuzz run` (see
//! docs/fuzzing.md).

use iotmon_fuzz::driver::{self, Options, Report};
use iotmon_fuzz::surfaces;

fn run(name: &str, inputs: u64) -> Report {
    let mut surface = surfaces::by_name(name).expect("a known surface");
    let options = Options {
        inputs,
        // A different stream on every run would make failures hard to reproduce; the long
        // runs take other seeds.
        seed: 20_240_108,
        ..Options::default()
    };
    let report = driver::run(surface.as_mut(), &options);
    println!("{report}");
    for finding in &report.findings {
        println!(
            "  {}: {}\n    input: {}",
            finding.kind,
            finding.message,
            driver::escape(&finding.input)
        );
    }
    report
}

fn assert_clean(report: &Report, inputs: u64) {
    assert_eq!(report.inputs, inputs, "every input ran");
    assert!(report.is_clean(), "{report}\n{:#?}", report.findings);
}

#[test]
fn the_mqtt_3_1_1_codec_survives_mutated_packets() {
    assert_clean(&run("mqtt-v4", 20_000), 20_000);
}

#[test]
fn the_mqtt_5_codec_survives_mutated_packets() {
    assert_clean(&run("mqtt-v5", 20_000), 20_000);
}

#[test]
fn the_broker_survives_mutated_connections_and_still_accepts_clients() {
    assert_clean(&run("listener", 300), 300);
}

#[test]
fn the_bridge_survives_mutated_topics_and_payloads() {
    assert_clean(&run("bridge", 5_000), 5_000);
}

#[test]
fn the_dashboard_survives_mutated_viewer_messages() {
    assert_clean(&run("viewer", 5_000), 5_000);
}

#[test]
fn config_files_either_fail_validation_or_start_cleanly() {
    assert_clean(&run("config", 2_000), 2_000);
}
