//! An in-process subscription to the embedded broker: the messages of a few filters, read
//! straight from the router without a socket or MQTT encoding.

use bytes::Bytes;
use iotmon_wire::mqtt::Message;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::Notification;
use tracing::warn;

use crate::embedded::{BrokerError, EmbeddedBroker};

/// Messages matching the subscribed filters, in the order the router delivers them.
pub struct LocalSubscription {
    /// Kept alive for the link's lifetime: dropping it would disconnect the link.
    _link_tx: LinkTx,
    link_rx: LinkRx,
}

impl std::fmt::Debug for LocalSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSubscription").finish_non_exhaustive()
    }
}

impl LocalSubscription {
    /// Links to the broker as `client_id` and subscribes to `filters`. Blocks briefly on the
    /// router (rumqttd's local links use blocking channels): call it before serving, or from
    /// `spawn_blocking`.
    ///
    /// # Errors
    /// The router refused the link or the subscription.
    pub fn open(
        broker: &EmbeddedBroker,
        client_id: &str,
        filters: &[&str],
    ) -> Result<Self, BrokerError> {
        let (mut link_tx, link_rx) = broker.link(client_id)?;
        for filter in filters {
            link_tx.subscribe(*filter)?;
        }
        Ok(LocalSubscription {
            _link_tx: link_tx,
            link_rx,
        })
    }

    /// Forwards every message to `to` until `shutdown`, the router goes away, or `to` closes.
    /// Waits while `to` is full: the router then holds messages in its bounded log (and, for
    /// a lossless link, makes publishers wait).
    pub async fn forward(
        mut self,
        to: tokio::sync::mpsc::Sender<Message>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => break,
                message = self.recv() => match message {
                    Some(message) => message,
                    None => break,
                },
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                sent = to.send(message) => if sent.is_err() { break },
            }
        }
    }

    /// The next message, or `None` once the router has gone away.
    pub async fn recv(&mut self) -> Option<Message> {
        loop {
            let notification = match self.link_rx.next().await {
                Ok(Some(notification)) => notification,
                // Woken with nothing new: wait for the next batch.
                Ok(None) => continue,
                Err(error) => {
                    warn!(%error, "in-process broker link closed");
                    return None;
                }
            };
            match notification {
                Notification::Forward(forward) => {
                    return Some(Message {
                        topic: topic_string(forward.publish.topic),
                        payload: forward.publish.payload,
                    });
                }
                // The router stops sending once our buffer is full and waits to be told we
                // drained it; without this, delivery silently stops.
                Notification::Unschedule => {
                    if let Err(error) = self.link_rx.wake().await {
                        warn!(%error, "in-process broker link closed");
                        return None;
                    }
                }
                _ => {}
            }
        }
    }
}

fn topic_string(topic: Bytes) -> String {
    match String::from_utf8(topic.to_vec()) {
        Ok(topic) => topic,
        // MQTT requires UTF-8 topics and rumqttd validates them; lossy is a safe fallback.
        Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;
    use crate::config::BrokerConfig;

    /// An MQTT 3.1.1 packet: `kind` and flags, the remaining length, then `body`.
    fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![kind];
        let mut left = body.len();
        loop {
            let digit = (left % 128) as u8;
            left /= 128;
            bytes.push(if left > 0 { digit | 0x80 } else { digit });
            if left == 0 {
                break;
            }
        }
        bytes.extend_from_slice(body);
        bytes
    }

    fn with_length(text: &[u8]) -> Vec<u8> {
        let mut bytes = (text.len() as u16).to_be_bytes().to_vec();
        bytes.extend_from_slice(text);
        bytes
    }

    /// The bridge's link is lossless: a device that publishes far more than the router's log
    /// holds while the link is not reading is held back, and the link then gets every
    /// message in order. (With an ordinary subscriber most of them would be skipped.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bridge_link_gets_every_message_however_far_behind_it_falls() {
        let config = BrokerConfig {
            allow_anonymous: true,
            mqtt_listen: "127.0.0.1:0".parse().expect("address"),
            // A log window of 2 KiB per filter; 5,000 messages of ~200 bytes are 1 MB.
            segment_size: 1024,
            segment_count: 2,
            ..BrokerConfig::default()
        };
        let mut broker =
            EmbeddedBroker::start(config, std::path::Path::new("/nonexistent")).expect("starts");
        let mut subscription =
            LocalSubscription::open(&broker, "bridge-under-test", &["sensors/#"])
                .expect("subscribes");
        broker.listen().expect("listens");
        let addr = broker.mqtt_addr().expect("an MQTT listener");

        let sent = 5_000;
        let device = std::thread::spawn(move || {
            let mut stream = std::net::TcpStream::connect(addr).expect("connects");
            let mut connect = with_length(b"MQTT");
            connect.extend_from_slice(&[4, 0x02, 0, 60]);
            connect.extend(with_length(b"firehose"));
            stream.write_all(&packet(0x10, &connect)).expect("CONNECT");
            for n in 0..sent {
                let mut publish = with_length(b"sensors/lab/firehose");
                publish.extend_from_slice(format!("{n:0>200}").as_bytes());
                stream.write_all(&packet(0x30, &publish)).expect("PUBLISH");
            }
            // Hold the connection open until the reader is done.
            stream
        });

        // Fall far behind before reading anything.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for n in 0..sent {
            let message = tokio::time::timeout(Duration::from_secs(20), subscription.recv())
                .await
                .unwrap_or_else(|_| panic!("message {n} of {sent} never arrived"))
                .expect("the link is open");
            let number: usize = std::str::from_utf8(&message.payload)
                .expect("text")
                .parse()
                .expect("a number");
            assert_eq!(number, n, "messages skipped or out of order");
        }
        drop(device.join().expect("the device thread"));
    }
}
