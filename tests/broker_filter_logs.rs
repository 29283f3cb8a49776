//! The broker keeps a log per subscription filter only while a subscription refers to it:
//! a client that subscribes to ever-new filters (an attacker, or the fuzzer) used to grow
//! the router's memory for ever, one log per filter. Raw clients over real sockets against
//! `iotmon broker`; the number of logs is read from `iotmon_broker_filter_logs` on
//! `/metrics`, and the broker must still route, retained messages included, to whoever
//! subscribes to a freed filter again.

use std::net::SocketAddr;

use crate::support::broker::BrokerProcess;
use crate::support::mqtt::{Connect, Delivery, Publish, RawClient, Version};
use crate::support::{eventually, DEADLINE};

const ANONYMOUS: &str = "allow_anonymous = true";

/// Filters' logs of each kind the churning client below subscribes to.
const EACH: usize = 50;

/// The broker's `iotmon_broker_filter_logs` once it has been reported (the router reports
/// once a second).
async fn filter_logs(broker: &BrokerProcess) -> Option<f64> {
    iotmon_probe::metrics::sample(&broker.metrics().await, "iotmon_broker_filter_logs")
}

/// Waits until the broker reports `wanted` filters' logs.
async fn wait_for_logs(broker: &BrokerProcess, wanted: f64, what: &str) {
    eventually(DEADLINE, what, || async {
        match filter_logs(broker).await {
            Some(logs) if logs == wanted => Ok(()),
            seen => Err(seen),
        }
    })
    .await;
}

/// What the broker reports before anyone subscribes.
async fn baseline(broker: &BrokerProcess) -> f64 {
    eventually(DEADLINE, "the filter-log gauge is reported", || {
        filter_logs(broker)
    })
    .await
}

/// Subscribes `client` to each of `filters` at QoS 1, ten to a SUBSCRIBE.
async fn subscribe_all(client: &mut RawClient, filters: &[String]) {
    for (packet_id, chunk) in (1..).zip(filters.chunks(10)) {
        let chunk: Vec<(&str, u8)> = chunk.iter().map(|filter| (filter.as_str(), 1)).collect();
        assert_eq!(
            client.subscribe(packet_id, &chunk).await,
            vec![1; chunk.len()],
            "granted"
        );
    }
}

/// Unsubscribes `client` from each of `filters`, ten to an UNSUBSCRIBE.
async fn unsubscribe_all(client: &mut RawClient, filters: &[String]) {
    for (packet_id, chunk) in (100..).zip(filters.chunks(10)) {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        client.unsubscribe(packet_id, &chunk).await;
    }
}

/// The next `count` deliveries to `client`, each acknowledged. Deliveries through different
/// filters may come in any order.
async fn deliveries(client: &mut RawClient, count: usize) -> Vec<Delivery> {
    let mut got = Vec::new();
    while got.len() < count {
        got.extend(client.receive_until(|_| true).await);
    }
    got
}

fn payloads(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(Delivery::payload).collect()
}

async fn client(addr: SocketAddr, client_id: &str) -> RawClient {
    RawClient::connected(addr, Connect::new(Version::V311, client_id)).await
}

