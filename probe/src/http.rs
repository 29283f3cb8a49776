//! One HTTP/1.1 request on a connection of its own (`Connection: close`), answered with the
//! status and the body: all the simulator's viewers, the benches and the tests ask of the
//! dashboard (`/api/...`, `/metrics`), without an HTTP client stack.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer: the status code and the body (de-chunked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Sends `method path` to `addr` with `headers` (lines each ending in `\r\n`) and `body`,
/// and reads the whole answer.
///
/// # Errors
/// The connection failed, or the answer is not HTTP.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr).await?;
    let length = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}{length}Connection: close\r\n\r\n{body}"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    parse(&String::from_utf8_lossy(&response))
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer"))
}

/// `GET path`.
///
/// # Errors
/// See [`request`].
pub async fn get(addr: &str, path: &str) -> std::io::Result<Response> {
    request(addr, "GET", path, "", "").await
}

fn parse(response: &str) -> Option<Response> {
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some(Response { status, body })
}

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
    fn reads_plain_and_chunked_answers() {
        let plain = parse("HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}").expect("HTTP");
        assert_eq!((plain.status, plain.body.as_str()), (404, "{}"));
        let chunked = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n",
        )
        .expect("HTTP");
        assert_eq!((chunked.status, chunked.body.as_str()), (200, "abcdef"));
        assert_eq!(parse("garbage"), None);
    }
}
