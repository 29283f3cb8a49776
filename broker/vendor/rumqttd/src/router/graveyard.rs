use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::{
    iobufs::Unacknowledged,
    scheduler::{PauseReason, Tracker},
    ConnectionEvents,
};

pub struct Graveyard {
    connections: HashMap<String, SavedState>,
    /// iotmon patch: the saved sessions, oldest first, as (client id, generation). An entry
    /// whose generation is not its session's any more (retrieved, or saved again since) is
    /// stale and skipped; stale entries are dropped when they outnumber live ones.
    order: VecDeque<(String, u64)>,
    next_generation: u64,
    /// iotmon patch: the most sessions kept for disconnected clients. Upstream kept every
    /// persistent session for ever, so clients connecting with ever-new ids and a persistent
    /// session grew the broker without bound. Past the limit the oldest session is dropped.
    max_sessions: usize,
    /// iotmon patch: sessions dropped for the limit or for their expiry, since the last
    /// report (see `RouterMeter::sessions_dropped`).
    pub dropped: usize,
    /// iotmon patch 41: the state of sessions dropped (for the limit, their expiry, or
    /// replaced by a newer save under the same client id), until the router has released
    /// the filters' logs their subscriptions held (see `take_released`).
    released: Vec<SessionState>,
}

impl Graveyard {
    pub fn new(max_sessions: usize) -> Graveyard {
        Graveyard {
            connections: HashMap::new(),
            order: VecDeque::new(),
            next_generation: 0,
            max_sessions,
            dropped: 0,
            released: Vec::new(),
        }
    }

    /// iotmon patch 41: the sessions dropped since the last call, whose subscriptions no
    /// longer hold their filters' logs.
    pub fn take_released(&mut self) -> Vec<SessionState> {
        std::mem::take(&mut self.released)
    }

    /// iotmon patch 41: a saved session, left where it is.
    pub fn get(&self, id: &str) -> Option<&SavedState> {
        self.connections.get(id)
    }

    /// iotmon patch: sessions kept for disconnected clients.
    pub fn len(&self) -> usize {
        self.connections.len()
    }

    /// Add a new connection.
    /// Return tracker of previous connection if connection id already exists
    pub fn retrieve(&mut self, id: &str) -> Option<SavedState> {
        let mut saved = self.connections.remove(id)?;
        // iotmon patch: a session past its expiry is gone (MQTT 5 MQTT-3.1.2-23); its state
        // is dropped here, when its client id comes back, rather than by a timer.
        if saved.expires_at.is_some_and(|at| at <= Instant::now()) {
            // iotmon patch 41: see `released`.
            self.released.extend(saved.session_state.take());
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
        unacked_publishes: Unacknowledged,
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

        let expires_at = expiry.and_then(|expiry| Instant::now().checked_add(expiry));
        self.keep(id, Some(session_state), metrics, expires_at);
    }

    /// iotmon patch: saves a session as the newest, then drops expired sessions at the old end
    /// and the oldest ones past `max_sessions`.
    fn keep(
        &mut self,
        id: String,
        session_state: Option<SessionState>,
        metrics: ConnectionEvents,
        expires_at: Option<Instant>,
    ) {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.order.push_back((id.clone(), generation));
        let replaced = self.connections.insert(
            id,
            SavedState {
                session_state,
                metrics,
                expires_at,
                generation,
            },
        );
        // iotmon patch 41: see `released`.
        self.released
            .extend(replaced.and_then(|saved| saved.session_state));
        let now = Instant::now();
        while let Some((oldest, generation)) = self.order.front() {
            let live = self
                .connections
                .get(oldest)
                .filter(|saved| saved.generation == *generation);
            let is_live = live.is_some();
            let drop_it = live.is_some_and(|saved| {
                self.connections.len() > self.max_sessions
                    || saved.expires_at.is_some_and(|at| at <= now)
            });
            if is_live && !drop_it {
                break;
            }
            if drop_it {
                // iotmon patch 41: see `released`.
                let dropped = self.connections.remove(oldest);
                self.released
                    .extend(dropped.and_then(|saved| saved.session_state));
                self.dropped += 1;
            }
            self.order.pop_front();
        }
        if self.order.len() > 2 * self.connections.len() + 1024 {
            let connections = &self.connections;
            self.order.retain(|(id, generation)| {
                connections
                    .get(id)
                    .is_some_and(|saved| saved.generation == *generation)
            });
        }
    }

    /// Save only metrics for connection
    pub fn save_metrics(&mut self, id: String, metrics: ConnectionEvents) {
        self.keep(id, None, metrics, None);
    }
}

#[derive(Debug)]
pub struct SavedState {
    pub session_state: Option<SessionState>,
    pub metrics: ConnectionEvents,
    /// iotmon patch: when the session expires (MQTT 5 Session Expiry Interval).
    pub expires_at: Option<Instant>,
    /// iotmon patch: which save this is (see `Graveyard::order`).
    generation: u64,
}

#[derive(Debug)]
pub struct SessionState {
    pub tracker: Tracker,
    pub subscriptions: HashSet<String>,
    // used for pubrel in qos2
    pub unacked_pubrels: VecDeque<u16>,
    /// iotmon patch: publishes sent and not acknowledged, see `Outgoing::resume` (patch 40:
    /// with copies of the retained ones).
    pub unacked_publishes: Unacknowledged,
}
