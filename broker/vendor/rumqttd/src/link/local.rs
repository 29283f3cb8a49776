use crate::protocol::{
    Filter, LastWill, LastWillProperties, Packet, Publish, QoS, RetainForwardRule, Subscribe,
    Unsubscribe,
};
use crate::router::Ack;
use crate::router::{
    iobufs::{Incoming, Outgoing},
    Connection, Event, Notification, ShadowRequest,
};
use crate::ConnectionId;
use bytes::Bytes;
use flume::{Receiver, RecvError, RecvTimeoutError, SendError, Sender, TrySendError};
use parking_lot::lock_api::MutexGuard;
use parking_lot::{Mutex, RawMutex};

use std::collections::VecDeque;
use std::mem;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("Unexpected router message")]
    NotConnectionAck,
    #[error("ConnAck error {0}")]
    ConnectionAck(String),
    #[error("Channel try send error")]
    TrySend(#[from] TrySendError<(ConnectionId, Event)>),
    #[error("Channel send error")]
    Send(#[from] SendError<(ConnectionId, Event)>),
    #[error("Channel recv error")]
    Recv(#[from] RecvError),
    #[error("Channel timeout recv error")]
    RecvTimeout(#[from] RecvTimeoutError),
    #[error("Timeout = {0}")]
    Elapsed(#[from] tokio::time::error::Elapsed),
}

// used to build LinkTx and LinkRx
pub struct LinkBuilder<'a> {
    tenant_id: Option<String>,
    client_id: &'a str,
    router_tx: Sender<(ConnectionId, Event)>,
    // true by default
    clean_session: bool,
    last_will: Option<LastWill>,
    last_will_properties: Option<LastWillProperties>,
    // false by default
    dynamic_filters: bool,
    // default to 0, indicating to not use topic alias
    topic_alias_max: u16,
    // iotmon patch: false by default (see `LinkBuilder::lossless`)
    lossless: bool,
    // iotmon patch: false by default (see `LinkBuilder::exclusive`)
    exclusive: bool,
    // iotmon patch: the registered connection's incarnation, set by `connect_event`.
    incarnation: u64,
    // iotmon patch: none by default (see `LinkBuilder::session_expiry`)
    session_expiry: Option<u32>,
    // iotmon patch: none by default (see `LinkBuilder::max_packet_size`)
    max_packet_size: Option<u32>,
}

impl<'a> LinkBuilder<'a> {
    pub fn new(client_id: &'a str, router_tx: Sender<(ConnectionId, Event)>) -> Self {
        LinkBuilder {
            client_id,
            router_tx,
            tenant_id: None,
            clean_session: true,
            last_will: None,
            last_will_properties: None,
            dynamic_filters: false,
            topic_alias_max: 0,
            lossless: false,
            exclusive: false,
            incarnation: 0,
            session_expiry: None,
            max_packet_size: None,
        }
    }

    /// iotmon patch: the router never skips messages this link has not read. When it falls
    /// behind so far that the next log segment would drop them, the router stops taking
    /// publishes from other connections (they stop reading their sockets, so TCP slows the
    /// publishers) until it catches up. A lossless link that stops reading stops every
    /// publisher: only for trusted, in-process consumers such as iotmon's bridge.
    pub fn lossless(mut self, lossless: bool) -> Self {
        self.lossless = lossless;
        self
    }

    /// iotmon patch: a later connection with this link's client id is refused instead of
    /// replacing this link (upstream drops the older connection, so any client could
    /// disconnect an in-process link by reusing its client id).
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }

    pub fn tenant_id(mut self, tenant_id: Option<String>) -> Self {
        self.tenant_id = tenant_id;
        self
    }

    pub fn last_will(mut self, last_will: Option<LastWill>) -> Self {
        self.last_will = last_will;
        self
    }

    pub fn last_will_properties(
        mut self,
        last_will_properties: Option<LastWillProperties>,
    ) -> Self {
        self.last_will_properties = last_will_properties;
        self
    }

    pub fn topic_alias_max(mut self, max: u16) -> Self {
        self.topic_alias_max = max;
        self
    }

    pub fn clean_session(mut self, clean: bool) -> Self {
        self.clean_session = clean;
        self
    }

    /// iotmon patch: an MQTT 5 client's Session Expiry Interval in seconds (absent: 0). With
    /// 0 the session is not stored when the connection ends, whatever `clean_session` says
    /// (MQTT 5 §3.1.2.11.2); otherwise it is discarded once that long has passed since
    /// (MQTT-3.1.2-23; 0xFFFFFFFF: never). `None` (MQTT 3.1.1): `clean_session` decides, and
    /// a stored session never expires.
    pub fn session_expiry(mut self, seconds: Option<u32>) -> Self {
        self.session_expiry = seconds;
        self
    }

    /// iotmon patch: the largest packet the client accepts (MQTT 5 Maximum Packet Size);
    /// larger publishes are dropped for it, as if sent (MQTT 5 MQTT-3.1.2-24 and -25).
    pub fn max_packet_size(mut self, max: Option<u32>) -> Self {
        self.max_packet_size = max;
        self
    }

    pub fn dynamic_filters(mut self, dynamic_filters: bool) -> Self {
        self.dynamic_filters = dynamic_filters;
        self
    }

    pub fn build(mut self) -> Result<(LinkTx, LinkRx, Notification), LinkError> {
        let (event, link_rx, outgoing_data_buffer, incoming_data_buffer) = self.connect_event();
        self.router_tx.send((0, event))?;
        link_rx.recv()?;
        self.finish(link_rx, outgoing_data_buffer, incoming_data_buffer)
    }

    /// iotmon patch: [`LinkBuilder::build`] without blocking the thread while the router
    /// registers the connection. A remote connection's task used to wait for it on the
    /// blocking pool, and a burst of connects grew that pool to a hundred threads (their
    /// stacks and malloc arenas stayed in the broker's memory).
    pub async fn build_async(mut self) -> Result<(LinkTx, LinkRx, Notification), LinkError> {
        let (event, link_rx, outgoing_data_buffer, incoming_data_buffer) = self.connect_event();
        self.router_tx.send_async((0, event)).await?;
        link_rx.recv_async().await?;
        self.finish(link_rx, outgoing_data_buffer, incoming_data_buffer)
    }

    /// The router's `Connect` event for this link, and the link's ends of its buffers.
    #[allow(clippy::type_complexity)]
    fn connect_event(
        &mut self,
    ) -> (
        Event,
        Receiver<()>,
        Arc<Mutex<VecDeque<Notification>>>,
        Arc<Mutex<VecDeque<Packet>>>,
    ) {
        // Connect to router
        // Local connections to the router shall have access to all subscriptions
        let mut connection = Connection::new(
            self.tenant_id.take(),
            self.client_id.to_owned(),
            self.clean_session,
            self.dynamic_filters,
        );

        connection
            .last_will(self.last_will.take(), self.last_will_properties.take())
            .topic_alias_max(self.topic_alias_max);
        connection.lossless = self.lossless;
        connection.exclusive = self.exclusive;
        connection.keep_session = !self.clean_session && self.session_expiry != Some(0);
        connection.session_expiry = self
            .session_expiry
            .filter(|&seconds| seconds != u32::MAX)
            .map(|seconds| std::time::Duration::from_secs(seconds.into()));
        connection.max_packet_size = self.max_packet_size;
        self.incarnation = connection.incarnation;
        let incoming = Incoming::new(connection.client_id.to_owned());
        let (outgoing, link_rx) = Outgoing::new(connection.client_id.to_owned());
        let outgoing_data_buffer = outgoing.buffer();
        let incoming_data_buffer = incoming.buffer();

        let event = Event::Connect {
            connection,
            incoming,
            outgoing,
        };
        (event, link_rx, outgoing_data_buffer, incoming_data_buffer)
    }

    /// Reads the router's answer to `Connect` and builds the link's two ends.
    fn finish(
        self,
        link_rx: Receiver<()>,
        outgoing_data_buffer: Arc<Mutex<VecDeque<Notification>>>,
        incoming_data_buffer: Arc<Mutex<VecDeque<Packet>>>,
    ) -> Result<(LinkTx, LinkRx, Notification), LinkError> {
        // iotmon patch: no unwrap; an empty buffer means the router did not accept us.
        let notification = outgoing_data_buffer
            .lock()
            .pop_front()
            .ok_or(LinkError::NotConnectionAck)?;

        // Right now link identifies failure with dropped rx in router,
        // which is probably ok. We need this here to get id assigned by router
        let id = match notification {
            Notification::DeviceAck(Ack::ConnAck(id, ..)) => id,
            _message => return Err(LinkError::NotConnectionAck),
        };

        let tx = LinkTx::new(id, self.router_tx.clone(), incoming_data_buffer);
        let mut rx = LinkRx::new(id, self.router_tx, link_rx, outgoing_data_buffer);
        rx.incarnation = self.incarnation;
        Ok((tx, rx, notification))
    }
}

pub struct LinkTx {
    pub(crate) connection_id: ConnectionId,
    router_tx: Sender<(ConnectionId, Event)>,
    recv_buffer: Arc<Mutex<VecDeque<Packet>>>,
}

impl LinkTx {
    pub fn new(
        connection_id: ConnectionId,
        router_tx: Sender<(ConnectionId, Event)>,
        recv_buffer: Arc<Mutex<VecDeque<Packet>>>,
    ) -> LinkTx {
        LinkTx {
            connection_id,
            router_tx,
            recv_buffer,
        }
    }

    pub fn buffer(&self) -> MutexGuard<RawMutex, VecDeque<Packet>> {
        self.recv_buffer.lock()
    }

    /// Send raw device data
    fn push(&mut self, data: Packet) -> Result<usize, LinkError> {
        let len = {
            let mut buffer = self.recv_buffer.lock();
            buffer.push_back(data);
            buffer.len()
        };

        self.router_tx
            .send((self.connection_id, Event::DeviceData))?;

        Ok(len)
    }

    /// Send raw device data
    pub async fn send(&mut self, data: Packet) -> Result<usize, LinkError> {
        let len = {
            let mut buffer = self.recv_buffer.lock();
            buffer.push_back(data);
            buffer.len()
        };

        self.router_tx
            .send((self.connection_id, Event::DeviceData))?;

        Ok(len)
    }

    fn try_push(&mut self, data: Packet) -> Result<usize, LinkError> {
        let len = {
            let mut buffer = self.recv_buffer.lock();
            buffer.push_back(data);
            buffer.len()
        };

        self.router_tx
            .try_send((self.connection_id, Event::DeviceData))?;
        Ok(len)
    }

    pub(crate) async fn notify(&mut self) -> Result<(), LinkError> {
        // iotmon patch: try the send first; only a full router inbox needs the async send
        // (and its future). Upstream built a send future for every read from the network.
        match self
            .router_tx
            .try_send((self.connection_id, Event::DeviceData))
        {
            Ok(()) => {}
            Err(TrySendError::Full(event)) => self.router_tx.send_async(event).await?,
            Err(TrySendError::Disconnected(event)) => return Err(SendError(event).into()),
        }

        Ok(())
    }

    /// Sends a MQTT Publish to the router
    pub fn publish<S, V>(&mut self, topic: S, payload: V) -> Result<usize, LinkError>
    where
        S: Into<Bytes>,
        V: Into<Bytes>,
    {
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            pkid: 0,
            payload: payload.into(),
        };

        let len = self.push(Packet::Publish(publish, None))?;
        Ok(len)
    }

    /// Sends a MQTT Publish to the router
    pub fn try_publish<S, V>(&mut self, topic: S, payload: V) -> Result<usize, LinkError>
    where
        S: Into<Bytes>,
        V: Into<Bytes>,
    {
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            pkid: 0,
            payload: payload.into(),
        };

        let len = self.try_push(Packet::Publish(publish, None))?;
        // TODO: Remote item in buffer after failure and write unittest
        Ok(len)
    }

    /// Sends a MQTT Subscribe to the eventloop
    pub fn subscribe<S: Into<String>>(&mut self, filter: S) -> Result<usize, LinkError> {
        let filters = vec![Filter {
            path: filter.into(),
            qos: QoS::AtMostOnce,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::Never,
        }];

        let subscribe = Subscribe { pkid: 0, filters };

        let len = self.push(Packet::Subscribe(subscribe, None))?;
        Ok(len)
    }

    /// Sends a MQTT Subscribe to the eventloop
    pub fn try_subscribe<S: Into<String>>(&mut self, filter: S) -> Result<usize, LinkError> {
        let filters = vec![Filter {
            path: filter.into(),
            qos: QoS::AtMostOnce,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::Never,
        }];

        let subscribe = Subscribe { pkid: 0, filters };

        let len = self.try_push(Packet::Subscribe(subscribe, None))?;
        Ok(len)
    }

    /// Sends a MQTT Unsubscribe to the eventloop
    pub fn unsubscribe<S: Into<String>>(&mut self, filter: S) -> Result<usize, LinkError> {
        let unsubscribe = Unsubscribe {
            pkid: 0,
            filters: vec![filter.into()],
        };

        let len = self.push(Packet::Unsubscribe(unsubscribe, None))?;
        Ok(len)
    }

    /// Sends a MQTT Unsubscribe to the eventloop
    pub fn try_unsubscribe<S: Into<String>>(&mut self, filter: S) -> Result<usize, LinkError> {
        let unsubscribe = Unsubscribe {
            pkid: 0,
            filters: vec![filter.into()],
        };

        let len = self.try_push(Packet::Unsubscribe(unsubscribe, None))?;
        Ok(len)
    }

    /// Request to get device shadow
    pub fn shadow<S: Into<String>>(&mut self, filter: S) -> Result<(), LinkError> {
        let message = Event::Shadow(ShadowRequest {
            filter: filter.into(),
        });

        self.router_tx.try_send((self.connection_id, message))?;
        Ok(())
    }
}

