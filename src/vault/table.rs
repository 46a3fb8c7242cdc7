//! The vault's unit keys in memory: one slot per key, found by id and by
//! (kind, name).
//!
//! A vault holds a key per customer, so this is the one structure of a
//! backup, restore or check that grows with the number of customers. A
//! slot is 80 bytes with the key's 32 inline (names other than
//! pseudonyms, and where a key was read from while the vault opens, are
//! kept beside the slots), and the two lookups are tables of slot
//! numbers: about 100 bytes a key in all (the two lookups about 18 of
//! them, sized to the keys and an eighth more, see [`super::ids`]),
//! where a map from id to entry plus a name index took about 190, and
//! 64-byte slots with each key in a box of its own about 120. Slots
//! live in fixed segments, so growing the table never copies it, and a
//! key, written into its slot in place ([`KeyTable::insert`]), stays
//! where it was written until it is taken out, when it is zeroized there
//! ([`KeyTable::remove`]). The id lookup is a table of our own
//! ([`super::ids`]), so that a walk's many lookups can be prefetched
//! ([`KeyTable::get_many`]).

use super::ids::IdIndex;
use super::{KeyId, KeyKind};
use crate::crypto::KeyBytes;
use std::fmt;
use std::hash::BuildHasher;

/// Slots per segment: 256 KiB.
const SEGMENT: usize = 4096;

/// A unit key's name as held in memory. A subject's name is its pseudonym,
/// 32 lowercase hex digits, kept as its 16 bytes; any other name as text.
/// A name has one form only (see [`NameRef::of`]), so equal names have
/// equal forms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum KeyName {
    Hex([u8; 16]),
    Text(Box<str>),
}

/// The 16 bytes that 32 lowercase hex digits spell, or `None` for any
/// other text. Every name read from a vault and every subject a backup
/// looks up comes through here (the `hex` crate's decoder, after a
/// separate check of the digits, was a tenth of opening a vault of 260 k
/// keys; this is one pass with a table).
fn lower_hex16(text: &[u8]) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    crate::crypto::lower_hex_decode_into(text, &mut out).then_some(out)
}

/// A name in the form [`KeyName`] keeps, borrowed: what a lookup compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum NameRef<'a> {
    Hex([u8; 16]),
    Text(&'a str),
}

impl<'a> NameRef<'a> {
    /// The form of a name: `Hex` for exactly 32 lowercase hex digits.
    pub fn of(name: &'a str) -> NameRef<'a> {
        match lower_hex16(name.as_bytes()) {
            Some(b) => NameRef::Hex(b),
            None => NameRef::Text(name),
        }
    }

    /// The length of the name's text.
    pub fn len(self) -> usize {
        match self {
            NameRef::Hex(_) => 32,
            NameRef::Text(t) => t.len(),
        }
    }

    /// Appends the name's text (UTF-8) to `out`.
    pub fn write_to(self, out: &mut Vec<u8>) {
        match self {
            NameRef::Hex(b) => {
                let mut text = [0u8; 32];
                hex::encode_to_slice(b, &mut text).expect("32 bytes of room");
                out.extend_from_slice(&text);
            }
            NameRef::Text(t) => out.extend_from_slice(t.as_bytes()),
        }
    }
}

impl fmt::Display for NameRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameRef::Hex(b) => {
                let mut text = [0u8; 32];
                hex::encode_to_slice(b, &mut text).expect("32 bytes of room");
                f.write_str(std::str::from_utf8(&text).expect("hex is ASCII"))
            }
            NameRef::Text(t) => f.write_str(t),
        }
    }
}

impl KeyName {
    pub fn new(name: &str) -> KeyName {
        match NameRef::of(name) {
            NameRef::Hex(b) => KeyName::Hex(b),
            NameRef::Text(t) => KeyName::Text(t.into()),
        }
    }

    pub fn as_ref(&self) -> NameRef<'_> {
        match self {
            KeyName::Hex(b) => NameRef::Hex(*b),
            KeyName::Text(t) => NameRef::Text(t),
        }
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_ref().fmt(f)
    }
}

/// A unit key's name as its slot holds it: a subject's pseudonym as its
/// 16 bytes, any other name as its place in the table's list of texts
/// (names of period and epoch keys: a few, one per period or epoch). 20
/// bytes, where a [`KeyName`] (a box for text) takes 24: with the key
/// inline, that is what keeps a slot at 80 bytes, not 88.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotName {
    Hex([u8; 16]),
    Text(u32),
}

