use super::Ack;
use tracing::{info, trace, warn};

use crate::protocol::{
    matches, ConnAck, ConnAckProperties, PingResp, PubAck, PubComp, PubRec, PubRel, Publish,
    PublishProperties, SubAck, UnsubAck,
};
use crate::router::{DataRequest, FilterIdx, SubscriptionMeter, Waiters};
use crate::{ConnectionId, Filter, Offset, RouterConfig, Topic};

use crate::segments::{CommitLog, Position};
use crate::Storage;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::time::Instant;

type PubWithProp = (Publish, Option<PublishProperties>);

#[derive(Clone)]
pub struct PublishData {
    pub publish: Publish,
    pub properties: Option<PublishProperties>,
    pub timestamp: Instant,
}

impl From<PubWithProp> for PublishData {
    fn from((publish, properties): PubWithProp) -> Self {
        PublishData {
            publish,
            properties,
            timestamp: Instant::now(),
        }
    }
}

/// iotmon patch 39: what a kept message costs besides its own bytes: its slot in the
/// segment (the `PublishData`: the publish with its two `Bytes` handles, the properties'
/// inline part, the timestamp) and two heap allocations, the bytes' own (glibc's 8-byte header
/// and rounding to 16, up to 24 bytes) and the shared header `Bytes` gives them once cloned
/// into more than one place (24 bytes, 32 with its allocation's): 288 bytes on x86-64.
/// Measured with `fuzz/tests/log_memory.rs`: a message of 8 bytes (topic and payload) held
/// ~296 bytes of the broker's memory.
pub(crate) const KEPT_MESSAGE_OVERHEAD: usize = std::mem::size_of::<PublishData>() + 24 + 32;

/// iotmon patch 39: what one more heap allocation of `len` bytes costs, at most: its bytes,
/// its header and the rounding (see [`KEPT_MESSAGE_OVERHEAD`]).
fn allocation(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len + 24
    }
}

/// iotmon patch 39: the heap the MQTT 5 properties of a kept message hold beyond their inline
/// part (strings, user properties, correlation data).
fn properties_heap(properties: &PublishProperties) -> usize {
    let text = |value: &Option<String>| value.as_ref().map_or(0, |text| allocation(text.len()));
    let user_properties = allocation(
        properties.user_properties.capacity() * std::mem::size_of::<(String, String)>(),
    ) + properties
        .user_properties
        .iter()
        .map(|(key, value)| allocation(key.len()) + allocation(value.len()))
        .sum::<usize>();
    text(&properties.response_topic)
        + text(&properties.content_type)
        + properties
            .correlation_data
            .as_ref()
            .map_or(0, |data| allocation(data.len()) + 32)
        + allocation(
            properties.subscription_identifiers.capacity() * std::mem::size_of::<usize>(),
        )
        + user_properties
}

/// iotmon patch 39: a kept message is charged its real footprint, so that `max_segment_size`
/// × `max_segment_count` bounds the memory of a filter's log. Upstream charged its topic and
/// payload and 4 bytes, while each message costs ~0.3 KiB more ([`KEPT_MESSAGE_OVERHEAD`]):
/// a log of small messages held several times the memory its limit said (a message of 8
/// bytes, charged 12, cost ~25 times that). The bytes a message shares with other
/// filters' logs are charged to each of them, so the bound holds for every log alone.
impl Storage for PublishData {
    fn size(&self) -> usize {
        let publish = &self.publish;
        KEPT_MESSAGE_OVERHEAD
            + publish.topic.len()
            + publish.payload.len()
            + self.properties.as_ref().map_or(0, properties_heap)
    }
}

