use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use flume::{Receiver, Sender};
use parking_lot::Mutex;
use tracing::{error, warn};

use crate::{
    protocol::{Packet, QoS},
    router::{FilterIdx, MAX_CHANNEL_CAPACITY},
    Cursor, Notification,
};

use super::{Forward, IncomingMeter, OutgoingMeter};

const MAX_INFLIGHT: usize = 100;
const MAX_PKID: u16 = MAX_INFLIGHT as u16;

#[derive(Debug)]
pub struct Incoming {
    /// Identifier associated with connected client
    pub(crate) client_id: String,
    /// Recv buffer
    pub(crate) buffer: Arc<Mutex<VecDeque<Packet>>>,
    /// incoming metrics
    pub(crate) meter: IncomingMeter,
    /// iotmon patch: in the router's list of connections whose packets wait for a lossless
    /// subscriber to catch up.
    pub(crate) deferred: bool,
    /// iotmon patch: the connection has closed; remove it once its deferred packets are
    /// handled.
    pub(crate) closed_while_deferred: bool,
}

impl Incoming {
    #[inline]
    pub(crate) fn new(client_id: String) -> Self {
        Self {
            // iotmon patch: allocated on first use (see `Outgoing::new`).
            buffer: Arc::new(Mutex::new(VecDeque::new())),
            meter: Default::default(),
            client_id,
            deferred: false,
            closed_while_deferred: false,
        }
    }

    #[inline]
    pub(crate) fn buffer(&self) -> Arc<Mutex<VecDeque<Packet>>> {
        self.buffer.clone()
    }

    #[inline]
    pub(crate) fn exchange(&mut self, mut v: VecDeque<Packet>) -> VecDeque<Packet> {
        std::mem::swap(&mut v, &mut self.buffer.lock());
        v
    }
}

/// iotmon patch 40: what a persistent session owes its client when its connection ends,
/// for `Outgoing::resume`.
#[derive(Debug, Default)]
pub struct Unacknowledged {
    /// Publishes read from filters' logs, sent and not acknowledged: packet id, filter and
    /// position in the filter's log (`None` for a retained message, see `retained`).
    pub(crate) publishes: VecDeque<(u16, FilterIdx, Option<Cursor>)>,
    /// Retained messages sent and not acknowledged, with their filter: a copy of each, as
    /// sent, since they are in no log to be read again.
    pub(crate) retained: VecDeque<(FilterIdx, Forward)>,
}

/// iotmon patch: see `Outgoing::redelivery`.
enum Redelivery {
    /// Not sent before.
    New,
    /// Delivered before the session's last connection ended.
    Delivered,
    /// In flight when the session's last connection ended: again, with this packet id.
    Again(u16),
}

#[derive(Debug)]
pub struct Outgoing {
    /// Identifier associated with connected client
    pub(crate) client_id: String,
    /// Send buffer
    pub(crate) data_buffer: Arc<Mutex<VecDeque<Notification>>>,
    /// Handle which is given to router to allow router to communicate with this connection
    pub(crate) handle: Sender<()>,
    /// The buffer to keep track of inflight packets.
    pub(crate) inflight_buffer: VecDeque<(u16, FilterIdx, Option<Cursor>)>,
    /// iotmon patch: publishes in flight when the connection that last held this persistent
    /// session ended (see `Outgoing::resume`), not yet sent again.
    redeliveries: VecDeque<(u16, FilterIdx, Option<Cursor>)>,
    /// iotmon patch 40: copies of the retained messages in `inflight_buffer` (those with no
    /// cursor), in the same order, to be sent again if the session resumes before they are
    /// acknowledged.
    retained_inflight: VecDeque<(FilterIdx, Forward)>,
    /// iotmon patch 40: retained messages in flight when the session's last connection
    /// ended, to be sent again (see `resend_retained`).
    retained_redeliveries: VecDeque<(FilterIdx, Forward)>,
    /// PubRels waiting for PubComp
    pub(crate) unacked_pubrels: VecDeque<u16>,
    /// Last packet id
    last_pkid: u16,
    /// Metrics of outgoing messages of this connection
    pub(crate) meter: OutgoingMeter,
}

