//! The broker bench's load generator, cheap enough that the brokers, not it, set the pace on
//! a two-core machine: raw MQTT connections (a real CONNECT/CONNACK handshake each) whose
//! PUBLISH packets are encoded once and written in batches at a paced rate, and one
//! subscriber on `sensors/#` that counts PUBLISH frames without decoding them.
//!
//! One pacer task drives every connection: each tick it visits a slice of the connections
//! (all of them once per [`PERIOD`]) and writes, without waiting, what each one owes for the
//! time since its last visit. At QoS 1 the same visit first reads, without waiting, the
//! PUBACKs that have arrived (no task wakes per acknowledgement), and a connection holds at
//! most [`QOS1_WINDOW`] unacknowledged messages. What a connection owes
//! but cannot send (its socket is full, or its window is) is *held back* by the broker; what
//! the pacer owes because it ran late is *missed* by the generator.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use iotmon_wire::topics::{sensor_topic, SENSORS_FILTER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{interval, timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::BenchError;
use crate::CONNECTS_PER_SECOND;
use iotmon_probe::mqtt::{self, Connect, Frame, Publish, Version};
use iotmon_simulator::SensorModel;
use iotmon_wire::unix_millis;

/// Every connection is visited once per period.
const PERIOD: Duration = Duration::from_millis(100);
/// Ticks per period: each visits one slot's connections, so writes spread over the period.
const SLOTS: usize = 20;
/// Unacknowledged QoS 1 messages a connection may have (rumqttc's default inflight is 100).
pub(crate) const QOS1_WINDOW: u64 = 64;
/// Keep-alive asked for in CONNECT: long enough that no PINGREQ is needed during a bench.
const KEEP_ALIVE_SECS: u16 = 3600;
/// A CONNACK or SUBACK slower than this is a failure.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// The subscriber's pause after a small read.
const READ_PAUSE: Duration = Duration::from_millis(1);
/// After the pacer stops: how long unsent bytes and missing PUBACKs may take.
const FLUSH_LIMIT: Duration = Duration::from_secs(10);

/// Counters of the load generator since it started.
#[derive(Debug, Default)]
struct Counters {
    offered: AtomicU64,
    published: AtomicU64,
    held_back: AtomicU64,
    missed: AtomicU64,
    acked: AtomicU64,
    writes: AtomicU64,
}

/// The load generator's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LoadCount {
    /// Messages the schedule asked for: published + held back + missed.
    pub offered: u64,
    /// Messages written (or queued behind a partial write) to a socket.
    pub published: u64,
    /// Messages not sent because the broker was not taking them (full socket, full QoS 1
    /// window, or a closed connection).
    pub held_back: u64,
    /// Messages not sent because the pacer itself ran late (the generator's limit).
    pub missed: u64,
    /// PUBACKs received (QoS 1).
    pub acked: u64,
    /// Socket writes that carried new messages (published / writes: messages per write).
    pub writes: u64,
}

impl Counters {
    fn snapshot(&self) -> LoadCount {
        LoadCount {
            offered: self.offered.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            held_back: self.held_back.load(Ordering::Relaxed),
            missed: self.missed.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
        }
    }
}

impl std::ops::Sub for LoadCount {
    type Output = LoadCount;

    fn sub(self, earlier: LoadCount) -> LoadCount {
        LoadCount {
            offered: self.offered - earlier.offered,
            published: self.published - earlier.published,
            held_back: self.held_back - earlier.held_back,
            missed: self.missed - earlier.missed,
            acked: self.acked - earlier.acked,
            writes: self.writes - earlier.writes,
        }
    }
}

/// A fleet of raw MQTT publishers, one device per connection, at a rate set with
/// [`RawFleet::set_rate`] (0 until then).
pub(crate) struct RawFleet {
    /// Messages per second for the whole fleet, as `f64` bits.
    rate: Arc<AtomicU64>,
    counters: Arc<Counters>,
    /// Connections that completed the handshake.
    pub connected: usize,
    stop_pacer: CancellationToken,
    pacer: JoinHandle<Vec<Publisher>>,
}