/// One unit key. Its name is read through the table
/// ([`KeyTable::name`]).
pub(super) struct Slot {
    pub id: KeyId,
    /// Written in place after the slot is in the table (see
    /// [`KeyTable::insert`]).
    pub key: KeyBytes,
    pub created: i64,
    name: SlotName,
    pub kind: KeyKind,
}

/// What a slot's name is read and hashed with: the texts of names that
/// are not pseudonyms, and the hash keys.
#[derive(Default)]
struct Naming {
    texts: Vec<Box<str>>,
    names: std::hash::RandomState,
    seed: Seed,
}

impl Naming {
    fn of<'a>(&'a self, s: &Slot) -> NameRef<'a> {
        match s.name {
            SlotName::Hex(b) => NameRef::Hex(b),
            SlotName::Text(i) => NameRef::Text(&self.texts[i as usize]),
        }
    }

    /// The hash a slot is found by in the name table.
    fn hash(&self, s: &Slot) -> u64 {
        hash_name(&self.names, self.seed, s.kind, self.of(s))
    }

    /// Whether slot `s` has this kind and name.
    fn is(&self, s: &Slot, kind: KeyKind, name: NameRef<'_>) -> bool {
        s.kind == kind && self.of(s) == name
    }
}

/// The unit keys, by id and by (kind, name). See the module docs.
#[derive(Default)]
pub(super) struct KeyTable {
    segments: Vec<Vec<Slot>>,
    len: usize,
    /// Slot numbers, hashed by id.
    by_id: IdIndex,
    /// Slot numbers, hashed by (kind, name); one per name (see
    /// [`KeyTable::point_name`]). Built when a name is first looked up
    /// (see [`KeyTable::rebuild_names`]): a restore, a check or a drill
    /// look keys up by id only, and never build it (6 bytes an entry, 12
    /// MiB at a million keys).
    by_name: std::sync::OnceLock<IdIndex>,
    naming: Naming,
    /// While a vault opens: each slot's first vault location it was read
    /// from (its position in the vault's list), to name it when another
    /// location disagrees and to take its keys back if that location
    /// fails part-way ([`KeyTable::track_origins`]). Not kept after.
    origins: Option<Vec<u32>>,
}

/// A per-table random key for hashing ids and pseudonyms: their bytes
/// are random when custos draws them, but a vault's shards can be written
/// by anyone holding a recipient's public key, and a shard of ids alike
/// in the bytes hashed would make every lookup a walk through all of them
/// (quadratic to open).
#[derive(Clone, Copy)]
struct Seed([u64; 2]);

impl Default for Seed {
    fn default() -> Self {
        let r = std::hash::RandomState::new();
        Seed([r.hash_one(0u8), r.hash_one(1u8)])
    }
}

impl Seed {
    /// All 16 bytes, keyed, folded by one wide multiplication (as
    /// foldhash does): far cheaper than SipHash, and without the seed no
    /// one can choose values that collide.
    fn fold(self, b: &[u8; 16]) -> u64 {
        let lo = u64::from_le_bytes(b[..8].try_into().expect("8 bytes")) ^ self.0[0];
        let hi = u64::from_le_bytes(b[8..].try_into().expect("8 bytes")) ^ self.0[1];
        let p = u128::from(lo) * u128::from(hi);
        (p as u64) ^ ((p >> 64) as u64)
    }
}

/// Ids are random (drawn from the OS CSPRNG; a new subject key's first
/// byte is its shard, chosen, see `SubjectFill` in the vault module);
/// SipHash over them cost a backup more than the lookups themselves, so
/// all 16 bytes are folded under the table's [`Seed`] instead (a hostile
/// shard cannot choose ids that collide).
fn id_hash(seed: Seed, id: &KeyId) -> u64 {
    seed.fold(&id.0)
}

/// The slot numbered `i`. A free function, so that the tables of slot
/// numbers can be changed while slots are read.
fn slot_at(segments: &[Vec<Slot>], i: u32) -> &Slot {
    let i = i as usize;
    &segments[i / SEGMENT][i % SEGMENT]
}