/// Stores 'device' data and 'actions' data in native commitlog
/// organized by subscription filter. Device data is replicated
/// while actions data is not
pub struct DataLog {
    pub config: RouterConfig,
    /// Native commitlog data organized by subscription. Contains
    /// device data and actions data logs.
    ///
    /// Device data is replicated while actions data is not.
    /// Also has waiters used to wake connections/replicator tracker
    /// which are caught up with all the data on 'Filter' and waiting
    /// for new data
    ///
    /// iotmon patch 41: a map from indexes never given to two logs (see `next_filter_idx`)
    /// rather than upstream's slab, which gives a removed entry's index to the next one.
    pub native: HashMap<FilterIdx, Data<PublishData>>,
    /// Map of subscription filter name to filter index
    filter_indexes: HashMap<Filter, FilterIdx>,
    retained_publishes: HashMap<Topic, PublishData>,
    /// List of filters associated with a topic
    publish_filters: HashMap<Topic, Vec<FilterIdx>>,
    /// iotmon patch 41: the index the next log gets. A log is freed once no subscription
    /// reads it (`release`), and the index of a freed log is never given to another: a
    /// connection's packets in flight and a saved session's owed messages keep the index of
    /// the log they were read from (`Outgoing::inflight_buffer`, `Unacknowledged`) after its
    /// filter was unsubscribed, and match it against the logs its subscriptions read when
    /// the session is saved and resumed (`retransmission_map`, `Outgoing::redelivery`). A
    /// reused index would set the read position, or skip the messages, of another filter's
    /// log; one never reused finds no log. Counting those entries as holders of their log,
    /// or scanning every connection's and saved session's entries when a log is freed,
    /// would do too, at the cost of keeping a count right through every path a packet id
    /// takes, or of a pass over every saved session per free.
    next_filter_idx: FilterIdx,
    /// iotmon patch: how many times an append opened a new segment in some filter's log
    /// (see `Router::lossless_subscriber_at_risk`).
    pub(crate) segments_opened: u64,
}

impl DataLog {
    pub fn new(config: RouterConfig) -> io::Result<DataLog> {
        let mut datalog = DataLog {
            config,
            native: HashMap::new(),
            publish_filters: HashMap::new(),
            filter_indexes: HashMap::new(),
            retained_publishes: HashMap::new(),
            segments_opened: 0,
            next_filter_idx: 0,
        };

        if let Some(warmup_filters) = datalog.config.initialized_filters.clone() {
            for filter in warmup_filters {
                // iotmon patch 41: the configuration holds the logs it asks for, so they
                // are never freed.
                let (idx, _) = datalog.next_native_offset(&filter);
                datalog.hold(idx);
            }
        }

        Ok(datalog)
    }

    /// iotmon patch 41: how many filters' logs are kept.
    pub fn logs(&self) -> usize {
        self.native.len()
    }

    pub fn meter(&mut self, filter: &str) -> Option<&mut SubscriptionMeter> {
        let data = self.native.get_mut(self.filter_indexes.get(filter)?)?;
        Some(&mut data.meter)
    }

    pub fn waiters(&self, filter: &Filter) -> Option<&Waiters<DataRequest>> {
        self.native
            .get(self.filter_indexes.get(filter)?)
            .map(|data| &data.waiters)
    }

    /// iotmon patch 41: takes connection `id`'s parked request of `subscription` (a filter
    /// or `$share/group/filter`) out of the waiters of the log of `filter`. Upstream looked
    /// the log up by the subscription, which finds none for a shared subscription (its
    /// request stayed parked after UNSUBSCRIBE, and was woken and served again by the next
    /// message), and took the connection's first request, whichever subscription it was
    /// for (a client subscribed to `a` and to `$share/g/a` has two in the log of `a`).
    pub fn remove_waiters_for_id(
        &mut self,
        id: ConnectionId,
        filter: &str,
        subscription: &str,
    ) -> Option<DataRequest> {
        let data = self.native.get_mut(self.filter_indexes.get(filter)?)?;
        let waiters = data.waiters.get_mut();

        waiters
            .iter()
            .position(|(conn_id, request)| *conn_id == id && request.filter == subscription)
            .and_then(|index| {
                waiters
                    .swap_remove_back(index)
                    .map(|(_, data_req)| data_req)
            })
    }

    // TODO: Currently returning a Option<Vec> instead of Option<&Vec> due to Rust borrow checker
    // limitation
    pub fn matches(&mut self, topic: &str) -> Option<Vec<usize>> {
        match &self.publish_filters.get(topic) {
            Some(v) => Some(v.to_vec()),
            None => {
                let v: Vec<usize> = self
                    .filter_indexes
                    .iter()
                    .filter(|(filter, _)| matches(topic, filter))
                    .map(|(_, filter_idx)| *filter_idx)
                    .collect();

                if !v.is_empty() {
                    self.publish_filters.insert(topic.to_owned(), v.clone());
                }

                Some(v)
            }
        }
    }

