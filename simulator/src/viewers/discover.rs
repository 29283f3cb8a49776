//! Finding device ids to view: from a dashboard's `/api/devices`, page by page.

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    let mut stream = TcpStream::connect(http_base)
        .await
        .map_err(|error| fail(error.to_string()))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {http_base}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|error| fail(error.to_string()))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|error| fail(error.to_string()))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail("no HTTP header".into()))?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(fail(format!("status {status}")));
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

/// The body of a chunked response.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_a_chunked_body() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