/// A client subscribes to many distinct filters (plain, wildcard, shared, and shared ones on
/// the plain ones' logs), gets messages through them, gives some up by UNSUBSCRIBE and the
/// rest by disconnecting with a clean session: the router is back to the logs it had. A
/// fresh subscriber of one of those filters still gets its retained message and what is
/// published next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_given_up_free_their_logs_and_route_again_when_subscribed_anew() {
    let broker = BrokerProcess::start(ANONYMOUS, &[], &[]);
    let addr = broker.listeners["mqtt"];
    let baseline = baseline(&broker).await;

    let plain: Vec<String> = (0..EACH).map(|n| format!("fleet/{n}/status")).collect();
    let wildcard: Vec<String> = (0..EACH).map(|n| format!("fleet/+/probe{n}")).collect();
    let shared: Vec<String> = (0..EACH).map(|n| format!("$share/g/pool/{n}")).collect();
    // These read the plain filters' logs: no log of their own.
    let shared_plain: Vec<String> = plain.iter().map(|f| format!("$share/h/{f}")).collect();
    let mut churner = client(addr, "churner").await;
    for filters in [&plain, &wildcard, &shared, &shared_plain] {
        subscribe_all(&mut churner, filters).await;
    }
    let logs = baseline + (3 * EACH) as f64;
    wait_for_logs(&broker, logs, "a log per distinct filter").await;

    // Messages through each kind, so the router has matched topics to these filters; one
    // retained, which is kept per topic, apart from the filters' logs.
    let mut publisher = client(addr, "publisher").await;
    let retained = Publish::new("fleet/7/status", b"online").qos(1, 1);
    publisher.publish(retained.retain()).await;
    for (packet_id, topic) in (2..).zip(["fleet/1/probe3", "pool/4"]) {
        let publish = Publish::new(topic, topic.as_bytes()).qos(1, packet_id);
        publisher.publish(publish).await;
    }
    // `fleet/7/status` twice: plainly and through `$share/h/`.
    let mut got = payloads(&deliveries(&mut churner, 4).await);
    got.sort();
    assert_eq!(got, ["fleet/1/probe3", "online", "online", "pool/4"]);

    // The plain filters are given up, but their shared twins still read those logs.
    unsubscribe_all(&mut churner, &plain).await;
    publisher
        .publish(Publish::new("fleet/7/status", b"still routed").qos(1, 5))
        .await;
    let got = deliveries(&mut churner, 1).await;
    assert_eq!(payloads(&got), ["still routed"]);
    wait_for_logs(&broker, logs, "the shared twins keep the plain logs").await;

    // Half the shared filters given up by UNSUBSCRIBE free their logs.
    unsubscribe_all(&mut churner, &shared[..EACH / 2]).await;
    let logs = logs - (EACH / 2) as f64;
    wait_for_logs(&broker, logs, "logs freed by UNSUBSCRIBE").await;

    // A clean session's DISCONNECT frees the rest.
    churner.disconnect().await;
    wait_for_logs(&broker, baseline, "logs freed by a clean disconnect").await;

    // Subscribed to again: a new log, the retained message, and what comes next.
    let mut fresh = client(addr, "fresh").await;
    assert_eq!(
        fresh
            .subscribe(1, &[("fleet/7/status", 1), ("fleet/+/probe3", 1)])
            .await,
        [1, 1]
    );
    let first = deliveries(&mut fresh, 1).await;
    assert_eq!(
        (first[0].payload(), first[0].retain),
        ("online".to_string(), true),
        "the retained message"
    );
    for (packet_id, (topic, payload)) in (6..).zip([
        ("fleet/7/status", "after"),
        ("fleet/1/probe3", "probe after"),
    ]) {
        let publish = Publish::new(topic, payload.as_bytes()).qos(1, packet_id);
        publisher.publish(publish).await;
    }
    let mut got = payloads(&deliveries(&mut fresh, 2).await);
    got.sort();
    assert_eq!(got, ["after", "probe after"]);
    wait_for_logs(&broker, baseline + 2.0, "the two filters subscribed anew").await;
}

/// A persistent session's filters keep their logs while it is saved (it gets what was
/// published meanwhile when it comes back), a resumed session's UNSUBSCRIBE frees a log,
/// and the rest are freed when the saved session is dropped (here past
/// `max_saved_sessions`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_session_keeps_its_filters_logs_until_it_is_dropped() {
    let broker = BrokerProcess::start("allow_anonymous = true\nmax_saved_sessions = 1", &[], &[]);
    let addr = broker.listeners["mqtt"];
    let baseline = baseline(&broker).await;
    let persistent = Connect::new(Version::V311, "keeper").persistent();

    let filters: Vec<String> = (0..20).map(|n| format!("keep/{n}")).collect();
    let mut keeper = RawClient::connected(addr, persistent).await;
    subscribe_all(&mut keeper, &filters).await;
    keeper.disconnect().await;
    wait_for_logs(&broker, baseline + 20.0, "the saved session's logs").await;

    // Published while the session is saved: kept for it.
    let mut publisher = client(addr, "publisher").await;
    publisher
        .publish(Publish::new("keep/3", b"owed").qos(1, 1))
        .await;
    publisher.disconnect().await;

    let (mut keeper, connack) = RawClient::connect(addr, persistent).await;
    assert!(connack.session_present, "the session was kept");
    assert_eq!(payloads(&deliveries(&mut keeper, 1).await), ["owed"]);

    // A resumed session gives a filter up.
    keeper.unsubscribe(1, &["keep/0"]).await;
    wait_for_logs(&broker, baseline + 19.0, "a resumed session's UNSUBSCRIBE").await;
    keeper.disconnect().await;

    // A newer saved session pushes the keeper's out, and its logs go with it.
    let newcomer = Connect::new(Version::V311, "newcomer").persistent();
    RawClient::connected(addr, newcomer)
        .await
        .disconnect()
        .await;
    wait_for_logs(&broker, baseline, "a dropped session's logs").await;
    let (keeper, connack) = RawClient::connect(addr, persistent).await;
    assert!(!connack.session_present, "the keeper's session was dropped");
    keeper.disconnect().await;
}