    /// The log of `filter`, created if there is none, and where its next message goes.
    /// iotmon patch 41: a new log is freed again once no subscription holds it; whoever
    /// subscribes to it must `hold` it.
    pub fn next_native_offset(&mut self, filter: &str) -> (FilterIdx, Offset) {
        if let Some(data) = self
            .filter_indexes
            .get(filter)
            .and_then(|idx| Some((*idx, self.native.get(idx)?)))
        {
            return (data.0, data.1.log.next_offset());
        }

        let data = Data::new(filter, &self.config);
        let offset = data.log.next_offset();

        // Add commitlog to datalog and add datalog index to filter to
        // datalog index map
        // iotmon patch 41: under an index never used before (see `next_filter_idx`).
        let mut idx = self.next_filter_idx;
        while self.native.contains_key(&idx) {
            idx = idx.wrapping_add(1);
        }
        self.next_filter_idx = idx.wrapping_add(1);
        self.native.insert(idx, data);
        self.filter_indexes.insert(filter.to_owned(), idx);

        // Match new filter to existing topics and add to publish_filters if it matches
        for (topic, filters) in self.publish_filters.iter_mut() {
            if matches(topic, filter) {
                filters.push(idx);
            }
        }

        (idx, offset)
    }

    /// iotmon patch 41: one more subscription (of a connected client or of a saved
    /// session) reads the log `idx`.
    pub fn hold(&mut self, idx: FilterIdx) {
        if let Some(data) = self.native.get_mut(&idx) {
            data.subscriptions += 1;
        }
    }

    /// iotmon patch 41: one subscription less reads the log of `filter` (a subscription's
    /// filter without its `$share/group/` prefix); the last one frees it, and with it its
    /// messages, its waiters and its index in every topic's list of matching filters.
    ///
    /// Upstream kept a log for every filter ever subscribed to, for ever, each up to
    /// `max_segment_size` × `max_segment_count` of messages: a client subscribing to
    /// ever-new filters grew the broker without bound. A count per log, rather than a scan
    /// of every connection and saved session when one unsubscribes, because the
    /// subscriptions are the only holders that keep a log alive: every data request belongs
    /// to a subscription, and goes with it (see `next_filter_idx` for the packet ids in
    /// flight that outlive it).
    pub fn release(&mut self, filter: &str) {
        let Some(&idx) = self.filter_indexes.get(filter) else {
            warn!(filter, "no log to release");
            return;
        };
        let Some(data) = self.native.get_mut(&idx) else {
            return;
        };
        data.subscriptions = data.subscriptions.saturating_sub(1);
        if data.subscriptions > 0 {
            return;
        }

        self.filter_indexes.remove(filter);
        if let Some(data) = self.native.remove(&idx) {
            if !data.waiters.waiters().is_empty() {
                warn!(filter, "log freed with parked requests");
            }
        }
        // As creating a log, a pass over the topics seen: a topic no filter matches any
        // more is forgotten too (it is matched again if it comes back).
        self.publish_filters.retain(|_, filters| {
            filters.retain(|&filter_idx| filter_idx != idx);
            !filters.is_empty()
        });
    }

