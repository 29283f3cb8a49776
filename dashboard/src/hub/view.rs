//! A viewer's view as the hub holds it: the slots of its devices, and which of them changed
//! since its last frame.

use super::devices::DeviceSlot;

/// The slots of one viewer's view, sorted. A viewer holds its view for as long as it is
/// connected, so it is kept compact: 4 bytes a device, 4 KB for a view of 1,000, where the
/// sorted ids took 16 KB and a hash set of them 34 KB (measured with 1,000 viewers of 1,000
/// devices each).
#[derive(Debug, Default)]
pub(super) struct ViewIds(Box<[DeviceSlot]>);

impl ViewIds {
    pub(super) fn new(mut slots: Vec<DeviceSlot>) -> ViewIds {
        slots.sort_unstable();
        slots.dedup();
        ViewIds(slots.into_boxed_slice())
    }

    /// Where `slot` is in the view.
    pub(super) fn position(&self, slot: DeviceSlot) -> Option<usize> {
        self.0.binary_search(&slot).ok()
    }

    pub(super) fn contains(&self, slot: DeviceSlot) -> bool {
        self.position(slot).is_some()
    }

    /// The slot at `position`.
    pub(super) fn at(&self, position: usize) -> DeviceSlot {
        self.0[position]
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = DeviceSlot> + '_ {
        self.0.iter().copied()
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The slots in this view and not in `other`.
    pub(super) fn difference<'a>(
        &'a self,
        other: &'a ViewIds,
    ) -> impl Iterator<Item = DeviceSlot> + 'a {
        self.iter().filter(move |slot| !other.contains(*slot))
    }
}

/// Which places of a view changed since the viewer's last frame, one bit each: a device that
/// changes again is still one entry (the frame carries its latest state), so it never holds
/// more than the view.
#[derive(Debug, Default)]
pub(super) struct PendingDevices(Box<[u64]>);

impl PendingDevices {
    /// Nothing pending, for a view of `len` devices.
    pub(super) fn for_view(len: usize) -> Self {
        PendingDevices(vec![0; len.div_ceil(64)].into_boxed_slice())
    }

    pub(super) fn insert(&mut self, position: usize) {
        self.0[position / 64] |= 1 << (position % 64);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.iter().all(|&word| word == 0)
    }

    pub(super) fn clear(&mut self) {
        self.0.fill(0);
    }

    /// The places pending, in view order.
    pub(super) fn positions(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(index, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                Some(index * 64 + bit)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::devices::DeviceTable;

    #[test]
    fn a_view_holds_each_slot_once_and_tells_what_another_lacks() {
        let mut table = DeviceTable::default();
        let mut slots = |names: &[&str]| {
            ViewIds::new(
                names
                    .iter()
                    .map(|&name| table.slot_or_insert(&name.into()))
                    .collect(),
            )
        };
        let old = slots(&["c", "a", "b", "a"]);
        let new = slots(&["b", "d"]);
        assert_eq!(old.len(), 3);
        let slot = |name: &str| table.slot(name).expect("a slot");
        assert!(old.contains(slot("a")) && old.contains(slot("c")) && !old.contains(slot("d")));
        assert!(old.iter().is_sorted());
        let gone: Vec<DeviceSlot> = old.difference(&new).collect();
        let came: Vec<DeviceSlot> = new.difference(&old).collect();
        // In slot order: "c" was given its slot first.
        assert_eq!(gone, [slot("c"), slot("a")]);
        assert_eq!(came, [slot("d")]);
        assert_eq!(new.at(new.position(slot("d")).expect("in view")), slot("d"));
        assert!(ViewIds::default().is_empty());
    }

    #[test]
    fn pending_places_are_held_once_each_in_view_order() {
        let mut pending = PendingDevices::for_view(130);
        assert!(pending.is_empty());
        for position in [129, 3, 64, 3, 0, 129] {
            pending.insert(position);
        }
        assert!(!pending.is_empty());
        assert_eq!(pending.positions().collect::<Vec<_>>(), [0, 3, 64, 129]);
        pending.clear();
        assert!(pending.is_empty());
        assert_eq!(pending.positions().count(), 0);
        assert!(PendingDevices::default().is_empty());
    }
}