#[derive(Debug)]
pub struct LinkRx {
    connection_id: ConnectionId,
    router_tx: Sender<(ConnectionId, Event)>,
    router_rx: Receiver<()>,
    send_buffer: Arc<Mutex<VecDeque<Notification>>>,
    cache: VecDeque<Notification>,
    // iotmon patch: see `LinkRx::incarnation`.
    incarnation: u64,
}

impl LinkRx {
    pub fn new(
        connection_id: ConnectionId,
        router_tx: Sender<(ConnectionId, Event)>,
        router_rx: Receiver<()>,
        outgoing_data_buffer: Arc<Mutex<VecDeque<Notification>>>,
    ) -> LinkRx {
        LinkRx {
            connection_id,
            router_tx,
            router_rx,
            send_buffer: outgoing_data_buffer,
            // iotmon patch: grows on first use; a remote link never uses it (see
            // `Outgoing::new`).
            cache: VecDeque::new(),
            incarnation: 0,
        }
    }

    pub fn id(&self) -> ConnectionId {
        self.connection_id
    }

    /// iotmon patch: which connection this is, unlike [`LinkRx::id`], which the router
    /// gives to the next connection once this one is gone. Events about this connection
    /// sent after it may have been replaced (its `Disconnect`, its last will) carry it.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn recv(&mut self) -> Result<Option<Notification>, LinkError> {
        // Read from cache first
        // One router_rx trigger signifies a bunch of notifications. So we
        // should always check cache first
        match self.cache.pop_front() {
            Some(v) => Ok(Some(v)),
            None => {
                // If cache is empty, check for router trigger and get fresh notifications
                self.router_rx.recv()?;
                // Collect 'all' the data in the buffer after a notification.
                // Notification means fresh data which isn't previously collected
                mem::swap(&mut *self.send_buffer.lock(), &mut self.cache);
                Ok(self.cache.pop_front())
            }
        }
    }

    pub fn recv_deadline(&mut self, deadline: Instant) -> Result<Option<Notification>, LinkError> {
        // Read from cache first
        // One router_rx trigger signifies a bunch of notifications. So we
        // should always check cache first
        match self.cache.pop_front() {
            Some(v) => Ok(Some(v)),
            None => {
                // If cache is empty, check for router trigger and get fresh notifications
                self.router_rx.recv_deadline(deadline)?;
                mem::swap(&mut *self.send_buffer.lock(), &mut self.cache);
                Ok(self.cache.pop_front())
            }
        }
    }

    pub async fn next(&mut self) -> Result<Option<Notification>, LinkError> {
        // Read from cache first
        // One router_rx trigger signifies a bunch of notifications. So we
        // should always check cache first
        match self.cache.pop_front() {
            Some(v) => Ok(Some(v)),
            None => {
                // If cache is empty, check for router trigger and get fresh notifications
                self.router_rx.recv_async().await?;
                // Collect 'all' the data in the buffer after a notification.
                // Notification means fresh data which isn't previously collected
                mem::swap(&mut *self.send_buffer.lock(), &mut self.cache);
                Ok(self.cache.pop_front())
            }
        }
    }

    pub(crate) async fn exchange(
        &mut self,
        notifications: &mut VecDeque<Notification>,
    ) -> Result<(), LinkError> {
        self.router_rx.recv_async().await?;
        mem::swap(&mut *self.send_buffer.lock(), notifications);
        Ok(())
    }

    /// iotmon patch: the router's "fresh notifications" signal as a future the caller can
    /// keep across loop turns. `exchange` built (and on drop unregistered) a new receive
    /// future on every turn of a remote link's loop, i.e. for every packet read.
    pub(crate) fn notified(&self) -> flume::r#async::RecvFut<'_, ()> {
        self.router_rx.recv_async()
    }

    /// iotmon patch: takes the notifications the router left, after [`LinkRx::notified`].
    pub(crate) fn take_notifications(&self, notifications: &mut VecDeque<Notification>) {
        mem::swap(&mut *self.send_buffer.lock(), notifications);
    }

    pub fn ready(&self) -> Result<(), LinkError> {
        self.router_tx.send((self.connection_id, Event::Ready))?;
        Ok(())
    }

    pub async fn wake(&self) -> Result<(), LinkError> {
        self.router_tx
            .send_async((self.connection_id, Event::Ready))
            .await?;

        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::LinkTx;
    use flume::bounded;
    use parking_lot::Mutex;
    use std::{collections::VecDeque, sync::Arc, thread};

    #[test]
    fn push_sends_all_data_and_notifications_to_router() {
        let (router_tx, router_rx) = bounded(10);
        let mut buffers = Vec::new();
        const CONNECTIONS: usize = 1000;
        const MESSAGES_PER_CONNECTION: usize = 100;

        for i in 0..CONNECTIONS {
            let buffer = Arc::new(Mutex::new(VecDeque::new()));
            let mut link_tx = LinkTx::new(i, router_tx.clone(), buffer.clone());
            buffers.push(buffer);
            thread::spawn(move || {
                for _ in 0..MESSAGES_PER_CONNECTION {
                    link_tx.publish("hello/world", vec![1, 2, 3]).unwrap();
                }
            });
        }

        // Router should receive notifications from all the connections
        for _ in 0..CONNECTIONS * MESSAGES_PER_CONNECTION {
            let _v = router_rx.recv().unwrap();
        }

        // Every connection has expected number of messages
        for item in buffers.iter().take(CONNECTIONS) {
            assert_eq!(item.lock().len(), MESSAGES_PER_CONNECTION);
        }

        // TODO: Write a similar test to benchmark buffer vs channels
    }
}
