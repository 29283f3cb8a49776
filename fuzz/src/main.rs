//! `iotmon-fuzz`: runs the fuzzing surfaces for as many inputs as asked and prints a report
//! per surface; `iotmon-fuzz replay SURFACE FILE...` runs saved inputs again.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use iotmon_fuzz::driver::{self, Options};
use iotmon_fuzz::surfaces;

#[derive(Debug, Parser)]
#[command(about = "Fuzz iotmon's input surfaces (stable Rust, seeded, structure-aware)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs surfaces on generated inputs.
    Run {
        /// Surfaces to run (all when none): mqtt-v4, mqtt-v5, listener, bridge, viewer, config.
        surfaces: Vec<String>,
        /// Inputs per surface.
        #[arg(long, default_value_t = 100_000)]
        inputs: u64,
        /// Seed of the input stream.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Stop a surface after this many seconds, whatever `--inputs` says.
        #[arg(long)]
        max_seconds: Option<u64>,
        /// An input slower than this (ms) counts as a hang.
        #[arg(long, default_value_t = 1000)]
        time_limit_ms: u64,
        /// Where crashing and hanging inputs are saved.
        #[arg(long, default_value = "fuzz-artifacts")]
        artifacts: PathBuf,
        /// Print progress every this many seconds.
        #[arg(long, default_value_t = 30)]
        progress_seconds: u64,
    },
    /// Runs saved inputs (artifacts) through a surface and prints what happens.
    Replay {
        surface: String,
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run {
            surfaces: wanted,
            inputs,
            seed,
            max_seconds,
            time_limit_ms,
            artifacts,
            progress_seconds,
        } => {
            let names: Vec<String> = if wanted.is_empty() {
                surfaces::NAMES.iter().map(|n| n.to_string()).collect()
            } else {
                wanted
            };
            let options = Options {
                inputs,
                seed,
                time_limit: Duration::from_millis(time_limit_ms),
                max_time: max_seconds.map(Duration::from_secs),
                artifacts: Some(artifacts),
                progress: Some(Duration::from_secs(progress_seconds)),
                ..Options::default()
            };
            let mut clean = true;
            for name in names {
                let Some(mut surface) = surfaces::by_name(&name) else {
                    eprintln!("no surface {name}; known: {:?}", surfaces::NAMES);
                    return ExitCode::from(2);
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
                clean &= report.is_clean();
            }
            if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Replay { surface, files } => {
            let Some(mut surface) = surfaces::by_name(&surface) else {
                eprintln!("no surface {surface}; known: {:?}", surfaces::NAMES);
                return ExitCode::from(2);
            };
            let rss_start = driver::rss_kib();
            for file in &files {
                let input = match std::fs::read(file) {
                    Ok(input) => input,
                    Err(error) => {
                        eprintln!("{}: {error}", file.display());
                        return ExitCode::from(2);
                    }
                };
                let outcome = driver::check_one(surface.as_mut(), &input);
                println!("{}: {outcome:?}", file.display());
            }
            println!(
                "{} inputs; RSS {rss_start} -> {} KiB",
                files.len(),
                driver::rss_kib()
            );
            ExitCode::SUCCESS
        }
    }
}
