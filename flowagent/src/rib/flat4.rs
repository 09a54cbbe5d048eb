//! A flat, incrementally updated IPv4 longest-prefix table (16-8-8 strides).
//!
//! Random lookups in a million-prefix table are bound by memory latency:
//! what counts is the number of dependent cache misses per lookup. A binary
//! or tree-bitmap trie walks 4 to 6 nodes; this table walks at most four
//! arrays, three for the /24-and-shorter prefixes that make up the DFZ:
//!
//! ```text
//!  addr[31:16] ─▶ top[65536]: (best prefix ≤ /16, level-2 node or NONE)
//!  addr[15:8]  ─▶ level-2 node: 256 slots, best prefix /17../24 or a level-3 child
//!  addr[7:0]   ─▶ level-3 node: 256 slots, best prefix /25../32
//!  slot value  ─▶ slab[(prefix, value)]
//! ```
//!
//! Nodes are run-length compressed: a 256-bit map marks the slots where a
//! new run of equal values starts and only one value per run is stored, so
//! a node costs 64 bytes plus 4 bytes per run (a /16 with fifteen /22../24
//! prefixes: about 30 runs) instead of 1 KiB flat. A lookup in a node is a
//! popcount over the node's single cache line, then one read of its runs.
//!
//! Updates are incremental: inserting or removing a prefix repaints only the
//! slots it spans in the one node (or top-level range) of its length, after
//! decompressing that node into 256 slots; a prefix ≤ /16 touches at most
//! 2^(16 - len) top-level slots and no node. No update rebuilds the table.
//!
//! Invariants:
//! - `exact[len]` maps every stored prefix's network address to its slab
//!   index; the slab holds exactly the stored prefixes.
//! - `top[s].best` is the longest stored prefix of length ≤ 16 covering
//!   slot `s` (or NONE); a level-2 slot holds the longest stored /17../24
//!   covering it (or NONE), or a child whose `background` holds that value;
//!   a level-3 slot holds the longest stored /25../32 covering it (or NONE).
//!   A lookup takes the deepest non-NONE value on its path.
//! - A node exists iff its `count` (stored prefixes longer than its parent
//!   stride inside it) is non-zero; slab indices stay below [`CHILD`].

use std::{collections::HashMap, net::Ipv4Addr};

use ipnet::Ipv4Net;

use super::{
    mem::{advise_huge, prefetch},
    slab::Slab,
};

/// Addresses a batched lookup carries through its stages together: each
/// stage has this many independent misses to put in flight before it reads
/// the first. Larger groups kept paying off on the 2-core VM
/// (`flowagent-bench --only lpm`, IPv4, 1.0M prefixes, batched vs
/// prefix-trie in the same run): 16: 23.6 M/s (3.0x), 32: 32 to 33 M/s
/// (4.2 to 4.3x), 64: 44.5 M/s (4.9x), 128: 49.1 M/s (5.3x); a
/// lookup's stage costs a few ns to issue and a miss (often with a TLB
/// miss under the hypervisor) well over 100 ns, so short groups wait at
/// every stage. The bound is L1: a group's lines (three per IPv4 address)
/// must stay there from prefetch to read, 24 KiB at 128 on a 48 KiB L1d.
pub const GROUP: usize = 128;
// Batches record an address's place in a group in a u8.
const _: () = assert!(GROUP <= 256);

/// Batch sizes the tests of batched lookups try: empty, one, around one and
/// two groups, and a size that is none of these.
#[cfg(test)]
pub(super) const TEST_BATCH_SIZES: [usize; 9] = [
    0,
    1,
    2,
    GROUP - 1,
    GROUP,
    GROUP + 1,
    2 * GROUP - 1,
    2 * GROUP + 1,
    300,
];

/// No prefix.
const NONE: u32 = u32::MAX;
/// Set on a level-2 slot value that is a level-3 node index.
const CHILD: u32 = 1 << 31;

/// One top-level slot: a /16 of the address space.
#[derive(Clone, Copy)]
struct Top {
    /// Slab index of the longest prefix ≤ /16 covering the /16, or NONE.
    best: u32,
    /// Level-2 node index, or NONE.
    node: u32,
}

/// 64 bytes of run values: the arena's allocation unit, one cache line.
#[derive(Clone, Copy)]
#[repr(align(64))]
struct Block([u32; 16]);

/// Where the nodes' run values live: one contiguous allocation (so huge
/// pages can back it) carved into runs of blocks, with a free list per
/// size (1 to 16 blocks: 256 runs at most).
#[derive(Clone, Default)]
struct Arena {
    blocks: Vec<Block>,
    free: [Vec<u32>; 17],
}

