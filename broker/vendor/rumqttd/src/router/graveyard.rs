use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::{
    scheduler::{PauseReason, Tracker},
    ConnectionEvents, FilterIdx,
};
use crate::Cursor;

pub struct Graveyard {
    connections: HashMap<String, SavedState>,
}

impl Graveyard {
    pub fn new() -> Graveyard {
        Graveyard {
            connections: HashMap::new(),
        }
    }

    /// Add a new connection.
    /// Return tracker of previous connection if connection id already exists
    pub fn retrieve(&mut self, id: &str) -> Option<SavedState> {
        let mut saved = self.connections.remove(id)?;
        // iotmon patch: a session past its expiry is gone (MQTT 5 MQTT-3.1.2-23); its state
        // is dropped here, when its client id comes back, rather than by a timer.
        if saved.expires_at.is_some_and(|at| at <= Instant::now()) {
            saved.session_state = None;
        }
        Some(saved)
    }

    /// Save connection tracker
    pub fn save_state(
        &mut self,
        mut tracker: Tracker,
        subscriptions: HashSet<String>,
        metrics: ConnectionEvents,
        unacked_pubrels: VecDeque<u16>,
        unacked_publishes: VecDeque<(u16, FilterIdx, Option<Cursor>)>,
        expiry: Option<Duration>,
    ) {
        tracker.pause(PauseReason::Busy);
        let id = tracker.id.clone();

        let session_state = SessionState {
            tracker,
            subscriptions,
            unacked_pubrels,
            unacked_publishes,
        };

        self.connections.insert(
            id,
            SavedState {
                session_state: Some(session_state),
                metrics,
                expires_at: expiry.and_then(|expiry| Instant::now().checked_add(expiry)),
            },
        );
    }

    /// Save only metrics for connection
    pub fn save_metrics(&mut self, id: String, metrics: ConnectionEvents) {
        self.connections.insert(
            id,
            SavedState {
                session_state: None,
                metrics,
                expires_at: None,
            },
        );
    }
}

#[derive(Debug)]
pub struct SavedState {
    pub session_state: Option<SessionState>,
    pub metrics: ConnectionEvents,
    /// iotmon patch: when the session expires (MQTT 5 Session Expiry Interval).
    pub expires_at: Option<Instant>,
}

#[derive(Debug)]
pub struct SessionState {
    pub tracker: Tracker,
    pub subscriptions: HashSet<String>,
    // used for pubrel in qos2
    pub unacked_pubrels: VecDeque<u16>,
    /// iotmon patch: publishes sent and not acknowledged, see `Outgoing::resume`.
    pub unacked_publishes: VecDeque<(u16, FilterIdx, Option<Cursor>)>,
}