impl Outgoing {
    #[inline]
    pub(crate) fn new(client_id: String) -> (Self, Receiver<()>) {
        let (handle, rx) = flume::bounded(MAX_CHANNEL_CAPACITY);
        // iotmon patch: the buffers grow on first use instead of being sized for a full
        // batch up front (200 notifications of 248 bytes, 100 inflight entries). Most device
        // connections never receive a publish, and those preallocations were most of the
        // broker's memory per connection.
        let data_buffer = VecDeque::new();
        let inflight_buffer = VecDeque::new();
        let unacked_pubrels = VecDeque::new();

        let outgoing = Self {
            client_id,
            data_buffer: Arc::new(Mutex::new(data_buffer)),
            inflight_buffer,
            redeliveries: VecDeque::new(),
            retained_inflight: VecDeque::new(),
            retained_redeliveries: VecDeque::new(),
            unacked_pubrels,
            handle,
            last_pkid: 0,
            meter: Default::default(),
        };

        (outgoing, rx)
    }

    #[inline]
    pub(crate) fn buffer(&self) -> Arc<Mutex<VecDeque<Notification>>> {
        self.data_buffer.clone()
    }

    /// iotmon patch: resumes a persistent session whose last connection ended with
    /// `inflight` publishes unacknowledged. The router re-reads them from the log; each goes
    /// out again with its packet id and DUP set (MQTT-4.4.0-1, MQTT-3.3.1-1), and what the
    /// re-read meets before the last of them on the same filter was delivered already (at
    /// QoS 0, or acknowledged) and is skipped. Upstream sent them again as new messages with
    /// new packet ids, and sent QoS 0 messages twice.
    ///
    /// iotmon patch 40: a retained message is in no log to be re-read; the copy kept of
    /// it goes out again, with its packet id and DUP set, right after the CONNACK (see
    /// `resend_retained`). Upstream never sent it again.
    pub(crate) fn resume(&mut self, owed: Unacknowledged) {
        let retained_pkids = owed.retained.iter().map(|(_, f)| f.publish.pkid);
        self.last_pkid = owed
            .publishes
            .iter()
            .map(|(pkid, ..)| *pkid)
            .chain(retained_pkids)
            .max()
            .unwrap_or(0);
        if self.last_pkid == MAX_PKID {
            self.last_pkid = 0;
        }
        self.redeliveries = owed
            .publishes
            .into_iter()
            .filter(|(.., cursor)| cursor.is_some())
            .collect();
        self.retained_redeliveries = owed.retained;
    }

    /// iotmon patch: what this connection's session still owes, for `resume`: the
    /// redeliveries not sent yet, then the publishes in flight.
    pub(crate) fn unacknowledged(&mut self) -> Unacknowledged {
        let mut publishes = std::mem::take(&mut self.redeliveries);
        publishes.append(&mut self.inflight_buffer);
        let mut retained = std::mem::take(&mut self.retained_redeliveries);
        retained.append(&mut self.retained_inflight);
        Unacknowledged {
            publishes,
            retained,
        }
    }

    /// iotmon patch 40: sends again, after the acknowledgements queued so far (a resumed
    /// session's CONNACK comes first), the retained messages its last connection had in
    /// flight, with their packet ids and DUP set (MQTT-4.4.0-1, MQTT-3.3.1-1). They take
    /// the front of `inflight_buffer`, as they are sent before anything read from a log.
    pub(crate) fn resend_retained(&mut self) {
        if self.retained_redeliveries.is_empty() {
            return;
        }
        let mut buffer = self.data_buffer.lock();
        for (filter_idx, mut forward) in std::mem::take(&mut self.retained_redeliveries) {
            forward.publish.dup = true;
            self.inflight_buffer
                .push_back((forward.publish.pkid, filter_idx, None));
            self.retained_inflight
                .push_back((filter_idx, forward.clone()));
            self.meter.publish_count += 1;
            buffer.push_back(Notification::Forward(forward));
        }
    }