/// The hash of a (kind, name). A hex name is a subject's pseudonym, a
/// keyed hash of the subject, folded under the seed as ids are (see
/// [`id_hash`]); SipHash over it was a fifth of opening a vault. Other
/// names (a few, one per period or epoch) go through SipHash.
fn hash_name(names: &std::hash::RandomState, seed: Seed, kind: KeyKind, name: NameRef<'_>) -> u64 {
    match name {
        NameRef::Hex(b) => {
            let kind = kind as u64 + 1;
            seed.fold(&b) ^ kind.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        }
        NameRef::Text(_) => names.hash_one((kind, name)),
    }
}

/// The name table of these slots: every name pointed at its earliest
/// created key (ties: the smallest id).
fn build_names(segments: &[Vec<Slot>], len: usize, naming: &Naming) -> IdIndex {
    // Room for every name at once (growing the table would hash every
    // name again at each doubling), and for the names a backup adds.
    let mut by_name = IdIndex::with_room(len);
    let at = |j: u32| slot_at(segments, j);
    for i in 0..len as u32 {
        let s = at(i);
        let name = naming.of(s);
        let h = naming.hash(s);
        let pointed = by_name.find(h, |j| naming.is(at(j), s.kind, name));
        match pointed {
            Some(j) => {
                let other = at(j);
                if (s.created, s.id) < (other.created, other.id) {
                    by_name.renumber(h, j, i);
                }
            }
            None => by_name.insert(h, i, |j| naming.hash(at(j))),
        }
    }
    by_name
}

impl KeyTable {
    pub fn len(&self) -> usize {
        self.len
    }