impl RawFleet {
    /// Opens `connections` connections to `broker` at [`CONNECTS_PER_SECOND`], each
    /// publishing to its own `sensors/<group>/<device>` topic at `qos`, and starts pacing
    /// (at rate 0), with at most `per_write` messages per socket write (`None`: what each
    /// connection owes at a visit goes in one write).
    ///
    /// # Errors
    /// No connection could be opened.
    pub async fn connect(
        broker: SocketAddr,
        connections: usize,
        qos: u8,
        per_write: Option<usize>,
        shutdown: &CancellationToken,
    ) -> Result<RawFleet, BenchError> {
        let streams = open_connections(broker, connections, shutdown).await;
        if streams.is_empty() {
            return Err(BenchError::Failed(format!(
                "no connection to {broker} could be opened"
            )));
        }
        let counters = Arc::new(Counters::default());
        let mut publishers = Vec::with_capacity(streams.len());
        let connected = streams.len();
        for (index, stream) in streams {
            let (reader, writer) = stream.into_split();
            publishers.push(Publisher::new(reader, writer, index, qos));
        }
        let rate = Arc::new(AtomicU64::new(0f64.to_bits()));
        let stop_pacer = CancellationToken::new();
        let limits = Limits {
            window: (qos > 0).then_some(QOS1_WINDOW),
            per_write,
        };
        let pacer = tokio::spawn(pace(
            publishers,
            limits,
            Arc::clone(&rate),
            Arc::clone(&counters),
            stop_pacer.clone(),
        ));
        Ok(RawFleet {
            rate,
            counters,
            connected,
            stop_pacer,
            pacer,
        })
    }

    /// Sets the fleet's total rate, messages per second.
    pub fn set_rate(&self, per_second: f64) {
        self.rate.store(per_second.to_bits(), Ordering::Relaxed);
    }

    /// The counters now.
    pub fn count(&self) -> LoadCount {
        self.counters.snapshot()
    }

    /// Stops publishing, writes what is still queued, waits (at QoS 1) for the outstanding
    /// PUBACKs, then closes every connection. Returns the final counters.
    pub async fn stop(self) -> LoadCount {
        self.stop_pacer.cancel();
        let mut publishers = self.pacer.await.unwrap_or_default();
        let deadline = Instant::now() + FLUSH_LIMIT;
        for publisher in &mut publishers {
            publisher.flush_before(deadline).await;
        }
        let sent: u64 = publishers.iter().map(|publisher| publisher.sent).sum();
        let qos1 = publishers
            .iter()
            .any(|publisher| publisher.packet_id_at.is_some());
        while qos1 && Instant::now() < deadline {
            let acks: u64 = publishers.iter_mut().map(Publisher::read_acks).sum();
            self.counters.acked.fetch_add(acks, Ordering::Relaxed);
            if publishers
                .iter()
                .map(|publisher| publisher.acked)
                .sum::<u64>()
                >= sent
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Closing the write halves sends FIN: a broker reads what came before it.
        drop(publishers);
        self.counters.snapshot()
    }
}

/// Opens the connections at [`CONNECTS_PER_SECOND`], handshakes overlapping; returns those
/// that got a CONNACK, with their device index.
async fn open_connections(
    broker: SocketAddr,
    connections: usize,
    shutdown: &CancellationToken,
) -> Vec<(usize, TcpStream)> {
    let mut handshakes = JoinSet::new();
    let mut pace = interval(Duration::from_secs_f64(1.0 / CONNECTS_PER_SECOND));
    for index in 0..connections {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = pace.tick() => {}
        }
        handshakes.spawn(async move {
            let client_id = format!("bench-raw-{index}");
            let stream = timeout(HANDSHAKE_LIMIT, connect(broker, &client_id)).await;
            match stream {
                Ok(Ok(stream)) => Some((index, stream)),
                _ => None,
            }
        });
    }
    let mut streams = Vec::with_capacity(connections);
    while let Some(joined) = handshakes.join_next().await {
        if let Ok(Some(stream)) = joined {
            streams.push(stream);
        }
    }
    streams.sort_by_key(|(index, _)| *index);
    streams
}

/// TCP connect, CONNECT, and wait for a CONNACK that accepts.
pub(crate) async fn connect(broker: SocketAddr, client_id: &str) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(broker).await?;
    stream.set_nodelay(true)?;
    let mut packet = Vec::with_capacity(64);
    Connect::new(Version::V311, client_id)
        .keep_alive(KEEP_ALIVE_SECS)
        .encode_into(&mut packet);
    stream.write_all(&packet).await?;
    let mut reply = [0u8; 4];
    stream.read_exact(&mut reply).await?;
    match mqtt::connack_code(&reply) {
        Some(0) => Ok(stream),
        code => Err(std::io::Error::other(format!(
            "connection refused (CONNACK {code:?})"
        ))),
    }
}

