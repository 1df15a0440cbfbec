//! NameIndex: a read-only map from lower-case wire-format names to byte records, laid out so
//! that a lookup of a common name touches one cache line beyond a small, mostly
//! cache-resident tag array.
//!
//! Why: at 10,000 Services the table holds 55,000 names; between two queries the network
//! stack evicts much of the CPU caches, and each cache line a lookup touches outside them
//! costs about as much as the rest of the lookup (measured in `bench/README.md`). A
//! `HashMap<Box<[u8]>, _>` with separately allocated values touches 5–6 lines; an index of
//! offsets into an arena still two or three.
//!
//! Layout:
//! - `tags`: one `u16` per slot (0 = empty, else 15 bits of the name's hash), open
//!   addressing with linear probing, load at most 4/5. At 55,000 names it is 135 KB, small
//!   enough to stay mostly in the L2 cache; a probe reads one line of it.
//! - `slots`: one 64-byte, cache-line-aligned slot per tag. A record that fits lies in its
//!   slot: that is the one line a lookup reads. A larger one (SRV with its additional
//!   records, headless Services, long names) lies in the `overflow` arena and its slot holds
//!   its offset: one more line.
//! - Names are stored without a known suffix (the zone apex): the suffix's index and the rest
//!   of the name. For `svc-00042.ns-000.svc.cluster.local` that saves 15 of 36 bytes, and an
//!   address record fits a slot.
//!
//! The hash is FxHash-style (multiply and rotate, 8 bytes at a time) with a final mix; its
//! seed is drawn per index from std's `RandomState`, so that colliding names cannot be chosen
//! in advance. Names are compared exactly: a tag collision costs a probe, never a wrong
//! answer.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

/// Bytes per slot: one cache line.
const SLOT: usize = 64;
/// Slot kinds (first byte).
const INLINE: u8 = 0;
const OVERFLOW: u8 = 1;
/// Suffix index meaning "the whole name is stored".
const NO_SUFFIX: u8 = u8::MAX;
/// Lines of an overflow record that [`NameIndex::touch`] reads (an SRV answer with its
/// additional records spans two or three).
const TOUCH_OVERFLOW_LINES: usize = 3;
/// FxHash's 64-bit multiplier (rustc-hash).
const K: u64 = 0xf135_7aea_2e62_a9c5;

/// One record's home. Inline: kind, suffix index, prefix length, prefix, value length (u8),
/// value. Overflow: kind, then the record's offset in the overflow arena (u32, little
/// endian), where it is laid out as suffix index, prefix length, prefix, value length (u32,
/// little endian), value.
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
struct Slot([u8; SLOT]);

/// Why a record was not added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IndexError {
    #[error("name of {0} bytes: wire names have at most 255")]
    NameTooLong(usize),
    #[error("the index is full (4 GiB)")]
    Full,
}

/// A read-only map from names to byte records. Built with [`IndexBuilder`].
#[derive(Debug)]
pub(crate) struct NameIndex {
    tags: Vec<u16>,
    slots: Vec<Slot>,
    overflow: Vec<u8>,
    suffixes: Vec<Vec<u8>>,
    seed: u64,
    len: usize,
}

/// Collects records, then lays out the index.
#[derive(Debug)]
pub(crate) struct IndexBuilder {
    suffixes: Vec<Vec<u8>>,
    /// Records in overflow layout, back to back.
    staged: Vec<u8>,
    /// (hash, offset in `staged`) of each record.
    records: Vec<(u64, usize)>,
    seed: u64,
}

/// A record as stored: where the name was split and the value.
struct Stored<'a> {
    suffix: u8,
    prefix: &'a [u8],
    value: &'a [u8],
}

// === impl IndexBuilder ===

impl IndexBuilder {
    /// A builder that stores names ending in one of `suffixes` (at most 255, wire form,
    /// e.g. zone apexes) without it; the first that matches is used.
    pub(crate) fn new(suffixes: Vec<Vec<u8>>) -> Self {
        Self::with_seed(suffixes, RandomState::new().hash_one(0x5eed_u64))
    }