impl Arena {
    fn alloc(&mut self, n: u8) -> u32 {
        if let Some(at) = self.free[usize::from(n)].pop() {
            return at;
        }
        let at = self.blocks.len() as u32;
        let cap = self.blocks.capacity();
        self.blocks
            .resize(self.blocks.len() + usize::from(n), Block([NONE; 16]));
        if self.blocks.capacity() != cap {
            advise_huge(&self.blocks);
        }
        at
    }

    fn release(&mut self, at: u32, n: u8) {
        if n > 0 {
            self.free[usize::from(n)].push(at);
        }
    }

    #[inline(always)]
    fn get(&self, at: u32, run: usize) -> u32 {
        self.value((at as usize * 16).wrapping_add(run))
    }

    /// The value at `pos` counted in values from the arena's start (out
    /// of range reads as NONE).
    #[inline(always)]
    fn value(&self, pos: usize) -> u32 {
        self.blocks.get(pos >> 4).map_or(NONE, |b| b.0[pos & 15])
    }
}

/// 256 slots (one byte of the address), run-length compressed. Exactly one
/// cache line, so a lookup reads one line of it, then one of its runs.
#[derive(Clone)]
#[repr(align(64))]
struct Node {
    /// Bit `s` set: slot `s` starts a run (bit 0 is always set).
    starts: [u64; 4],
    /// Runs started before each 64-slot word, so a lookup popcounts one word.
    before: [u16; 4],
    /// For a level-3 node, the level-2 value of its parent slot.
    background: u32,
    /// Stored prefixes inside this node's range deeper than the parent stride.
    count: u32,
    /// First arena block of the run values.
    runs: u32,
    /// Arena blocks held.
    blocks: u8,
}

impl Node {
    /// A node whose 256 slots are all `value`.
    fn filled(arena: &mut Arena, value: u32, background: u32) -> Self {
        let mut n = Self {
            starts: [0; 4],
            before: [0; 4],
            background,
            count: 0,
            runs: 0,
            blocks: 0,
        };
        n.store(arena, &[value; 256]);
        n
    }

    /// The value of `slot`.
    #[inline(always)]
    fn get(&self, arena: &Arena, slot: u8) -> u32 {
        arena.value(self.pos(slot))
    }

    /// Where in the arena (in values, see [`Arena::value`]) the value of
    /// `slot` is: reads only this node's line.
    #[inline(always)]
    fn pos(&self, slot: u8) -> usize {
        let (w, b) = (usize::from(slot >> 6), u32::from(slot & 63));
        // Runs started up to and including `slot`, minus one: this run.
        let upto = self.starts[w & 3] & (u64::MAX >> (63 - b));
        let run = usize::from(self.before[w & 3]) + upto.count_ones() as usize;
        // Never wraps (bit 0 is set); were it to, the read is out of range
        // and gives NONE, not a panic.
        (self.runs as usize * 16 + run).wrapping_sub(1)
    }

    /// All 256 slots, decompressed.
    fn load(&self, arena: &Arena) -> [u32; 256] {
        let mut out = [NONE; 256];
        let mut run = 0usize;
        for (s, v) in out.iter_mut().enumerate() {
            if self.starts[s >> 6] >> (s & 63) & 1 == 1 {
                run += 1;
            }
            *v = arena.get(self.runs, run.wrapping_sub(1));
        }
        out
    }

    /// Compresses `slots` into this node, moving its runs in the arena when
    /// they no longer fit.
    fn store(&mut self, arena: &mut Arena, slots: &[u32; 256]) {
        let mut runs = [NONE; 256];
        let mut n = 0;
        self.starts = [0; 4];
        for (s, v) in slots.iter().enumerate() {
            if s == 0 || slots[s - 1] != *v {
                self.starts[s >> 6] |= 1 << (s & 63);
                runs[n] = *v;
                n += 1;
            }
        }
        let mut before = 0u16;
        for w in 0..4 {
            self.before[w] = before;
            before += self.starts[w].count_ones() as u16;
        }
        let need = n.div_ceil(16) as u8;
        if need != self.blocks {
            arena.release(self.runs, self.blocks);
            self.runs = arena.alloc(need);
            self.blocks = need;
        }
        for (i, chunk) in runs[..n].chunks(16).enumerate() {
            let b = &mut arena.blocks[self.runs as usize + i].0;
            b[..chunk.len()].copy_from_slice(chunk);
        }
    }

    /// Gives the node's runs back to the arena.
    fn release(&mut self, arena: &mut Arena) {
        arena.release(self.runs, self.blocks);
        self.blocks = 0;
    }
}

/// Slots `[first, first + 2^(stride_end - len))` of a stride whose slot
/// index is `net >> shift & mask`: the slots a prefix of length `len` spans.
fn span(net: u32, len: u8, shift: u32, stride_end: u8, mask: u32) -> std::ops::Range<usize> {
    let first = (net >> shift & mask) as usize;
    first..first + (1usize << (stride_end - len))
}

