//! Viewer messages into the dashboard: a WebSocket text message parsed into a command
//! (`session::parse_client_message`), then carried out by the hub against a small fleet, as a
//! session and the hub do. Every frame the hub sends back must be a valid server message.

use std::sync::Arc;

use iotmon_dashboard::hub::{Hub, HubStats, ViewSpec};
use iotmon_dashboard::session::{parse_client_message, Request, SessionLimits};
use iotmon_dashboard::DashboardConfig;
use iotmon_wire::viewer::ServerMessage;
use iotmon_wire::AlertCommand;
use iotmon_wire::{LiveUpdate, DeviceState, MetricValue};
use rand::rngs::SmallRng;
use rand::Rng;
use tokio::sync::mpsc;

use crate::driver::Surface;
use crate::mutate::{mutate, pick};

/// The viewer every input comes from.
const VIEWER: u64 = 1;
/// Devices in the fleet the hub knows: `d0` .. `d199` under a few groups.
const FLEET: usize = 200;
const GROUPS: [&str; 5] = ["hq", "hq/a", "hq/a/b", "lab", "hq-2"];

/// The dashboard's handling of one viewer's messages.
#[derive(Debug)]
pub struct Viewer {
    limits: SessionLimits,
    hub: Hub,
    frames: mpsc::Receiver<String>,
}

impl Default for Viewer {
    fn default() -> Self {
        let config = DashboardConfig::default();
        let limits = SessionLimits::from(&config);
        let (hub, frames) = fleet_hub(limits.queue);
        Viewer {
            limits,
            hub,
            frames,
        }
    }
}

/// A hub that knows the fleet and group aggregates, with the one viewer joined.
fn fleet_hub(queue: usize) -> (Hub, mpsc::Receiver<String>) {
    let mut hub = Hub::new(Arc::new(HubStats::default()));
    let states = (0..FLEET)
        .map(|i| DeviceState {
            id: format!("d{i}").into(),
            group: GROUPS[i % GROUPS.len()].into(),
            ts: 1_704_723_845_000,
            metrics: [("t".into(), MetricValue::Number(i as f64))].into(),
            online: i % 3 != 0,
        })
        .collect();
    hub.apply(LiveUpdate::Devices(states));
    let (outbound, frames) = mpsc::channel(queue);
    hub.join(VIEWER, outbound);
    (hub, frames)
}

const IDS: [&str; 8] = [
    "\"d1\"",
    "\"d199\"",
    "\"d200\"",
    "\"\"",
    "\"é\"",
    "1",
    "null",
    "\"d1\\u0000\"",
];
const NUMBERS: [&str; 10] = [
    "0",
    "1",
    "2",
    "1000",
    "1001",
    "-1",
    "1.5",
    "18446744073709551615",
    "18446744073709551616",
    "1e3",
];

fn ids(rng: &mut SmallRng, out: &mut String, choices: &[&str]) {
    out.push('[');
    let count = *pick(rng, &[&0usize, &1, &3, &100, &1001]);
    for i in 0..count {
        if i > 0 {
            out.push(',');
        }
        out.push_str(pick(rng, choices));
    }
    out.push(']');
}

fn message(rng: &mut SmallRng) -> String {
    let mut out = String::from("{\"type\":");
    match rng.random_range(0..6) {
        0 => out.push_str("\"ping\""),
        1 => {
            out.push_str("\"groups\",\"groups\":");
            ids(
                rng,
                &mut out,
                &["\"hq\"", "\"hq/a\"", "\"\"", "\"lab\"", "\"nope\"", "7"],
            );
        }
        2 => {
            out.push_str("\"view\",\"devices\":");
            ids(rng, &mut out, &IDS);
        }
        3 | 4 => {
            out.push_str("\"view\",\"group\":");
            out.push_str(pick(
                rng,
                &[
                    "\"hq\"",
                    "\"hq/a\"",
                    "\"\"",
                    "\"h\"",
                    "\"lab\"",
                    "\"\\uffff\"",
                ],
            ));
            for key in ["offset", "limit"] {
                if rng.random_bool(0.8) {
                    out.push_str(&format!(",\"{key}\":{}", pick(rng, &NUMBERS)));
                }
            }
        }
        _ => out.push_str(pick(
            rng,
            &[
                "\"VIEW\"",
                "null",
                "\"view\",\"devices\":[],\"group\":\"hq\"",
                "\"snapshot\"",
            ],
        )),
    }
    if rng.random_ratio(1, 10) {
        out.push_str(",\"extra\":1");
    }
    out.push('}');
    out
}

impl Surface for Viewer {
    fn name(&self) -> &'static str {
        "viewer"
    }

    fn generate(&mut self, rng: &mut SmallRng, out: &mut Vec<u8>) {
        out.extend_from_slice(message(rng).as_bytes());
        if rng.random_ratio(2, 3) {
            mutate(
                rng,
                out,
                &[
                    b"\"type\":",
                    b"\"view\"",
                    b"\"groups\"",
                    b"\"ping\"",
                    b"null",
                    b"[",
                    b"{",
                    b"\\u",
                ],
            );
        }
    }

    /// Text frames are UTF-8 (the WebSocket layer checks), so the input is taken lossily.
    fn check(&mut self, input: &[u8]) -> Result<(), String> {
        let text = String::from_utf8_lossy(input);
        match parse_client_message(&text, &self.limits) {
            Ok(Request::View(spec)) => {
                if let ViewSpec::Devices(devices) = &spec {
                    if devices.len() > self.limits.max_view_devices {
                        return Err(format!("a view of {} devices accepted", devices.len()));
                    }
                }
                self.hub.set_view(VIEWER, spec);
            }
            Ok(Request::Groups(groups)) => {
                if groups.len() > self.limits.max_view_groups {
                    return Err(format!("{} groups accepted", groups.len()));
                }
                self.hub.set_groups(VIEWER, groups);
            }
            Ok(Request::Alert(command)) => {
                let by = match &command {
                    AlertCommand::Acknowledge { by, .. }
                    | AlertCommand::Shelve { by, .. }
                    | AlertCommand::Unshelve { by, .. } => by,
                };
                if by.is_empty() || by.chars().count() > 64 {
                    return Err(format!(
                        "an operator name of {} characters accepted",
                        by.len()
                    ));
                }
            }
            Ok(Request::Ping) | Err(_) => {}
        }
        self.hub.push_pending();
        while let Ok(frame) = self.frames.try_recv() {
            if let Err(error) = serde_json::from_str::<ServerMessage>(&frame) {
                return Err(format!("the hub sent an invalid frame ({error}): {frame}"));
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        let (hub, frames) = fleet_hub(self.limits.queue);
        self.hub = hub;
        self.frames = frames;
    }
}