    pub fn native_readv(
        &self,
        filter_idx: FilterIdx,
        offset: Offset,
        len: u64,
    ) -> io::Result<(Position, Vec<(PubWithProp, Offset)>)> {
        // iotmon patch 41: logs are freed when their last subscription goes, with the
        // subscriptions' requests, so a request always finds its log; were it not so, it
        // reads nothing rather than stopping the router thread (upstream `unwrap`ped).
        let Some(data) = self.native.get(&filter_idx) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no log {filter_idx}"),
            ));
        };
        let mut o = Vec::new();
        // TODO: `readv` is infallible but its current return type does not
        // reflect that. Consequently, this method is also infallible.
        // Encoding this information is important so that calling function
        // has more information on how this method behaves.
        let next = data.log.readv(offset, len, &mut o)?;

        let now = Instant::now();
        o.retain_mut(|(pubdata, _)| {
            // Keep data if no properties exists, which implies no message expiry!
            let Some(properties) = pubdata.properties.as_mut() else {
                return true;
            };

            // Keep data if there is no message_expiry_interval
            let Some(message_expiry_interval) = properties.message_expiry_interval.as_mut() else {
                return true;
            };

            let time_spent = (now - pubdata.timestamp).as_secs() as u32;

            let is_valid = time_spent < *message_expiry_interval;

            // ignore expired messages
            if is_valid {
                // set message_expiry_interval to (original value - time spent waiting in server)
                // ref: https://docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html#_Toc3901112
                *message_expiry_interval -= time_spent;
            }

            is_valid
        });

        // no need to include timestamp when returning
        let o = o
            .into_iter()
            .map(|(pubdata, offset)| ((pubdata.publish, pubdata.properties), offset))
            .collect();

        Ok((next, o))
    }

    pub fn shadow(&mut self, filter: &str) -> Option<PubWithProp> {
        let data = self.native.get_mut(self.filter_indexes.get(filter)?)?;
        data.log.last().map(|p| (p.publish, p.properties))
    }

    /// This method is called when the subscriber has caught up with the commit log. In which case,
    /// instead of actively checking for commits in each `Router::run_inner` iteration, we instead
    /// wait and only try reading again when new messages have been added to the commit log. This
    /// methods converts a `DataRequest` (which actively reads the commit log in `Router::consume`)
    /// to a `Waiter` (which only reads when notified).
    pub fn park(&mut self, id: ConnectionId, request: DataRequest) {
        // iotmon patch 41: a request whose log is gone (see `native_readv`) is dropped
        // rather than `unwrap`ped.
        match self.native.get_mut(&request.filter_idx) {
            Some(data) => data.waiters.register(id, request),
            None => warn!(filter = request.filter, "no log to park the request in"),
        }
    }

    /// Cleanup a connection from all the waiters
    pub fn clean(&mut self, id: ConnectionId) -> Vec<DataRequest> {
        let mut inflight = Vec::new();
        for data in self.native.values_mut() {
            inflight.append(&mut data.waiters.remove(id));
        }

        inflight
    }

    pub fn insert_to_retained_publishes(
        &mut self,
        publish: Publish,
        publish_properties: Option<PublishProperties>,
        topic: Topic,
    ) {
        let pub_with_props = (publish, publish_properties);
        self.retained_publishes.insert(topic, pub_with_props.into());
    }

    pub fn remove_from_retained_publishes(&mut self, topic: Topic) {
        self.retained_publishes.remove(&topic);
    }

    pub fn read_retained_messages(&mut self, filter: &str) -> Vec<PubWithProp> {
        trace!(info = "reading retain msg", filter = &filter);
        let now = Instant::now();

        // discard expired retained messages
        self.retained_publishes.retain(|_, pubdata| {
            // Keep data if no properties exists, which implies no message expiry!
            let Some(properties) = pubdata.properties.as_mut() else {
                return true;
            };

            // Keep data if there is no message_expiry_interval
            let Some(message_expiry_interval) = properties.message_expiry_interval.as_mut() else {
                return true;
            };

            let time_spent = (now - pubdata.timestamp).as_secs() as u32;

            let is_valid = time_spent < *message_expiry_interval;

            // ignore expired messages
            if is_valid {
                // set message_expiry_interval to (original value - time spent waiting in server)
                // ref: https://docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html#_Toc3901112
                *message_expiry_interval -= time_spent;
            }

            is_valid
        });

        // no need to include timestamp when returning
        self.retained_publishes
            .iter()
            .filter(|(topic, _)| matches(topic, filter))
            .map(|(_, p)| (p.publish.clone(), p.properties.clone()))
            .collect()
    }
}

pub struct Data<T> {
    filter: Filter,
    pub log: CommitLog<T>,
    pub waiters: Waiters<DataRequest>,
    meter: SubscriptionMeter,
    /// iotmon patch 41: the subscriptions that read this log, of connected clients and of
    /// saved sessions (plus one for a filter of `RouterConfig::initialized_filters`); the
    /// log is freed when the last one goes (`DataLog::release`).
    subscriptions: usize,
}

impl<T> Data<T>
where
    T: Storage + Clone,
{
    pub fn new(filter: &str, router_config: &RouterConfig) -> Data<T> {
        let mut max_segment_size = router_config.max_segment_size;
        let mut max_mem_segments = router_config.max_segment_count;

        // Override segment config for selected filter
        if let Some(config) = &router_config.custom_segment {
            for (f, segment_config) in config {
                if matches(filter, f) {
                    info!("Overriding segment config for filter: {}", filter);
                    max_segment_size = segment_config.max_segment_size;
                    max_mem_segments = segment_config.max_segment_count;
                }
            }
        }

        // max_segment_size: usize, max_mem_segments: usize
        let log = CommitLog::new(max_segment_size, max_mem_segments).unwrap();

        let waiters = Waiters::with_capacity(10);
        let metrics = SubscriptionMeter::default();
        Data {
            filter: filter.to_owned(),
            log,
            waiters,
            meter: metrics,
            subscriptions: 0,
        }
    }

    /// Writes to all the filters that are mapped to this publish topic
    /// and wakes up consumers that are matching this topic (if they exist)
    pub fn append(
        &mut self,
        item: T,
        notifications: &mut VecDeque<(ConnectionId, DataRequest)>,
    ) -> (Offset, &Filter) {
        let size = item.size();
        let offset = self.log.append(item);
        if let Some(mut parked) = self.waiters.take() {
            notifications.append(&mut parked);
        }

        self.meter.count += 1;
        self.meter.total_size += size;

        (offset, &self.filter)
    }
}