/// Whether a level-2 slot value is a level-3 node (one compare: NONE has
/// the CHILD bit too).
#[inline(always)]
fn is_child(v: u32) -> bool {
    v.wrapping_sub(CHILD) < NONE - CHILD
}

/// The network mask of a length.
fn mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

/// IPv4 prefixes with one value each and longest-prefix lookup.
#[derive(Clone)]
pub struct Flat4<V> {
    top: Box<[Top]>,
    nodes: Vec<Node>,
    free_nodes: Vec<u32>,
    arena: Arena,
    slab: Slab<(Ipv4Net, V)>,
    /// Per length, network address -> slab index.
    exact: Vec<HashMap<u32, u32>>,
    len: usize,
}

impl<V> Default for Flat4<V> {
    fn default() -> Self {
        Self {
            top: vec![
                Top {
                    best: NONE,
                    node: NONE
                };
                1 << 16
            ]
            .into_boxed_slice(),
            nodes: Vec::new(),
            free_nodes: Vec::new(),
            arena: Arena::default(),
            slab: Slab::new(true),
            exact: vec![HashMap::new(); 33],
            len: 0,
        }
    }
}

impl<V> Flat4<V> {
    /// Prefixes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The length of the prefix at slab index `idx` (NONE: none, shorter
    /// than any).
    fn len_of(&self, idx: u32) -> Option<u8> {
        self.slab.get(idx).map(|(p, _)| p.prefix_len())
    }

    /// Whether the prefix at `cur` loses a slot to a new prefix of `len`.
    fn overridden(&self, cur: u32, len: u8) -> bool {
        self.len_of(cur).is_none_or(|l| l <= len)
    }

    fn entry(&self, idx: u32) -> Option<(Ipv4Net, &V)> {
        self.slab.get(idx).map(|(p, v)| (*p, v))
    }

    /// The most specific prefix covering `addr`, and its value.
    ///
    /// Written so that the only data-dependent choice (did the node have a
    /// more specific prefix than the top level?) is a select, not a branch:
    /// a mispredicted branch there (it goes either way about as often on a
    /// DFZ table) would squash the next lookups the CPU already started,
    /// and overlapping independent lookups is where the speed comes from.
    #[inline]
    pub fn lookup(&self, addr: Ipv4Addr) -> Option<(Ipv4Net, &V)> {
        let a = u32::from(addr);
        let top = self.top.get((a >> 16) as usize)?;
        let mut idx = top.best;
        if let Some(n) = self.nodes.get(top.node as usize) {
            let mut v = n.get(&self.arena, (a >> 8) as u8);
            if is_child(v) {
                v = self.deep(v, a);
            }
            idx = std::hint::select_unpredictable(v == NONE, idx, v);
        }
        self.entry(idx)
    }

    /// The most specific prefix covering each of `addrs`, into `out` (the
    /// same length; panics otherwise). Returns exactly what [`Self::lookup`]
    /// returns for each address, several times faster on a large table:
    /// see [`GROUP`].
    pub fn lookup_batch<'a>(&'a self, addrs: &[Ipv4Addr], out: &mut [Option<(Ipv4Net, &'a V)>]) {
        assert_eq!(addrs.len(), out.len(), "one output per address");
        for (addrs, out) in addrs.chunks(GROUP).zip(out.chunks_mut(GROUP)) {
            let mut idx = [NONE; GROUP];
            self.find_group(addrs, &mut idx);
            for (o, &i) in out.iter_mut().zip(&idx) {
                *o = self.entry(i);
            }
        }
    }

    /// The slab index of the longest match of each of `addrs` (at most
    /// [`GROUP`]), stage by stage: every stage prefetches the line the next
    /// one reads for all the addresses before that stage reads any, so the
    /// group's misses overlap. The last stage prefetches the slab entries
    /// the caller reads. Same answers as [`Self::lookup`], same selects.
    ///
    /// A node's rank is a popcount; the build targets baseline x86-64 (no
    /// POPCNT instruction, a dozen ALU ops instead), so on CPUs that have
    /// it the same code runs compiled with it, chosen at run time.
    fn find_group(&self, addrs: &[Ipv4Addr], idx: &mut [u32; GROUP]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU has POPCNT (checked just above), the only
            // thing the target feature lets the compiler use.
            return unsafe { self.find_group_popcnt(addrs, idx) };
        }
        self.find_group_with(addrs, idx);
    }

    /// [`Self::find_group`] compiled with POPCNT.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "popcnt")]
    fn find_group_popcnt(&self, addrs: &[Ipv4Addr], idx: &mut [u32; GROUP]) {
        self.find_group_with(addrs, idx);
    }

