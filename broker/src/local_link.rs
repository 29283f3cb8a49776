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
