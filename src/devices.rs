//! `iotmon devices`: editing the broker's device credential registry.

use std::io::BufRead as _;
use std::path::PathBuf;

use anyhow::{bail, Context};
use iotmon_broker::credentials::{generate_password, registry_path, CredentialRegistry};

use crate::cli::{DeviceAction, DevicesArgs};
use crate::config::Config;

/// Runs one `devices` action. A running broker picks the change up on the next connect.
///
/// # Errors
/// The config or registry cannot be read or written, the device id is invalid, or the
/// password read from standard input is empty.
pub fn run(args: DevicesArgs) -> anyhow::Result<()> {
    let path = registry_file(&args)?;
    let mut registry = CredentialRegistry::load(&path)?;
    match args.action {
        DeviceAction::Add {
            device_id,
            password_stdin,
        } => {
            let (password, generated) = if password_stdin {
                (read_password()?, false)
            } else {
                (generate_password(), true)
            };
            let replaced = registry.set_password(&device_id, &password)?;
            registry.save(&path)?;
            let verb = if replaced { "updated" } else { "added" };
            println!("{verb} device {device_id} in {}", path.display());
            if generated {
                println!("password: {password}");
            }
        }
        DeviceAction::Remove { device_id } => {
            if !registry.remove(&device_id) {
                bail!("no device {device_id} in {}", path.display());
            }
            registry.save(&path)?;
            println!("removed device {device_id} from {}", path.display());
        }
        DeviceAction::List => {
            for device in registry.devices() {
                println!("{device}");
            }
        }
    }
    Ok(())
}

fn registry_file(args: &DevicesArgs) -> anyhow::Result<PathBuf> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    Ok(registry_path(
        config.broker.credentials_file.as_deref(),
        &config.data_dir,
    ))
}

/// The first line of standard input, without its line ending.
fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        bail!("empty password on standard input");
    }
    Ok(password)
}