    /// The body of [`Self::find_group`], inlined into each variant.
    #[inline(always)]
    fn find_group_with(&self, addrs: &[Ipv4Addr], idx: &mut [u32; GROUP]) {
        let n = addrs.len().min(GROUP);
        let mut node = [NONE; GROUP];
        let mut pos = [usize::MAX; GROUP];
        // The top level (512 KiB, stays in L2): best ≤ /16 and the node,
        // whose line is requested.
        for i in 0..n {
            let top = self.top[(u32::from(addrs[i]) >> 16) as usize];
            idx[i] = top.best;
            node[i] = top.node;
            if let Some(nd) = self.nodes.get(top.node as usize) {
                prefetch(nd);
            }
        }
        // The node line: where the slot's run value is; request its line.
        for i in 0..n {
            if let Some(nd) = self.nodes.get(node[i] as usize) {
                pos[i] = nd.pos((u32::from(addrs[i]) >> 8) as u8);
                prefetch(self.arena.blocks.as_ptr().wrapping_add(pos[i] >> 4));
            }
        }
        // The run value: the /17../24 answer, or (rare in the DFZ: /25 and
        // longer) a level-3 node walked on the spot; request the slab entry.
        for i in 0..n {
            if pos[i] != usize::MAX {
                let mut v = self.arena.value(pos[i]);
                if is_child(v) {
                    v = self.deep(v, u32::from(addrs[i]));
                }
                idx[i] = std::hint::select_unpredictable(v == NONE, idx[i], v);
            }
            self.slab.prefetch(idx[i]);
        }
    }

    /// The level-3 answer for `a` under child value `v`.
    #[cold]
    fn deep(&self, v: u32, a: u32) -> u32 {
        match self.nodes.get((v & !CHILD) as usize) {
            Some(c) => match c.get(&self.arena, a as u8) {
                NONE => c.background,
                deep => deep,
            },
            None => NONE,
        }
    }

    /// The slab index of exactly `p` (truncated).
    fn find(&self, p: &Ipv4Net) -> Option<u32> {
        self.exact
            .get(usize::from(p.prefix_len()))?
            .get(&u32::from(p.network()))
            .copied()
    }

    /// The longest stored prefix covering `net` with a length in `lens`.
    fn covering(&self, net: u32, lens: std::ops::RangeInclusive<u8>) -> u32 {
        lens.rev()
            .find_map(|l| self.exact[usize::from(l)].get(&(net & mask(l))).copied())
            .unwrap_or(NONE)
    }

    /// The value of exactly `p` (host bits ignored).
    pub fn get(&self, p: &Ipv4Net) -> Option<&V> {
        let idx = self.find(&p.trunc())?;
        self.entry(idx).map(|(_, v)| v)
    }

    /// The value of exactly `p` (host bits ignored), mutable.
    pub fn get_mut(&mut self, p: &Ipv4Net) -> Option<&mut V> {
        let idx = self.find(&p.trunc())?;
        self.slab.get_mut(idx).map(|(_, v)| v)
    }

    /// The most specific stored prefix covering `p` (itself included).
    pub fn lookup_prefix(&self, p: &Ipv4Net) -> Option<(Ipv4Net, &V)> {
        let p = p.trunc();
        self.entry(self.covering(u32::from(p.network()), 0..=p.prefix_len()))
    }

    /// Stored prefixes inside `p` (itself included), ordered by address
    /// then length (the order of a pre-order trie walk).
    pub fn covered(&self, p: &Ipv4Net) -> Vec<(Ipv4Net, &V)> {
        let p = p.trunc();
        let (net, m) = (u32::from(p.network()), mask(p.prefix_len()));
        let mut out: Vec<(Ipv4Net, &V)> = Vec::new();
        for l in p.prefix_len()..=32 {
            let map = &self.exact[usize::from(l)];
            let width = 1u64 << (l - p.prefix_len());
            if width <= map.len() as u64 {
                // Fewer candidates than entries: probe each.
                for i in 0..width {
                    let n = net | (i as u32).checked_shl(32 - u32::from(l)).unwrap_or(0);
                    if let Some(&idx) = map.get(&n) {
                        out.extend(self.entry(idx));
                    }
                }
            } else {
                out.extend(
                    map.iter()
                        .filter(|&(&n, _)| n & m == net)
                        .filter_map(|(_, &idx)| self.entry(idx)),
                );
            }
        }
        out.sort_unstable_by_key(|(p, _)| (p.network(), p.prefix_len()));
        out
    }

