//! Slot numbers by hash: the vault table's lookups by key id and by name,
//! open-addressed tables of our own so that a batch of lookups can be
//! prefetched.
//!
//! A check or a restore looks up a subject key by id for every group it
//! walks, a backup by name (the subject's pseudonym): random reads in a
//! table of hundreds of thousands of keys, each a chain of cache misses
//! (the table's entry, then the slot it names, then the key). One at a
//! time, the CPU overlaps only a few chains; `hashbrown` offers no way to
//! start them early. Here an entry's place is known from the hash alone,
//! so [`IdIndex::prefetch`] can ask for it a batch ahead.
//!
//! Linear probing, at most three quarters full, and removal by shifting
//! the entries after the removed one back (no tombstones), so a long life
//! of inserts and removals (shredding) does not slow lookups. A table
//! made for a known count ([`IdIndex::with_room`]) is sized to it and an
//! eighth more (the keys a backup adds), not to the next power of two
//! (which could leave it half empty: 12.6 MB where 9.4 do at a million
//! keys): a hash's low 32 bits are mapped onto the table by a
//! multiplication (Lemire's fast range), its top 16 are its tag.
//!
//! Each entry is 6 bytes: the hash's top 16 bits (a tag, so that a probe
//! past another key's entry seldom reads its slot) beside the slot number
//! plus one (0: empty). That is 9 bytes a key in a table made for its
//! count, up to 16 while one grows by doubling, against 8 to 11 for
//! `hashbrown`'s table of slot numbers. (Entries of 8 bytes, tried first,
//! raised a 4 GiB initial backup's peak by about 9 MiB, to 503 MiB.)

/// Entries in a fresh table: a small vault takes 512 bytes.
const MIN_CAPACITY: usize = 64;

#[derive(Default)]
pub(super) struct IdIndex {
    /// A power of two long (or empty).
    entries: Vec<Entry>,
    len: usize,
}

/// One entry: packed, so that 6 bytes is all it takes.
#[derive(Clone, Copy)]
#[repr(C, packed(2))]
struct Entry {
    tag: u16,
    /// The slot number plus one; 0 for an empty entry.
    slot1: u32,
}

const EMPTY: Entry = Entry { tag: 0, slot1: 0 };

fn tag(h: u64) -> u16 {
    (h >> 48) as u16
}

fn entry(h: u64, slot: u32) -> Entry {
    Entry {
        tag: tag(h),
        slot1: slot.checked_add(1).expect("fewer than 2^32 - 1 keys"),
    }
}

fn slot_of(e: Entry) -> u32 {
    e.slot1.wrapping_sub(1)
}

fn is_empty(e: Entry) -> bool {
    e.slot1 == 0
}

fn tag_of(e: Entry) -> u16 {
    e.tag
}

impl IdIndex {
    /// Where the probe for hash `h` starts: its low 32 bits scaled onto
    /// the table (the table is never as long as 2^32).
    fn home(&self, h: u64) -> usize {
        (((h & 0xffff_ffff) * self.entries.len() as u64) >> 32) as usize
    }

