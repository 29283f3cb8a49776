//! The embedded broker against MQTT clients nobody here wrote: Debian's `mosquitto_pub` and
//! `mosquitto_sub`, and Eclipse paho-mqtt for Python; device authentication, presence with
//! last will, and TLS, all over real sockets against `iotmon broker` on port 0.
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};

use crate::support;
use crate::support::broker::{mosquitto_pub, paho_check, sample, BrokerProcess, MosquittoSub};
use crate::support::certificate;
use crate::support::{eventually, DEADLINE};

/// Anonymous broker with every listener but TLS.
const OPEN: &str =
    "allow_anonymous = true\nmqtt5_listen = \"127.0.0.1:0\"\nws_listen = \"127.0.0.1:0\"";

fn open_broker() -> BrokerProcess {
    BrokerProcess::start(OPEN, &["mqtt5", "mqtt-ws"], &[])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// --- paho-mqtt ---------------------------------------------------------------------------

#[test]
fn paho_publishes_and_subscribes_at_qos_0_1_and_2() {
    paho_check("qos", open_broker().port("mqtt"), None);
}

#[test]
fn paho_gets_retained_messages() {
    paho_check("retained", open_broker().port("mqtt"), None);
}

#[test]
fn paho_last_will_fires_on_abrupt_disconnect() {
    paho_check("will", open_broker().port("mqtt"), None);
}

#[test]
fn paho_persistent_session_resumes_with_queued_messages() {
    paho_check("session", open_broker().port("mqtt"), None);
}

#[test]
fn paho_mqtt5_connects_and_publishes() {
    paho_check("mqtt5", open_broker().port("mqtt5"), None);
}

#[test]
fn paho_over_websocket() {
    paho_check("websocket", open_broker().port("mqtt-ws"), None);
}

#[test]
fn paho_oversize_packet_is_refused() {
    paho_check("oversize", open_broker().port("mqtt"), None);
}

#[tokio::test]
async fn paho_wrong_password_is_refused_with_connack_and_counted() {
    let broker = BrokerProcess::start(
        "mqtt5_listen = \"127.0.0.1:0\"",
        &["mqtt5"],
        &[("dev-7", "right-pw")],
    );
    let credentials = Some(("dev-7", "right-pw"));
    paho_check("good-password", broker.port("mqtt"), credentials);
    paho_check("bad-password", broker.port("mqtt"), credentials);
    paho_check("bad-password-v5", broker.port("mqtt5"), credentials);
    let metrics = broker.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "iotmon_broker_connects_refused_total{reason=\"wrong_password\"}"
        ),
        2
    );
    assert_eq!(sample(&metrics, "iotmon_broker_connects_accepted_total"), 1);
}

// --- mosquitto_pub / mosquitto_sub ------------------------------------------------------

#[test]
fn mosquitto_clients_publish_and_subscribe_at_qos_0_1_and_2() {
    let broker = open_broker();
    let port = broker.port("mqtt");
    for qos in ["0", "1", "2"] {
        let topic = format!("interop/qos{qos}");
        let mut sub =
            MosquittoSub::start(port, &["-h", "127.0.0.1", "-t", &topic, "-q", qos, "-v"]);
        let out = mosquitto_pub(
            port,
            &[
                "-h",
                "127.0.0.1",
                "-t",
                &topic,
                "-q",
                qos,
                "-m",
                "payload-x",
            ],
        );
        assert!(out.status.success(), "qos {qos}: {}", text(&out.stderr));
        let header = sub.wait_for(|line| line.contains("received PUBLISH"));
        assert!(header.contains(&format!("q{qos}")), "qos {qos}: {header}");
        sub.wait_for(|line| line == format!("{topic} payload-x"));
    }
}

