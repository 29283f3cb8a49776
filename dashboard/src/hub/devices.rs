//! The hub's device table: each device's latest state and the viewers that show it, in a
//! slot of its own that views and the index name by a 4-byte number instead of its id.
//!
//! With 1,000 viewers of 1,000 devices each, ids in views (16-byte `Arc<str>`s) and a
//! device → viewers index of hash sets of 8-byte viewer ids held 30 MiB at the peak
//! (heaptrack, the fault bench's stalled viewers); as slots and sorted lists of 4-byte viewer
//! keys they hold 4 bytes a place in each.

use std::collections::HashMap;

use iotmon_wire::{DeviceId, DeviceState};

use super::viewers::ViewerKey;
use super::{device_json, DeviceJson};

/// A device's place in the [`DeviceTable`], given when the hub first hears of it: from the
/// bridge, or from a view that names it first. A known device keeps its slot for good (the
/// hub never forgets a device); an id that only views named is given up once none does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct DeviceSlot(u32);

impl DeviceSlot {
    fn index(self) -> usize {
        self.0 as usize
    }
}

/// What the hub holds in one slot.
#[derive(Debug, Default)]
pub(super) struct DeviceEntry {
    /// The id the slot is for; `None` while the slot is free.
    id: Option<DeviceId>,
    /// The latest state; `None` until the device reports (its id came from a view).
    pub(super) state: Option<DeviceState>,
    /// `state` as JSON, made when a viewer first needs it after a change (and at once when
    /// the device changes while some viewer shows it).
    pub(super) json: Option<DeviceJson>,
    /// The viewers that have the device in view.
    pub(super) watchers: Watchers,
}

/// Every device the hub knows, and every id a view names before its device reports, each in
/// a slot; slots are indices into one vector.
#[derive(Debug, Default)]
pub(super) struct DeviceTable {
    slots: HashMap<DeviceId, DeviceSlot>,
    entries: Vec<DeviceEntry>,
    /// Slots given up by ids no view names any more, taken before the vector grows.
    free: Vec<DeviceSlot>,
}

impl DeviceTable {
    /// The slot of `id`, if the hub knows it or a view names it.
    pub(super) fn slot(&self, id: &str) -> Option<DeviceSlot> {
        self.slots.get(id).copied()
    }

    /// The slot of `id`, given one if it has none.
    pub(super) fn slot_or_insert(&mut self, id: &DeviceId) -> DeviceSlot {
        if let Some(slot) = self.slot(id) {
            return slot;
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = u32::try_from(self.entries.len())
                    .expect("fewer than 2^32 devices and viewed ids");
                self.entries.push(DeviceEntry::default());
                DeviceSlot(slot)
            }
        };
        self.entries[slot.index()].id = Some(id.clone());
        self.slots.insert(id.clone(), slot);
        slot
    }

    pub(super) fn get(&self, slot: DeviceSlot) -> &DeviceEntry {
        &self.entries[slot.index()]
    }

    pub(super) fn get_mut(&mut self, slot: DeviceSlot) -> &mut DeviceEntry {
        &mut self.entries[slot.index()]
    }

    /// The latest state of device `id`, if it has reported.
    pub(super) fn state(&self, id: &str) -> Option<&DeviceState> {
        self.slot(id).and_then(|slot| self.get(slot).state.as_ref())
    }

    /// The latest state of every device that has reported.
    pub(super) fn states(&self) -> impl Iterator<Item = &DeviceState> {
        self.entries.iter().filter_map(|entry| entry.state.as_ref())
    }

    /// Adds viewer `key` to the watchers of `slot`.
    pub(super) fn watch(&mut self, slot: DeviceSlot, key: ViewerKey) {
        self.get_mut(slot).watchers.insert(key);
    }

    /// Removes viewer `key` from the watchers of `slot`, giving the slot up if its device
    /// never reported and no view names it any more (a viewer may name any id: kept, such
    /// ids would grow the table without bound).
    pub(super) fn unwatch(&mut self, slot: DeviceSlot, key: ViewerKey) {
        let entry = &mut self.entries[slot.index()];
        entry.watchers.remove(key);
        if entry.watchers.is_empty() && entry.state.is_none() {
            if let Some(id) = entry.id.take() {
                self.slots.remove(&id);
            }
            entry.json = None;
            self.free.push(slot);
        }
    }

    /// The JSON of the devices in `slots` that have reported, serializing those not
    /// serialized since their last change.
    pub(super) fn jsons(&mut self, slots: impl Iterator<Item = DeviceSlot>) -> Vec<DeviceJson> {
        slots
            .filter_map(|slot| {
                let entry = self.get_mut(slot);
                if entry.json.is_none() {
                    entry.json = entry.state.as_ref().and_then(device_json);
                }
                entry.json.clone()
            })
            .collect()
    }

    /// Slots in use: devices that have reported and ids that views name.
    #[cfg(test)]
    pub(super) fn slots_in_use(&self) -> usize {
        self.slots.len()
    }
}

