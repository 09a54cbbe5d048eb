//! The records of one drain, and the pool their buffers come back to.
//!
//! Each drain thread builds its share of the records in a vector of its own
//! (a part), so nothing is copied to join them: [`Records`] is the list of
//! parts, read as one sequence. Building a million records writes ~330 MB;
//! in a fresh allocation almost all of that cost is page faults, so when the
//! last owner of a batch drops it, its emptied parts go back to the drain's
//! [`Pool`] and the next drain writes into memory that is already mapped.
//!
//! Invariant on memory: the pool holds at most one drain's worth of parts
//! (one per drain thread), and a part that came back much larger than it
//! was used for is shrunk first, so after a burst of flows the agent's
//! resident memory settles back near what the live flows need.

use std::sync::{Arc, Mutex};

use crate::flow::FlowRecord;

/// One drain's flow records, in per-thread parts.
#[derive(Debug, Default)]
pub struct Records {
    parts: Vec<Vec<FlowRecord>>,
    /// Where the parts go when dropped; `None` for records not built by a
    /// drain (tests, clones).
    pool: Option<Pool>,
}

impl Records {
    /// Records in the given parts, returned to `pool` when dropped.
    pub(crate) fn pooled(parts: Vec<Vec<FlowRecord>>, pool: Pool) -> Self {
        Self {
            parts,
            pool: Some(pool),
        }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.parts.iter().map(Vec::len).sum()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(Vec::is_empty)
    }

    /// Every record, part by part.
    pub fn iter(&self) -> impl Iterator<Item = &FlowRecord> {
        self.parts.iter().flatten()
    }

    /// Every record, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut FlowRecord> {
        self.parts.iter_mut().flatten()
    }

    /// The parts as slices (never empty ones), for consumers that work on
    /// contiguous runs: chunked sends, lock-per-chunk enrichment.
    pub fn parts(&self) -> impl Iterator<Item = &[FlowRecord]> {
        self.parts
            .iter()
            .filter(|p| !p.is_empty())
            .map(Vec::as_slice)
    }

    /// The parts as mutable slices (never empty ones).
    pub fn parts_mut(&mut self) -> impl Iterator<Item = &mut [FlowRecord]> {
        self.parts
            .iter_mut()
            .filter(|p| !p.is_empty())
            .map(Vec::as_mut_slice)
    }
}

impl Clone for Records {
    /// A plain copy: only the drain's own buffers go back to its pool.
    fn clone(&self) -> Self {
        Self {
            parts: self.parts.clone(),
            pool: None,
        }
    }
}

impl PartialEq for Records {
    /// Equal when the records are, in order, however they are split.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl From<Vec<FlowRecord>> for Records {
    fn from(records: Vec<FlowRecord>) -> Self {
        Self {
            parts: vec![records],
            pool: None,
        }
    }
}

impl FromIterator<FlowRecord> for Records {
    fn from_iter<I: IntoIterator<Item = FlowRecord>>(iter: I) -> Self {
        Vec::from_iter(iter).into()
    }
}

impl<'a> IntoIterator for &'a Records {
    type Item = &'a FlowRecord;
    type IntoIter = std::iter::Flatten<std::slice::Iter<'a, Vec<FlowRecord>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.parts.iter().flatten()
    }
}

impl Drop for Records {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            for part in self.parts.drain(..) {
                pool.put(part);
            }
        }
    }
}

/// Emptied record buffers waiting for the next drain. Cheap to clone (a
/// shared handle).
#[derive(Clone, Debug)]
pub struct Pool {
    free: Arc<Mutex<Vec<Vec<FlowRecord>>>>,
    /// Most buffers kept: one per drain thread.
    keep: usize,
}

/// Parts smaller than this many records are never shrunk: the saving would
/// not be worth the faults of growing them back.
const SHRINK_FLOOR: usize = 4096;

impl Pool {
    /// A pool keeping at most `keep` buffers.
    pub fn new(keep: usize) -> Self {
        Self {
            free: Arc::new(Mutex::new(Vec::with_capacity(keep))),
            keep,
        }
    }

    /// An empty buffer: the largest free one, or a new one. Largest first
    /// because the drain's first thread always walks and takes first, while
    /// the others may sit out a small map.
    pub fn take(&self) -> Vec<FlowRecord> {
        let mut free = self.lock();
        let largest = (0..free.len()).max_by_key(|&i| free[i].capacity());
        largest.map(|i| free.swap_remove(i)).unwrap_or_default()
    }

    /// Empties `part` and keeps it for a later [`Pool::take`], unless the
    /// pool is full.
    fn put(&self, mut part: Vec<FlowRecord>) {
        let used = part.len();
        // Dropping the records here, on the consumer's thread, keeps their
        // destructors (interface names, AS paths) off the drain.
        part.clear();
        // Used less than a quarter: keep twice what was used, so memory
        // follows the live flows down without refaulting on small swings.
        if part.capacity() > SHRINK_FLOOR && used < part.capacity() / 4 {
            part.shrink_to((2 * used).max(SHRINK_FLOOR));
        }
        // A part that never held a record (a thread that sat out) has no
        // memory to give back and must not take a faulted buffer's place.
        if part.capacity() == 0 {
            return;
        }
        let mut free = self.lock();
        if free.len() < self.keep {
            free.push(part);
        }
    }

    /// Buffers waiting (for tests and telemetry).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no buffer is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<FlowRecord>>> {
        // A panic while holding the lock cannot leave the list inconsistent
        // (push and pop only), so a poisoned lock is still usable.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::grpc::convert::tests::full_record;

    #[test]
    fn parts_read_as_one_sequence() {
        let pool = Pool::new(2);
        let a: Vec<_> = (0..3).map(full_record).collect();
        let b: Vec<_> = (3..5).map(full_record).collect();
        let records = Records::pooled(vec![a, Vec::new(), b], pool);
        assert_eq!(records.len(), 5);
        assert_eq!(records.parts().count(), 2);
        let flat: Records = (0..5).map(full_record).collect();
        assert_eq!(records, flat);
    }

    #[test]
    fn dropped_parts_come_back_empty_and_bounded() {
        let pool = Pool::new(2);
        let parts = (0..3)
            .map(|i| (0..10).map(|j| full_record(i * 10 + j)).collect())
            .collect();
        drop(Records::pooled(parts, pool.clone()));
        assert_eq!(pool.len(), 2, "at most `keep` buffers kept");
        let part = pool.take();
        assert!(part.is_empty() && part.capacity() >= 10);
        // Clones and plain vectors never feed the pool.
        drop(Records::from(vec![full_record(1)]));
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn the_largest_buffer_goes_first_and_unused_ones_are_not_kept() {
        let pool = Pool::new(2);
        let big: Vec<_> = (0..100).map(full_record).collect();
        drop(Records::pooled(vec![big, Vec::new()], pool.clone()));
        assert_eq!(pool.len(), 1);
        drop(Records::pooled(vec![vec![full_record(0)]], pool.clone()));
        assert!(pool.take().capacity() >= 100);
        assert!(pool.take().capacity() >= 1);
        assert_eq!(pool.take().capacity(), 0);
    }

    #[test]
    fn oversized_parts_shrink() {
        let pool = Pool::new(1);
        let mut big = Vec::with_capacity(4 * SHRINK_FLOOR + 1);
        big.push(full_record(0));
        drop(Records::pooled(vec![big], pool.clone()));
        assert!(pool.take().capacity() < 2 * SHRINK_FLOOR);
    }
}