#[test]
fn mosquitto_sub_gets_retained_message() {
    let broker = open_broker();
    let port = broker.port("mqtt");
    let out = mosquitto_pub(
        port,
        &[
            "-h",
            "127.0.0.1",
            "-t",
            "interop/kept",
            "-q",
            "1",
            "-r",
            "-m",
            "kept",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut sub = MosquittoSub::start(
        port,
        &["-h", "127.0.0.1", "-t", "interop/kept", "-q", "1", "-v"],
    );
    let header = sub.wait_for(|line| line.contains("received PUBLISH"));
    assert!(header.contains("r1"), "retained flag set: {header}");
    sub.wait_for(|line| line == "interop/kept kept");
}

#[test]
fn mosquitto_last_will_fires_when_the_client_is_killed() {
    let broker = open_broker();
    let port = broker.port("mqtt");
    let mut watcher = MosquittoSub::start(
        port,
        &["-h", "127.0.0.1", "-t", "status/#", "-q", "1", "-v"],
    );
    let mut device = MosquittoSub::start(
        port,
        &[
            "-h",
            "127.0.0.1",
            "-i",
            "dev-will",
            "-t",
            "commands/dev-will",
            "--will-topic",
            "status/plant/dev-will",
            "--will-payload",
            "offline",
            "--will-qos",
            "1",
            "--will-retain",
        ],
    );
    device.kill();
    watcher.wait_for(|line| line == "status/plant/dev-will offline");
}

#[test]
fn mosquitto_persistent_session_resumes_with_queued_message() {
    let broker = open_broker();
    let port = broker.port("mqtt");
    let session = [
        "-i",
        "persist-1",
        "-c",
        "-t",
        "interop/session",
        "-q",
        "1",
        "-v",
    ];
    let mut sub = MosquittoSub::start(port, &session);
    sub.kill();
    let out = mosquitto_pub(
        port,
        &["-t", "interop/session", "-q", "1", "-m", "while-away"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut back = MosquittoSub::start(port, &session);
    back.wait_for(|line| line == "interop/session while-away");
}

#[test]
fn mosquitto_mqtt5_connects_publishes_and_subscribes() {
    let broker = open_broker();
    let port = broker.port("mqtt5");
    let mut sub = MosquittoSub::start(
        port,
        &[
            "-h",
            "127.0.0.1",
            "-V",
            "5",
            "-t",
            "interop/v5",
            "-q",
            "1",
            "-v",
        ],
    );
    let out = mosquitto_pub(
        port,
        &["-V", "5", "-t", "interop/v5", "-q", "1", "-m", "five"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    sub.wait_for(|line| line == "interop/v5 five");
}

#[test]
fn mosquitto_oversize_packet_is_refused_and_not_delivered() {
    let broker = open_broker();
    let port = broker.port("mqtt");
    let mut sub = MosquittoSub::start(
        port,
        &["-h", "127.0.0.1", "-t", "interop/big", "-q", "1", "-v"],
    );
    let big = "x".repeat(32 * 1024);
    let out = mosquitto_pub(
        port,
        &[
            "-h",
            "127.0.0.1",
            "-t",
            "interop/big",
            "-q",
            "1",
            "-m",
            &big,
        ],
    );
    assert!(
        !out.status.success(),
        "a 32 KiB publish must fail (limit 16 KiB)"
    );
    // The broker is still serving, and the oversize message never reached the subscriber.
    let out = mosquitto_pub(
        port,
        &[
            "-h",
            "127.0.0.1",
            "-t",
            "interop/big",
            "-q",
            "1",
            "-m",
            "small",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    sub.wait_for(|line| line == "interop/big small");
    assert!(!sub.seen.iter().any(|line| line.contains(&big)));
}

#[tokio::test]
async fn registered_devices_connect_and_everyone_else_gets_connack_refused() {
    let broker = BrokerProcess::start("", &[], &[("dev-1", "s3cret")]);
    let port = broker.port("mqtt");
    let good = [
        "-i", "dev-1", "-u", "dev-1", "-P", "s3cret", "-t", "a", "-m", "1",
    ];
    let out = mosquitto_pub(port, &good);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let refused = [
        ["-i", "dev-1", "-u", "dev-1", "-P", "wrong"],
        ["-i", "dev-2", "-u", "dev-1", "-P", "s3cret"],
        ["-i", "dev-9", "-u", "dev-9", "-P", "s3cret"],
    ];
    for credentials in refused {
        let out = mosquitto_pub(
            port,
            &[
                &["-h", "127.0.0.1"],
                &credentials[..],
                &["-t", "a", "-m", "1"],
            ]
            .concat(),
        );
        assert!(!out.status.success(), "{credentials:?} accepted");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("bad user name or password"),
            "{credentials:?}: {stderr}"
        );
    }
    // No credentials at all: refused too.
    let out = mosquitto_pub(
        port,
        &["-h", "127.0.0.1", "-i", "dev-1", "-t", "a", "-m", "1"],
    );
    assert!(!out.status.success(), "an anonymous device was accepted");
    assert!(text(&out.stderr).contains("bad user name or password"));

    let metrics = broker.metrics().await;
    let refused = |reason: &str| {
        sample(
            &metrics,
            &format!("iotmon_broker_connects_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refused("wrong_password"), 1);
    assert_eq!(refused("client_id_mismatch"), 1);
    assert_eq!(refused("unknown_device"), 1);
    assert_eq!(refused("no_credentials"), 1);
    assert_eq!(sample(&metrics, "iotmon_broker_connects_accepted_total"), 1);
}

#[tokio::test]
async fn connections_beyond_the_limit_get_connack_server_unavailable() {
    let broker = BrokerProcess::start("allow_anonymous = true\nmax_connections = 2", &[], &[]);
    let port = broker.port("mqtt");
    let _first = MosquittoSub::start(port, &["-h", "127.0.0.1", "-t", "a/1"]);
    let _second = MosquittoSub::start(port, &["-h", "127.0.0.1", "-t", "a/2"]);
    let out = mosquitto_pub(port, &["-h", "127.0.0.1", "-t", "a/1", "-m", "x"]);
    assert!(!out.status.success(), "a third connection was accepted");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unavailable"), "{stderr}");
    // The router reports its connections (refreshed every second, traffic or not).
    eventually(DEADLINE, "connections gauge shows 2", || async {
        sample(&broker.metrics().await, "iotmon_broker_connections") == 2
    })
    .await;
}

#[tokio::test]
async fn devices_removed_while_running_are_refused() {
    let broker = BrokerProcess::start("", &[], &[("dev-1", "pw-1"), ("dev-2", "pw-2")]);
    let port = broker.port("mqtt");
    let login = [
        "-i", "dev-1", "-u", "dev-1", "-P", "pw-1", "-t", "a", "-m", "1",
    ];
    assert!(mosquitto_pub(port, &login).status.success());
    let removed = std::process::Command::new(env!("CARGO_BIN_EXE_iotmon"))
        .args([
            "devices",
            "--data-dir",
            broker.data_dir.path(),
            "remove",
            "dev-1",
        ])
        .output()
        .expect("iotmon devices runs");
    assert!(removed.status.success());
    eventually(DEADLINE, "dev-1 refused after removal", || async {
        !mosquitto_pub(port, &login).status.success()
    })
    .await;
}

#[test]
fn a_silent_client_is_dropped_after_its_keep_alive_and_its_will_fires() {
    let broker = open_broker();
    let port = broker.port("mqtt");
    let mut watcher = MosquittoSub::start(port, &["-h", "127.0.0.1", "-t", "status/#", "-v"]);
    let mut device = MosquittoSub::start(
        port,
        &[
            "-h",
            "127.0.0.1",
            "-i",
            "dev-silent",
            "-k",
            "5",
            "-t",
            "commands/dev-silent",
            "--will-topic",
            "status/plant/dev-silent",
            "--will-payload",
            "offline",
        ],
    );
    // Socket open, nothing sent: rumqttd gives up after 1.5 × 5 s, within the deadline.
    device.freeze();
    watcher.wait_for(|line| line == "status/plant/dev-silent offline");
}

/// Starts `mosquitto_pub -l` on `topic`, one message per line of `lines`. The lines are
/// written from a thread, so a broker that stops reading fails the test's deadlines instead
/// of hanging it.
fn publish_lines(port: u16, topic: &str, lines: String) -> std::process::Child {
    let mut publisher = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-l",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_pub runs");
    let mut stdin = publisher.stdin.take().expect("stdin is piped");
    std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(lines.as_bytes());
    });
    publisher
}

#[tokio::test]
async fn a_slow_subscriber_skips_messages_and_the_skip_is_counted() {
    // A tiny log window: 2 segments of 1 KiB per filter.
    let broker = BrokerProcess::start(
        "allow_anonymous = true\nsegment_size = 1024\nsegment_count = 2",
        &[],
        &[],
    );
    let port = broker.port("mqtt");
    let mut slow = MosquittoSub::start(port, &["-h", "127.0.0.1", "-t", "slow/#"]);
    slow.freeze();
    // Far more than the window and the socket buffers hold, from one publisher.
    let lines = format!("{}\n", "x".repeat(200)).repeat(50_000);
    let publisher = publish_lines(port, "slow/t", lines);
    let published = support::broker::wait_with_deadline(publisher, "mosquitto_pub -l");
    assert!(published.status.success());
    // The subscriber comes back: the router moves its cursor past what it overwrote.
    slow.thaw();
    eventually(DEADLINE, "skipped messages counted", || async {
        let metrics = broker.metrics().await;
        sample(&metrics, "iotmon_broker_messages_skipped_total") > 0
            && sample(&metrics, "iotmon_broker_cursor_jumps_total") > 0
    })
    .await;
}

/// A subscriber listed in `lossless_subscribers` that stops reading holds publishers back
/// instead of skipping: once it reads again it gets every message, in order.
#[tokio::test]
async fn a_lossless_subscriber_gets_everything_while_publishers_wait() {
    // A small log window (2 × 64 KiB per filter) and far more data than it and every socket
    // buffer on the way hold: 40,000 messages of 1,000 bytes.
    let broker = BrokerProcess::start(
        "allow_anonymous = true\nsegment_size = 65536\nsegment_count = 2\n\
         lossless_subscribers = [\"archiver\"]",
        &[],
        &[],
    );
    let port = broker.port("mqtt");
    let mut archiver =
        MosquittoSub::start(port, &["-h", "127.0.0.1", "-i", "archiver", "-t", "bulk/#"]);
    archiver.freeze();
    let count = 40_000;
    let lines: String = (0..count).map(|n| format!("{n:0>1000}\n")).collect();
    let mut publisher = publish_lines(port, "bulk/t", lines);

    eventually(DEADLINE, "publishers paused for the archiver", || async {
        sample(&broker.metrics().await, "iotmon_broker_publishers_paused") == 1
    })
    .await;
    assert!(
        publisher.try_wait().expect("publisher status").is_none(),
        "the publisher finished although the broker stopped reading it"
    );

    archiver.thaw();
    let published = support::broker::wait_with_deadline(publisher, "mosquitto_pub -l");
    assert!(published.status.success());
    // Payload lines, in order: each message is its number, zero-padded.
    let mut next = 0;
    archiver.count_lines(count, |line| {
        let payload = line.len() == 1000 && line.bytes().all(|b| b.is_ascii_digit());
        if payload {
            assert_eq!(line.parse::<usize>(), Ok(next), "out of order");
            next += 1;
        }
        payload
    });
    let metrics = broker.metrics().await;
    assert_eq!(sample(&metrics, "iotmon_broker_messages_skipped_total"), 0);
    assert!(sample(&metrics, "iotmon_broker_publisher_pauses_total") >= 1);
}

#[test]
fn hostile_bytes_do_not_take_the_broker_down() {
    use std::io::{Read, Write};
    let broker = open_broker();
    let garbage: [&[u8]; 4] = [
        b"\xff\xff\xff\xff\xff\xff\xff\xff",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        // CONNECT claiming protocol level 9 with a truncated body.
        b"\x10\x0c\x00\x04MQTT\x09\x02\x00",
        // PUBLISH before CONNECT.
        b"\x30\x07\x00\x01a hello",
    ];
    // All at once: a truncated CONNECT is only dropped at the 5 s connect timeout.
    std::thread::scope(|scope| {
        for kind in ["mqtt", "mqtt5", "mqtt-ws"] {
            for bytes in garbage {
                let port = broker.port(kind);
                scope.spawn(move || {
                    let mut stream =
                        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connects");
                    stream.write_all(bytes).expect("sent");
                    stream
                        .set_read_timeout(Some(support::DEADLINE))
                        .expect("timeout set");
                    // The broker closes the connection (or resets it) rather than answering.
                    let mut answer = Vec::new();
                    let _ = stream.read_to_end(&mut answer);
                    assert!(
                        !answer.starts_with(&[0x20]),
                        "{kind}: garbage {bytes:?} got a CONNACK"
                    );
                });
            }
        }
    });
    // Still serving.
    paho_check("qos", broker.port("mqtt"), None);
}

/// Connects with credentials and returns whether the broker accepted them.
async fn try_login(port: u16, id: &str, password: &str) -> bool {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_credentials(id, password);
    let (_client, mut eventloop) = AsyncClient::new(options, 4);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_bad_logins_does_not_stall_connected_devices() {
    let broker = BrokerProcess::start("", &[], &[("dev-a", "pw-a"), ("dev-b", "pw-b")]);
    let port = broker.port("mqtt");
    // A subscriber and a publisher, both logged in (and so in the verification cache).
    let mut watch = MqttOptions::new("dev-a", "127.0.0.1", port);
    watch.set_credentials("dev-a", "pw-a");
    let (watcher, mut watch_loop) = AsyncClient::new(watch, 64);
    watcher
        .subscribe("storm/echo", QoS::AtLeastOnce)
        .await
        .expect("queued");
    let (echoes_tx, mut echoes) = tokio::sync::mpsc::channel(64);
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        while let Ok(event) = watch_loop.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Packet::Publish(publish)) => {
                    let _ = echoes_tx.send(publish.payload).await;
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(support::DEADLINE, subscribed)
        .await
        .expect("subscribed in time")
        .expect("watcher alive");
    assert!(try_login(port, "dev-b", "pw-b").await, "dev-b logs in");

    // 40 logins with wrong passwords at once: each needs a full argon2 run.
    let storm: Vec<_> = (0..40)
        .map(|_| tokio::spawn(try_login(port, "dev-b", "wrong")))
        .collect();
    // Meanwhile a connected device's messages keep flowing and a known device logs in again
    // from the cache, without queueing behind the storm.
    let mut probe = MqttOptions::new("dev-b", "127.0.0.1", port);
    probe.set_credentials("dev-b", "pw-b");
    let started = std::time::Instant::now();
    let (prober, mut probe_loop) = AsyncClient::new(probe, 64);
    tokio::spawn(async move { while probe_loop.poll().await.is_ok() {} });
    let mut slowest = std::time::Duration::ZERO;
    for round in 0..10u32 {
        let sent = std::time::Instant::now();
        prober
            .publish("storm/echo", QoS::AtLeastOnce, false, round.to_string())
            .await
            .expect("queued");
        loop {
            let echo = tokio::time::timeout(support::DEADLINE, echoes.recv())
                .await
                .expect("echo in time")
                .expect("watcher alive");
            if echo == round.to_string().as_bytes() {
                break;
            }
        }
        slowest = slowest.max(sent.elapsed());
    }
    let mut refused = 0;
    for attempt in storm {
        refused += u64::from(!attempt.await.expect("login task"));
    }
    println!(
        "40 concurrent bad logins all refused after {:?}; meanwhile the slowest of 10 echoes \
         between connected devices took {slowest:?}",
        started.elapsed()
    );
    assert_eq!(refused, 40, "every wrong password refused");
    // A liveness bound, not a speed test: generous for a shared 2-core machine.
    assert!(
        slowest < std::time::Duration::from_secs(2),
        "a connected device stalled for {slowest:?} during the storm"
    );
    let metrics = broker.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "iotmon_broker_connects_refused_total{reason=\"wrong_password\"}"
        ),
        40
    );
    assert!(sample(&metrics, "iotmon_broker_auth_cache_hits_total") >= 1);
}

#[tokio::test]
async fn serve_shows_the_broker_counters_on_its_metrics() {
    let iotmon = support::Iotmon::serve();
    let (status, body) = support::http_get(iotmon.http.expect("http listener"), "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "iotmon_broker_connects_refused_total",
        "iotmon_broker_publishes_received_total",
        "iotmon_broker_messages_skipped_total",
    ] {
        assert!(body.contains(name), "{name} missing from serve's /metrics");
    }
}

// --- presence ----------------------------------------------------------------------------

/// A device as the presence convention wants it: last will `offline` retained on
/// `status/<group>/<id>`, then `online` retained once connected.
async fn presence_device(port: u16, group: &str, id: &str) -> tokio::task::JoinHandle<()> {
    let topic = format!("status/{group}/{id}");
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_last_will(LastWill::new(&topic, "offline", QoS::AtLeastOnce, true));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client
        .publish(&topic, QoS::AtLeastOnce, true, "online")
        .await
        .expect("queued");
    let (acked_tx, acked) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let _client = client;
        let mut acked_tx = Some(acked_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    if let Some(tx) = acked_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(error) => panic!("device connection failed: {error}"),
            }
        }
    });
    tokio::time::timeout(support::DEADLINE, acked)
        .await
        .expect("online acknowledged in time")
        .expect("device alive");
    task
}

#[tokio::test]
async fn presence_is_retained_and_the_last_will_says_offline() {
    let broker = open_broker();
    let port = broker.port("mqtt");
    let device = presence_device(port, "hq/building-a", "dev-p1").await;
    // A subscriber arriving later gets the retained `online`.
    let mut watcher = MosquittoSub::start(
        port,
        &["-h", "127.0.0.1", "-t", "status/#", "-q", "1", "-v"],
    );
    watcher.wait_for(|line| line == "status/hq/building-a/dev-p1 online");
    // Abrupt loss: the socket closes without DISCONNECT.
    device.abort();
    let _ = device.await;
    watcher.wait_for(|line| line == "status/hq/building-a/dev-p1 offline");
    // And the retained state is now `offline` for anyone who asks.
    let mut late = MosquittoSub::start(
        port,
        &["-h", "127.0.0.1", "-t", "status/hq/#", "-q", "1", "-v"],
    );
    late.wait_for(|line| line == "status/hq/building-a/dev-p1 offline");
}

// --- TLS ---------------------------------------------------------------------------------

#[test]
fn mosquitto_clients_over_tls() {
    let dir = support::TempDir::new("tls");
    let (cert, key) = certificate::self_signed(std::path::Path::new(dir.path()));
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let settings = format!(
        "allow_anonymous = true\n[broker.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{cert}\"\nkey = \"{key}\""
    );
    let broker = BrokerProcess::start(&settings, &["mqtts"], &[]);
    let port = broker.port("mqtts");
    // A host name, not an IP: rustls refuses an IP address sent as TLS server name (SNI),
    // which is what mosquitto clients send when given an IP.
    let tls = ["-h", "localhost", "--cafile", cert.as_str()];
    let mut sub = MosquittoSub::start(
        port,
        &[&tls[..], &["-t", "tls/t", "-q", "1", "-v"]].concat(),
    );
    let out = mosquitto_pub(
        port,
        &[&tls[..], &["-t", "tls/t", "-q", "1", "-m", "sealed"]].concat(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    sub.wait_for(|line| line == "tls/t sealed");
    // A client that opens a socket and never speaks TLS does not block the next accept.
    let _silent = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connects");
    let out = mosquitto_pub(
        port,
        &[&tls[..], &["-t", "tls/t", "-q", "1", "-m", "again"]].concat(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    sub.wait_for(|line| line == "tls/t again");
}