/// The viewers that show one device, as a sorted list of keys: 4 bytes each, where a hash set
/// of 8-byte ids took ~16. Adding and removing one is a binary search and a move of the keys
/// after it, not a scan: a viewer of 1,000 devices leaving while 999 others watch each of
/// them takes ~0.22 ms (`hub_viewers/leave_shared_view` in `benches/hub.rs`).
#[derive(Debug, Default)]
pub(super) struct Watchers(Vec<ViewerKey>);

impl Watchers {
    fn insert(&mut self, key: ViewerKey) {
        if let Err(at) = self.0.binary_search(&key) {
            self.0.insert(at, key);
        }
    }

    fn remove(&mut self, key: ViewerKey) {
        if let Ok(at) = self.0.binary_search(&key) {
            self.0.remove(at);
        }
        // A device that a crowd stopped watching does not keep room for the crowd.
        if self.0.is_empty() {
            self.0 = Vec::new();
        } else if self.0.len() < self.0.capacity() / 4 {
            self.0.shrink_to(self.0.len() * 2);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = ViewerKey> + '_ {
        self.0.iter().copied()
    }

    #[cfg(test)]
    pub(super) fn contains(&self, key: ViewerKey) -> bool {
        self.0.binary_search(&key).is_ok()
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

#[cfg(test)]
mod tests {
    use iotmon_wire::Metrics;

    use super::*;

    fn reported(id: &str) -> DeviceState {
        DeviceState {
            id: id.into(),
            group: "hq".into(),
            ts: 1,
            metrics: Metrics::new(),
            online: true,
        }
    }

    #[test]
    fn an_id_only_views_name_gives_its_slot_up_once_none_does_and_it_is_reused() {
        let mut table = DeviceTable::default();
        let viewer = ViewerKey::for_test(0);
        let named = table.slot_or_insert(&"named".into());
        assert_eq!(
            table.slot_or_insert(&"named".into()),
            named,
            "one slot per id"
        );
        table.watch(named, viewer);
        table.unwatch(named, viewer);
        assert_eq!(table.slot("named"), None);
        assert_eq!(table.slots_in_use(), 0);
        let next = table.slot_or_insert(&"next".into());
        assert_eq!(next, named, "the free slot is taken first");
        assert!(table.get(next).watchers.is_empty());
        assert!(table.get(next).state.is_none());
    }

    #[test]
    fn a_device_that_reported_keeps_its_slot_with_no_viewer() {
        let mut table = DeviceTable::default();
        let viewer = ViewerKey::for_test(0);
        let slot = table.slot_or_insert(&"d1".into());
        table.watch(slot, viewer);
        table.get_mut(slot).state = Some(reported("d1"));
        table.unwatch(slot, viewer);
        assert_eq!(table.slot("d1"), Some(slot));
        assert_eq!(table.state("d1").map(|state| &*state.id), Some("d1"));
        assert_eq!(table.states().count(), 1);
        assert_eq!(table.jsons([slot].into_iter()).len(), 1);
    }

    #[test]
    fn watchers_stay_sorted_and_a_crowd_leaving_frees_its_room() {
        let mut watchers = Watchers::default();
        for key in (0..1_000).rev() {
            watchers.insert(ViewerKey::for_test(key));
        }
        watchers.insert(ViewerKey::for_test(7));
        assert_eq!(watchers.iter().count(), 1_000, "each viewer once");
        assert!(watchers.iter().is_sorted());
        for key in 0..990 {
            watchers.remove(ViewerKey::for_test(key));
        }
        assert!(!watchers.contains(ViewerKey::for_test(0)));
        assert!(watchers.contains(ViewerKey::for_test(995)));
        assert!(watchers.capacity() <= 40, "{}", watchers.capacity());
        for key in 990..1_000 {
            watchers.remove(ViewerKey::for_test(key));
        }
        assert!(watchers.is_empty());
        assert_eq!(watchers.capacity(), 0);
    }
}
