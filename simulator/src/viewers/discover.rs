//! Finding device ids to view: from a dashboard's `/api/devices`, page by page.

use serde::Deserialize;

use crate::SimulatorError;

/// Largest page `/api/devices` serves.
const PAGE: usize = 500;
/// Most devices discovered, so a huge fleet cannot make discovery unbounded.
pub const MAX_DISCOVERED: usize = 1_000_000;

#[derive(Debug, Deserialize)]
struct Page {
    total: usize,
    devices: Vec<Listed>,
}

#[derive(Debug, Deserialize)]
struct Listed {
    id: String,
}

/// Every device id the dashboard at `http_base` (`host:port`) knows, in its order (group,
/// then id).
///
/// # Errors
/// The dashboard cannot be reached or answers something other than a device page.
pub async fn discover_devices(http_base: &str) -> Result<Vec<String>, SimulatorError> {
    let mut ids = Vec::new();
    loop {
        let path = format!("/api/devices?offset={}&limit={PAGE}", ids.len());
        let body = http_get(http_base, &path).await?;
        let page: Page = serde_json::from_str(&body)
            .map_err(|error| SimulatorError::Viewers(format!("bad /api/devices page: {error}")))?;
        let got = page.devices.len();
        ids.extend(page.devices.into_iter().map(|device| device.id));
        if got == 0 || ids.len() >= page.total || ids.len() >= MAX_DISCOVERED {
            return Ok(ids);
        }
    }
}

/// A plain HTTP/1.1 GET with `Connection: close`; the body of a 200 answer.
///
/// # Errors
/// The connection fails or the status is not 200.
pub async fn http_get(http_base: &str, path: &str) -> Result<String, SimulatorError> {
    let fail =
        |what: String| SimulatorError::Viewers(format!("GET http://{http_base}{path}: {what}"));
    let response = iotmon_probe::http::get(http_base, path)
        .await
        .map_err(|error| fail(error.to_string()))?;
    if response.status != 200 {
        return Err(fail(format!("status {}", response.status)));
    }
    Ok(response.body)
}