    fn with_seed(mut suffixes: Vec<Vec<u8>>, seed: u64) -> Self {
        suffixes.truncate(usize::from(NO_SUFFIX));
        Self {
            suffixes,
            staged: Vec::new(),
            records: Vec::new(),
            seed,
        }
    }

    /// Adds `name` with the value that `write` appends to the buffer it is given (append
    /// only: the buffer holds other bytes). A name added twice is found with its first
    /// value.
    pub(crate) fn push_with(
        &mut self,
        name: &[u8],
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), IndexError> {
        let hash = hash(self.seed, name);
        self.push_hashed(name, hash, write)
    }

    fn push_hashed(
        &mut self,
        name: &[u8],
        hash: u64,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), IndexError> {
        if name.len() > 255 {
            return Err(IndexError::NameTooLong(name.len()));
        }
        let (suffix, prefix) = self
            .suffixes
            .iter()
            .position(|s| name.ends_with(s))
            .map_or((NO_SUFFIX, name), |i| {
                (i as u8, &name[..name.len() - self.suffixes[i].len()])
            });
        let start = self.staged.len();
        self.staged.push(suffix);
        self.staged.push(prefix.len() as u8);
        self.staged.extend_from_slice(prefix);
        let len_at = self.staged.len();
        self.staged.extend_from_slice(&[0; 4]);
        write(&mut self.staged);
        // Every offset into the overflow arena (a subset of these records) must fit a u32.
        let len = self.staged.len() - len_at - 4;
        let (Ok(len), Ok(_)) = (u32::try_from(len), u32::try_from(self.staged.len())) else {
            self.staged.truncate(start);
            return Err(IndexError::Full);
        };
        self.staged[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
        self.records.push((hash, start));
        Ok(())
    }

    /// Lays out tags, slots and the overflow arena (records that do not fit a slot, in the
    /// order they were added).
    pub(crate) fn finish(self) -> NameIndex {
        let n = self.records.len();
        let slots = (n + n / 4 + 1).max(8);
        // Linear probing keeps a chain in the order records were added: the first of two
        // equal names is found first.
        let mut index = NameIndex {
            tags: vec![0; slots],
            slots: vec![Slot([0; SLOT]); slots],
            overflow: Vec::new(),
            suffixes: self.suffixes,
            seed: self.seed,
            len: n,
        };
        for (h, at) in self.records {
            let Some((rec, end)) = Stored::parse_overflow(&self.staged, at) else {
                index.len -= 1;
                continue;
            };
            let mut i = index.first_slot(h);
            // More slots than records: an empty one comes within `slots` steps.
            for _ in 0..slots {
                if index.tags[i] == 0 {
                    break;
                }
                i = if i + 1 == slots { 0 } else { i + 1 };
            }
            let slot = &mut index.slots[i].0;
            let inline_len = 4 + rec.prefix.len() + rec.value.len();
            if inline_len <= SLOT {
                slot[0] = INLINE;
                slot[1] = rec.suffix;
                slot[2] = rec.prefix.len() as u8;
                let p = 3 + rec.prefix.len();
                slot[3..p].copy_from_slice(rec.prefix);
                slot[p] = rec.value.len() as u8;
                slot[p + 1..p + 1 + rec.value.len()].copy_from_slice(rec.value);
            } else {
                // `push_hashed` kept the staged records (a superset) under 4 GiB.
                let offset = index.overflow.len() as u32;
                index.overflow.extend_from_slice(&self.staged[at..end]);
                slot[0] = OVERFLOW;
                slot[1..5].copy_from_slice(&offset.to_le_bytes());
            }
            index.tags[i] = tag(h);
        }
        index.overflow.shrink_to_fit();
        index
    }
}

// === impl Stored ===

impl<'a> Stored<'a> {
    /// The record at `at` of an overflow arena, and where it ends.
    fn parse_overflow(arena: &'a [u8], at: usize) -> Option<(Self, usize)> {
        let suffix = *arena.get(at)?;
        let prefix_len = usize::from(*arena.get(at + 1)?);
        let prefix = arena.get(at + 2..at + 2 + prefix_len)?;
        let len_at = at + 2 + prefix_len;
        let len = arena.get(len_at..len_at + 4)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let value = arena.get(len_at + 4..len_at + 4 + len)?;
        let rec = Self {
            suffix,
            prefix,
            value,
        };
        Some((rec, len_at + 4 + len))
    }

