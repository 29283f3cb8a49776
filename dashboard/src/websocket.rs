//! The viewers' WebSocket, owned end to end: the HTTP/1.1 upgrade (RFC 6455 section 4.2) and
//! the tokio-tungstenite stream over the upgraded connection.
//!
//! axum's own WebSocket cannot send a message as fragments, and tungstenite copies each frame
//! into a write buffer that keeps the capacity of the largest frame ever written through it,
//! for the life of the connection. The snapshot of a 1,000-device view is ~160 KB, so every
//! such viewer, reading or stalled, held that much for good. Sent here as fragments of at
//! most [`FRAGMENT_BYTES`], each written out before the next is formed, a message of any size
//! leaves a viewer's write buffer at one fragment.

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

/// The largest frame a viewer is sent; a longer text message goes out as continuation
/// fragments of this size. Small enough that a write buffer of this size per viewer is
/// cheap at thousands of viewers; large enough that an ordinary `update` is one frame.
pub const FRAGMENT_BYTES: usize = 8 * 1024;

/// The only WebSocket version there is (RFC 6455 section 4.4).
const WEBSOCKET_VERSION: &str = "13";

/// Why a request to `/ws` is not a WebSocket handshake this server accepts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpgradeRefused {
    #[error("a WebSocket handshake is a GET request")]
    NotGet,
    #[error("not a WebSocket handshake: it needs HTTP/1.1 with `Connection: upgrade` and `Upgrade: websocket`")]
    NotUpgrade,
    #[error("unsupported WebSocket version: this server speaks version 13")]
    Version,
    #[error("a WebSocket handshake needs a `Sec-WebSocket-Key` header")]
    NoKey,
    #[error("this connection cannot be upgraded")]
    NotUpgradable,
}

impl IntoResponse for UpgradeRefused {
    fn into_response(self) -> Response {
        let message = self.to_string();
        match self {
            UpgradeRefused::NotGet => (StatusCode::METHOD_NOT_ALLOWED, message).into_response(),
            // RFC 6455 section 4.4: name the versions the server speaks.
            UpgradeRefused::Version => (
                StatusCode::UPGRADE_REQUIRED,
                [(header::SEC_WEBSOCKET_VERSION, WEBSOCKET_VERSION)],
                message,
            )
                .into_response(),
            UpgradeRefused::NotUpgradable => {
                (StatusCode::UPGRADE_REQUIRED, message).into_response()
            }
            UpgradeRefused::NotUpgrade | UpgradeRefused::NoKey => {
                (StatusCode::BAD_REQUEST, message).into_response()
            }
        }
    }
}

/// A checked WebSocket handshake request, not yet answered.
#[derive(Debug)]
pub struct Handshake {
    on_upgrade: OnUpgrade,
    accept_key: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = UpgradeRefused;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(UpgradeRefused::NotGet);
        }
        let headers = &parts.headers;
        if parts.version != Version::HTTP_11
            || !has_token(headers, header::CONNECTION, "upgrade")
            || !has_token(headers, header::UPGRADE, "websocket")
        {
            return Err(UpgradeRefused::NotUpgrade);
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|version| version != WEBSOCKET_VERSION)
        {
            return Err(UpgradeRefused::Version);
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(UpgradeRefused::NoKey)?;
        let accept_key = derive_accept_key(key.as_bytes());
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(UpgradeRefused::NotUpgradable)?;
        Ok(Handshake {
            on_upgrade,
            accept_key,
        })
    }
}

impl Handshake {
    /// Accepts the handshake: the `101 Switching Protocols` to return, and the socket, open
    /// once that response has gone out (so it must be awaited in a task of its own).
    pub fn accept(self, config: WebSocketConfig) -> (Response, PendingSocket) {
        let response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, HeaderValue::from_static("upgrade"))
            .header(header::UPGRADE, HeaderValue::from_static("websocket"))
            .header(header::SEC_WEBSOCKET_ACCEPT, self.accept_key)
            .body(Body::empty())
            // Every header value above is a base64 or static ASCII string.
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        let pending = PendingSocket {
            on_upgrade: self.on_upgrade,
            config,
        };
        (response, pending)
    }
}

/// A WebSocket whose handshake response is on its way.
#[derive(Debug)]
pub struct PendingSocket {
    on_upgrade: OnUpgrade,
    config: WebSocketConfig,
}

impl PendingSocket {
    /// The socket, once the connection has switched protocols; `None` if it closed first.
    pub async fn open(self) -> Option<ViewerSocket> {
        match self.on_upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let stream =
                    WebSocketStream::from_raw_socket(io, Role::Server, Some(self.config)).await;
                Some(ViewerSocket { stream })
            }
            Err(error) => {
                debug!(%error, "WebSocket upgrade failed");
                None
            }
        }
    }
}