    /// The entry after `i`, wrapping at the table's end.
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.entries.len() {
            0
        } else {
            i + 1
        }
    }

    /// How far forward, wrapping, `to` lies from `from`.
    fn distance(&self, from: usize, to: usize) -> usize {
        if to >= from {
            to - from
        } else {
            to + self.entries.len() - from
        }
    }

    /// An empty table with room for `n` entries before it grows (and not
    /// one more: a table made for a count is made [`with_room`](Self::with_room)).
    fn with_capacity(n: usize) -> IdIndex {
        let size = (n.saturating_mul(4).div_ceil(3) + 1).max(MIN_CAPACITY);
        IdIndex {
            entries: vec![EMPTY; size],
            len: 0,
        }
    }

    /// An empty table for `n` keys, with room for an eighth more before it
    /// grows: the keys a backup adds (new subjects, about 1% of them a day
    /// in a daily schedule). Sized to `n` alone, the first key added
    /// doubled the table, the new one beside the old while it grew.
    pub fn with_room(n: usize) -> IdIndex {
        Self::with_capacity(n.saturating_add(n / 8))
    }

    /// Starts loading the entry a lookup of hash `h` reads first.
    #[inline]
    pub fn prefetch(&self, h: u64) {
        if let Some(e) = self.entries.get(self.home(h)) {
            crate::prefetch::line(e);
        }
    }

    /// The first slot, in probe order, whose tag matches `h` and for which
    /// `eq` holds.
    #[inline]
    pub fn find(&self, h: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.entries.is_empty() {
            return None;
        }
        let t = tag(h);
        let mut i = self.home(h);
        loop {
            let e = self.entries[i];
            if is_empty(e) {
                return None;
            }
            if tag_of(e) == t && eq(slot_of(e)) {
                return Some(slot_of(e));
            }
            i = self.next(i);
        }
    }

    /// The first slot, in probe order, whose tag matches `h`: the one
    /// [`IdIndex::find`] will most likely give (tags of 16 bits seldom
    /// match by chance), to prefetch.
    #[inline]
    pub fn candidate(&self, h: u64) -> Option<u32> {
        self.find(h, |_| true)
    }

    /// Adds slot `slot` under hash `h`. `rehash` gives the hash of any slot
    /// already in (the table grows by placing every entry again).
    pub fn insert(&mut self, h: u64, slot: u32, rehash: impl Fn(u32) -> u64) {
        if (self.len + 1) * 4 > self.entries.len() * 3 {
            self.grow(rehash);
        }
        let mut i = self.home(h);
        while !is_empty(self.entries[i]) {
            i = self.next(i);
        }
        self.entries[i] = entry(h, slot);
        self.len += 1;
    }

    fn grow(&mut self, rehash: impl Fn(u32) -> u64) {
        let size = (self.entries.len() * 2).max(MIN_CAPACITY);
        let old = std::mem::replace(&mut self.entries, vec![EMPTY; size]);
        for e in old.into_iter().filter(|&e| !is_empty(e)) {
            let h = rehash(slot_of(e));
            debug_assert_eq!(tag(h), tag_of(e), "a slot's hash changed");
            let mut i = self.home(h);
            while !is_empty(self.entries[i]) {
                i = self.next(i);
            }
            self.entries[i] = e;
        }
    }

    /// Where slot `slot`, under hash `h`, is.
    fn position(&self, h: u64, slot: u32) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let mut i = self.home(h);
        loop {
            let e = self.entries[i];
            if is_empty(e) {
                return None;
            }
            if slot_of(e) == slot {
                return Some(i);
            }
            i = self.next(i);
        }
    }

    /// Takes slot `slot` (under hash `h`) out; false if it was not in.
    /// The entries after it in its run move back to where a lookup finds
    /// them; `rehash` as for [`IdIndex::insert`].
    pub fn remove(&mut self, h: u64, slot: u32, rehash: impl Fn(u32) -> u64) -> bool {
        let Some(mut hole) = self.position(h, slot) else {
            return false;
        };
        let mut i = hole;
        loop {
            i = self.next(i);
            let e = self.entries[i];
            if is_empty(e) {
                break;
            }
            // An entry may fill the hole if its probe passes the hole on
            // the way to `i`: its home lies cyclically outside (hole, i].
            let home = self.home(rehash(slot_of(e)));
            if self.distance(home, i) >= self.distance(hole, i) {
                self.entries[hole] = e;
                hole = i;
            }
        }
        self.entries[hole] = EMPTY;
        self.len -= 1;
        true
    }

    /// Renames slot `from` (under hash `h`) to `to`, as when the last slot
    /// moves into a removed one's place.
    pub fn renumber(&mut self, h: u64, from: u32, to: u32) {
        if let Some(i) = self.position(h, from) {
            self.entries[i] = entry(h, to);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;

    /// Hashes that collide a lot: `spread` homes over the whole table
    /// (the first at its very end, so runs wrap around), tags that often
    /// match.
    fn hash(key: u32, spread: u32) -> u64 {
        let k = u64::from(key % spread);
        let home = u64::from((k.wrapping_mul(0x9e37_79b1) as u32).wrapping_sub(40));
        (k.wrapping_mul(0x9e37_79b9_7f4a_7c15) & 0xffff_0000_0000_0000) | home
    }

    #[test]
    fn inserts_lookups_and_removals_agree_with_a_map() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for spread in [3u32, 61, 1 << 20] {
            let mut t = IdIndex::default();
            // slot -> key; the keys are what a lookup compares.
            let mut keys: Vec<u32> = Vec::new();
            let mut model: HashMap<u32, u32> = HashMap::new();
            // Few homes make every lookup walk a long run: fewer steps.
            let steps = if spread < 100 { 1500 } else { 20_000 };
            for step in 0..steps {
                if rng.gen_bool(0.6) || keys.is_empty() {
                    let key = step;
                    let slot = keys.len() as u32;
                    keys.push(key);
                    t.insert(hash(key, spread), slot, |s| hash(keys[s as usize], spread));
                    model.insert(key, slot);
                } else {
                    // Remove a random slot; the last one moves into it.
                    let slot = rng.gen_range(0..keys.len()) as u32;
                    let key = keys[slot as usize];
                    let rehash = |s: u32| hash(keys[s as usize], spread);
                    assert!(t.remove(hash(key, spread), slot, rehash));
                    assert!(!t.remove(hash(key, spread), slot, rehash));
                    model.remove(&key);
                    let last = keys.len() as u32 - 1;
                    let moved = keys[last as usize];
                    if slot != last {
                        t.renumber(hash(moved, spread), last, slot);
                        model.insert(moved, slot);
                    }
                    keys.swap_remove(slot as usize);
                }
                if step % 1000 == 0 || spread < 100 {
                    for (&key, &slot) in &model {
                        let got = t.find(hash(key, spread), |s| keys[s as usize] == key);
                        assert_eq!(got, Some(slot), "key {key}, spread {spread}");
                    }
                    let gone = step + 1_000_000;
                    let got = t.find(hash(gone, spread), |s| keys[s as usize] == gone);
                    assert_eq!(got, None);
                }
            }
            assert_eq!(t.len, model.len());
            assert!(t.len * 4 <= t.entries.len() * 3);
        }
    }

    #[test]
    fn a_table_is_sized_to_its_count_and_homes_cover_it() {
        // A million keys: 1.33 M entries, not 2^21.
        let t = IdIndex::with_capacity(1_040_000);
        assert_eq!(t.entries.len(), 1_386_668);
        // The lowest and highest hashes land at the table's two ends,
        // whatever the tag.
        assert_eq!(t.home(0xffff_0000_0000_0000), 0);
        assert_eq!(t.home(0x0000_0000_ffff_ffff), t.entries.len() - 1);
        assert_eq!(t.home(0x1234_0000_8000_0000), t.entries.len() / 2);
        // A run that reaches the end goes on at the start.
        assert_eq!(t.next(t.entries.len() - 1), 0);
        assert_eq!(t.distance(t.entries.len() - 2, 1), 3);
        assert_eq!(t.distance(5, 5), 0);
    }

    #[test]
    fn a_table_made_for_a_count_takes_an_eighth_more_without_growing() {
        let n = 10_000;
        let mut t = IdIndex::with_room(n);
        let size = t.entries.len();
        let hash = |slot: u32| u64::from(slot).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for slot in 0..(n + n / 8) as u32 {
            t.insert(hash(slot), slot, hash);
        }
        assert_eq!(t.entries.len(), size, "grew within its room");
        for slot in 0..(n + n / 8) as u32 {
            assert_eq!(t.find(hash(slot), |s| s == slot), Some(slot));
        }
    }

    #[test]
    fn an_entry_is_6_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 6);
    }

    #[test]
    fn an_empty_index_finds_nothing() {
        let mut t = IdIndex::default();
        assert_eq!(t.find(5, |_| true), None);
        assert!(!t.remove(5, 0, |_| 5));
        t.prefetch(5);
        t.renumber(5, 0, 1);
        t.insert(5, 0, |_| 5);
        assert_eq!(t.find(5, |_| true), Some(0));
        assert_eq!(t.find(5, |_| false), None);
    }
}