    /// iotmon patch: whether a publish read at `cursor` of `filter_idx` is one to send again
    /// (with its packet id), one delivered already, or new. See `resume`.
    fn redelivery(
        redeliveries: &mut VecDeque<(u16, FilterIdx, Option<Cursor>)>,
        filter_idx: FilterIdx,
        cursor: Option<Cursor>,
    ) -> Redelivery {
        let Some(cursor) = cursor else {
            return Redelivery::New;
        };
        let last = redeliveries
            .iter()
            .filter(|(_, filter, _)| *filter == filter_idx)
            .filter_map(|(.., at)| *at)
            .max();
        let Some(last) = last else {
            return Redelivery::New;
        };
        if cursor > last {
            return Redelivery::New;
        }
        let position = redeliveries
            .iter()
            .position(|(_, filter, at)| *filter == filter_idx && *at == Some(cursor));
        match position.and_then(|position| redeliveries.remove(position)) {
            Some((pkid, ..)) => Redelivery::Again(pkid),
            None => Redelivery::Delivered,
        }
    }

    pub fn free_slots(&self) -> usize {
        MAX_INFLIGHT - self.inflight_buffer.len()
    }

    pub fn push_notification(&mut self, notification: Notification) -> usize {
        let mut buffer = self.data_buffer.lock();
        buffer.push_back(notification);
        buffer.len()
    }

    /// Push packets to the outgoing buffer.
    pub fn push_forwards(
        &mut self,
        publishes: impl Iterator<Item = Forward>,
        qos: u8,
        filter_idx: usize,
    ) -> (usize, usize) {
        let mut buffer = self.data_buffer.lock();
        let publishes = publishes;

        if qos == 0 {
            for p in publishes {
                self.meter.publish_count += 1;
                buffer.push_back(Notification::Forward(p));
                // self.meter.total_size += p.len();
            }

            // self.meter.update_data_rate(total_size);
            let buffer_count = buffer.len();
            let inflight_count = self.inflight_buffer.len();
            return (buffer_count, inflight_count);
        }

        for mut p in publishes {
            // iotmon patch: see `resume`.
            match Self::redelivery(&mut self.redeliveries, filter_idx, p.cursor) {
                Redelivery::New => {}
                Redelivery::Delivered => continue,
                Redelivery::Again(pkid) => {
                    p.publish.pkid = pkid;
                    p.publish.dup = true;
                    self.inflight_buffer.push_back((pkid, filter_idx, p.cursor));
                    self.meter.publish_count += 1;
                    buffer.push_back(Notification::Forward(p));
                    continue;
                }
            }
            // iotmon patch: a message delivered at QoS 0 under a subscription granted more
            // (see `forward_device_data`) takes no packet id and awaits no acknowledgement.
            if p.publish.qos == QoS::AtMostOnce {
                self.meter.publish_count += 1;
                buffer.push_back(Notification::Forward(p));
                continue;
            }
            // Index and pkid of current outgoing packet
            self.last_pkid += 1;
            p.publish.pkid = self.last_pkid;

            self.inflight_buffer
                .push_back((self.last_pkid, filter_idx, p.cursor));
            // iotmon patch 40: see `retained_inflight`.
            if p.cursor.is_none() {
                self.retained_inflight.push_back((filter_idx, p.clone()));
            }

            // Place max pkid packet at index 0
            if self.last_pkid == MAX_PKID {
                self.last_pkid = 0;
            }

            self.meter.publish_count += 1;
            self.meter.total_size += p.publish.topic.len() + p.publish.payload.len();
            buffer.push_back(Notification::Forward(p));
        }

        let buffer_count = buffer.len();
        let inflight_count = self.inflight_buffer.len();

        if inflight_count > MAX_INFLIGHT {
            warn!(
                "More inflight publishes than max allowed, inflight count = {}, max allowed = {}",
                inflight_count, MAX_INFLIGHT
            );
        }

        (buffer_count, inflight_count)
    }

    // Returns (unsolicited, outoforder) flags
    // Return: Out of order or unsolicited acks
    pub fn register_ack(&mut self, pkid: u16) -> Option<()> {
        let (head, _filter_idx, cursor) = self.inflight_buffer.pop_front()?;
        // iotmon patch 40: the copy of a retained message goes with its entry.
        if cursor.is_none() {
            self.retained_inflight.pop_front();
        }

        // We don't support out of order acks
        if pkid != head {
            error!(pkid, head, "out of order ack.");
            return None;
        }

        Some(())
    }

    pub fn register_pubrec(&mut self, pkid: u16) {
        // NOTE: we can return true of false
        // to indicate whether this is duplicate or not
        self.unacked_pubrels.push_back(pkid);
    }

