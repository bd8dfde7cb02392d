//! Which slots of the flat Maglev array (`MCS_MAGLEV`) are free: every
//! service port's table is a run of slots in it, allocated here.
//!
//! A run that a table leaves (its port is gone, or its size changed and the
//! new table went elsewhere) is not free at once: a packet may have read the
//! entry that named it just before the entry changed, and still read its
//! slots. Such runs wait [`REUSE_DELAY`] (a program run takes microseconds)
//! before another table may take them.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// How long a run a table left waits before it is handed out again.
pub const REUSE_DELAY: Duration = Duration::from_secs(1);

/// The free runs of the flat array, and the runs waiting to be.
#[derive(Debug, Default)]
pub(super) struct SlotSpace {
    /// Slots of the array.
    capacity: u32,
    /// Free runs: start → length, never adjacent (merged when freed).
    free: BTreeMap<u32, u32>,
    /// Runs tables left, with when they may be handed out again, oldest first.
    waiting: Vec<(Instant, u32, u32)>,
}

impl SlotSpace {
    /// Starts over for an array of `capacity` slots of which `used` (start,
    /// length) hold live tables; the runs still waiting keep waiting.
    pub(super) fn reset(&mut self, capacity: u32, used: impl IntoIterator<Item = (u32, u32)>) {
        self.capacity = capacity;
        let mut taken: Vec<(u32, u32)> = used.into_iter().collect();
        taken.extend(self.waiting.iter().map(|(_, start, len)| (*start, *len)));
        taken.sort_unstable();
        self.free.clear();
        let mut cursor = 0u32;
        for (start, len) in taken {
            if start > cursor {
                self.free.insert(cursor, start - cursor);
            }
            cursor = cursor.max(start.saturating_add(len));
        }
        if capacity > cursor {
            self.free.insert(cursor, capacity - cursor);
        }
    }

    /// Hands out the runs whose delay ended by `now`.
    pub(super) fn reclaim(&mut self, now: Instant) {
        let ready = self.waiting.iter().take_while(|(at, ..)| *at <= now).count();
        for (_, start, len) in self.waiting.drain(..ready).collect::<Vec<_>>() {
            self.insert_free(start, len);
        }
    }

    /// A run of `len` slots: the smallest free run that fits (so large runs
    /// stay whole for large tables), from its start. `None` when none fits.
    pub(super) fn allocate(&mut self, len: u32) -> Option<u32> {
        let (start, run) =
            self.free.iter().filter(|(_, run)| **run >= len).min_by_key(|(start, run)| (**run, **start))?;
        let (start, run) = (*start, *run);
        self.free.remove(&start);
        if run > len {
            self.free.insert(start + len, run - len);
        }
        Some(start)
    }

    /// Gives back a run that no entry ever named (its table could not be
    /// published): free at once.
    pub(super) fn give_back(&mut self, start: u32, len: u32) {
        self.insert_free(start, len);
    }

    /// A table left the run at `now`: free after [`REUSE_DELAY`].
    pub(super) fn release(&mut self, start: u32, len: u32, now: Instant) {
        self.waiting.push((now + REUSE_DELAY, start, len));
    }

    /// Slots free now, and slots waiting.
    #[must_use]
    pub(super) fn free_slots(&self) -> (u64, u64) {
        (
            self.free.values().map(|len| u64::from(*len)).sum(),
            self.waiting.iter().map(|(_, _, len)| u64::from(*len)).sum(),
        )
    }

    fn insert_free(&mut self, mut start: u32, mut len: u32) {
        if len == 0 || start >= self.capacity {
            return;
        }
        if let Some((&before, &before_len)) = self.free.range(..start).next_back()
            && before + before_len == start
        {
            self.free.remove(&before);
            start = before;
            len += before_len;
        }
        if let Some(after_len) = self.free.remove(&(start + len)) {
            len += after_len;
        }
        self.free.insert(start, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_handed_out_smallest_fit_first_and_merged_when_free() {
        let mut space = SlotSpace::default();
        space.reset(100, [(10, 10), (50, 5)]);
        assert_eq!(space.free_slots(), (85, 0));
        // Free runs: 0..10, 20..50, 55..100. Five slots fit 0..10 best.
        assert_eq!(space.allocate(5), Some(0));
        assert_eq!(space.allocate(30), Some(20));
        assert_eq!(space.allocate(46), None);
        assert_eq!(space.allocate(45), Some(55));
        space.give_back(20, 30);
        space.give_back(55, 45);
        space.give_back(50, 5);
        // 20..100 is one run again.
        assert_eq!(space.allocate(80), Some(20));
    }

    #[test]
    fn a_released_run_waits_before_it_is_handed_out_again() {
        let mut space = SlotSpace::default();
        space.reset(10, []);
        let t0 = Instant::now();
        assert_eq!(space.allocate(10), Some(0));
        space.release(0, 10, t0);
        assert_eq!(space.free_slots(), (0, 10));
        space.reclaim(t0 + REUSE_DELAY / 2);
        assert_eq!(space.allocate(10), None, "still waiting");
        // A reset (a full sync) keeps it waiting.
        space.reset(10, []);
        assert_eq!(space.allocate(1), None, "still waiting after a reset");
        space.reclaim(t0 + REUSE_DELAY);
        assert_eq!(space.allocate(10), Some(0));
    }
}
