#!/usr/bin/env python3
"""Interoperability checks of iotmon's embedded broker with Eclipse paho-mqtt (pinned in
scripts/test.sh). Run by tests/broker_interop.rs against a live `iotmon broker`:

    paho_check.py CHECK HOST PORT [USER PASSWORD]

Each check prints what it verified and exits 0, or prints why it failed and exits 1. Every
wait has a deadline; nothing sleeps for readiness.
"""

import queue
import sys
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

DEADLINE = 15.0


class Failure(Exception):
    pass


def client(client_id, user=None, password=None, protocol=mqtt.MQTTv311, transport="tcp",
           clean=True):
    kwargs = {"protocol": protocol, "transport": transport}
    if protocol != mqtt.MQTTv5:
        kwargs["clean_session"] = clean
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, **kwargs)
    if transport == "websockets":
        c.ws_set_options(path="/")
    if user is not None:
        c.username_pw_set(user, password)
    c.inbox = queue.Queue()
    c.connacks = queue.Queue()
    c.on_message = lambda _c, _u, msg: c.inbox.put(msg)
    c.on_connect = lambda _c, _u, flags, reason, _p: c.connacks.put((flags, reason))
    return c


def connect(c, host, port, keepalive=30, expect_success=True):
    c.connect(host, port, keepalive=keepalive)
    c.loop_start()
    try:
        flags, reason = c.connacks.get(timeout=DEADLINE)
    except queue.Empty:
        raise Failure("no CONNACK in time")
    if expect_success and reason.is_failure:
        raise Failure(f"connect refused: {reason}")
    return flags, reason


def expect(c, topic, payload, qos=None, retain=None, wait=DEADLINE):
    end = time.monotonic() + wait
    while time.monotonic() < end:
        try:
            msg = c.inbox.get(timeout=max(0.01, end - time.monotonic()))
        except queue.Empty:
            break
        if msg.topic == topic and msg.payload == payload:
            if qos is not None and msg.qos != qos:
                raise Failure(f"{topic}: qos {msg.qos}, expected {qos}")
            if retain is not None and msg.retain != retain:
                raise Failure(f"{topic}: retain {msg.retain}, expected {retain}")
            return msg
    raise Failure(f"did not receive {payload!r} on {topic}")


def subscribe(c, topic, qos):
    result, mid = c.subscribe(topic, qos)
    if result != mqtt.MQTT_ERR_SUCCESS:
        raise Failure(f"subscribe failed: {result}")


def unique(tag):
    return f"{tag}-{uuid.uuid4().hex[:8]}"


def check_qos(host, port, creds):
    sub = client(unique("paho-sub"))
    connect(sub, host, port)
    base = unique("paho/qos")
    for qos in (0, 1, 2):
        subscribe(sub, f"{base}/{qos}", qos)
    pub = client(unique("paho-pub"))
    connect(pub, host, port)
    for qos in (0, 1, 2):
        deadline = time.monotonic() + DEADLINE
        got = None
        # QoS 0 may be sent before the SUBACK lands: publish until received.
        while got is None:
            info = pub.publish(f"{base}/{qos}", f"hello-{qos}".encode(), qos=qos)
            info.wait_for_publish(timeout=DEADLINE)
            if not info.is_published():
                raise Failure(f"qos {qos} publish not acknowledged")
            try:
                got = expect(sub, f"{base}/{qos}", f"hello-{qos}".encode(), qos=qos)
            except Failure:
                if time.monotonic() > deadline:
                    raise
    print("qos 0, 1 and 2 publish and subscribe: ok")


def check_retained(host, port, _creds):
    topic = unique("paho/retained")
    pub = client(unique("paho-pub"))
    connect(pub, host, port)
    pub.publish(topic, b"kept", qos=1, retain=True).wait_for_publish(timeout=DEADLINE)
    late = client(unique("paho-late"))
    connect(late, host, port)
    subscribe(late, topic, 1)
    expect(late, topic, b"kept", retain=True)
    print("retained message delivered to a late subscriber: ok")


def check_will(host, port, _creds):
    topic = unique("status/paho") + "/dev"
    watcher = client(unique("paho-watch"))
    connect(watcher, host, port)
    subscribe(watcher, topic, 1)
    device = client(unique("paho-dev"))
    device.will_set(topic, b"offline", qos=1, retain=True)
    connect(device, host, port)
    device.publish(topic, b"online", qos=1, retain=True).wait_for_publish(timeout=DEADLINE)
    expect(watcher, topic, b"online")
    # Abrupt: close the socket without DISCONNECT.
    device.loop_stop()
    device.socket().close()
    expect(watcher, topic, b"offline")
    late = client(unique("paho-late"))
    connect(late, host, port)
    subscribe(late, topic, 1)
    expect(late, topic, b"offline", retain=True)
    print("last will on abrupt disconnect, retained: ok")


