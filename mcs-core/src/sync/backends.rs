//! The syncer's memory of the backends map: dense by id, as the map is (an
//! array whose index is the backend id), with the ids of each service port.
//!
//! At two million backends, a `BTreeMap` by id and a hash map from identity
//! to id took 150 MiB of the agent; this takes 20 bytes an id plus 4 an id
//! in its service port's list.
use std::collections::HashMap;

use mcs_common::Backend;

/// What the backends map holds, by id.
#[derive(Clone, Debug, Default)]
pub(super) struct BackendTable {
    /// By id; an element whose `service_id` is 0 is empty.
    slots: Vec<Backend>,
    /// Elements that hold a backend.
    len: usize,
    /// The ids in `slots` of each service port, in no order.
    by_service: HashMap<u32, Vec<u32>>,
}

impl PartialEq for BackendTable {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for BackendTable {}

impl FromIterator<(u32, Backend)> for BackendTable {
    fn from_iter<I: IntoIterator<Item = (u32, Backend)>>(entries: I) -> Self {
        let mut table = Self::default();
        for (id, backend) in entries {
            table.insert(id, backend);
        }
        table
    }
}

impl BackendTable {
    /// The backend at `id`.
    pub(super) fn get(&self, id: u32) -> Option<&Backend> {
        self.slots.get(id as usize).filter(|b| b.is_present())
    }

    /// Whether `id` holds a backend.
    pub(super) fn contains(&self, id: u32) -> bool {
        self.get(id).is_some()
    }

    /// Backends held.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Records `backend` at `id` (a backend names a service port, so it is
    /// not empty); returns what was there.
    pub(super) fn insert(&mut self, id: u32, backend: Backend) -> Option<Backend> {
        debug_assert!(backend.is_present(), "backend {id} names no service port");
        let at = id as usize;
        if self.slots.len() <= at {
            self.slots.resize(at + 1, Backend::default());
        }
        let old = std::mem::replace(&mut self.slots[at], backend);
        if old.is_present() {
            if old.service_id != backend.service_id {
                self.unlist(old.service_id, id);
                self.by_service.entry(backend.service_id).or_default().push(id);
            }
            Some(old)
        } else {
            self.len += 1;
            self.by_service.entry(backend.service_id).or_default().push(id);
            None
        }
    }

    /// Forgets the backend at `id`; returns it.
    pub(super) fn remove(&mut self, id: u32) -> Option<Backend> {
        let slot = self.slots.get_mut(id as usize).filter(|b| b.is_present())?;
        let old = std::mem::take(slot);
        self.len -= 1;
        self.unlist(old.service_id, id);
        // The table shrinks when its last ids go, as after a full deletion.
        while self.slots.last().is_some_and(|b| !b.is_present()) {
            self.slots.pop();
        }
        Some(old)
    }

    fn unlist(&mut self, service_id: u32, id: u32) {
        if let Some(ids) = self.by_service.get_mut(&service_id) {
            if let Some(at) = ids.iter().position(|i| *i == id) {
                ids.swap_remove(at);
            }
            if ids.is_empty() {
                self.by_service.remove(&service_id);
            }
        }
    }

    /// The backends, by id.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &Backend)> + Clone + '_ {
        self.range(0..u32::MAX)
    }

    /// The backends with ids in `ids`, by id.
    pub(super) fn range(&self, ids: std::ops::Range<u32>) -> impl Iterator<Item = (u32, &Backend)> + Clone + '_ {
        let end = (ids.end as usize).min(self.slots.len());
        let start = (ids.start as usize).min(end);
        (ids.start..).zip(&self.slots[start..end]).filter(|(_, b)| b.is_present())
    }

    /// The ids, in order.
    pub(super) fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.iter().map(|(id, _)| id)
    }

    /// The largest id held (the last element: empty ones at the end go).
    pub(super) fn last_id(&self) -> Option<u32> {
        self.slots.len().checked_sub(1).and_then(|at| u32::try_from(at).ok())
    }

    /// The ids of the backends of `service_id`, in no order.
    pub(super) fn of_service(&self, service_id: u32) -> &[u32] {
        self.by_service.get(&service_id).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn backend(service_id: u32, last: u8) -> Backend {
        Backend::new(Ipv4Addr::new(198, 18, 0, last), 8080, 6, 0, 1, service_id)
    }

    #[test]
    fn holds_backends_by_id_and_lists_them_per_service() {
        let mut table = BackendTable::default();
        assert_eq!(table.insert(5, backend(1, 5)), None);
        assert_eq!(table.insert(2, backend(1, 2)), None);
        assert_eq!(table.insert(9, backend(2, 9)), None);
        assert_eq!((table.ids().count(), table.last_id()), (3, Some(9)));
        assert_eq!(table.ids().collect::<Vec<_>>(), [2, 5, 9]);
        assert_eq!(table.range(3..9).map(|(id, _)| id).collect::<Vec<_>>(), [5]);
        assert_eq!(table.range(20..30).count(), 0, "a range past the end is empty");
        let mut ids = table.of_service(1).to_vec();
        ids.sort_unstable();
        assert_eq!(ids, [2, 5]);
        // Replaced in place, and moved to another service.
        assert_eq!(table.insert(5, backend(2, 5)), Some(backend(1, 5)));
        assert_eq!(table.of_service(1), [2]);
        assert_eq!(table.ids().count(), 3);
        assert_eq!(table.remove(9), Some(backend(2, 9)));
        assert_eq!(table.remove(9), None, "removed once");
        assert_eq!((table.ids().count(), table.last_id(), table.of_service(2)), (2, Some(5), &[5][..]));
        assert!(!table.contains(9) && table.contains(2) && table.get(0).is_none());
        let same: BackendTable = [(5, backend(2, 5)), (2, backend(1, 2))].into_iter().collect();
        assert_eq!(table, same, "equal by content, whatever the order of the lists");
        table.remove(2);
        table.remove(5);
        assert_eq!((table.ids().count(), table.last_id(), table.of_service(1)), (0, None, &[][..]));
    }
}