    /// An inline slot's record.
    fn parse_inline(slot: &'a [u8; SLOT]) -> Option<Self> {
        let prefix_len = usize::from(slot[2]);
        let prefix = slot.get(3..3 + prefix_len)?;
        let len = usize::from(*slot.get(3 + prefix_len)?);
        let value = slot.get(4 + prefix_len..4 + prefix_len + len)?;
        Some(Self {
            suffix: slot[1],
            prefix,
            value,
        })
    }

    /// True when the record's name is `name`.
    fn is(&self, name: &[u8], suffixes: &[Vec<u8>]) -> bool {
        let suffix: &[u8] = match self.suffix {
            NO_SUFFIX => &[],
            i => match suffixes.get(usize::from(i)) {
                Some(s) => s,
                None => return false,
            },
        };
        let p = self.prefix.len();
        name.len() == p + suffix.len() && name[..p] == *self.prefix && name[p..] == *suffix
    }

    fn name(&self, suffixes: &[Vec<u8>]) -> Vec<u8> {
        let mut name = self.prefix.to_vec();
        if let Some(s) = suffixes.get(usize::from(self.suffix)) {
            name.extend_from_slice(s);
        }
        name
    }
}

// === impl NameIndex ===

impl NameIndex {
    /// The value of `name` (lower-case wire form), if present.
    pub(crate) fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.get_hashed(name, hash(self.seed, name))
    }

    fn get_hashed(&self, name: &[u8], h: u64) -> Option<&[u8]> {
        let slots = self.tags.len();
        let want = tag(h);
        let mut i = self.first_slot(h);
        for _ in 0..slots {
            let t = *self.tags.get(i)?;
            if t == 0 {
                return None;
            }
            if t == want
                && let Some(rec) = self.stored(i).filter(|r| r.is(name, &self.suffixes))
            {
                return Some(rec.value);
            }
            i = if i + 1 == slots { 0 } else { i + 1 };
        }
        None
    }

    /// The slot where a lookup of `name` starts; for [`NameIndex::touch`].
    pub(crate) fn first_slot_of(&self, name: &[u8]) -> usize {
        self.first_slot(hash(self.seed, name))
    }

    /// Reads the lines that lookups starting at `starts` ([`NameIndex::first_slot_of`]) read
    /// first: each one's tag and slot, then the first lines of the overflow records those
    /// slots point to. The loads have no use but this, and no branch waits on them until
    /// all are issued: the CPU waits for the cache misses of a batch of queries together,
    /// not one after another as the lookups themselves would.
    pub(crate) fn touch(&self, starts: &[usize]) {
        let mut acc = 0u8;
        for &i in starts {
            acc ^= self.tags.get(i).map_or(0, |&t| t as u8);
            acc ^= self.slots.get(i).map_or(0, |s| s.0[0]);
        }
        for &i in starts {
            let Some(slot) = self.slots.get(i).filter(|s| s.0[0] == OVERFLOW) else {
                continue;
            };
            let s = &slot.0;
            let at = u32::from_le_bytes([s[1], s[2], s[3], s[4]]) as usize;
            for line in 0..TOUCH_OVERFLOW_LINES {
                acc ^= self.overflow.get(at + line * SLOT).copied().unwrap_or(0);
            }
        }
        std::hint::black_box(acc);
    }