/// One viewer's open WebSocket.
#[derive(Debug)]
pub struct ViewerSocket {
    stream: WebSocketStream<TokioIo<Upgraded>>,
}

impl ViewerSocket {
    /// Writes one message and flushes it.
    pub async fn send(&mut self, message: Message) -> Result<(), Error> {
        self.stream.send(message).await
    }

    /// Writes `text` as one text message, as fragments of at most [`FRAGMENT_BYTES`] when it
    /// is longer, each flushed before the next is written, and tells `written` the bytes of
    /// text each one took, so the caller sees a long message's progress. A fragment may end
    /// inside a UTF-8 sequence: the message as a whole is what must be valid (RFC 6455
    /// section 5.6).
    pub async fn send_text(
        &mut self,
        text: String,
        mut written: impl FnMut(usize),
    ) -> Result<(), Error> {
        let len = text.len();
        if len <= FRAGMENT_BYTES {
            self.send(Message::text(text)).await?;
            written(len);
            return Ok(());
        }
        let bytes = Bytes::from(text.into_bytes());
        let mut opcode = OpCode::Data(Data::Text);
        let mut start = 0;
        while start < len {
            let end = (start + FRAGMENT_BYTES).min(len);
            let is_final = end == len;
            let fragment = Frame::message(bytes.slice(start..end), opcode, is_final);
            self.send(Message::Frame(fragment)).await?;
            written(end - start);
            opcode = OpCode::Data(Data::Continue);
            start = end;
        }
        Ok(())
    }

    /// The next message from the viewer (pings are answered on the way); `None` once the
    /// connection is closed.
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        self.stream.next().await
    }
}

/// Whether the comma-separated header `name` holds `token`, in any case.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn handshake_parts(edit: impl FnOnce(&mut Request<()>)) -> Parts {
        let mut request = Request::builder()
            .method(Method::GET)
            .uri("/ws")
            .header(header::CONNECTION, "keep-alive, Upgrade")
            .header(header::UPGRADE, "WebSocket")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .expect("a valid request");
        edit(&mut request);
        request.into_parts().0
    }

    async fn check(edit: impl FnOnce(&mut Request<()>)) -> Result<Handshake, UpgradeRefused> {
        let mut parts = handshake_parts(edit);
        Handshake::from_request_parts(&mut parts, &()).await
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_websocket_handshake() {
        type Edit = fn(&mut Request<()>);
        let cases: [(Edit, UpgradeRefused); 5] = [
            (|r| *r.method_mut() = Method::POST, UpgradeRefused::NotGet),
            (
                |r| {
                    r.headers_mut().remove(header::UPGRADE);
                },
                UpgradeRefused::NotUpgrade,
            ),
            (
                |r| {
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                },
                UpgradeRefused::NotUpgrade,
            ),
            (
                |r| {
                    r.headers_mut()
                        .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
                },
                UpgradeRefused::Version,
            ),
            (
                |r| {
                    r.headers_mut().remove(header::SEC_WEBSOCKET_KEY);
                },
                UpgradeRefused::NoKey,
            ),
        ];
        for (edit, refusal) in cases {
            assert_eq!(check(edit).await.err(), Some(refusal));
        }
    }

    #[tokio::test]
    async fn a_valid_handshake_outside_a_server_cannot_be_upgraded() {
        // A request that did not come through hyper has no connection to switch.
        assert_eq!(
            check(|_| {}).await.err(),
            Some(UpgradeRefused::NotUpgradable)
        );
    }

    #[test]
    fn the_version_refusal_names_the_version_spoken() {
        let response = UpgradeRefused::Version.into_response();
        assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(
            response.headers().get(header::SEC_WEBSOCKET_VERSION),
            Some(&HeaderValue::from_static("13"))
        );
    }

    #[tokio::test]
    async fn the_accept_key_is_the_rfc_example() {
        let mut parts = handshake_parts(|_| {});
        // Give the request an upgrade handle as hyper does, to get past the last check.
        parts
            .extensions
            .insert(hyper::upgrade::on(Request::new(())));
        let handshake = Handshake::from_request_parts(&mut parts, &())
            .await
            .expect("a valid handshake");
        let (response, _) = handshake.accept(WebSocketConfig::default());
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        // RFC 6455 section 1.3's worked example.
        assert_eq!(
            response.headers().get(header::SEC_WEBSOCKET_ACCEPT),
            Some(&HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="))
        );
    }
}