/// Acks log for a subscription
#[derive(Debug)]
pub struct AckLog {
    // Committed acks per connection. First pkid, last pkid, data
    committed: VecDeque<Ack>,
    // Recorded qos 2 publishes
    recorded: VecDeque<(Publish, Option<PublishProperties>)>,
}

impl AckLog {
    /// New log
    pub fn new() -> AckLog {
        // iotmon patch: grown on first use rather than 100 entries each up front (tens of
        // KiB per connection, touched slot by slot as the ring turns).
        AckLog {
            committed: VecDeque::new(),
            recorded: VecDeque::new(),
        }
    }

    pub fn connack(&mut self, id: ConnectionId, ack: ConnAck, props: Option<ConnAckProperties>) {
        let ack = Ack::ConnAck(id, ack, props);
        self.committed.push_back(ack);
    }

    pub fn suback(&mut self, ack: SubAck) {
        let ack = Ack::SubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn puback(&mut self, ack: PubAck) {
        let ack = Ack::PubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn pubrec(&mut self, publish: Publish, props: Option<PublishProperties>, ack: PubRec) {
        let ack = Ack::PubRec(ack);
        self.recorded.push_back((publish, props));
        self.committed.push_back(ack);
    }

    pub fn pubrel(&mut self, ack: PubRel) {
        let ack = Ack::PubRel(ack);
        self.committed.push_back(ack);
    }

    pub fn pubcomp(&mut self, ack: PubComp) -> Option<(Publish, Option<PublishProperties>)> {
        let ack = Ack::PubComp(ack);
        self.committed.push_back(ack);
        self.recorded.pop_front()
    }

    pub fn pingresp(&mut self, ack: PingResp) {
        let ack = Ack::PingResp(ack);
        self.committed.push_back(ack);
    }

    pub fn unsuback(&mut self, ack: UnsubAck) {
        let ack = Ack::UnsubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn readv(&mut self) -> &mut VecDeque<Ack> {
        &mut self.committed
    }
}

#[cfg(test)]
mod test {
    use super::DataLog;
    use crate::router::shared_subs::Strategy;
    use crate::RouterConfig;

    #[test]
    fn publish_filters_updating_correctly_on_new_topic_subscription() {
        let config = RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 10,
            max_outgoing_packet_count: 1024,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Strategy::RoundRobin,
            lossless_subscribers: Vec::new(),
        };
        let mut data = DataLog::new(config).unwrap();
        data.next_native_offset("topic/a");
        data.matches("topic/a");

        data.next_native_offset("topic/+");

        assert_eq!(data.publish_filters.get("topic/a").unwrap().len(), 2);
    }

    #[test]
    fn publish_filters_updating_correctly_on_new_publish() {
        let config = RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 10,
            max_outgoing_packet_count: 1024,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Strategy::RoundRobin,
            lossless_subscribers: Vec::new(),
        };
        let mut data = DataLog::new(config).unwrap();
        data.next_native_offset("+/+");

        data.matches("topic/a");

        assert_eq!(data.publish_filters.get("topic/a").unwrap().len(), 1);
    }

    //     #[test]
    //     fn appends_are_written_to_correct_commitlog() {
    //         pretty_env_logger::init();
    //         let config = RouterConfig {
    //             instant_ack: true,
    //             max_segment_size: 1024,
    //             max_connections: 10,
    //             max_mem_segments: 10,
    //             max_disk_segments: 0,
    //             max_read_len: 1024,
    //             log_dir: None,
    //             dynamic_log: true,
    //         };

    //         let mut data = DataLog::new(config).unwrap();
    //         data.next_native_offset("/devices/2321/actions");
    //         for i in 0..2 {
    //             let publish = Publish::new("/devices/2321/events/imu/jsonarray", QoS::AtLeastOnce, vec![1, 2, 3]);
    //             let v = data.native_append(publish);
    //             dbg!(v);
    //         }

    //         for i in 0..2 {
    //             let publish = Publish::new("/devices/2321/actions", QoS::AtLeastOnce, vec![1, 2, 3]);
    //             let v = data.native_append(publish);
    //             dbg!(v);
    //         }
    //     }
}
