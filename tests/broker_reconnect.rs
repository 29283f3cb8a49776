//! Devices that reconnect the way flaky ones do, over raw sockets against `iotmon broker`:
//! the same client id again and again, sequentially and overlapping, clean and persistent
//! sessions, with and without a last will, keep alive 0. Whatever one client id does, the
//! broker keeps serving everyone else, and a takeover always wins (the newcomer is accepted,
//! the older connection closed).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mqtt::{Connect, RawClient, Version, ANSWER};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::support::broker::BrokerProcess;
use crate::support::mqtt;
use crate::support::{eventually, DEADLINE};

const ANONYMOUS: &str = "allow_anonymous = true";

/// A last will: topic and payload.
type Will<'a> = Option<(&'a str, &'a str)>;

/// An MQTT 3.1.1 CONNECT.
fn connect_packet<'a>(
    client_id: &'a str,
    keep_alive: u16,
    clean: bool,
    will: Will<'a>,
) -> Connect<'a> {
    let mut connect = Connect::new(Version::V311, client_id).keep_alive(keep_alive);
    connect.clean = clean;
    connect.will = will.map(|(topic, message)| mqtt::Will::new(topic, message));
    connect
}

/// Connects and returns the connection with the CONNACK's return code.
async fn connect(broker: SocketAddr, packet: Connect<'_>) -> (RawClient, u8) {
    let (client, connack) = RawClient::connect(broker, packet).await;
    (client, connack.code)
}

/// A well-behaved rumqttc client subscribed to `filter`, collecting the payloads it gets.
async fn bystander(
    broker: SocketAddr,
    id: &str,
    filter: &str,
) -> (AsyncClient, Arc<Mutex<Vec<String>>>) {
    let mut options = MqttOptions::new(id, broker.ip().to_string(), broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 100);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
    let received = Arc::new(Mutex::new(Vec::new()));
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    let sink = received.clone();
    tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = subscribed_tx.take() {
                        tx.send(()).ok();
                    }
                }
                Event::Incoming(Packet::Publish(publish)) => sink
                    .lock()
                    .expect("not poisoned")
                    .push(String::from_utf8_lossy(&publish.payload).into_owned()),
                _ => {}
            }
        }
    });
    tokio::time::timeout(ANSWER, subscribed)
        .await
        .expect("SUBACK in time")
        .expect("the event loop runs");
    (client, received)
}

/// Checks that the broker still serves others: a bystander subscribed before the storm
/// receives a new publish, and a newcomer connects.
async fn broker_serves_everyone(
    broker: SocketAddr,
    client: &AsyncClient,
    received: &Mutex<Vec<String>>,
) {
    client
        .publish("check/alive", QoS::AtLeastOnce, false, "still here")
        .await
        .expect("publish queued");
    eventually(
        DEADLINE,
        "the bystander receives a publish after the storm",
        || async {
            received
                .lock()
                .expect("not poisoned")
                .iter()
                .any(|p| p == "still here")
        },
    )
    .await;
    let (mut socket, code) = connect(broker, connect_packet("newcomer", 30, true, None)).await;
    assert_eq!(code, 0, "a newcomer is accepted after the storm");
    assert!(socket.answers_ping().await, "the newcomer is served");
}

