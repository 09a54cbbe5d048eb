//! The value store of the flat tables: items at stable `u32` indices (what
//! the tables' slots and hash entries hold), with freed indices reused.
//!
//! Invariant: an index is either live (`Some`) or in the free list, never
//! both.

use super::mem::{advise_huge, prefetch};

/// Items at stable indices.
#[derive(Clone, Debug, Default)]
pub(super) struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<u32>,
    /// Back the items with transparent huge pages as they grow.
    huge: bool,
}

impl<T> Slab<T> {
    /// An empty slab; `huge` asks for huge pages as it grows (see
    /// [`advise_huge`]).
    pub(super) fn new(huge: bool) -> Self {
        Slab {
            items: Vec::new(),
            free: Vec::new(),
            huge,
        }
    }

    /// Stores `item` and returns its index, below `limit` (2^31 items and
    /// more are far past any memory the tables could have; the last index
    /// below `limit` is reused then rather than panicking).
    pub(super) fn insert(&mut self, item: T, limit: u32) -> u32 {
        if let Some(i) = self.free.pop() {
            self.items[i as usize] = Some(item);
            return i;
        }
        let i = u32::try_from(self.items.len()).unwrap_or(limit - 1);
        let cap = self.items.capacity();
        self.items.push(Some(item));
        if self.huge && self.items.capacity() != cap {
            advise_huge(&self.items);
        }
        i
    }

    /// Takes the item at `idx` out; its index is reused.
    pub(super) fn remove(&mut self, idx: u32) -> Option<T> {
        let item = self.items.get_mut(idx as usize)?.take()?;
        self.free.push(idx);
        Some(item)
    }

    /// The item at `idx`.
    #[inline(always)]
    pub(super) fn get(&self, idx: u32) -> Option<&T> {
        self.items.get(idx as usize)?.as_ref()
    }

    /// The item at `idx`, mutable.
    pub(super) fn get_mut(&mut self, idx: u32) -> Option<&mut T> {
        self.items.get_mut(idx as usize)?.as_mut()
    }

    /// Asks the CPU to load the item at `idx` (any index: a hint only).
    #[inline(always)]
    pub(super) fn prefetch(&self, idx: u32) {
        prefetch(self.items.as_ptr().wrapping_add(idx as usize));
    }
}