/// A reading from the simulator's own sensor model (temperature, humidity, pressure), seeded
/// by the device's index; encoded once and sent over and over.
fn payload(index: usize) -> Vec<u8> {
    SensorModel::new(index as u64)
        .next_reading(unix_millis())
        .to_payload()
}

/// One connection's publishing side, owned by the pacer.
struct Publisher {
    writer: OwnedWriteHalf,
    /// Its PUBLISH, encoded once.
    packet: Vec<u8>,
    /// Where the packet id sits in `packet` (QoS 1).
    packet_id_at: Option<usize>,
    next_packet_id: u16,
    /// Messages written (or queued in `unsent`).
    sent: u64,
    /// Its read side, read without waiting for PUBACKs at each visit.
    reader: OwnedReadHalf,
    /// PUBACKs read so far.
    acked: u64,
    /// Bytes read but not yet a whole packet.
    inbox: Vec<u8>,
    /// The tail of a write the socket took only in part.
    unsent: Vec<u8>,
    /// Messages owed but not yet due in whole (the fraction carried to the next visit).
    credit: f64,
    last_visit: Instant,
    closed: bool,
}

/// What a publisher may send at a visit.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// QoS 1: unacknowledged messages allowed.
    window: Option<u64>,
    /// Messages per socket write.
    per_write: Option<usize>,
}

/// What one tick did, added to the shared counters once per tick.
#[derive(Debug, Default)]
struct Tally {
    offered: u64,
    published: u64,
    held_back: u64,
    missed: u64,
    writes: u64,
    acked: u64,
}

impl Publisher {
    fn new(reader: OwnedReadHalf, writer: OwnedWriteHalf, index: usize, qos: u8) -> Publisher {
        let topic = sensor_topic(&format!("bench/g{}", index / 100), &format!("dev-{index}"));
        let mut packet = Vec::with_capacity(160);
        let payload = payload(index);
        let packet_id_at = Publish::new(&topic, &payload)
            .qos(qos, 1)
            .encode_into(Version::V311, &mut packet);
        Publisher {
            writer,
            packet,
            packet_id_at,
            next_packet_id: 1,
            sent: 0,
            reader,
            acked: 0,
            inbox: Vec::new(),
            unsent: Vec::new(),
            credit: 0.0,
            last_visit: Instant::now(),
            closed: false,
        }
    }

    /// Writes what is owed since the last visit at `per_second`, as far as the socket and
    /// the QoS 1 `window` allow. `scratch` is a reusable buffer.
    fn visit(
        &mut self,
        now: Instant,
        per_second: f64,
        limits: Limits,
        scratch: &mut Vec<u8>,
        tally: &mut Tally,
    ) {
        let elapsed = now.saturating_duration_since(self.last_visit).as_secs_f64();
        self.last_visit = now;
        self.credit += per_second * elapsed;
        let owed = self.credit.floor();
        self.credit -= owed;
        let (due, missed) = split_owed(owed as u64, per_second);
        tally.offered += due + missed;
        tally.missed += missed;
        if self.closed || !self.flush() {
            tally.held_back += due;
            return;
        }
        let free = limits.window.map_or(u64::MAX, |window| {
            tally.acked += self.read_acks();
            window.saturating_sub(self.sent - self.acked)
        });
        let batch = due.min(free);
        tally.held_back += due - batch;
        if batch == 0 {
            return;
        }
        scratch.clear();
        for _ in 0..batch {
            if let Some(at) = self.packet_id_at {
                mqtt::set_packet_id(&mut self.packet, at, self.next_packet_id);
                self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            }
            scratch.extend_from_slice(&self.packet);
        }
        // At most `per_write` messages per write; what the socket does not take waits in
        // `unsent`, and a closed connection's messages show as lost.
        let chunk = self.packet.len() * limits.per_write.unwrap_or(usize::MAX / self.packet.len());
        let mut written = 0;
        while written < scratch.len() {
            let end = written.saturating_add(chunk).min(scratch.len());
            match self.writer.try_write(&scratch[written..end]) {
                Ok(taken) => {
                    tally.writes += 1;
                    written += taken;
                    if written < end {
                        break;
                    }
                }
                Err(error) => {
                    self.closed = error.kind() != std::io::ErrorKind::WouldBlock;
                    break;
                }
            }
        }
        self.unsent.extend_from_slice(&scratch[written..]);
        self.sent += batch;
        tally.published += batch;
    }