/// One client id, `rounds` times: CONNECT, CONNACK, close without DISCONNECT, at once again.
async fn sequential_storm(
    broker: SocketAddr,
    client_id: &str,
    rounds: usize,
    clean: bool,
    will_topic: Option<&str>,
) {
    for round in 0..rounds {
        let message = format!("gone-{round}");
        let will = will_topic.map(|topic| (topic, message.as_str()));
        let (socket, code) = connect(broker, connect_packet(client_id, 30, clean, will)).await;
        assert_eq!(
            code, 0,
            "round {round} of {client_id}: the takeover is accepted"
        );
        drop(socket);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sequential_reconnects_of_one_client_id_leave_the_broker_serving_everyone() {
    let broker = BrokerProcess::start(ANONYMOUS, &[], &[]);
    let addr = broker.listeners["mqtt"];
    let (client, received) = bystander(addr, "bystander", "check/#").await;
    for (client_id, clean) in [("flaky-clean", true), ("flaky-persistent", false)] {
        sequential_storm(addr, client_id, 1_000, clean, None).await;
    }
    broker_serves_everyone(addr, &client, &received).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_closed_without_disconnect_publishes_its_own_will_once() {
    let broker = BrokerProcess::start(ANONYMOUS, &[], &[]);
    let addr = broker.listeners["mqtt"];
    // Subscribed to everything: the wills, and the check that the broker still serves.
    let (client, wills) = bystander(addr, "will-watcher", "#").await;
    const ROUNDS: usize = 1_000;
    // MQTT-3.1.2-8: the will is published when the connection closes without DISCONNECT,
    // whether the next connection of the client id starts clean or resumes the session.
    sequential_storm(addr, "flaky-will-clean", ROUNDS, true, Some("will/clean")).await;
    sequential_storm(
        addr,
        "flaky-will-persistent",
        ROUNDS,
        false,
        Some("will/persistent"),
    )
    .await;
    let expected: BTreeSet<String> = (0..ROUNDS).map(|round| format!("gone-{round}")).collect();
    eventually(DEADLINE, "every round's will arrives", || async {
        wills.lock().expect("not poisoned").len() >= 2 * ROUNDS
    })
    .await;
    // Each will once, and each round's own will (not a later connection's): every round's
    // payload exactly twice, once per storm.
    let got = wills.lock().expect("not poisoned").clone();
    assert_eq!(got.len(), 2 * ROUNDS, "no will is published twice");
    let mut per_payload = std::collections::BTreeMap::<&str, usize>::new();
    for payload in &got {
        *per_payload.entry(payload.as_str()).or_default() += 1;
    }
    for round in &expected {
        assert_eq!(
            per_payload.get(round.as_str()),
            Some(&2),
            "the will of {round}, once per storm"
        );
    }
    broker_serves_everyone(addr, &client, &wills).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_connects_of_one_client_id_are_each_accepted_and_the_last_one_stays() {
    let broker = BrokerProcess::start(ANONYMOUS, &[], &[]);
    let addr = broker.listeners["mqtt"];
    let (client, received) = bystander(addr, "bystander", "check/#").await;
    // 50 tasks × 20 rounds of the same client id at once, half of them persistent and with
    // a will: each CONNECT gets CONNACK "accepted" (a takeover always wins), whatever
    // happens to the connections it replaces.
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..50 {
        tasks.spawn(async move {
            let clean = task % 2 == 0;
            let will = (!clean).then_some(("will/overlap", "gone"));
            for _ in 0..20 {
                let (socket, code) =
                    connect(addr, connect_packet("flaky-overlap", 30, clean, will)).await;
                assert_eq!(code, 0, "an overlapping takeover is accepted");
                drop(socket);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("no task failed");
    }
    broker_serves_everyone(addr, &client, &received).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_replaces_one_just_closed_is_not_dropped_by_the_old_ones_late_close() {
    let broker = BrokerProcess::start(ANONYMOUS, &[], &[]);
    let addr = broker.listeners["mqtt"];
    // The old connection's close reaches the router after the newcomer took its place (and
    // its connection id); it must not close the newcomer.
    for round in 0..200 {
        let packet = connect_packet("flaky-late-close", 30, true, None);
        let (old, _) = connect(addr, packet).await;
        drop(old);
        let (mut new, code) = connect(addr, packet).await;
        assert_eq!(code, 0, "round {round}: the newcomer is accepted");
        // Time for the old connection's close to reach the router; then the newcomer must
        // still be there (two pings: the first may be answered before the close arrives).
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            new.answers_ping().await,
            "round {round}: the newcomer is still served"
        );
        assert!(
            new.answers_ping().await,
            "round {round}: the newcomer is still served"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_0_is_accepted_and_the_connection_is_never_timed_out() {
    let broker = BrokerProcess::start(ANONYMOUS, &[], &[]);
    let addr = broker.listeners["mqtt"];
    // MQTT 3.1.1 §3.1.2.10: a keep alive of 0 turns the keep-alive mechanism off.
    let (mut socket, code) = connect(addr, connect_packet("no-keep-alive", 0, true, None)).await;
    assert_eq!(code, 0, "keep alive 0 is accepted");
    // Silent for longer than any keep-alive limit derived from 0 would allow; still there.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        socket.answers_ping().await,
        "the connection is still served"
    );
    let (mut other, code) = connect(addr, connect_packet("", 0, true, None)).await;
    assert_eq!(
        code, 0,
        "keep alive 0 with an empty client id and a clean session"
    );
    assert!(other.answers_ping().await, "that connection is served too");
}

/// Clients that each connect once with a persistent session and a new client id (a fleet
/// being re-provisioned, or anyone) cannot grow the broker without bound: past
/// `max_saved_sessions` the oldest saved session is dropped and counted, the newest kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_sessions_are_bounded_and_the_oldest_dropped_first() {
    let broker = BrokerProcess::start("allow_anonymous = true\nmax_saved_sessions = 3", &[], &[]);
    let addr = broker.listeners["mqtt"];
    let ids: Vec<String> = (1..=5).map(|n| format!("provisioned-{n}")).collect();
    for id in &ids {
        let mut client = RawClient::connected(addr, connect_packet(id, 30, false, None)).await;
        assert_eq!(client.subscribe(1, &[("fleet/#", 1)]).await, [1]);
        client.disconnect().await;
    }
    eventually(DEADLINE, "two saved sessions dropped", || async {
        let metrics = broker.metrics().await;
        let sample = |name| iotmon_probe::metrics::sample(&metrics, name);
        (sample("iotmon_broker_sessions_dropped_total") == Some(2.0)
            && sample("iotmon_broker_saved_sessions") == Some(3.0))
        .then_some(())
        .ok_or(metrics)
    })
    .await;
    // The newest sessions are still there; the oldest are gone.
    let (newest, connack) =
        RawClient::connect(addr, connect_packet(&ids[4], 30, false, None)).await;
    assert!(connack.session_present, "the newest session is kept");
    newest.disconnect().await;
    let (oldest, connack) =
        RawClient::connect(addr, connect_packet(&ids[0], 30, false, None)).await;
    assert!(!connack.session_present, "the oldest session was dropped");
    oldest.disconnect().await;
}