def check_session(host, port, _creds):
    sub_id = unique("paho-persist")
    topic = unique("paho/session")
    sub = client(sub_id, clean=False)
    connect(sub, host, port)
    subscribe(sub, topic, 1)
    # Prove the subscription is live before going away.
    pub = client(unique("paho-pub"))
    connect(pub, host, port)
    deadline = time.monotonic() + DEADLINE
    while True:
        pub.publish(topic, b"warmup", qos=1).wait_for_publish(timeout=DEADLINE)
        try:
            expect(sub, topic, b"warmup")
            break
        except Failure:
            if time.monotonic() > deadline:
                raise
    sub.disconnect()
    sub.loop_stop()
    pub.publish(topic, b"while-away", qos=1).wait_for_publish(timeout=DEADLINE)
    back = client(sub_id, clean=False)
    flags, _ = connect(back, host, port)
    if not flags.session_present:
        raise Failure("session_present not set on resume")
    expect(back, topic, b"while-away", qos=1)
    print("persistent session resume with queued QoS 1 message: ok")


def check_mqtt5(host, port, _creds):
    topic = unique("paho/v5")
    sub = client(unique("paho-v5-sub"), protocol=mqtt.MQTTv5)
    connect(sub, host, port)
    subscribe(sub, topic, 1)
    pub = client(unique("paho-v5-pub"), protocol=mqtt.MQTTv5)
    connect(pub, host, port)
    deadline = time.monotonic() + DEADLINE
    while True:
        pub.publish(topic, b"five", qos=1).wait_for_publish(timeout=DEADLINE)
        try:
            expect(sub, topic, b"five")
            break
        except Failure:
            if time.monotonic() > deadline:
                raise
    print("MQTT 5 connect, subscribe and publish: ok")


def check_websocket(host, port, _creds):
    topic = unique("paho/ws")
    sub = client(unique("paho-ws-sub"), transport="websockets")
    connect(sub, host, port)
    subscribe(sub, topic, 1)
    pub = client(unique("paho-ws-pub"), transport="websockets")
    connect(pub, host, port)
    deadline = time.monotonic() + DEADLINE
    while True:
        pub.publish(topic, b"over-ws", qos=1).wait_for_publish(timeout=DEADLINE)
        try:
            expect(sub, topic, b"over-ws")
            break
        except Failure:
            if time.monotonic() > deadline:
                raise
    print("MQTT over WebSocket: ok")


def check_bad_password(host, port, creds, protocol=mqtt.MQTTv311):
    user, _ = creds
    c = client(user, user, "not-the-password", protocol=protocol)
    _, reason = connect(c, host, port, expect_success=False)
    if not reason.is_failure:
        raise Failure("a wrong password was accepted")
    if reason.value not in (4, 134):
        raise Failure(f"refused with {reason} ({reason.value}), expected bad user name or password")
    print(f"wrong password refused with CONNACK {reason.value} ({reason}): ok")


def check_bad_password_v5(host, port, creds):
    check_bad_password(host, port, creds, protocol=mqtt.MQTTv5)


def check_good_password(host, port, creds):
    user, password = creds
    c = client(user, user, password)
    connect(c, host, port)
    print("registered device accepted: ok")


def check_oversize(host, port, _creds):
    topic = unique("paho/big")
    watcher = client(unique("paho-watch"))
    connect(watcher, host, port)
    subscribe(watcher, topic, 1)
    big = client(unique("paho-big"))
    disconnected = queue.Queue()
    big.on_disconnect = lambda *_args: disconnected.put(True)
    connect(big, host, port)
    big.publish(topic, b"x" * (64 * 1024), qos=1)
    try:
        disconnected.get(timeout=DEADLINE)
    except queue.Empty:
        raise Failure("an oversize packet did not close the connection")
    try:
        # A negative check: give a delivery that should not happen a moment to show up.
        expect(watcher, topic, b"x" * (64 * 1024), wait=1.0)
    except Failure:
        print("oversize packet refused (connection closed, nothing delivered): ok")
        return
    raise Failure("the oversize message was delivered")


CHECKS = {
    "qos": check_qos,
    "retained": check_retained,
    "will": check_will,
    "session": check_session,
    "mqtt5": check_mqtt5,
    "websocket": check_websocket,
    "bad-password": check_bad_password,
    "bad-password-v5": check_bad_password_v5,
    "good-password": check_good_password,
    "oversize": check_oversize,
}


def main():
    name, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    creds = tuple(sys.argv[4:6]) if len(sys.argv) >= 6 else ()
    try:
        CHECKS[name](host, port, creds)
    except Failure as failure:
        print(f"{name}: FAILED: {failure}")
        sys.exit(1)


if __name__ == "__main__":
    main()