    /// Reads the PUBACKs that have arrived, without waiting; how many. A closed or broken
    /// connection is marked closed.
    fn read_acks(&mut self) -> u64 {
        let mut chunk = [0u8; 1024];
        let mut acks = 0;
        loop {
            match self.reader.try_read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(read) => {
                    self.inbox.extend_from_slice(&chunk[..read]);
                    match for_each_frame(&self.inbox, |frame, _| {
                        acks += u64::from(frame.kind == mqtt::PUBACK);
                    }) {
                        Ok(used) => {
                            self.inbox.drain(..used);
                            continue;
                        }
                        Err(_) => self.closed = true,
                    }
                }
                Err(error) => self.closed |= error.kind() != std::io::ErrorKind::WouldBlock,
            }
            break;
        }
        self.acked += acks;
        acks
    }

    /// Writes what is left of an earlier partial write, without waiting; whether nothing is
    /// left.
    fn flush(&mut self) -> bool {
        if self.unsent.is_empty() {
            return true;
        }
        match self.writer.try_write(&self.unsent) {
            Ok(written) => {
                self.unsent.drain(..written);
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => self.closed = true,
        }
        self.unsent.is_empty()
    }

    /// Writes what is left, waiting for the socket until `deadline`.
    async fn flush_before(&mut self, deadline: Instant) {
        if self.closed || self.unsent.is_empty() {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = timeout(left, self.writer.write_all(&self.unsent)).await;
        self.unsent.clear();
    }
}

/// Splits what a connection owes at one visit into what it sends now and what it gives up
/// as missed: a visit that comes late (the pacer was descheduled) sends at most four
/// periods' worth, so the generator never bursts to catch up.
fn split_owed(owed: u64, per_second: f64) -> (u64, u64) {
    let cap = ((per_second * PERIOD.as_secs_f64() * 4.0).ceil() as u64).max(4);
    (owed.min(cap), owed.saturating_sub(cap))
}

/// The pacer: visits one slot of publishers per tick until `stop`, then hands them back.
async fn pace(
    mut publishers: Vec<Publisher>,
    limits: Limits,
    rate: Arc<AtomicU64>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> Vec<Publisher> {
    let mut tick = interval(PERIOD / SLOTS as u32);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut scratch = Vec::with_capacity(64 * 1024);
    let count = publishers.len().max(1) as f64;
    let mut slot = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let per_connection = f64::from_bits(rate.load(Ordering::Relaxed)) / count;
        let now = Instant::now();
        let mut tally = Tally::default();
        for publisher in publishers.iter_mut().skip(slot).step_by(SLOTS) {
            publisher.visit(now, per_connection, limits, &mut scratch, &mut tally);
        }
        counters.offered.fetch_add(tally.offered, Ordering::Relaxed);
        counters
            .published
            .fetch_add(tally.published, Ordering::Relaxed);
        counters
            .held_back
            .fetch_add(tally.held_back, Ordering::Relaxed);
        counters.missed.fetch_add(tally.missed, Ordering::Relaxed);
        counters.writes.fetch_add(tally.writes, Ordering::Relaxed);
        counters.acked.fetch_add(tally.acked, Ordering::Relaxed);
        slot = (slot + 1) % SLOTS;
    }
    publishers
}

/// Calls `on_frame` for each whole packet at the start of `buf`; returns the bytes used.
///
/// # Errors
/// A malformed fixed header.
fn for_each_frame(
    buf: &[u8],
    mut on_frame: impl FnMut(&Frame, &[u8]),
) -> Result<usize, mqtt::FrameError> {
    let mut used = 0;
    while let Some(frame) = mqtt::frame(&buf[used..])? {
        on_frame(&frame, &buf[used..used + frame.len]);
        used += frame.len;
    }
    Ok(used)
}

/// Subscribes to `sensors/#` at QoS 0 and counts the PUBLISH packets received in
/// `delivered` until `stop`. Returns once the broker has confirmed the subscription.
///
/// # Errors
/// The connection, CONNACK or SUBACK failed or took too long.
pub(crate) async fn subscribe(
    broker: SocketAddr,
    delivered: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, BenchError> {
    let fail = |what: String| BenchError::Failed(format!("subscriber: {what}"));
    let mut stream = timeout(HANDSHAKE_LIMIT, connect(broker, "bench-subscriber"))
        .await
        .map_err(|_| fail("no CONNACK in time".into()))?
        .map_err(|error| fail(error.to_string()))?;
    let mut packet = Vec::new();
    packet.extend(mqtt::subscribe(Version::V311, 1, &[(SENSORS_FILTER, 0)]));
    stream
        .write_all(&packet)
        .await
        .map_err(|error| fail(error.to_string()))?;
    let (subscribed, confirmed) = tokio::sync::oneshot::channel();
    let counting = tokio::spawn(count_publishes(stream, delivered, subscribed, stop));
    match timeout(HANDSHAKE_LIMIT, confirmed).await {
        Ok(Ok(())) => Ok(counting),
        _ => {
            counting.abort();
            Err(fail("no SUBACK in time".into()))
        }
    }
}

/// The subscriber's loop: reads in large chunks, counts PUBLISH frames, acknowledges any at
/// QoS 1, and says when the SUBACK came.
async fn count_publishes(
    mut stream: TcpStream,
    delivered: Arc<AtomicU64>,
    subscribed: tokio::sync::oneshot::Sender<()>,
    stop: CancellationToken,
) {
    // Never sent if the broker refuses the subscription: `subscribe` then times out.
    let mut subscribed = Some(subscribed);
    let mut buf = vec![0u8; 256 * 1024];
    let mut filled = 0;
    let mut acks = Vec::new();
    loop {
        if filled == buf.len() {
            // One packet larger than the buffer: make room for it.
            buf.resize(buf.len() * 2, 0);
        }
        let read = tokio::select! {
            () = stop.cancelled() => return,
            read = stream.read(&mut buf[filled..]) => read,
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
        if filled < buf.len() / 4 {
            // A broker that writes each message on its own would wake this loop per
            // message; a millisecond's pause lets deliveries gather into large reads, so
            // the subscriber's CPU does not grow with the broker's write pattern.
            tokio::time::sleep(READ_PAUSE).await;
        }
        let mut publishes = 0;
        let mut suback = false;
        let Ok(used) = for_each_frame(&buf[..filled], |frame, packet| match frame.kind {
            mqtt::PUBLISH => {
                publishes += 1;
                if frame.qos() > 0 {
                    if let Some(id) = mqtt::publish_packet_id(frame, packet) {
                        mqtt::ack_into(mqtt::PUBACK, id, &mut acks);
                    }
                }
            }
            mqtt::SUBACK => suback = mqtt::suback_granted(packet, frame),
            _ => {}
        }) else {
            return;
        };
        buf.copy_within(used..filled, 0);
        filled -= used;
        delivered.fetch_add(publishes, Ordering::Relaxed);
        if suback {
            if let Some(subscribed) = subscribed.take() {
                let _ = subscribed.send(());
            }
        }
        if !acks.is_empty() {
            if stream.write_all(&acks).await.is_err() {
                return;
            }
            acks.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_visits_give_up_what_exceeds_four_periods() {
        // 100/s per connection: 10 per period, at most 40 at one visit.
        assert_eq!(split_owed(7, 100.0), (7, 0));
        assert_eq!(split_owed(50, 100.0), (40, 10));
        // Slow connections may still send a few at once.
        assert_eq!(split_owed(3, 0.5), (3, 0));
        assert_eq!(split_owed(9, 0.5), (4, 5));
    }

    #[test]
    fn frames_are_consumed_whole_and_partial_tails_kept() {
        let mut stream = Vec::new();
        mqtt::ack_into(mqtt::PUBACK, 1, &mut stream);
        Publish::new("sensors/a/b", b"{\"t\":1}").encode_into(Version::V311, &mut stream);
        let whole = stream.len();
        mqtt::ack_into(mqtt::PUBACK, 2, &mut stream);
        let mut kinds = Vec::new();
        let used = for_each_frame(&stream[..stream.len() - 1], |frame, _| {
            kinds.push(frame.kind);
        })
        .expect("valid");
        assert_eq!(used, whole);
        assert_eq!(kinds, [mqtt::PUBACK, mqtt::PUBLISH]);
    }

    #[test]
    fn payloads_are_the_simulators_json_shape() {
        let payload: serde_json::Value = serde_json::from_slice(&payload(5)).expect("JSON");
        for key in ["ts", "temperature", "humidity", "pressure"] {
            assert!(payload[key].is_number(), "{key} in {payload}");
        }
    }
}
