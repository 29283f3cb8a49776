//! The hub's connected viewers, each under a small key of the hub's own.
//!
//! A session names its viewer by a [`ViewerId`] that is never reused; the hub files it under a
//! [`ViewerKey`], an index into a vector, which is what the device → viewers index holds: 4
//! bytes a place where the id took 8 (and a hash set around it ~16). A key is reused once its
//! viewer has left, and only then: by that time the viewer is gone from every index.

use std::collections::HashMap;

use super::ViewerId;

/// The hub's key for a connected viewer: its index in [`Viewers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct ViewerKey(u32);

impl ViewerKey {
    fn index(self) -> usize {
        self.0 as usize
    }

    #[cfg(test)]
    pub(super) fn for_test(key: u32) -> Self {
        ViewerKey(key)
    }
}

/// Connected viewers by key, and each one's key by id.
#[derive(Debug)]
pub(super) struct Viewers<T> {
    entries: Vec<Option<(ViewerId, T)>>,
    keys: HashMap<ViewerId, ViewerKey>,
    /// Keys of viewers that left, taken before the vector grows.
    free: Vec<ViewerKey>,
}

impl<T> Default for Viewers<T> {
    fn default() -> Self {
        Viewers {
            entries: Vec::new(),
            keys: HashMap::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Viewers<T> {
    /// Files `viewer` under a free key. The caller makes sure `id` is not connected already.
    pub(super) fn insert(&mut self, id: ViewerId, viewer: T) -> ViewerKey {
        debug_assert!(!self.keys.contains_key(&id), "viewer {id} joined twice");
        let key = match self.free.pop() {
            Some(key) => key,
            None => {
                let key =
                    u32::try_from(self.entries.len()).expect("fewer than 2^32 viewers at once");
                self.entries.push(None);
                ViewerKey(key)
            }
        };
        self.entries[key.index()] = Some((id, viewer));
        self.keys.insert(id, key);
        key
    }

    /// Removes the viewer under `key`; its key is free from now on.
    pub(super) fn remove(&mut self, key: ViewerKey) -> Option<T> {
        let (id, viewer) = self.entries.get_mut(key.index())?.take()?;
        self.keys.remove(&id);
        self.free.push(key);
        Some(viewer)
    }

    /// The key of viewer `id`, while it is connected.
    pub(super) fn key(&self, id: ViewerId) -> Option<ViewerKey> {
        self.keys.get(&id).copied()
    }

    pub(super) fn get_mut(&mut self, key: ViewerKey) -> Option<&mut T> {
        self.entries
            .get_mut(key.index())?
            .as_mut()
            .map(|(_, viewer)| viewer)
    }

    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().flatten().map(|(_, viewer)| viewer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_reused_only_after_its_viewer_left() {
        let mut viewers = Viewers::default();
        let first = viewers.insert(10, "first");
        let second = viewers.insert(11, "second");
        assert_ne!(first, second);
        assert_eq!(viewers.key(10), Some(first));
        assert_eq!(viewers.remove(first), Some("first"));
        assert_eq!(viewers.remove(first), None, "gone already");
        assert_eq!(viewers.key(10), None);
        assert_eq!(viewers.get_mut(first), None);
        let third = viewers.insert(12, "third");
        assert_eq!(third, first, "the free key is taken first");
        assert_eq!(viewers.get_mut(third), Some(&mut "third"));
        assert_eq!(viewers.get_mut(second), Some(&mut "second"));
        assert_eq!(viewers.len(), 2);
        assert_eq!(viewers.iter().count(), 2);
    }
}