    /// Sets the value of `p` (host bits ignored); returns the old one.
    pub fn insert(&mut self, p: Ipv4Net, value: V) -> Option<V> {
        let p = p.trunc();
        if let Some(idx) = self.find(&p) {
            let slot = self.slab.get_mut(idx)?;
            return Some(std::mem::replace(&mut slot.1, value));
        }
        // Indices stay below CHILD, which marks a child node in a slot.
        let idx = self.slab.insert((p, value), CHILD);
        let (net, len) = (u32::from(p.network()), p.prefix_len());
        self.exact[usize::from(len)].insert(net, idx);
        self.len += 1;
        self.paint(net, len, idx);
        None
    }

    /// Removes exactly `p` (not the prefixes it covers).
    pub fn remove(&mut self, p: &Ipv4Net) -> Option<V> {
        let p = p.trunc();
        let (net, len) = (u32::from(p.network()), p.prefix_len());
        let idx = self.exact[usize::from(len)].remove(&net)?;
        self.len -= 1;
        self.unpaint(net, len, idx);
        self.slab.remove(idx).map(|(_, v)| v)
    }

    /// A new node with all slots NONE.
    fn new_node(&mut self, background: u32) -> u32 {
        let node = Node::filled(&mut self.arena, NONE, background);
        match self.free_nodes.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                let cap = self.nodes.capacity();
                self.nodes.push(node);
                if self.nodes.capacity() != cap {
                    advise_huge(&self.nodes);
                }
                (self.nodes.len() - 1) as u32
            }
        }
    }

    fn free_node(&mut self, i: u32) {
        self.nodes[i as usize].release(&mut self.arena);
        self.free_nodes.push(i);
    }

    /// Makes the newly stored `idx` (`net`/`len`) win the slots it covers
    /// where it is the longest match.
    fn paint(&mut self, net: u32, len: u8, idx: u32) {
        let t = (net >> 16) as usize;
        if len <= 16 {
            for s in span(net, len, 16, 16, 0xffff) {
                if self.overridden(self.top[s].best, len) {
                    self.top[s].best = idx;
                }
            }
            return;
        }
        if self.top[t].node == NONE {
            self.top[t].node = self.new_node(NONE);
        }
        let n2 = self.top[t].node;
        self.nodes[n2 as usize].count += 1;
        let mut slots = self.nodes[n2 as usize].load(&self.arena);
        if len <= 24 {
            for s in span(net, len, 8, 24, 0xff) {
                let v = slots[s];
                if is_child(v) {
                    let c = (v & !CHILD) as usize;
                    if self.overridden(self.nodes[c].background, len) {
                        self.nodes[c].background = idx;
                    }
                } else if self.overridden(v, len) {
                    slots[s] = idx;
                }
            }
            self.nodes[n2 as usize].store(&mut self.arena, &slots);
            return;
        }
        let s2 = (net >> 8 & 0xff) as usize;
        let c = if is_child(slots[s2]) {
            slots[s2] & !CHILD
        } else {
            let c = self.new_node(slots[s2]);
            slots[s2] = c | CHILD;
            self.nodes[n2 as usize].store(&mut self.arena, &slots);
            c
        };
        let mut deep = self.nodes[c as usize].load(&self.arena);
        for s in span(net, len, 0, 32, 0xff) {
            if self.overridden(deep[s], len) {
                deep[s] = idx;
            }
        }
        let child = &mut self.nodes[c as usize];
        child.count += 1;
        child.store(&mut self.arena, &deep);
    }

    /// Hands the slots won by the removed `idx` (`net`/`len`) to the next
    /// longest prefix of the same stride (the same one for all of them: any
    /// shorter prefix covering one slot of `net/len` covers all of it).
    fn unpaint(&mut self, net: u32, len: u8, idx: u32) {
        let t = (net >> 16) as usize;
        if len <= 16 {
            let next = if len == 0 {
                NONE
            } else {
                self.covering(net, 0..=len - 1)
            };
            for s in span(net, len, 16, 16, 0xffff) {
                if self.top[s].best == idx {
                    self.top[s].best = next;
                }
            }
            return;
        }
        let n2 = self.top[t].node;
        if n2 == NONE {
            return;
        }
        let mut slots = self.nodes[n2 as usize].load(&self.arena);
        if len <= 24 {
            let next = self.covering(net, 17..=len - 1);
            for s in span(net, len, 8, 24, 0xff) {
                let v = slots[s];
                if is_child(v) {
                    let c = (v & !CHILD) as usize;
                    if self.nodes[c].background == idx {
                        self.nodes[c].background = next;
                    }
                } else if v == idx {
                    slots[s] = next;
                }
            }
        } else {
            let s2 = (net >> 8 & 0xff) as usize;
            if is_child(slots[s2]) {
                let c = slots[s2] & !CHILD;
                let next = self.covering(net, 25..=len - 1);
                let mut deep = self.nodes[c as usize].load(&self.arena);
                for s in span(net, len, 0, 32, 0xff) {
                    if deep[s] == idx {
                        deep[s] = next;
                    }
                }
                let child = &mut self.nodes[c as usize];
                child.count -= 1;
                if child.count == 0 {
                    slots[s2] = child.background;
                    self.free_node(c);
                } else {
                    child.store(&mut self.arena, &deep);
                }
            }
        }
        let node = &mut self.nodes[n2 as usize];
        node.count -= 1;
        if node.count == 0 {
            self.top[t].node = NONE;
            self.free_node(n2);
        } else {
            node.store(&mut self.arena, &slots);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::testing::Rng;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// The reference: every stored prefix, scanned for the longest match.
    fn brute(r: &BTreeMap<(u32, u8), u32>, a: u32) -> Option<(Ipv4Net, u32)> {
        r.iter()
            .filter(|&(&(n, l), _)| a & mask(l) == n)
            .max_by_key(|&(&(_, l), _)| l)
            .map(|(&(n, l), &v)| (Ipv4Net::new(Ipv4Addr::from(n), l).unwrap(), v))
    }

    /// Checks that a batched lookup of `addrs` gives what the single
    /// lookups give, and both what `want` (the reference) gives.
    fn check_batch(
        t: &Flat4<u32>,
        addrs: &[Ipv4Addr],
        want: impl Fn(u32) -> Option<(Ipv4Net, u32)>,
    ) {
        let mut out = vec![Some((Ipv4Net::default(), &0)); addrs.len()];
        t.lookup_batch(addrs, &mut out);
        // The variant built without POPCNT too (the batch runs the other
        // one on CPUs that have it).
        for chunk in addrs.chunks(GROUP) {
            let (mut portable, mut chosen) = ([NONE; GROUP], [NONE; GROUP]);
            t.find_group_with(chunk, &mut portable);
            t.find_group(chunk, &mut chosen);
            assert_eq!(portable, chosen);
        }
        for (a, got) in addrs.iter().zip(out) {
            let got = got.map(|(p, v)| (p, *v));
            assert_eq!(
                got,
                t.lookup(*a).map(|(p, v)| (p, *v)),
                "batch vs single {a}"
            );
            assert_eq!(got, want(u32::from(*a)), "batch vs reference {a}");
        }
    }

    /// Checks the structural invariants: every live node is reachable and
    /// counted, free nodes are free, and the table is empty iff no node is
    /// live.
    fn check_nodes<V>(t: &Flat4<V>) {
        let (mut live, mut blocks) = (0, 0);
        for top in t.top.iter() {
            if top.node == NONE {
                continue;
            }
            live += 1;
            let n = &t.nodes[top.node as usize];
            blocks += usize::from(n.blocks);
            assert!(n.count > 0, "a live node with no prefix");
            for v in n.load(&t.arena) {
                if is_child(v) {
                    live += 1;
                    let c = &t.nodes[(v & !CHILD) as usize];
                    blocks += usize::from(c.blocks);
                    assert!(c.count > 0);
                }
            }
        }
        assert_eq!(live + t.free_nodes.len(), t.nodes.len(), "leaked nodes");
        let free: usize = (1..=16).map(|n| n * t.arena.free[n].len()).sum();
        assert_eq!(blocks + free, t.arena.blocks.len(), "leaked arena blocks");
        if t.len() == 0 {
            assert_eq!(live, 0);
            assert!(t.top.iter().all(|s| s.best == NONE));
        }
    }

    #[test]
    fn node_compression_round_trips() {
        let mut slots = [NONE; 256];
        for (s, v) in slots.iter_mut().enumerate() {
            *v = match s {
                0..=9 => 7,
                10 => 8,
                63 | 64 => 9,
                200..=255 => (s / 3) as u32,
                _ => NONE,
            };
        }
        let mut arena = Arena::default();
        let mut n = Node::filled(&mut arena, NONE, NONE);
        assert_eq!(n.blocks, 1);
        n.store(&mut arena, &slots);
        assert_eq!(n.load(&arena), slots);
        for (s, v) in slots.iter().enumerate() {
            assert_eq!(n.get(&arena, s as u8), *v, "slot {s}");
        }
        // 7, 8, NONE, 9, NONE, then 66..=85 (20 values) for 200..=255.
        assert_eq!(n.blocks, 2);
        assert_eq!(
            &arena.blocks[n.runs as usize].0[..5],
            &[7, 8, NONE, 9, NONE]
        );
        // The first block was given back and is reused.
        let mut m = Node::filled(&mut arena, 1, NONE);
        assert_eq!((m.runs, m.blocks), (0, 1));
        m.release(&mut arena);
        n.store(&mut arena, &[3; 256]);
        assert_eq!((n.blocks, n.load(&arena)), (1, [3; 256]));
        assert_eq!(std::mem::size_of::<Node>(), 64);
    }

    #[test]
    fn covering_prefix_removed_while_more_specifics_remain() {
        let mut t = Flat4::default();
        t.insert(net("0.0.0.0/0"), 0);
        t.insert(net("10.0.0.0/8"), 8);
        t.insert(net("10.1.0.0/16"), 16);
        t.insert(net("10.1.2.0/24"), 24);
        t.insert(net("10.1.2.128/25"), 25);
        t.insert(net("10.1.2.3/32"), 32);
        t.insert(net("10.1.0.0/20"), 20);
        let at = |t: &Flat4<u32>, a: &str| t.lookup(ip(a)).map(|(p, v)| (p.to_string(), *v));
        let s = |p: &str, v: u32| Some((p.to_string(), v));
        assert_eq!(at(&t, "10.1.2.3"), s("10.1.2.3/32", 32));
        assert_eq!(at(&t, "10.1.2.200"), s("10.1.2.128/25", 25));
        assert_eq!(at(&t, "10.1.2.4"), s("10.1.2.0/24", 24));
        assert_eq!(at(&t, "10.1.3.4"), s("10.1.0.0/20", 20));
        assert_eq!(at(&t, "10.1.16.1"), s("10.1.0.0/16", 16));
        assert_eq!(at(&t, "10.2.0.1"), s("10.0.0.0/8", 8));
        assert_eq!(at(&t, "11.0.0.1"), s("0.0.0.0/0", 0));
        // The /24 goes: its slots fall back to the /20; the /25 and /32 stay.
        assert_eq!(t.remove(&net("10.1.2.0/24")), Some(24));
        assert_eq!(at(&t, "10.1.2.4"), s("10.1.0.0/20", 20));
        assert_eq!(at(&t, "10.1.2.3"), s("10.1.2.3/32", 32));
        assert_eq!(at(&t, "10.1.2.129"), s("10.1.2.128/25", 25));
        // The /20 goes: the level-3 child's background falls to nothing
        // in its stride, so the /16 answers.
        assert_eq!(t.remove(&net("10.1.0.0/20")), Some(20));
        assert_eq!(at(&t, "10.1.2.4"), s("10.1.0.0/16", 16));
        assert_eq!(at(&t, "10.1.2.3"), s("10.1.2.3/32", 32));
        // The /8 and the default go: the /16 and deeper remain.
        assert_eq!(t.remove(&net("10.0.0.0/8")), Some(8));
        assert_eq!(t.remove(&net("0.0.0.0/0")), Some(0));
        assert_eq!(at(&t, "10.2.0.1"), None);
        assert_eq!(at(&t, "10.1.200.1"), s("10.1.0.0/16", 16));
        assert_eq!(at(&t, "10.1.2.3"), s("10.1.2.3/32", 32));
        // Re-insert the /24 with a new value.
        assert_eq!(t.insert(net("10.1.2.0/24"), 124), None);
        assert_eq!(at(&t, "10.1.2.4"), s("10.1.2.0/24", 124));
        assert_eq!(t.insert(net("10.1.2.77/24"), 224), Some(124));
        assert_eq!(t.get(&net("10.1.2.0/24")), Some(&224));
        assert_eq!(
            t.lookup_prefix(&net("10.1.2.0/26")).map(|(p, v)| (p, *v)),
            Some((net("10.1.2.0/24"), 224))
        );
        assert_eq!(
            t.covered(&net("10.1.0.0/16"))
                .into_iter()
                .map(|(p, v)| (p.to_string(), *v))
                .collect::<Vec<_>>(),
            vec![
                ("10.1.0.0/16".to_string(), 16),
                ("10.1.2.0/24".to_string(), 224),
                ("10.1.2.3/32".to_string(), 32),
                ("10.1.2.128/25".to_string(), 25),
            ]
        );
        assert_eq!(t.remove(&net("10.1.2.3/32")), Some(32));
        assert_eq!(t.remove(&net("10.1.2.3/32")), None);
        assert_eq!(t.len(), 3);
        for p in ["10.1.2.128/25", "10.1.2.0/24", "10.1.0.0/16"] {
            assert!(t.remove(&net(p)).is_some());
        }
        check_nodes(&t);
        assert_eq!(t.len(), 0);
    }

    /// Random inserts and removes of overlapping prefixes of every length
    /// 0..=32 inside a small region (so they nest and collide), against a
    /// brute-force scan, with lookups at random and boundary addresses.
    #[test]
    fn random_updates_match_brute_force() {
        for seed in 1..=6u64 {
            let mut rng = Rng(0x51ed_0000 + seed);
            let mut t = Flat4::default();
            let mut r: BTreeMap<(u32, u8), u32> = BTreeMap::new();
            // Region 10.20.0.0/15 plus, rarely, anywhere.
            let addr = |rng: &mut Rng| {
                let b = rng.next();
                if b.is_multiple_of(16) {
                    (b >> 32) as u32
                } else {
                    0x0a14_0000 | ((b >> 32) as u32 & 0x0001_ffff)
                }
            };
            let mut recent = [Ipv4Addr::UNSPECIFIED; 300];
            for step in 0..3000u32 {
                let b = rng.next();
                if b % 10 < 6 || r.is_empty() {
                    // Lengths skewed towards the stride edges and the ends.
                    let len = match b >> 8 & 7 {
                        0 => [0u8, 1, 8, 15, 16, 17, 23, 24, 25, 31, 32][(b >> 16) as usize % 11],
                        _ => (b >> 16) as u8 % 33,
                    };
                    let n = addr(&mut rng) & mask(len);
                    let old = r.insert((n, len), step);
                    let p = Ipv4Net::new(Ipv4Addr::from(n), len).unwrap();
                    assert_eq!(t.insert(p, step), old, "insert {p}");
                } else {
                    // Remove a stored prefix (or, sometimes, an absent one).
                    let k = (b >> 8) as usize % r.len();
                    let (&(n, l), _) = r.iter().nth(k).unwrap();
                    let (n, l) = if b.is_multiple_of(7) {
                        (n ^ 1u32.checked_shl(32 - u32::from(l)).unwrap_or(0), l)
                    } else {
                        (n, l)
                    };
                    let p = Ipv4Net::new(Ipv4Addr::from(n), l).unwrap();
                    assert_eq!(t.remove(&p), r.remove(&(n, l)), "remove {p}");
                }
                assert_eq!(t.len(), r.len());
                for i in 0..8 {
                    let a = if i < 4 {
                        addr(&mut rng)
                    } else {
                        // Just inside and just outside a stored prefix.
                        let k = rng.next() as usize % r.len().max(1);
                        r.keys().nth(k).map_or(0, |&(n, l)| {
                            if i % 2 == 0 {
                                n
                            } else {
                                (n | !mask(l)).wrapping_add(1)
                            }
                        })
                    };
                    let got = t.lookup(Ipv4Addr::from(a)).map(|(p, v)| (p, *v));
                    assert_eq!(
                        got,
                        brute(&r, a),
                        "seed {seed} step {step} lookup {}",
                        Ipv4Addr::from(a)
                    );
                    recent[(step as usize * 8 + i) % recent.len()] = Ipv4Addr::from(a);
                }
                // Every few steps, a batch of a size around the group's,
                // over the last addresses looked up one at a time.
                if step % 8 == 0 {
                    let n = TEST_BATCH_SIZES[step as usize / 8 % TEST_BATCH_SIZES.len()];
                    check_batch(&t, &recent[..n], |a| brute(&r, a));
                }
            }
            check_nodes(&t);
            // Exact reads, covering prefixes and covered sets, then drain.
            for (&(n, l), &v) in &r {
                let p = Ipv4Net::new(Ipv4Addr::from(n), l).unwrap();
                assert_eq!(t.get(&p), Some(&v));
                assert_eq!(t.lookup_prefix(&p).map(|(p, v)| (p, *v)), Some((p, v)));
            }
            for l in [0u8, 8, 15, 16, 20, 24, 28, 32] {
                let p = Ipv4Net::new(Ipv4Addr::from(0x0a14_1234), l)
                    .unwrap()
                    .trunc();
                let want: Vec<_> = r
                    .iter()
                    .filter(|&(&(n, nl), _)| nl >= l && n & mask(l) == u32::from(p.network()))
                    .map(|(&(n, nl), &v)| (Ipv4Net::new(Ipv4Addr::from(n), nl).unwrap(), v))
                    .collect();
                let got: Vec<_> = t.covered(&p).into_iter().map(|(p, v)| (p, *v)).collect();
                assert_eq!(got, want, "covered {p}");
            }
            // One large batch over the stored prefixes' edges and inside.
            let edges: Vec<Ipv4Addr> = r
                .keys()
                .flat_map(|&(n, l)| [n, n | !mask(l), (n | !mask(l)).wrapping_add(1)])
                .map(Ipv4Addr::from)
                .collect();
            check_batch(&t, &edges, |a| brute(&r, a));
            let keys: Vec<_> = r.keys().copied().collect();
            for (n, l) in keys {
                let p = Ipv4Net::new(Ipv4Addr::from(n), l).unwrap();
                assert_eq!(t.remove(&p), r.remove(&(n, l)));
                let a = n | (rng.next() as u32 & !mask(l));
                assert_eq!(
                    t.lookup(Ipv4Addr::from(a)).map(|(p, v)| (p, *v)),
                    brute(&r, a)
                );
            }
            check_nodes(&t);
            assert_eq!(t.len(), 0);
        }
    }
}