    /// The name of a slot of this table.
    pub fn name<'a>(&'a self, s: &Slot) -> NameRef<'a> {
        self.naming.of(s)
    }

    /// The key in slot `i` (a number [`KeyTable::numbered`] gave).
    pub fn slot(&self, i: u32) -> &Slot {
        slot_at(&self.segments, i)
    }

    fn slot_mut(&mut self, i: u32) -> &mut Slot {
        let i = i as usize;
        &mut self.segments[i / SEGMENT][i % SEGMENT]
    }

    fn name_hash(&self, kind: KeyKind, name: NameRef<'_>) -> u64 {
        hash_name(&self.naming.names, self.naming.seed, kind, name)
    }

    fn find_id(&self, id: &KeyId) -> Option<u32> {
        self.by_id
            .find(id_hash(self.naming.seed, id), |i| self.slot(i).id == *id)
    }

    /// The keys with these ids (`None` for `None`), looked up together:
    /// for a few ids at a time, each lookup's entry in the id table, then
    /// its slot (the key is in it) are asked for before the first is read,
    /// so that their cache misses overlap (see [`super::ids`]).
    pub fn get_many<'a>(&'a self, ids: &[Option<&KeyId>]) -> Vec<Option<&'a Slot>> {
        let seed = self.naming.seed;
        self.find_many(
            &self.by_id,
            ids,
            |id| id.map(|id| id_hash(seed, id)),
            |id, s| id.is_some_and(|id| s.id == *id),
        )
    }

    /// Looks many items up through `index` a few at a time, so that their
    /// cache misses overlap: each one's entry, then its slot, then the
    /// slot's second cache line (where the key ends) are asked for before
    /// the first is read. `hash` gives an item's hash (`None`: nothing to
    /// look up); `is` tells whether a slot is the item's.
    fn find_many<'a, T>(
        &'a self,
        index: &IdIndex,
        items: &[T],
        hash: impl Fn(&T) -> Option<u64>,
        is: impl Fn(&T, &Slot) -> bool,
    ) -> Vec<Option<&'a Slot>> {
        const AHEAD: usize = 16;
        let mut out = Vec::with_capacity(items.len());
        let mut hashes = [None; AHEAD];
        for run in items.chunks(AHEAD) {
            for (h, item) in hashes.iter_mut().zip(run) {
                *h = hash(item);
                if let Some(h) = *h {
                    index.prefetch(h);
                }
            }
            for h in hashes[..run.len()].iter().flatten() {
                if let Some(i) = index.candidate(*h) {
                    let s = self.slot(i);
                    crate::prefetch::line(&s.id);
                    crate::prefetch::line(&s.kind);
                }
            }
            for (h, item) in hashes.iter().zip(run) {
                let slot = h
                    .and_then(|h| index.find(h, |i| is(item, self.slot(i))))
                    .map(|i| self.slot(i));
                out.push(slot);
            }
        }
        out
    }

    /// The key with this id.
    pub fn get(&self, id: &KeyId) -> Option<&Slot> {
        self.find_id(id).map(|i| self.slot(i))
    }

    pub fn contains(&self, id: &KeyId) -> bool {
        self.find_id(id).is_some()
    }

    /// The key the name points at (see [`KeyTable::point_name`]).
    pub fn named(&self, kind: KeyKind, name: &str) -> Option<&Slot> {
        let name = NameRef::of(name);
        self.find_name(self.name_hash(kind, name), kind, name)
            .map(|i| self.slot(i))
    }

    fn find_name(&self, h: u64, kind: KeyKind, name: NameRef<'_>) -> Option<u32> {
        self.names_index()
            .find(h, |i| self.naming.is(self.slot(i), kind, name))
    }

    /// The name table, built now if no name was looked up since it was
    /// last dropped.
    fn names_index(&self) -> &IdIndex {
        self.by_name
            .get_or_init(|| build_names(&self.segments, self.len, &self.naming))
    }

    /// [`KeyTable::named`] of many names of one kind, looked up together
    /// as [`KeyTable::get_many`] looks up ids.
    pub fn named_many<'a>(&'a self, kind: KeyKind, names: &[&str]) -> Vec<Option<&'a Slot>> {
        self.find_many(
            self.names_index(),
            names,
            |name| Some(self.name_hash(kind, NameRef::of(name))),
            |name, s| self.naming.is(s, kind, NameRef::of(name)),
        )
    }

    /// Keeps each slot's vault location from here on ([`KeyTable::insert`]'s
    /// `from`), until [`KeyTable::forget_origins`].
    pub fn track_origins(&mut self) {
        self.origins = Some(Vec::with_capacity(self.len));
    }

    /// Sizes the id table to the keys it holds, with room for the keys a
    /// backup adds: it grew by doubling while they were read, and could be
    /// half empty (see [`super::ids`]).
    pub fn fit_ids(&mut self) {
        let seed = self.naming.seed;
        let segments = &self.segments;
        let mut by_id = IdIndex::with_room(self.len);
        for (i, s) in (0..).zip(segments.iter().flatten()) {
            by_id.insert(id_hash(seed, &s.id), i, |j| {
                id_hash(seed, &slot_at(segments, j).id)
            });
        }
        self.by_id = by_id;
    }

    /// Drops the locations [`KeyTable::track_origins`] kept.
    pub fn forget_origins(&mut self) {
        self.origins = None;
    }

    /// The location the key with this id was read from, while they are
    /// tracked.
    pub fn origin(&self, id: &KeyId) -> Option<u32> {
        let i = self.find_id(id)?;
        self.origins.as_ref().map(|o| o[i as usize])
    }

    /// The ids of the keys read from location `from`, while locations are
    /// tracked.
    pub fn ids_from(&self, from: u32) -> Vec<KeyId> {
        let Some(origins) = &self.origins else {
            return Vec::new();
        };
        self.iter()
            .zip(origins)
            .filter(|(_, o)| **o == from)
            .map(|(s, _)| s.id)
            .collect()
    }

    /// Adds a key whose id is not in the table yet, read from vault
    /// location `from` (see [`KeyTable::track_origins`]), and gives the
    /// key's place in the table to write the key into: so the key is
    /// written once, where it stays, not built elsewhere and moved in.
    /// Point its name with [`KeyTable::point_name`] or
    /// [`KeyTable::rebuild_names`] before a name is next looked up.
    pub fn insert(
        &mut self,
        id: KeyId,
        kind: KeyKind,
        name: KeyName,
        created: i64,
        from: u32,
    ) -> &mut KeyBytes {
        debug_assert!(!self.contains(&id), "a key id is added twice");
        let i = u32::try_from(self.len).expect("fewer than 2^32 keys");
        let name = match name {
            KeyName::Hex(b) => SlotName::Hex(b),
            KeyName::Text(t) => {
                let at = u32::try_from(self.naming.texts.len()).expect("fewer than 2^32 names");
                self.naming.texts.push(t);
                SlotName::Text(at)
            }
        };
        let seed = self.naming.seed;
        let h = id_hash(seed, &id);
        if self.segments.last().is_none_or(|s| s.len() == SEGMENT) {
            self.segments.push(Vec::with_capacity(SEGMENT));
        }
        self.segments.last_mut().expect("pushed").push(Slot {
            id,
            key: KeyBytes::zeroed(),
            created,
            name,
            kind,
        });
        if let Some(o) = &mut self.origins {
            o.push(from);
        }
        self.len += 1;
        let segments = &self.segments;
        self.by_id
            .insert(h, i, |j| id_hash(seed, &slot_at(segments, j).id));
        &mut self.slot_mut(i).key
    }

    /// Points the key's (kind, name) at it, in place of any other key of
    /// that name. `id` must be in the table.
    pub fn point_name(&mut self, id: &KeyId) {
        let i = self.find_id(id).expect("the key is in the table");
        // Built first (with every other name pointed as the rule has it),
        // so that this key's stays pointed when it is built later.
        self.names_index();
        let by_name = self.by_name.get_mut().expect("built above");
        let (segments, naming) = (&self.segments, &self.naming);
        let at = |j: u32| slot_at(segments, j);
        let (kind, name) = (at(i).kind, naming.of(at(i)));
        let h = hash_name(&naming.names, naming.seed, kind, name);
        let pointed = by_name.find(h, |j| naming.is(at(j), kind, name));
        match pointed {
            Some(j) => by_name.renumber(h, j, i),
            None => by_name.insert(h, i, |j| naming.hash(at(j))),
        }
    }

    /// Points every name at its earliest created key (ties: the smallest
    /// id). Other keys of the same name stay reachable by id, since data
    /// may have been sealed under them. The name table is dropped here and
    /// built so when a name is next looked up.
    pub fn rebuild_names(&mut self) {
        self.by_name = std::sync::OnceLock::new();
    }

    /// Takes a key out of the table and gives its commitment
    /// ([`KeyBytes::commitment`]). The key is zeroized in the table's
    /// memory (the last slot is swapped into its place, and the slot taken
    /// out is dropped where it then lies), not handed out. If its name
    /// pointed at it, the name now points nowhere: call
    /// [`KeyTable::rebuild_names`] after removing. (A name kept as text
    /// stays in the table's list of texts: they are few.)
    pub fn remove(&mut self, id: &KeyId) -> Option<[u8; 32]> {
        let i = self.find_id(id)?;
        let (segments, naming) = (&self.segments, &self.naming);
        let seed = naming.seed;
        let at = |j: u32| slot_at(segments, j);
        let commitment = at(i).key.commitment();
        let nameh = naming.hash(at(i));
        self.by_id
            .remove(id_hash(seed, id), i, |j| id_hash(seed, &at(j).id));
        let mut by_name = self.by_name.get_mut();
        if let Some(t) = by_name.as_mut() {
            t.remove(nameh, i, |j| naming.hash(at(j)));
        }
        // The last slot moves into the hole.
        let last = (self.len - 1) as u32;
        if i != last {
            let s = at(last);
            let (idh, nameh) = (id_hash(seed, &s.id), naming.hash(s));
            self.by_id.renumber(idh, last, i);
            if let Some(t) = by_name {
                t.renumber(nameh, last, i);
            }
            let (a, b) = ((i as usize) / SEGMENT, (last as usize) / SEGMENT);
            let (ai, bi) = ((i as usize) % SEGMENT, (last as usize) % SEGMENT);
            if a == b {
                self.segments[a].swap(ai, bi);
            } else {
                let (low, high) = self.segments.split_at_mut(b);
                std::mem::swap(&mut low[a][ai], &mut high[0][bi]);
            }
            if let Some(o) = &mut self.origins {
                o.swap(i as usize, last as usize);
            }
        }
        if let Some(o) = &mut self.origins {
            o.pop();
        }
        let seg = self.segments.last_mut().expect("not empty");
        // Dropped in place: its key is zeroized where it lies.
        seg.truncate(seg.len() - 1);
        if seg.is_empty() {
            self.segments.pop();
        }
        self.len -= 1;
        Some(commitment)
    }

    /// Every key, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.segments.iter().flatten()
    }

    /// Every key with its slot number, valid until the next removal.
    pub fn numbered(&self) -> impl Iterator<Item = (u32, &Slot)> {
        (0..).zip(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adds a key of this kind, name and time with a random id; its id
    /// and the place of its key.
    fn put<'a>(
        t: &'a mut KeyTable,
        kind: KeyKind,
        name: &str,
        created: i64,
    ) -> (KeyId, &'a mut KeyBytes) {
        put_id(t, KeyId::random(), kind, name, created)
    }

    fn put_id<'a>(
        t: &'a mut KeyTable,
        id: KeyId,
        kind: KeyKind,
        name: &str,
        created: i64,
    ) -> (KeyId, &'a mut KeyBytes) {
        (id, t.insert(id, kind, KeyName::new(name), created, 0))
    }

    #[test]
    fn a_name_is_hex_only_as_32_lowercase_digits() {
        use rand::RngCore;
        let mut rng = rand::thread_rng();
        for _ in 0..2000 {
            let mut b = [0u8; 16];
            rng.fill_bytes(&mut b);
            let text = hex::encode(b);
            assert_eq!(NameRef::of(&text), NameRef::Hex(b));
            assert_eq!(NameRef::of(&text).len(), 32);
            let mut out = Vec::new();
            NameRef::of(&text).write_to(&mut out);
            assert_eq!(out, text.as_bytes());
            // One byte changed to any non-digit keeps the name as text.
            let at = (rng.next_u32() % 32) as usize;
            for c in [b'A', b'F', b'g', b'/', b':', b'`', b' ', 0] {
                let mut bad = text.clone().into_bytes();
                bad[at] = c;
                let bad = String::from_utf8(bad).expect("ASCII");
                assert!(matches!(NameRef::of(&bad), NameRef::Text(_)), "{bad:?}");
            }
            // So do two digits changed to one two-byte character: still 32
            // bytes long, so only the digit rule refuses it.
            let at = at.min(30);
            let bad = format!("{}é{}", &text[..at], &text[at + 2..]);
            assert_eq!(bad.len(), 32);
            assert!(matches!(NameRef::of(&bad), NameRef::Text(_)), "{bad:?}");
        }
        for text in ["", "0", &"0".repeat(31), &"0".repeat(33), &"f".repeat(64)] {
            assert_eq!(NameRef::of(text), NameRef::Text(text));
        }
        assert_eq!(NameRef::of(&"f".repeat(32)), NameRef::Hex([0xff; 16]));
        assert_eq!(
            NameRef::of(&"09af".repeat(8)),
            NameRef::Hex([0x09, 0xaf].repeat(8).try_into().unwrap())
        );
    }

    #[test]
    fn ids_and_pseudonyms_alike_in_their_first_bytes_hash_apart() {
        // A hostile shard's ids (or subject names) sharing their first 8
        // bytes hashed alike: every insert and lookup walked all of them.
        let t = KeyTable::default();
        let alike = |k: u32| {
            let mut b = [0xab; 16];
            b[12..].copy_from_slice(&k.to_le_bytes());
            b
        };
        let n = 4096u32;
        let ids: std::collections::HashSet<u64> = (0..n)
            .map(|k| id_hash(t.naming.seed, &KeyId(alike(k))))
            .collect();
        let names: std::collections::HashSet<u64> = (0..n)
            .map(|k| t.name_hash(KeyKind::Subject, NameRef::Hex(alike(k))))
            .collect();
        assert_eq!((ids.len(), names.len()), (n as usize, n as usize));
        // And such keys still go in and come out.
        let mut t = KeyTable::default();
        for k in 0..n {
            put_id(
                &mut t,
                KeyId(alike(k)),
                KeyKind::Subject,
                &hex::encode(alike(k)),
                5,
            );
        }
        t.rebuild_names();
        for k in 0..n {
            let name = hex::encode(alike(k));
            assert_eq!(
                t.named(KeyKind::Subject, &name).map(|s| s.id),
                Some(KeyId(alike(k)))
            );
        }
    }

    #[test]
    fn a_slot_is_80_bytes() {
        // The vault holds a slot per customer (module docs).
        assert_eq!(std::mem::size_of::<Slot>(), 80);
    }

    #[test]
    fn names_kept_as_text_survive_removals_and_moves() {
        // Period and subject keys mixed over segments; every other period
        // key removed, so slots with text names move into the holes.
        let mut t = KeyTable::default();
        let mut keys = Vec::new();
        for k in 0..SEGMENT + 300 {
            let (kind, name) = if k % 7 == 0 {
                (KeyKind::Period, format!("consumption:{k}"))
            } else {
                (KeyKind::Subject, format!("{k:032x}"))
            };
            let (id, _) = put(&mut t, kind, &name, k as i64);
            keys.push((id, kind, name));
        }
        t.rebuild_names();
        let mut kept = Vec::new();
        for (n, key) in keys.into_iter().enumerate() {
            if key.1 == KeyKind::Period && n % 2 == 0 {
                assert!(t.remove(&key.0).is_some());
            } else {
                kept.push(key);
            }
        }
        t.rebuild_names();
        assert_eq!(t.len(), kept.len());
        for (id, kind, name) in &kept {
            let s = t.get(id).expect("kept");
            assert_eq!(t.name(s).to_string(), *name);
            assert_eq!(s.kind, *kind);
            assert_eq!(t.named(*kind, name).map(|s| s.id), Some(*id));
        }
        assert!(t.named(KeyKind::Period, "consumption:0").is_none());
    }

    #[test]
    fn origins_are_kept_while_tracked_and_follow_moved_slots() {
        let mut t = KeyTable::default();
        t.track_origins();
        let mut ids = Vec::new();
        for k in 0..SEGMENT + 10 {
            let id = KeyId::random();
            t.insert(
                id,
                KeyKind::Subject,
                KeyName::new(&format!("{k:032x}")),
                1,
                (k % 3) as u32,
            );
            ids.push(id);
        }
        // The first key's slot is taken by the last one.
        t.remove(&ids[0]);
        let last = ids[SEGMENT + 9];
        assert_eq!(t.origin(&last), Some(((SEGMENT + 9) % 3) as u32));
        let from_one: std::collections::HashSet<KeyId> = t.ids_from(1).into_iter().collect();
        let want: std::collections::HashSet<KeyId> = (1..ids.len())
            .filter(|k| k % 3 == 1)
            .map(|k| ids[k])
            .collect();
        assert_eq!(from_one, want);
        t.forget_origins();
        assert_eq!(t.origin(&last), None);
        assert!(t.ids_from(1).is_empty());
        // Keys added after are not tracked.
        t.insert(KeyId::random(), KeyKind::Subject, KeyName::new("x"), 1, 2);
        assert!(t.ids_from(2).is_empty());
    }

    #[test]
    fn names_keep_one_form() {
        let hex = "0123456789abcdef0123456789abcdef";
        let n = KeyName::new(hex);
        assert!(matches!(n, KeyName::Hex(_)));
        assert_eq!(n.to_string(), hex);
        assert_eq!(n.as_ref().len(), 32);
        let mut out = Vec::new();
        n.as_ref().write_to(&mut out);
        assert_eq!(out, hex.as_bytes());
        assert_eq!(n.as_ref(), NameRef::of(hex));
        // Upper case, another length, or other text are text, and differ.
        for other in [
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcde",
            "consumption:2026-03",
            "",
        ] {
            let t = KeyName::new(other);
            assert!(matches!(t, KeyName::Text(_)), "{other}");
            assert_eq!(t.to_string(), other);
            assert_eq!(t.as_ref().len(), other.len());
            assert_ne!(n.as_ref(), NameRef::of(other));
            assert_eq!(t.as_ref(), NameRef::of(other));
        }
    }

    #[test]
    fn lookups_survive_removals_and_many_segments() {
        let mut t = KeyTable::default();
        let n = SEGMENT * 2 + 17;
        let key_of = |k: usize| *blake3::hash(&k.to_le_bytes()).as_bytes();
        let mut ids = Vec::new();
        for k in 0..n {
            let (id, key) = put(&mut t, KeyKind::Subject, &format!("{k:032x}"), 5);
            key.fill_from(&key_of(k));
            ids.push(id);
        }
        t.rebuild_names();
        assert_eq!(t.len(), n);
        // Remove every third key, the last one included.
        let mut gone = Vec::new();
        for (k, id) in ids.iter().enumerate() {
            if k % 3 == 0 || k == n - 1 {
                // The commitment of the key taken out, not of the slot
                // moved into its place.
                let mut want = KeyBytes::zeroed();
                want.fill_from(&key_of(k));
                assert_eq!(t.remove(id), Some(want.commitment()));
                assert_eq!(t.remove(id), None);
                gone.push(k);
            }
        }
        assert_eq!(t.len(), n - gone.len());
        assert_eq!(t.iter().count(), t.len());
        for (k, id) in ids.iter().enumerate() {
            let name = format!("{k:032x}");
            if gone.contains(&k) {
                assert!(t.get(id).is_none() && t.named(KeyKind::Subject, &name).is_none());
            } else {
                assert_eq!(t.get(id).map(|s| t.name(s).to_string()), Some(name.clone()));
                assert_eq!(t.get(id).map(|s| *s.key.expose()), Some(key_of(k)));
                assert_eq!(t.named(KeyKind::Subject, &name).map(|s| s.id), Some(*id));
                assert!(t.named(KeyKind::Period, &name).is_none());
            }
        }
        // Looked up together, in runs that end part-way, with gaps: as
        // one at a time.
        let mut asked: Vec<Option<&KeyId>> = ids.iter().map(Some).collect();
        asked.insert(5, None);
        asked.push(None);
        let many = t.get_many(&asked);
        assert_eq!(many.len(), asked.len());
        for (id, got) in asked.iter().zip(&many) {
            let one = id.and_then(|id| t.get(id));
            assert_eq!(got.map(|s| s.id), one.map(|s| s.id));
            assert_eq!(got.is_none(), id.is_none_or(|id| !t.contains(id)));
        }
        // Names looked up together, with names never added and runs that
        // end part-way: as one at a time.
        let mut names: Vec<String> = (0..n + 40).map(|k| format!("{k:032x}")).collect();
        names.push("consumption:2026-03".into());
        let asked: Vec<&str> = names.iter().map(String::as_str).collect();
        for kind in [KeyKind::Subject, KeyKind::Period] {
            let many = t.named_many(kind, &asked);
            assert_eq!(many.len(), asked.len());
            let mut found = 0;
            for (name, got) in asked.iter().zip(&many) {
                let one = t.named(kind, name);
                assert_eq!(got.map(|s| s.id), one.map(|s| s.id), "{name}");
                found += usize::from(got.is_some());
            }
            let want = if kind == KeyKind::Subject { t.len() } else { 0 };
            assert_eq!(found, want);
        }
        // Sized to what is left, every key is still found by id.
        t.fit_ids();
        for (k, id) in ids.iter().enumerate() {
            assert_eq!(t.get(id).is_some(), !gone.contains(&k));
        }
        let left: Vec<KeyId> = t.iter().map(|s| s.id).collect();
        for id in left {
            t.remove(&id).expect("present");
        }
        assert_eq!(t.len(), 0);
        assert!(t.segments.is_empty());
    }

    #[test]
    fn a_name_points_at_its_earliest_key_until_pointed_elsewhere() {
        // A name kept as text and one kept as its bytes (hashed apart).
        let pseudonym = "0123456789abcdef0123456789abcdef";
        for (kind, name) in [
            (KeyKind::Period, "consumption:2026-03"),
            (KeyKind::Subject, pseudonym),
        ] {
            let mut t = KeyTable::default();
            let late_id = put(&mut t, kind, name, 20).0;
            let early_id = put(&mut t, kind, name, 10).0;
            t.rebuild_names();
            // Looked up by id, the name table is not built; by name, it is.
            assert!(t.get(&late_id).is_some() && t.get_many(&[Some(&early_id)])[0].is_some());
            assert!(t.by_name.get().is_none());
            let named = |t: &KeyTable| t.named(kind, name).map(|s| s.id);
            assert_eq!(named(&t), Some(early_id), "{name}");
            t.point_name(&late_id);
            assert_eq!(named(&t), Some(late_id), "{name}");
            t.remove(&late_id);
            assert_eq!(named(&t), None, "{name}");
            t.rebuild_names();
            assert_eq!(named(&t), Some(early_id), "{name}");
            // Pointed before the name table is built again: it stays
            // pointed when the table is built.
            let later_id = put(&mut t, kind, name, 30).0;
            t.rebuild_names();
            t.point_name(&later_id);
            assert_eq!(named(&t), Some(later_id), "{name}");
            // The same name under another kind is another unit.
            assert!(t.named(KeyKind::Epoch, name).is_none(), "{name}");
        }
    }
}