    /// The record in slot `i` (which must be occupied).
    fn stored(&self, i: usize) -> Option<Stored<'_>> {
        let slot = &self.slots.get(i)?.0;
        match slot[0] {
            INLINE => Stored::parse_inline(slot),
            _ => {
                let at = u32::from_le_bytes([slot[1], slot[2], slot[3], slot[4]]) as usize;
                Stored::parse_overflow(&self.overflow, at).map(|(r, _)| r)
            }
        }
    }

    /// Slot where the probe for hash `h` starts.
    fn first_slot(&self, h: u64) -> usize {
        // Multiply-shift maps the high half onto the slot count (no power of two needed).
        (((h >> 32) * self.tags.len() as u64) >> 32) as usize
    }

    /// Every (name, value), in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Vec<u8>, &[u8])> + '_ {
        (0..self.tags.len())
            .filter(|&i| self.tags[i] != 0)
            .filter_map(|i| self.stored(i))
            .map(|r| (r.name(&self.suffixes), r.value))
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of tags, slots and the overflow arena.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.tags.len() * (2 + SLOT) + self.overflow.len()
    }
}

/// The tag of a slot: 15 bits of the hash (not those that choose the slot), never 0.
fn tag(h: u64) -> u16 {
    (h as u16) | 1
}

/// FxHash-style over 8-byte words, the length mixed in, then a final avalanche so that both
/// the slot (high half) and the tag (low bits) depend on every input bit.
fn hash(seed: u64, name: &[u8]) -> u64 {
    let mut h = seed ^ name.len() as u64;
    let mut words = name.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(b)).wrapping_mul(K);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(b)).wrapping_mul(K);
    }
    // murmur3's fmix64.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::collections::{BTreeMap, HashMap};

    use proptest::prelude::*;

    use super::*;

    fn wire(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in name.split('.').filter(|l| !l.is_empty()) {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    fn zones() -> Vec<Vec<u8>> {
        vec![wire("cluster.local"), wire("in-addr.arpa")]
    }

    fn build(entries: &[(Vec<u8>, Vec<u8>)]) -> NameIndex {
        let mut b = IndexBuilder::new(zones());
        for (n, v) in entries {
            b.push_with(n, |out| out.extend_from_slice(v)).unwrap();
        }
        b.finish()
    }

    #[test]
    fn an_empty_index_finds_nothing() {
        let idx = IndexBuilder::new(zones()).finish();
        assert!(idx.is_empty());
        assert_eq!(idx.len(), 0);
        assert_eq!(idx.get(&wire("a.b")), None);
        assert_eq!(idx.get(&wire("cluster.local")), None);
        assert_eq!(idx.get(&[]), None);
        assert_eq!(idx.iter().count(), 0);
        let idx = IndexBuilder::new(Vec::new()).finish();
        assert_eq!(idx.get(&[0]), None);
    }

    #[test]
    fn names_are_found_with_their_values_and_absent_ones_are_not() {
        let idx = build(&[
            (wire("web.demo.svc.cluster.local"), b"web".to_vec()),
            (wire("db.demo.svc.cluster.local"), Vec::new()),
            // The apex itself: an empty prefix.
            (wire("cluster.local"), vec![7; 300]),
            (wire("10.0.96.10.in-addr.arpa"), b"ptr".to_vec()),
            (wire("example.com"), b"outside".to_vec()),
        ]);
        assert_eq!(idx.len(), 5);
        let get = |s: &str| idx.get(&wire(s));
        assert_eq!(get("web.demo.svc.cluster.local"), Some(&b"web"[..]));
        assert_eq!(get("db.demo.svc.cluster.local"), Some(&[][..]));
        assert_eq!(get("cluster.local"), Some(&[7; 300][..]));
        assert_eq!(get("10.0.96.10.in-addr.arpa"), Some(&b"ptr"[..]));
        assert_eq!(get("example.com"), Some(&b"outside"[..]));
        // A parent, a child, a cousin, other suffixes, the root, nothing: absent.
        for absent in [
            "demo.svc.cluster.local",
            "x.web.demo.svc.cluster.local",
            "web.demo.svc.cluster.loca",
            "web.demo.svc.in-addr.arpa",
            "web.demo.svc",
            "local",
            "",
        ] {
            assert_eq!(get(absent), None, "{absent}");
        }
        assert_eq!(idx.get(&[]), None);
    }

    #[test]
    fn lookups_are_exact_bytes_so_callers_lower_case_first() {
        let idx = build(&[(wire("web.demo.svc.cluster.local"), b"1".to_vec())]);
        assert_eq!(idx.get(&wire("WEB.demo.svc.cluster.local")), None);
        assert_eq!(idx.get(&wire("web.demo.svc.CLUSTER.local")), None);
        let mut asked = wire("WeB.DeMo.svc.Cluster.LOCAL");
        asked.make_ascii_lowercase();
        assert_eq!(idx.get(&asked), Some(&b"1"[..]));
    }

    #[test]
    fn records_too_large_for_a_slot_go_to_the_overflow_arena() {
        let long = wire(&format!(
            "{}.{}.svc.cluster.local",
            "a".repeat(63),
            "b".repeat(63)
        ));
        let entries = vec![
            (wire("small.cluster.local"), vec![1; 10]),
            (wire("big.cluster.local"), vec![2; 100]),
            (long.clone(), vec![3; 4]),
            (wire(&"c.".repeat(120)), vec![4; 2]),
        ];
        let idx = build(&entries);
        for (n, v) in &entries {
            assert_eq!(idx.get(n), Some(&v[..]));
        }
        assert!(!idx.overflow.is_empty());
        let inline = (0..idx.tags.len())
            .filter(|&i| idx.tags[i] != 0 && idx.slots[i].0[0] == INLINE)
            .count();
        assert_eq!(inline, 1, "only the small record fits a slot");
    }

    #[test]
    fn colliding_hashes_and_tags_are_told_apart_by_name() {
        // Every name gets the same hash: one long probe chain.
        let mut b = IndexBuilder::with_seed(zones(), 1);
        let names: Vec<Vec<u8>> = (0..100)
            .map(|i| wire(&format!("n{i}.cluster.local")))
            .collect();
        for (i, n) in names.iter().enumerate() {
            b.push_hashed(n, 42, |out| out.push(i as u8)).unwrap();
        }
        let idx = b.finish();
        for (i, n) in names.iter().enumerate() {
            assert_eq!(idx.get_hashed(n, 42), Some(&[i as u8][..]), "{i}");
        }
        assert_eq!(idx.get_hashed(&wire("n100.cluster.local"), 42), None);
        // Same tag, a probe that starts mid-chain (past names[0]); same slot, other tag.
        let mid = 42 | 0x8000_0000 << 32;
        assert_eq!(idx.get_hashed(&names[0], mid), None);
        assert!(idx.get_hashed(&names[99], mid).is_some());
        assert_eq!(idx.get_hashed(&names[0], 42 ^ 2), None);
    }

    #[test]
    fn a_probe_chain_wraps_around_the_end() {
        let mut b = IndexBuilder::with_seed(Vec::new(), 1);
        for i in 0..20u8 {
            b.push_hashed(&[1, b'a' + i, 0], u64::MAX, |out| out.push(i))
                .unwrap();
        }
        let idx = b.finish();
        for i in 0..20u8 {
            assert_eq!(idx.get_hashed(&[1, b'a' + i, 0], u64::MAX), Some(&[i][..]));
        }
        assert_eq!(idx.get_hashed(&[1, b'z', 0], u64::MAX), None);
    }

    #[test]
    fn sizes_from_one_record_to_many_all_work() {
        for n in [1, 5, 7, 8, 9, 47, 48, 49, 1000, 20_000] {
            let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
                .map(|i| {
                    let name = wire(&format!("s{i}.ns.svc.cluster.local"));
                    // Some values overflow.
                    let value = vec![i as u8; i % 70];
                    (name, value)
                })
                .collect();
            let idx = build(&entries);
            assert_eq!(idx.len(), n);
            assert!(idx.tags.len() * 4 >= n * 5, "load of {n}");
            for (i, (name, value)) in entries.iter().enumerate() {
                assert_eq!(idx.get(name), Some(&value[..]), "{i} of {n}");
            }
            assert_eq!(idx.get(&wire(&format!("s{n}.ns.svc.cluster.local"))), None);
            assert_eq!(idx.iter().count(), n);
        }
    }

    #[test]
    fn names_longer_than_255_bytes_are_rejected() {
        let mut b = IndexBuilder::new(zones());
        let r = b.push_with(&[1; 256], |_| {});
        assert_eq!(r, Err(IndexError::NameTooLong(256)));
        assert!(b.push_with(&[1; 255], |_| {}).is_ok());
        assert_eq!(b.finish().len(), 1);
    }

    #[test]
    fn the_hash_depends_on_every_byte_and_the_length() {
        let base = wire("svc-00001.ns-000.svc.cluster.local");
        let h = hash(7, &base);
        for i in 0..base.len() {
            let mut m = base.clone();
            m[i] ^= 0x20;
            assert_ne!(hash(7, &m), h, "byte {i}");
        }
        assert_ne!(hash(7, &[1, 2, 3]), hash(7, &[1, 2, 3, 0]));
        assert_ne!(hash(7, &base), hash(8, &base));
    }

    fn label() -> impl Strategy<Value = Vec<u8>> {
        // Few distinct letters and short labels: many shared prefixes and suffixes.
        proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'-')], 1..4)
    }

    fn name() -> impl Strategy<Value = Vec<u8>> {
        let labels = proptest::collection::vec(label(), 0..4);
        (labels, 0..3usize).prop_map(|(labels, zone)| {
            let mut out = Vec::new();
            for l in labels {
                out.push(l.len() as u8);
                out.extend(l);
            }
            // Under a suffix of the index, under another name, or short.
            match zone {
                0 => out.extend(wire("cluster.local")),
                1 => out.extend(wire("a.local")),
                _ => out.push(0),
            }
            out
        })
    }

    proptest! {
        #[test]
        fn lookups_agree_with_a_hash_map(
            entries in proptest::collection::vec(
                (name(), proptest::collection::vec(any::<u8>(), 0..90)),
                0..200,
            ),
            probes in proptest::collection::vec(name(), 0..50),
            seed in any::<u64>(),
            // Few hash bits: collisions galore.
            mask in prop_oneof![Just(u64::MAX), Just(0x8000_0000_0000_0003u64), Just(0)],
            stray in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
            let mut b = IndexBuilder::with_seed(zones(), seed);
            for (n, v) in &entries {
                b.push_hashed(n, hash(seed, n) & mask, |out| out.extend_from_slice(v)).unwrap();
                model.entry(n.clone()).or_insert_with(|| v.clone());
            }
            let idx = b.finish();
            prop_assert_eq!(idx.len(), entries.len());
            // Touching slots, whichever (in range or not), changes nothing.
            idx.touch(&stray);
            let firsts: Vec<usize> = entries.iter().map(|(n, _)| idx.first_slot_of(n)).collect();
            idx.touch(&firsts);
            for n in entries.iter().map(|(n, _)| n).chain(&probes) {
                    prop_assert_eq!(
                    idx.get_hashed(n, hash(seed, n) & mask),
                    model.get(n).map(Vec::as_slice)
                );
            }
            let listed: BTreeMap<Vec<u8>, usize> =
                idx.iter().fold(BTreeMap::new(), |mut m, (n, _)| {
                    *m.entry(n).or_default() += 1;
                    m
                });
            let added: BTreeMap<Vec<u8>, usize> =
                entries.iter().fold(BTreeMap::new(), |mut m, (n, _)| {
                    *m.entry(n.clone()).or_default() += 1;
                    m
                });
            prop_assert_eq!(listed, added);
        }
    }
}