    // OASIS standards don't specify anything about ordering of PubComp
    // https://docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html#_Toc3901240
    // But we don't support out of order / unsolicited pubcomps
    // to be consistent with the behaviour with other acks
    pub fn register_pubcomp(&mut self, pkid: u16) -> Option<()> {
        let id = self.unacked_pubrels.pop_front()?;

        // out of order acks
        if pkid != id {
            error!(pkid, id, "out of order ack.");
            return None;
        }

        Some(())
    }

    // Here we are assuming that the first unique filter_idx we find while iterating will have the
    // least corresponding cursor because of the way we insert into the inflight_buffer
    pub fn retransmission_map(&self) -> HashMap<FilterIdx, Cursor> {
        let mut o = HashMap::new();
        for (_, filter_idx, cursor) in self.inflight_buffer.iter() {
            // if cursor in None, it means it was a retained publish
            if !o.contains_key(filter_idx) && cursor.is_some() {
                o.insert(*filter_idx, cursor.unwrap());
            }
        }

        o
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn retransmission_map_is_calculated_accurately() {
        let (mut outgoing, _) = Outgoing::new("retransmission-test".to_string());
        let mut result = HashMap::new();

        result.insert(0, (0, 8));
        result.insert(1, (0, 1));
        result.insert(2, (1, 1));
        result.insert(3, (1, 0));

        let buf = vec![
            (1, 0, Some((0, 8))),
            (1, 0, Some((0, 10))),
            (1, 1, Some((0, 1))),
            (3, 1, Some((0, 4))),
            (2, 2, Some((1, 1))),
            (1, 2, Some((2, 6))),
            (1, 2, Some((2, 1))),
            (1, 3, Some((1, 0))),
            (1, 3, Some((1, 1))),
            (1, 3, Some((1, 3))),
            (1, 3, Some((1, 3))),
        ];

        outgoing.inflight_buffer.extend(buf);
        assert_eq!(outgoing.retransmission_map(), result);
    }

    // use super::{Outgoing, MAX_INFLIGHT};
    // use crate::protocol::{Publish, QoS};
    // use crate::router::Forward;
    // use crate::Notification;
    //
    // fn publishes(count: usize) -> impl Iterator<Item = Forward> {
    //     (1..=count).map(|v| {
    //         let publish = Publish {
    //             dup: false,
    //             retain: false,
    //             pkid: 0,
    //             qos: QoS::AtLeastOnce,
    //             topic: "hello/world".into(),
    //             payload: vec![1, 2, 3].into(),
    //         };
    //
    //         Forward {
    //             cursor: (0, v as u64),
    //             publish,
    //             size: 0,
    //         }
    //     })
    // }
    //
    // #[test]
    // fn inflight_ring_buffer_pushes_correctly() {
    //     let count = MAX_INFLIGHT as usize;
    //     let (mut outgoing, _rx) = Outgoing::new("hello".to_owned());
    //     outgoing.push_forwards(publishes(count), 1, 3);
    //
    //     // Index 1 = (0, 1), Index 99 = (0, 99), Index 0 = (0, 100)
    //     assert_eq!(outgoing.inflight_buffer[0].unwrap().1, (0, count as u64));
    //     for i in 1..count {
    //         assert_eq!(outgoing.inflight_buffer[i].unwrap().1, (0, i as u64));
    //     }
    //
    //     // Outgoing publish pkids are as expected
    //     for (i, o) in outgoing.data_buffer.lock().iter().enumerate() {
    //         let pkid = match &o {
    //             Notification::Forward(f) => f.publish.pkid,
    //             _ => unreachable!(),
    //         };
    //
    //         assert_eq!(pkid, i as u16 + 1);
    //     }
    // }
    //
    // #[test]
    // fn inflight_ring_buffer_pops_correctly() {
    //     let (mut outgoing, _rx) = Outgoing::new("hello".to_owned());
    //     outgoing.push_forwards(publishes(MAX_INFLIGHT as usize), 1, 3);
    //
    //     for pkid in 1..=MAX_INFLIGHT {
    //         let (unsolicited, outoforder) = outgoing.register_ack(pkid);
    //         assert_eq!(unsolicited, false);
    //         assert_eq!(outoforder, false);
    //     }
    // }
}
