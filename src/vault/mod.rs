//! The key vault: random 256-bit unit keys (one per subject, per (class,
//! period), per (class, epoch)) and the two repository keys (metadata and
//! pseudonym), wrapped with `age` and kept identically at every vault
//! location.
//!
//! The layout at a location (byte-exact in `docs/FORMAT.md`, "Key vault"):
//!
//! ```text
//! custos-vault.json        plaintext marker, no secrets
//! meta.age                 the metadata and pseudonym keys
//! keys/subject/<xx>.age    subject keys, 256 shards by the first byte of the key id
//! keys/period/all.age      (class, period) keys
//! keys/epoch/all.age       (class, epoch) keys
//! shred/ledger.age         the shredding ledger (pending, holds, journal);
//!                          written by `crate::shred`, read here for fences
//! ```
//!
//! Every `.age` object is a binary age file (x25519, to the service identity
//! plus the policy's recovery recipients) around one payload signed with the
//! service's ed25519 key ([`seal`]): age keeps it secret, the signature
//! tells the service's objects from planted ones. A vault opened with the
//! public key alone ([`VaultKeys::read_only`]) reads and never writes. A shard
//! also keeps tombstones (the ids of destroyed keys, never their bytes) so a
//! location that missed a destroy cannot bring a key back when locations are
//! merged at open.
//!
//! Concurrency: one writer per vault at a time (the caller holds a lease).
//! Writes are read-modify-write of whole shards and are not conditional.
//! Two guards keep a writer that opened the vault earlier from undoing a
//! shred: [`Vault::persist`] first merges the tombstones now stored at every
//! location into the shards it writes (a destroyed key is never written
//! back), and refuses to write a key created in this session for a unit that
//! is *fenced* (being destroyed, per the ledger's `fences`). A fenced unit's
//! key is also hidden from [`Vault::lookup`] and [`Vault::key`], so no job
//! reads it while it is being destroyed.
//!
//! In memory the unit keys are one [`table::KeyTable`] (about 100 bytes a
//! key), and [`Vault::open`] reads each location a shard at a time into it,
//! so opening holds no location's payloads in full.

mod ids;
mod seal;
mod table;

pub use seal::VaultKeys;

use crate::crypto::{Key32, KeyBytes};
use age::x25519::{Identity, Recipient};
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use rand::RngCore;
use seal::{signed_part, unwrap, wrap, SignatureError, UnwrapError, SIGNATURE_LEN};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use table::{KeyName, KeyTable, NameRef, Slot};
use zeroize::Zeroizing;

/// Name of the plaintext marker object.
pub const MARKER: &str = "custos-vault.json";
/// Name of the object holding the repository keys.
pub const META_OBJECT: &str = "meta.age";
/// Magic bytes at the start of every shard payload.
pub const PAYLOAD_MAGIC: &[u8; 8] = b"CUSTOSVK";
/// Magic bytes at the start of every record payload (`shred/<name>.age`).
pub const RECORD_MAGIC: &[u8; 8] = b"CUSTOSVR";
/// The payload version this code writes (shards and records): 2, signed.
/// Version 1 (unsigned) is read only by [`Vault::sign_as_it_stands`].
pub const PAYLOAD_VERSION: u16 = 2;
/// The marker format version this code writes.
pub const MARKER_VERSION: u32 = 1;

const KIND_REPO: u8 = 0;
const NAME_META: &str = "metadata";
const NAME_PSEUDONYM: &str = "pseudonym";

/// Errors of the vault. They name locations (URLs) and objects, never key
/// bytes or customer values.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("no key vault found at any location ({urls}): create one with `custos init`, or check the vault URLs in the policy")]
    NoVault { urls: String },
    #[error("a key vault already exists at {url}: refusing to create another (nothing was written); open it instead, or choose an empty location")]
    AlreadyExists { url: String },
    #[error("the service identity is not a recipient of vault object `{object}` at {url}: use the identity this vault was created with, or a recovery identity")]
    NotRecipient { url: String, object: String },
    #[error("vault location {url} is unreachable ({object}): {source}; check the URL, credentials and network")]
    Unreachable {
        url: String,
        object: String,
        source: object_store::Error,
    },
    #[error("vault location {url} could not be read when the vault was opened ({reason}); refusing to write, since it may hold keys not seen here: fix it and reopen the vault")]
    NotRead { url: String, reason: String },
    #[error("vault object `{object}` at {url} is corrupt: {reason}; restore it from another vault location or from backup")]
    Corrupt {
        url: String,
        object: String,
        reason: String,
    },
    #[error("vault locations {url} and {other} hold different vaults (vault ids differ): fix the vault URLs in the policy")]
    Mismatch { url: String, other: String },
    #[error("vault locations disagree on key {key_id} ({url} differs from {other}): refusing to guess; investigate before any shred")]
    Conflict {
        url: String,
        other: String,
        key_id: KeyId,
    },
    #[error("writing vault object `{object}` to {url} failed: {source}; the change stays pending, retry persist")]
    Write {
        url: String,
        object: String,
        source: object_store::Error,
    },
    #[error("{failed} of {total} vault locations failed to write; first: {first}")]
    Persist {
        failed: usize,
        total: usize,
        first: Box<VaultError>,
    },
    #[error("cannot wrap vault object `{object}` with age: {reason}")]
    Wrap { object: String, reason: String },
    #[error("no {kind} key named `{name}` in the vault: nothing to destroy")]
    UnknownKey { kind: KeyKind, name: String },
    #[error("key {key_id} is still present at {url} after being destroyed: the shred is NOT complete; retry destroy")]
    StillPresent { url: String, key_id: KeyId },
    #[error("a vault needs at least one location: list the vault URLs in the policy")]
    NoLocations,
    #[error("the {kind} unit {name} is being destroyed (fenced): no key may be created or read for it; retry after the shred run completes")]
    Fenced { kind: KeyKind, name: String },
    #[error(
        "vault record `{object}` is not a record name custos writes (expected `shred/<name>.age`)"
    )]
    BadRecordName { object: String },
    #[error("vault object `{object}` at {url} is not signed, so nothing was read from it. A vault written before custos signed its objects is signed once, as it stands, with `custos keys sign-vault`; in a vault already signed, this object was planted or copied back from an old copy: replace it from another vault location")]
    Unsigned { url: String, object: String },
    #[error("vault object `{object}` at {url} does not carry this service's signature (planted, damaged, or written by another service's keys), so nothing was read from it: replace it from another vault location, and find out who could write there")]
    BadSignature { url: String, object: String },
    #[error("the vault was opened with the service's public key alone (no signing.key beside the identity), which reads the vault but cannot write it: run this with the service's keys")]
    ReadOnly,
    #[error("vault object `{object}` at {url} is not signed, but the vault already is (its meta.age is signed): custos did not write it, so it is not signed now; replace it from another vault location, and find out who could write there")]
    UnsignedInSignedVault { url: String, object: String },
}

/// The kind of a unit key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// One key per subject (customer); the name is the subject's pseudonym.
    Subject,
    /// One key per (class, period), named e.g. `consumption:2026-03`.
    Period,
    /// One key per (class, epoch), named e.g. `identity:2026-Q4`.
    Epoch,
}

impl KeyKind {
    /// The lowercase name (`subject`, `period`, `epoch`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Subject => "subject",
            KeyKind::Period => "period",
            KeyKind::Epoch => "epoch",
        }
    }

    fn code(self) -> u8 {
        match self {
            KeyKind::Subject => 1,
            KeyKind::Period => 2,
            KeyKind::Epoch => 3,
        }
    }

    fn from_code(c: u8) -> Option<KeyKind> {
        match c {
            1 => Some(KeyKind::Subject),
            2 => Some(KeyKind::Period),
            3 => Some(KeyKind::Epoch),
            _ => None,
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A random 128-bit key identifier; shown as 32 lowercase hex digits. It
/// names a key without revealing anything about it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    /// A fresh random id.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut b);
        KeyId(b)
    }
}

/// Ids are drawn from the OS CSPRNG, so their last eight bytes are
/// already a good hash (the first byte is chosen, see [`SubjectFill`]):
/// the set of keys a process created ([`Vault::created_here`]) holds only
/// ids it drew itself, never ones read from a location, so no one can
/// choose ids that collide. A `BTreeSet` there cost a first backup a tree
/// walk of 16-byte comparisons for each of its 260 k new keys (1 GiB).
#[derive(Default)]
struct DrawnIdHasher(u64);

impl std::hash::Hasher for DrawnIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        match bytes.len().checked_sub(8) {
            Some(from) => {
                self.0 = u64::from_le_bytes(bytes[from..].try_into().expect("8 bytes"));
            }
            None => {
                for b in bytes {
                    self.0 = self.0.rotate_left(8) ^ u64::from(*b);
                }
            }
        }
    }

    /// The slice's length prefix: the same for every id.
    fn write_usize(&mut self, _: usize) {}
}

/// Which subject shard (the first byte of a key id, FORMAT.md 7) a new
/// subject key goes to. With ids wholly random, every read window of a
/// first backup put keys in all 256 shards, and each window's persist
/// rewrote every shard at every location, the whole vault: quadratic in
/// the number of customers (at 1 GiB the second window's persist took
/// 0.2 s, at ten million subjects it would rewrite the vault's 800 MB a
/// window). So new keys fill one shard at a time, up to a cap, and then
/// go to the least filled one: a window's persist rewrites the few
/// shards its keys went to. The cap, twice the average or 4096 keys,
/// keeps every shard within about twice the average. The counts are
/// taken when a process first creates a subject key and are a guide
/// only: keys destroyed or merged later leave them stale, which costs
/// balance, never correctness (readers find a key's shard from its id).
struct SubjectFill {
    counts: Vec<u32>,
    total: u64,
    current: Option<u8>,
}

impl SubjectFill {
    const MIN_CAP: u64 = 4096;

    fn of(table: &KeyTable) -> Self {
        let mut counts = vec![0u32; 256];
        let mut total = 0;
        for e in table.iter().filter(|e| e.kind == KeyKind::Subject) {
            counts[usize::from(e.id.0[0])] += 1;
            total += 1;
        }
        SubjectFill {
            counts,
            total,
            current: None,
        }
    }

    /// The shard of the next new subject key; `random` (a random byte)
    /// breaks ties between the least filled shards.
    fn next(&mut self, random: u8) -> u8 {
        let cap = Self::MIN_CAP.max(self.total * 2 / 256);
        let shard = match self.current {
            Some(c) if u64::from(self.counts[usize::from(c)]) < cap => c,
            _ => {
                let start = usize::from(random);
                let pick = (0..256)
                    .map(|k| (start + k) % 256)
                    .min_by_key(|&i| self.counts[i])
                    .expect("256 shards");
                pick as u8
            }
        };
        self.current = Some(shard);
        self.counts[usize::from(shard)] += 1;
        self.total += 1;
        shard
    }
}

type DrawnIds = HashSet<KeyId, std::hash::BuildHasherDefault<DrawnIdHasher>>;

/// OS randomness for the ids and keys of many new keys, drawn up to
/// [`FreshKeys::AT_ONCE`] keys at a time in one call instead of two calls
/// a key (a first backup creates a key per customer). Each key's bytes
/// are zeroed here as soon as they are copied into its slot, and what is
/// left of a draw is zeroized when this is dropped, so it holds at most
/// one draw of keys not yet made, for as long as one call to
/// [`Vault::get_or_create_each`].
struct FreshKeys {
    buf: Zeroizing<Vec<u8>>,
    at: usize,
    /// Keys that may still be wanted (the names not yet seen).
    left: usize,
}

impl FreshKeys {
    const AT_ONCE: usize = 1024;
    const EACH: usize = 16 + 32;

    fn new(left: usize) -> Self {
        FreshKeys {
            buf: Zeroizing::new(Vec::new()),
            at: 0,
            left,
        }
    }

    /// One name looked at: it needs no new key or has had one.
    fn seen(&mut self) {
        self.left = self.left.saturating_sub(1);
    }

    /// The next id's and key's bytes, drawing again when none are left.
    fn next(&mut self) -> (KeyId, &mut [u8]) {
        if self.at == self.buf.len() {
            let n = self.left.clamp(1, Self::AT_ONCE) * Self::EACH;
            crate::crypto::wipe::vec(&mut self.buf);
            self.buf.resize(n, 0);
            rand::rngs::OsRng.fill_bytes(&mut self.buf);
            self.at = 0;
        }
        let b = &mut self.buf[self.at..self.at + Self::EACH];
        self.at += Self::EACH;
        let (id, key) = b.split_at_mut(16);
        (KeyId(id.try_into().expect("16 bytes")), key)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// The error of parsing a [`KeyId`].
#[derive(Debug, thiserror::Error)]
#[error("invalid key id: expected 32 hex digits")]
pub struct KeyIdParseError;

impl FromStr for KeyId {
    type Err = KeyIdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut b = [0u8; 16];
        hex::decode_to_slice(s, &mut b).map_err(|_| KeyIdParseError)?;
        Ok(KeyId(b))
    }
}

impl Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<KeyId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One vault location: its URL (for messages) and its opened store. Objects
/// are written at the store's root, so give each vault its own store or
/// prefix.
#[derive(Clone, Debug)]
pub struct VaultLocation {
    pub url: String,
    pub store: Arc<dyn ObjectStore>,
}

/// What the vault tells about one key, without its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntryInfo {
    pub kind: KeyKind,
    pub name: String,
    pub key_id: KeyId,
    /// Creation time, unix seconds.
    pub created: i64,
}

/// The outcome of [`Vault::destroy`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DestroyReport {
    pub kind: KeyKind,
    pub name: String,
    /// The ids of the destroyed keys (usually one).
    pub key_ids: Vec<KeyId>,
    /// [`Key32::commitment`] of each destroyed key, in hex, same order.
    pub commitments: Vec<String>,
    /// Every location that was re-read and found without the keys.
    pub locations_checked: Vec<String>,
    /// The vault objects that were re-read at each location.
    pub objects_checked: Vec<String>,
}

/// The unit of storage: one `.age` object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Shard {
    Meta,
    Subject(u8),
    Period,
    Epoch,
}

impl Shard {
    fn of(kind: KeyKind, id: &KeyId) -> Shard {
        match kind {
            KeyKind::Subject => Shard::Subject(id.0[0]),
            KeyKind::Period => Shard::Period,
            KeyKind::Epoch => Shard::Epoch,
        }
    }

    fn name(self) -> String {
        match self {
            Shard::Meta => META_OBJECT.to_string(),
            Shard::Subject(b) => format!("keys/subject/{b:02x}.age"),
            Shard::Period => "keys/period/all.age".to_string(),
            Shard::Epoch => "keys/epoch/all.age".to_string(),
        }
    }

    fn parse(name: &str) -> Option<Shard> {
        match name {
            META_OBJECT => Some(Shard::Meta),
            "keys/period/all.age" => Some(Shard::Period),
            "keys/epoch/all.age" => Some(Shard::Epoch),
            _ => {
                let hx = name.strip_prefix("keys/subject/")?.strip_suffix(".age")?;
                if hx.len() != 2 || hx.bytes().any(|c| c.is_ascii_uppercase()) {
                    return None;
                }
                let mut b = [0u8; 1];
                hex::decode_to_slice(hx, &mut b).ok()?;
                Some(Shard::Subject(b[0]))
            }
        }
    }

    /// Whether an entry of this kind code and id belongs in this shard.
    fn holds(self, code: u8, id: &KeyId) -> bool {
        match self {
            Shard::Meta => code == KIND_REPO,
            Shard::Subject(b) => code == KeyKind::Subject.code() && id.0[0] == b,
            Shard::Period => code == KeyKind::Period.code(),
            Shard::Epoch => code == KeyKind::Epoch.code(),
        }
    }
}

/// One entry as stored in a shard payload.
struct RawEntry {
    code: u8,
    id: KeyId,
    name: KeyName,
    created: i64,
    key: Key32,
}

/// A decoded shard payload.
struct Payload {
    vault_id: [u8; 16],
    entries: Vec<RawEntry>,
    tombstones: BTreeMap<KeyId, i64>,
}

/// An entry to encode: kind code, id, name, created, key.
type EntryRef<'a> = (u8, &'a KeyId, NameRef<'a>, i64, &'a KeyBytes);

/// Encodes a shard payload (see docs: "Shard payload") into a zeroizing buffer
/// allocated once at its exact size and room for the signature.
fn encode_payload(
    vault_id: &[u8; 16],
    object: &str,
    entries: &[EntryRef<'_>],
    tombstones: &BTreeMap<KeyId, i64>,
) -> Zeroizing<Vec<u8>> {
    let size = 8
        + 2
        + 16
        + 2
        + object.len()
        + 4
        + entries
            .iter()
            .map(|e| 1 + 16 + 2 + e.2.len() + 8 + 32)
            .sum::<usize>()
        + 4
        + tombstones.len() * 24;
    let mut b = Zeroizing::new(Vec::with_capacity(size + SIGNATURE_LEN));
    b.extend_from_slice(PAYLOAD_MAGIC);
    b.extend_from_slice(&PAYLOAD_VERSION.to_le_bytes());
    b.extend_from_slice(vault_id);
    b.extend_from_slice(&(object.len() as u16).to_le_bytes());
    b.extend_from_slice(object.as_bytes());
    b.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (code, id, name, created, key) in entries {
        b.push(*code);
        b.extend_from_slice(&id.0);
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        name.write_to(&mut b);
        b.extend_from_slice(&created.to_le_bytes());
        b.extend_from_slice(key.expose());
    }
    b.extend_from_slice(&(tombstones.len() as u32).to_le_bytes());
    for (id, t) in tombstones {
        b.extend_from_slice(&id.0);
        b.extend_from_slice(&t.to_le_bytes());
    }
    debug_assert_eq!(b.len(), size);
    b
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() < n {
            return Err("payload is truncated".into());
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn id(&mut self) -> Result<KeyId, String> {
        Ok(KeyId(self.take(16)?.try_into().unwrap()))
    }
}

/// Decodes a shard payload read from `object` (its signature already
/// checked and cut off), checking magic, version, the object name it was
/// written for, and that every entry belongs there.
fn decode_payload(plain: &[u8], shard: Shard, object: &str) -> Result<Payload, String> {
    let mut r = Reader { b: plain };
    if r.take(8)? != PAYLOAD_MAGIC {
        return Err("not a custos vault payload (bad magic)".into());
    }
    let v = r.u16()?;
    if !(1..=PAYLOAD_VERSION).contains(&v) {
        return Err(format!(
            "payload version {v} is not supported (this build reads 1 to {PAYLOAD_VERSION}); upgrade custos"
        ));
    }
    let vault_id: [u8; 16] = r.take(16)?.try_into().unwrap();
    let n = r.u16()? as usize;
    if r.take(n)? != object.as_bytes() {
        return Err("payload was written for another object name (moved or copied?)".into());
    }
    let count = r.u32()? as usize;
    let mut entries = Vec::with_capacity(count.min(plain.len() / 59 + 1));
    for _ in 0..count {
        let code = r.take(1)?[0];
        let id = r.id()?;
        let nl = r.u16()? as usize;
        let name = KeyName::new(
            std::str::from_utf8(r.take(nl)?)
                .map_err(|_| "an entry name is not UTF-8".to_string())?,
        );
        let created = r.i64()?;
        let key = Key32::from_slice(r.take(32)?).expect("32 bytes");
        if !shard.holds(code, &id) {
            return Err(format!(
                "entry {id} (kind code {code}) does not belong in this object"
            ));
        }
        entries.push(RawEntry {
            code,
            id,
            name,
            created,
            key,
        });
    }
    let tn = r.u32()? as usize;
    let mut tombstones = BTreeMap::new();
    for _ in 0..tn {
        let id = r.id()?;
        let t = r.i64()?;
        tombstones.insert(id, t);
    }
    if !r.b.is_empty() {
        return Err("trailing bytes after the payload".into());
    }
    Ok(Payload {
        vault_id,
        entries,
        tombstones,
    })
}

/// Encodes a record payload (format 2): magic, version, vault id, object
/// name, then the record's content, with room for the signature.
fn encode_record(vault_id: &[u8; 16], object: &str, content: &[u8]) -> Zeroizing<Vec<u8>> {
    let size = 8 + 2 + 16 + 2 + object.len() + content.len();
    let mut b = Zeroizing::new(Vec::with_capacity(size + SIGNATURE_LEN));
    b.extend_from_slice(RECORD_MAGIC);
    b.extend_from_slice(&PAYLOAD_VERSION.to_le_bytes());
    b.extend_from_slice(vault_id);
    b.extend_from_slice(&(object.len() as u16).to_le_bytes());
    b.extend_from_slice(object.as_bytes());
    b.extend_from_slice(content);
    b
}

/// The length of a record payload's header (the content follows it), read
/// from `object` with its signature already checked and cut off, after
/// checking that it was written for this vault and this object.
fn record_header(payload: &[u8], vault_id: &[u8; 16], object: &str) -> Result<usize, String> {
    let mut r = Reader { b: payload };
    if r.take(8)? != RECORD_MAGIC {
        return Err("not a custos vault record (bad magic)".into());
    }
    let v = r.u16()?;
    if v != PAYLOAD_VERSION {
        return Err(format!(
            "record version {v} is not supported (this build reads {PAYLOAD_VERSION}); upgrade custos"
        ));
    }
    if r.take(16)? != vault_id {
        return Err("it belongs to another vault (vault id differs)".into());
    }
    let n = r.u16()? as usize;
    if r.take(n)? != object.as_bytes() {
        return Err("record was written for another object name (moved or copied?)".into());
    }
    Ok(payload.len() - r.b.len())
}

/// Whether unsigned (format 1) objects are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signatures {
    /// Every object must carry the service's signature: always, except
    /// while [`Vault::sign_as_it_stands`] reads the vault.
    Required,
    /// Unsigned objects are read too (a signed one must still verify).
    Migrating,
}

/// Unwraps an object read from `url` and checks its signature. Returns the
/// signed payload without its signature (or, when `signatures` allows
/// it, an unsigned payload whole) and whether it was signed.
fn open_object(
    keys: &VaultKeys,
    signatures: Signatures,
    url: &str,
    object: &str,
    sealed: &[u8],
    magic: &[u8; 8],
) -> Result<(Zeroizing<Vec<u8>>, bool), VaultError> {
    let mut plain = unwrap(keys.identity(), sealed).map_err(|e| match e {
        UnwrapError::NotRecipient => VaultError::NotRecipient {
            url: url.to_string(),
            object: object.to_string(),
        },
        UnwrapError::Other(reason) => VaultError::Corrupt {
            url: url.to_string(),
            object: object.to_string(),
            reason,
        },
    })?;
    match signed_part(keys, &plain, magic) {
        Ok(p) => {
            let n = p.len();
            plain.truncate(n);
            Ok((plain, true))
        }
        Err(SignatureError::Unsigned) if signatures == Signatures::Migrating => Ok((plain, false)),
        Err(SignatureError::Unsigned) => Err(VaultError::Unsigned {
            url: url.to_string(),
            object: object.to_string(),
        }),
        Err(SignatureError::Invalid) => Err(VaultError::BadSignature {
            url: url.to_string(),
            object: object.to_string(),
        }),
    }
}

/// Signs a payload (encoded with room for the signature) and wraps it.
fn seal_payload(
    keys: &VaultKeys,
    recipients: &[Recipient],
    object: &str,
    mut payload: Zeroizing<Vec<u8>>,
) -> Result<Vec<u8>, VaultError> {
    let sig = keys.sign(&payload).ok_or(VaultError::ReadOnly)?;
    payload.extend_from_slice(&sig);
    wrap(&payload, recipients).map_err(|reason| VaultError::Wrap {
        object: object.to_string(),
        reason,
    })
}

/// The plaintext marker object.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    format: String,
    version: u32,
    vault_id: String,
    policy: String,
    created: i64,
}

/// A set of key ids, as far as telling two locations' shards apart needs:
/// the count, the sum and the xor of the ids (ids are random, so two
/// different sets agree on all three with probability about 2^-128). It
/// takes no memory per id, where the sets themselves took about 30 MiB a
/// location for a million keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct IdSet {
    count: u64,
    sum: u128,
    xor: u128,
}

impl IdSet {
    fn add(&mut self, id: &KeyId) {
        let v = u128::from_le_bytes(id.0);
        self.count += 1;
        self.sum = self.sum.wrapping_add(v);
        self.xor ^= v;
    }
}

/// Per shard: the ids of its entries and of its tombstones.
type ShardSummary = BTreeMap<Shard, (IdSet, IdSet)>;

/// A key being destroyed: its id and its commitment (never its bytes).
type PendingKey = (KeyId, [u8; 32]);

/// What an open reads at each location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    /// Every shard: the whole vault.
    All,
    /// The marker and `meta.age` alone: the repository keys.
    Repository,
}

/// The repository keys alone, read by [`Vault::open_repository_keys`]
/// without the unit keys: what listing snapshots, pruning and replicating
/// need. Not a vault: it can neither give out nor write a unit key.
pub struct RepositoryKeys {
    vault_id: [u8; 16],
    meta: Key32,
    pseudonym: Key32,
}

impl RepositoryKeys {
    /// The repository metadata key (seals index, trees, snapshots).
    pub fn meta_key(&self) -> &Key32 {
        &self.meta
    }

    /// The key that names subjects by pseudonym.
    pub fn pseudonym_key(&self) -> &Key32 {
        &self.pseudonym
    }

    /// The vault id, as 32 lowercase hex digits.
    pub fn vault_id(&self) -> String {
        hex::encode(self.vault_id)
    }
}

impl fmt::Debug for RepositoryKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepositoryKeys")
            .field("vault_id", &hex::encode(self.vault_id))
            .finish_non_exhaustive()
    }
}

/// What the locations hold, merged, before the vault is built from it
/// (see [`Vault::open`] for the rules).
struct Merged {
    vault_id: [u8; 16],
    policy: String,
    created: i64,
    meta: (KeyId, i64, Key32),
    pseudonym: (KeyId, i64, Key32),
    entries: KeyTable,
    tombstones: BTreeMap<Shard, BTreeMap<KeyId, i64>>,
    summaries: Vec<Option<ShardSummary>>,
    marker_missing: BTreeSet<usize>,
    unread: Vec<(String, String)>,
    /// Unsigned objects read, as (url, object): only when migrating.
    unsigned: Vec<(String, String)>,
    /// Whether `meta.age` was signed at some location.
    meta_signed: bool,
}

/// What was found at one location at open, before its shards are read.
struct LocationView {
    marker: Option<Marker>,
    shards: Vec<Shard>,
}

/// The key vault, opened. See the module docs.
pub struct Vault {
    vault_id: [u8; 16],
    policy: String,
    created: i64,
    locations: Vec<VaultLocation>,
    /// The service's keys: to re-read objects (when verifying a destroy,
    /// reading records) and to sign what is written.
    keys: VaultKeys,
    /// Whether unsigned objects are read (only while signing them).
    signatures: Signatures,
    recipients: Vec<Recipient>,
    meta: (KeyId, i64, Key32),
    pseudonym: (KeyId, i64, Key32),
    entries: KeyTable,
    tombstones: BTreeMap<Shard, BTreeMap<KeyId, i64>>,
    dirty: BTreeSet<Shard>,
    /// Indexes of locations whose marker must be (re)written.
    marker_missing: BTreeSet<usize>,
    /// Locations that could not be read at open: (url, reason).
    unread: Vec<(String, String)>,
    /// Destroys started but not yet verified, so a retry can finish them.
    pending_destroy: HashMap<(KeyKind, String), Vec<PendingKey>>,
    /// Units being destroyed (from the ledger at open): their keys are
    /// hidden and may not be created.
    fenced: BTreeSet<(KeyKind, String)>,
    /// Keys created by this session (not read from a location).
    created_here: DrawnIds,
    /// Where this session's new subject keys go (made at its first).
    fill: Option<SubjectFill>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("vault_id", &hex::encode(self.vault_id))
            .field("policy", &self.policy)
            .field("locations", &self.locations())
            .field("entries", &self.entries.len())
            .field("dirty", &self.dirty.len())
            .finish_non_exhaustive()
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The identity's recipient plus the policy's, deduplicated, in order.
fn recipient_set(identity: &Identity, recipients: &[Recipient]) -> Vec<Recipient> {
    let mut out = vec![identity.to_public()];
    for r in recipients {
        if !out.contains(r) {
            out.push(r.clone());
        }
    }
    out
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

async fn get_bytes(loc: &VaultLocation, object: &str) -> Result<Option<bytes::Bytes>, VaultError> {
    let path = ObjPath::from(object);
    let unreachable = |source| VaultError::Unreachable {
        url: loc.url.clone(),
        object: object.to_string(),
        source,
    };
    match loc.store.get(&path).await {
        Ok(r) => Ok(Some(r.bytes().await.map_err(unreachable)?)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(unreachable(e)),
    }
}

/// Every object at a location under `prefix` (a folder name; `None`:
/// all of them).
async fn list_at(
    loc: &VaultLocation,
    prefix: Option<&str>,
) -> Result<Vec<object_store::ObjectMeta>, VaultError> {
    let path = prefix.map(ObjPath::from);
    loc.store
        .list(path.as_ref())
        .try_collect()
        .await
        .map_err(|source| VaultError::Unreachable {
            url: loc.url.clone(),
            object: prefix.map_or_else(|| "/".to_string(), |p| format!("{p}/")),
            source,
        })
}

/// A location's position in the vault's list, as a key's slot records it.
fn location_number(i: usize) -> u32 {
    u32::try_from(i).expect("fewer than 2^32 vault locations")
}

/// Reads, unwraps and checks one shard object at one location; `None` if
/// absent. The flag tells whether it was signed (always, unless
/// `signatures` is [`Signatures::Migrating`]).
async fn read_shard(
    loc: &VaultLocation,
    shard: Shard,
    keys: &VaultKeys,
    signatures: Signatures,
) -> Result<Option<(Payload, bool)>, VaultError> {
    let Some(sealed) = get_bytes(loc, &shard.name()).await? else {
        return Ok(None);
    };
    open_shard(keys, signatures, &loc.url, shard, &sealed).map(Some)
}

/// Opens a shard's sealed bytes (age, then the signature) and decodes its
/// payload.
fn open_shard(
    keys: &VaultKeys,
    signatures: Signatures,
    url: &str,
    shard: Shard,
    sealed: &[u8],
) -> Result<(Payload, bool), VaultError> {
    let object = shard.name();
    let (plain, signed) = open_object(keys, signatures, url, &object, sealed, PAYLOAD_MAGIC)?;
    decode_payload(&plain, shard, &object)
        .map(|p| (p, signed))
        .map_err(|reason| VaultError::Corrupt {
            url: url.to_string(),
            object,
            reason,
        })
}

/// Shards read and opened ahead of the one the caller takes.
const SHARDS_AHEAD: usize = 2;

/// [`read_shard`] of each of `shards` in turn, the next ones read and
/// opened on blocking threads while the caller takes one (opening a
/// vault merges a few hundred shards, each opened and decoded, on the
/// path of every command). At most [`SHARDS_AHEAD`] payloads wait beside
/// the one taken.
fn read_shards<'a>(
    loc: &'a VaultLocation,
    shards: Vec<Shard>,
    keys: &'a Arc<VaultKeys>,
    signatures: Signatures,
) -> impl futures::Stream<Item = (Shard, Result<Option<(Payload, bool)>, VaultError>)> + 'a {
    use futures::stream::{self, StreamExt};
    stream::iter(shards)
        .map(move |shard| async move {
            let read = async {
                let Some(sealed) = get_bytes(loc, &shard.name()).await? else {
                    return Ok(None);
                };
                let (keys, url) = (keys.clone(), loc.url.clone());
                tokio::task::spawn_blocking(move || {
                    open_shard(&keys, signatures, &url, shard, &sealed)
                })
                .await
                .map_err(|e| VaultError::Corrupt {
                    url: loc.url.clone(),
                    object: shard.name(),
                    reason: format!("was not opened: {e}"),
                })?
                .map(Some)
            };
            (shard, read.await)
        })
        .buffered(SHARDS_AHEAD)
}

/// Reads one location's marker and lists its shards. Errors other than
/// "unreachable" are fatal for open; unreachable is remembered by the
/// caller.
async fn read_location(loc: &VaultLocation, scope: Scope) -> Result<LocationView, VaultError> {
    let Some(raw) = get_bytes(loc, MARKER).await? else {
        return Ok(LocationView {
            marker: None,
            shards: Vec::new(),
        });
    };
    let marker: Marker = serde_json::from_slice(&raw).map_err(|e| VaultError::Corrupt {
        url: loc.url.clone(),
        object: MARKER.into(),
        reason: e.to_string(),
    })?;
    if marker.format != "custos-vault" || marker.version != MARKER_VERSION {
        return Err(VaultError::Corrupt {
            url: loc.url.clone(),
            object: MARKER.into(),
            reason: format!(
                "format `{}` version {} is not a custos vault this build reads (custos-vault version {MARKER_VERSION})",
                marker.format, marker.version
            ),
        });
    }
    let mut shards = vec![Shard::Meta];
    if scope == Scope::Repository {
        return Ok(LocationView {
            marker: Some(marker),
            shards,
        });
    }
    let listed = list_at(loc, Some("keys")).await?;
    for m in listed {
        let n = m.location.to_string();
        if let Some(shard) = Shard::parse(&n) {
            shards.push(shard);
        } else {
            tracing::warn!(url = %loc.url, object = %n, "ignoring an unknown object in the key vault");
        }
    }
    Ok(LocationView {
        marker: Some(marker),
        shards,
    })
}

impl Vault {
    /// Creates a new vault at every location. Refuses (changing nothing) if
    /// any location already holds a vault or cannot be reached.
    pub async fn create(
        locations: Vec<VaultLocation>,
        keys: &VaultKeys,
        recipients: &[Recipient],
        policy: &str,
    ) -> Result<Vault, VaultError> {
        if locations.is_empty() {
            return Err(VaultError::NoLocations);
        }
        for loc in &locations {
            match loc.store.head(&ObjPath::from(MARKER)).await {
                Ok(_) => {
                    return Err(VaultError::AlreadyExists {
                        url: loc.url.clone(),
                    })
                }
                Err(e) if is_not_found(&e) => {}
                Err(source) => {
                    return Err(VaultError::Unreachable {
                        url: loc.url.clone(),
                        object: MARKER.into(),
                        source,
                    })
                }
            }
        }
        let mut vault_id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut vault_id);
        let t = now();
        let n = locations.len();
        let mut v = Vault {
            vault_id,
            policy: policy.to_string(),
            created: t,
            locations,
            keys: keys.clone(),
            signatures: Signatures::Required,
            recipients: recipient_set(keys.identity(), recipients),
            meta: (KeyId::random(), t, Key32::random()),
            pseudonym: (KeyId::random(), t, Key32::random()),
            entries: KeyTable::default(),
            tombstones: BTreeMap::new(),
            dirty: BTreeSet::from([Shard::Meta]),
            marker_missing: (0..n).collect(),
            unread: Vec::new(),
            pending_destroy: HashMap::new(),
            fenced: BTreeSet::new(),
            created_here: DrawnIds::default(),
            fill: None,
        };
        v.write_dirty(true).await?;
        Ok(v)
    }

    /// Opens the vault: reads every reachable location and unions their
    /// entries (minus tombstoned ones). A location that lacks entries or
    /// tombstones others have, or lacks the vault entirely, is repaired by
    /// the next [`persist`](Self::persist). Open succeeds if at least one
    /// location is readable; a location that could not be read is remembered
    /// and makes `persist` fail, since it may hold keys not seen here.
    pub async fn open(
        locations: Vec<VaultLocation>,
        keys: &VaultKeys,
        recipients: &[Recipient],
    ) -> Result<Vault, VaultError> {
        Self::open_with(locations, keys, recipients, Signatures::Required)
            .await
            .map(|(v, _, _)| v)
    }

    /// [`Vault::open`], reading unsigned objects too if `signatures` says
    /// so; also returns the unsigned objects read and whether `meta.age`
    /// was signed anywhere.
    async fn open_with(
        locations: Vec<VaultLocation>,
        keys: &VaultKeys,
        recipients: &[Recipient],
        signatures: Signatures,
    ) -> Result<(Vault, Vec<(String, String)>, bool), VaultError> {
        let Merged {
            vault_id,
            policy,
            created,
            meta,
            pseudonym,
            entries,
            tombstones,
            summaries,
            marker_missing,
            unread,
            unsigned,
            meta_signed,
        } = Self::read_merged(&locations, keys, Scope::All, signatures).await?;
        let mut v = Vault {
            vault_id,
            policy,
            created,
            keys: keys.clone(),
            signatures,
            recipients: recipient_set(keys.identity(), recipients),
            meta,
            pseudonym,
            entries,
            tombstones,
            dirty: BTreeSet::new(),
            marker_missing,
            unread,
            pending_destroy: HashMap::new(),
            fenced: BTreeSet::new(),
            created_here: DrawnIds::default(),
            fill: None,
            locations,
        };
        v.entries.rebuild_names();
        v.fenced = v.read_fences().await?;

        // Mark for repair every shard whose content differs at some readable
        // location (or all of them where the marker is missing).
        let wanted = v.shard_contents();
        for (i, summary) in summaries.iter().enumerate() {
            let Some(summary) = summary else { continue };
            for (shard, want) in &wanted {
                if v.marker_missing.contains(&i) || summary.get(shard) != Some(want) {
                    if !v.marker_missing.contains(&i) {
                        tracing::info!(url = %v.locations[i].url, object = %shard.name(), "vault object out of date; it will be repaired on the next persist");
                    }
                    v.dirty.insert(*shard);
                }
            }
        }
        Ok((v, unsigned, meta_signed))
    }

    /// Signs a vault written before vault objects were signed (payload
    /// format 1), as it stands: reads every location accepting unsigned
    /// objects, then writes every shard and record signed (unit shards,
    /// then records, then `meta.age`, so a run that stops part way leaves
    /// `meta.age` unsigned and the next run signs the rest), and opens the
    /// vault again as every job does to confirm that it reads.
    ///
    /// This trusts whatever the locations hold now, so it is refused once
    /// the vault is signed (`meta.age` signed at any location): an unsigned
    /// unit shard or record in a signed vault was not written by custos.
    /// The caller holds the backup lock of every target, as for a shred run.
    pub async fn sign_as_it_stands(
        locations: Vec<VaultLocation>,
        keys: &VaultKeys,
        recipients: &[Recipient],
    ) -> Result<SignReport, VaultError> {
        if !keys.can_sign() {
            return Err(VaultError::ReadOnly);
        }
        let (mut v, mut unsigned, meta_signed) =
            Self::open_with(locations.clone(), keys, recipients, Signatures::Migrating).await?;
        if let Some((url, reason)) = v.unread.first() {
            return Err(VaultError::NotRead {
                url: url.clone(),
                reason: reason.clone(),
            });
        }
        // Records: every `shred/<name>.age` at every location.
        let mut records = Vec::new();
        for (i, loc) in v.locations.iter().enumerate() {
            for m in list_at(loc, Some("shred")).await? {
                let name = m.location.to_string();
                if !is_record_name(&name) {
                    continue;
                }
                let Some(sealed) = get_bytes(loc, &name).await? else {
                    continue;
                };
                let (plain, signed) = v.open_record(&loc.url, &name, &sealed)?;
                if !signed {
                    unsigned.push((loc.url.clone(), name.clone()));
                    records.push((i, name, plain));
                }
            }
        }
        if meta_signed {
            // A copy of meta.age left unsigned by a run that stopped while
            // writing it is harmless: open compared its keys with the signed
            // copy's. Anything else unsigned was planted.
            if let Some((url, object)) = unsigned.iter().find(|(_, o)| o != META_OBJECT) {
                return Err(VaultError::UnsignedInSignedVault {
                    url: url.clone(),
                    object: object.clone(),
                });
            }
        }
        let signed: Vec<String> = unsigned
            .iter()
            .map(|(url, object)| format!("{url}: {object}"))
            .collect();
        if !signed.is_empty() {
            v.rewrap_all();
            // A shard that holds nothing in the merged view is written
            // (empty and signed) too, so no unsigned copy stays behind.
            v.dirty
                .extend(unsigned.iter().filter_map(|(_, o)| Shard::parse(o)));
            v.dirty.remove(&Shard::Meta);
            v.persist().await?;
            for (i, name, plain) in records {
                let loc = &v.locations[i];
                let sealed = v.seal_record(&name, &plain)?;
                loc.store
                    .put(&ObjPath::from(name.as_str()), PutPayload::from(sealed))
                    .await
                    .map_err(|source| VaultError::Write {
                        url: loc.url.clone(),
                        object: name.clone(),
                        source,
                    })?;
            }
            v.dirty.insert(Shard::Meta);
            v.persist().await?;
        }
        drop(v);
        // Confirm as every job reads: signatures required.
        let o = Vault::open(locations, keys, recipients).await?;
        if o.dirty.contains(&Shard::Meta) {
            tracing::warn!(
                "a vault location's meta.age differs from the others; the next persist repairs it"
            );
        }
        o.read_record(LEDGER_RECORD).await?;
        let mut report = SignReport {
            locations: o.locations(),
            signed,
            ..SignReport::default()
        };
        for e in o.entries.iter() {
            match e.kind {
                KeyKind::Subject => report.subject_keys += 1,
                KeyKind::Period => report.period_keys += 1,
                KeyKind::Epoch => report.epoch_keys += 1,
            }
        }
        report.tombstones = o.tombstones.values().map(|t| t.len() as u64).sum();
        Ok(report)
    }

    /// Reads the repository keys alone: every location's marker and
    /// `meta.age`, merged by the rules of [`Vault::open`], and none of the
    /// unit keys' shards. A vault of ten million subjects takes as long and
    /// as little memory to open this way as an empty one. Nothing is
    /// repaired: a later full open does that.
    pub async fn open_repository_keys(
        locations: &[VaultLocation],
        keys: &VaultKeys,
    ) -> Result<RepositoryKeys, VaultError> {
        let m = Self::read_merged(locations, keys, Scope::Repository, Signatures::Required).await?;
        Ok(RepositoryKeys {
            vault_id: m.vault_id,
            meta: m.meta.2,
            pseudonym: m.pseudonym.2,
        })
    }

    /// Reads the `scope` of every location and merges them.
    async fn read_merged(
        locations: &[VaultLocation],
        keys: &VaultKeys,
        scope: Scope,
        signatures: Signatures,
    ) -> Result<Merged, VaultError> {
        if locations.is_empty() {
            return Err(VaultError::NoLocations);
        }
        // Each location is read a shard at a time (the next few opened
        // ahead, see `read_shards`), straight into one key table: at no
        // point are the payloads of a whole location held beside it (a
        // location of a million keys decodes to about 100 MiB).
        let mut entries = KeyTable::default();
        entries.track_origins();
        let mut meta: Option<(KeyId, i64, Key32, usize)> = None;
        let mut pseudonym: Option<(KeyId, i64, Key32, usize)> = None;
        // Union of the tombstones of the locations read in full.
        let mut tombstones: BTreeMap<Shard, BTreeMap<KeyId, i64>> = BTreeMap::new();
        // Ids two locations disagree on: (id, location, first location).
        // Only an error if the id is not tombstoned somewhere.
        let mut conflicts: Vec<(KeyId, usize, usize)> = Vec::new();
        // What each location read in full holds, by ids only, to find what
        // needs repair.
        let mut summaries: Vec<Option<ShardSummary>> = vec![None; locations.len()];
        let mut first: Option<(usize, [u8; 16], Marker)> = None;
        let mut marker_missing = BTreeSet::new();
        let mut unread = Vec::new();
        let mut unsigned = Vec::new();
        let mut meta_signed = false;
        // One copy of the service's keys, shared by the threads that open
        // shards.
        let shared_keys = Arc::new(keys.clone());
        for (i, loc) in locations.iter().enumerate() {
            let view = match read_location(loc, scope).await {
                Ok(v) => v,
                Err(VaultError::Unreachable { url, source, .. }) => {
                    tracing::warn!(url = %url, error = %source, "vault location unreadable");
                    unread.push((url, source.to_string()));
                    continue;
                }
                Err(e) => return Err(e),
            };
            // The marker: every location holding one must agree on the vault id.
            let Some(marker) = view.marker else {
                marker_missing.insert(i);
                summaries[i] = Some(ShardSummary::new());
                continue;
            };
            let mut id = [0u8; 16];
            hex::decode_to_slice(&marker.vault_id, &mut id).map_err(|_| VaultError::Corrupt {
                url: loc.url.clone(),
                object: MARKER.into(),
                reason: "vault_id is not 32 hex digits".into(),
            })?;
            if let Some((j, fid, _)) = &first {
                if *fid != id {
                    return Err(VaultError::Mismatch {
                        url: loc.url.clone(),
                        other: locations[*j].url.clone(),
                    });
                }
            }
            let mut summary = ShardSummary::new();
            let mut dead: BTreeMap<Shard, BTreeMap<KeyId, i64>> = BTreeMap::new();
            let mut failed = None;
            let mut shards =
                std::pin::pin!(read_shards(loc, view.shards, &shared_keys, signatures));
            while let Some((shard, read)) = futures::StreamExt::next(&mut shards).await {
                let p = match read {
                    Ok(Some((p, true))) => {
                        meta_signed |= shard == Shard::Meta;
                        p
                    }
                    Ok(Some((p, false))) => {
                        unsigned.push((loc.url.clone(), shard.name()));
                        p
                    }
                    Ok(None) => continue,
                    Err(VaultError::Unreachable { url, source, .. }) => {
                        failed = Some((url, source));
                        break;
                    }
                    Err(e) => return Err(e),
                };
                // Every payload must belong to this vault.
                if p.vault_id != id {
                    return Err(VaultError::Corrupt {
                        url: loc.url.clone(),
                        object: shard.name(),
                        reason: "it belongs to another vault (vault id differs)".into(),
                    });
                }
                let (ids, tomb_ids) = summary.entry(shard).or_default();
                for t in p.tombstones.keys() {
                    tomb_ids.add(t);
                }
                dead.entry(shard).or_default().extend(p.tombstones);
                for e in p.entries {
                    ids.add(&e.id);
                    if e.code == KIND_REPO {
                        let slot = match e.name.to_string().as_str() {
                            NAME_META => &mut meta,
                            NAME_PSEUDONYM => &mut pseudonym,
                            _ => {
                                return Err(VaultError::Corrupt {
                                    url: loc.url.clone(),
                                    object: META_OBJECT.into(),
                                    reason: "unknown repository key name".into(),
                                })
                            }
                        };
                        match slot {
                            None => *slot = Some((e.id, e.created, e.key, i)),
                            Some((id, _, k, j)) => {
                                if *id != e.id || k.expose() != e.key.expose() {
                                    conflicts.push((e.id, i, *j));
                                }
                            }
                        }
                        continue;
                    }
                    let kind = KeyKind::from_code(e.code).expect("checked by decode");
                    match entries.get(&e.id) {
                        Some(have) => {
                            if have.kind != kind
                                || entries.name(have) != e.name.as_ref()
                                || have.key.expose() != e.key.expose()
                            {
                                let from = entries.origin(&e.id).expect("tracked");
                                conflicts.push((e.id, i, from as usize));
                            }
                        }
                        None => entries
                            .insert(e.id, kind, e.name, e.created, location_number(i))
                            .fill_from(e.key.expose()),
                    }
                }
            }
            if let Some((url, source)) = failed {
                // What this location gave is taken back: the vault opens as
                // if it had not been reached.
                tracing::warn!(url = %url, error = %source, "vault location unreadable");
                unread.push((url, source.to_string()));
                let from = location_number(i);
                for id in entries.ids_from(from) {
                    entries.remove(&id);
                }
                conflicts.retain(|c| c.1 != i);
                for slot in [&mut meta, &mut pseudonym] {
                    if slot.as_ref().is_some_and(|s| s.3 == i) {
                        *slot = None;
                    }
                }
                continue;
            }
            for (shard, d) in dead {
                let t = tombstones.entry(shard).or_default();
                for (id, at) in d {
                    let e = t.entry(id).or_insert(at);
                    *e = (*e).min(at);
                }
            }
            summaries[i] = Some(summary);
            if first.is_none() {
                first = Some((i, id, marker));
            }
        }
        let Some((fi, vault_id, first_marker)) = first else {
            if let Some((url, reason)) = unread.first() {
                return Err(VaultError::NotRead {
                    url: url.clone(),
                    reason: format!("{reason}; and no readable location holds a vault"),
                });
            }
            return Err(VaultError::NoVault {
                urls: locations
                    .iter()
                    .map(|l| l.url.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let (policy, created) = (first_marker.policy, first_marker.created);

        // Tombstoned keys are dropped; locations may disagree on them.
        let is_dead = |id: &KeyId| tombstones.values().any(|t| t.contains_key(id));
        if let Some(&(key_id, i, j)) = conflicts.iter().find(|c| !is_dead(&c.0)) {
            return Err(VaultError::Conflict {
                url: locations[i].url.clone(),
                other: locations[j].url.clone(),
                key_id,
            });
        }
        let dead: Vec<KeyId> = entries
            .iter()
            .filter(|e| {
                tombstones
                    .get(&Shard::of(e.kind, &e.id))
                    .is_some_and(|t| t.contains_key(&e.id))
            })
            .map(|e| e.id)
            .collect();
        for id in dead {
            entries.remove(&id);
        }
        let meta_dead = tombstones.get(&Shard::Meta);
        for slot in [&mut meta, &mut pseudonym] {
            if slot
                .as_ref()
                .is_some_and(|s| meta_dead.is_some_and(|t| t.contains_key(&s.0)))
            {
                *slot = None;
            }
        }
        let (Some(meta), Some(pseudonym)) = (meta, pseudonym) else {
            return Err(VaultError::Corrupt {
                url: locations[fi].url.clone(),
                object: META_OBJECT.into(),
                reason: "the repository keys are missing at every readable location".into(),
            });
        };
        // Where each key was read from mattered only while merging.
        entries.forget_origins();
        entries.fit_ids();

        Ok(Merged {
            vault_id,
            policy,
            created,
            meta: (meta.0, meta.1, meta.2),
            pseudonym: (pseudonym.0, pseudonym.1, pseudonym.2),
            entries,
            tombstones,
            summaries,
            marker_missing,
            unread,
            unsigned,
            meta_signed,
        })
    }

    /// For every shard with content: the set of entry ids and tombstone ids
    /// it should hold.
    fn shard_contents(&self) -> ShardSummary {
        let mut out = ShardSummary::new();
        let mut repo_keys = IdSet::default();
        repo_keys.add(&self.meta.0);
        repo_keys.add(&self.pseudonym.0);
        out.insert(Shard::Meta, (repo_keys, IdSet::default()));
        for e in self.entries.iter() {
            out.entry(Shard::of(e.kind, &e.id))
                .or_default()
                .0
                .add(&e.id);
        }
        for (shard, t) in &self.tombstones {
            let ids = &mut out.entry(*shard).or_default().1;
            for id in t.keys() {
                ids.add(id);
            }
        }
        out
    }

    /// The repository metadata key (seals index, trees, snapshots).
    pub fn meta_key(&self) -> &Key32 {
        &self.meta.2
    }

    /// The pseudonym key (keyed pseudonyms of subject ids).
    pub fn pseudonym_key(&self) -> &Key32 {
        &self.pseudonym.2
    }

    /// The vault's random id, 32 hex digits.
    pub fn vault_id(&self) -> String {
        hex::encode(self.vault_id)
    }

    /// The policy name recorded at creation.
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// Creation time of the vault, unix seconds.
    pub fn created(&self) -> i64 {
        self.created
    }

    /// The key of a unit, if present.
    /// A fenced unit (being destroyed) has none.
    pub fn lookup(&self, kind: KeyKind, name: &str) -> Option<(KeyId, &KeyBytes)> {
        let k = (kind, name.to_string());
        if self.fenced.contains(&k) {
            return None;
        }
        let e = self.entries.named(kind, name)?;
        Some((e.id, &e.key))
    }

    /// The ids of the keys of each unit asked for (fenced or not), in one
    /// pass over the vault; a unit with no key has no entry.
    pub fn key_ids_of<'n>(
        &self,
        units: impl IntoIterator<Item = (KeyKind, &'n str)>,
    ) -> HashMap<(KeyKind, String), Vec<KeyId>> {
        let asked: HashMap<(KeyKind, NameRef<'n>), &'n str> = units
            .into_iter()
            .map(|(kind, name)| ((kind, NameRef::of(name)), name))
            .collect();
        let mut out: HashMap<(KeyKind, String), Vec<KeyId>> = HashMap::new();
        if asked.is_empty() {
            return out;
        }
        for e in self.entries.iter() {
            if let Some(name) = asked.get(&(e.kind, self.entries.name(e))) {
                out.entry((e.kind, name.to_string()))
                    .or_default()
                    .push(e.id);
            }
        }
        out
    }

    /// Whether the vault holds a key of the unit, fenced (being destroyed)
    /// or not.
    pub fn holds(&self, kind: KeyKind, name: &str) -> bool {
        self.entries.named(kind, name).is_some()
    }

    /// The key of a unit, created (from the OS CSPRNG) if absent. A new key
    /// marks its shard dirty: call [`persist`](Self::persist) before any data
    /// sealed under it is committed. For a fenced unit (being destroyed) a
    /// new key is made but `persist` refuses to write it, so no data sealed
    /// under it can be committed.
    pub fn get_or_create(&mut self, kind: KeyKind, name: &str) -> (KeyId, &KeyBytes) {
        if let Some(e) = self.usable(kind, name) {
            // Reborrowed: the borrow checker cannot see that `e` ends here
            // on the other path.
            let id = e.id;
            return (id, &self.entries.get(&id).expect("just found").key);
        }
        let id = self.add_key(kind, name, &mut FreshKeys::new(1));
        (id, &self.entries.get(&id).expect("just added").key)
    }

    /// [`get_or_create`](Self::get_or_create) for many names of one kind,
    /// each key handed to `each` with the name's place in `names`. The
    /// randomness of the keys made is drawn for up to
    /// [`FreshKeys::AT_ONCE`] of them at a time.
    pub fn get_or_create_each(
        &mut self,
        kind: KeyKind,
        names: &[&str],
        mut each: impl FnMut(usize, KeyId, &KeyBytes),
    ) {
        let mut fresh = FreshKeys::new(names.len());
        for (i, name) in names.iter().enumerate() {
            let id = match self.usable(kind, name) {
                Some(e) => {
                    fresh.seen();
                    e.id
                }
                None => self.add_key(kind, name, &mut fresh),
            };
            each(i, id, &self.entries.get(&id).expect("found or added").key);
        }
    }

    /// Adds a new key for (kind, name), its id and bytes from `fresh`
    /// (an id already in use, or destroyed, is drawn again).
    fn add_key(&mut self, kind: KeyKind, name: &str, fresh: &mut FreshKeys) -> KeyId {
        loop {
            let (mut id, key) = fresh.next();
            if kind == KeyKind::Subject {
                let fill = self
                    .fill
                    .get_or_insert_with(|| SubjectFill::of(&self.entries));
                id.0[0] = fill.next(id.0[0]);
            }
            let taken = self.entries.contains(&id)
                || id == self.meta.0
                || id == self.pseudonym.0
                || self
                    .tombstones
                    .get(&Shard::of(kind, &id))
                    .is_some_and(|t| t.contains_key(&id));
            if taken {
                crate::crypto::wipe::bytes(key);
                continue;
            }
            let bytes: &[u8; 32] = (&*key).try_into().expect("32 bytes");
            self.entries
                .insert(id, kind, KeyName::new(name), now(), 0)
                .fill_from(bytes);
            crate::crypto::wipe::bytes(key);
            fresh.seen();
            self.entries.point_name(&id);
            self.created_here.insert(id);
            self.dirty.insert(Shard::of(kind, &id));
            return id;
        }
    }

    /// The keys [`get_or_create`](Self::get_or_create) would give for
    /// these names of one kind without creating any, where there is one.
    /// Takes `&self`, so that several threads can look keys up at once
    /// under one lock and leave only the keys missing to be created. The
    /// names are looked up together so that their cache misses overlap
    /// (the table's `named_many`).
    pub fn get_existing_many<'a>(
        &'a self,
        kind: KeyKind,
        names: &[&str],
    ) -> Vec<Option<(KeyId, &'a KeyBytes)>> {
        self.entries
            .named_many(kind, names)
            .into_iter()
            .zip(names)
            .map(|(e, name)| {
                e.filter(|e| self.is_usable(e, kind, name))
                    .map(|e| (e.id, &e.key))
            })
            .collect()
    }

    /// Whether a unit's key found by name may be given out: not (made
    /// before this process and) fenced.
    fn is_usable(&self, e: &Slot, kind: KeyKind, name: &str) -> bool {
        self.fenced.is_empty()
            || self.created_here.contains(&e.id)
            || !self.fenced.contains(&(kind, name.to_string()))
    }

    /// The unit's key, unless it is absent or (made before this process
    /// and) fenced. A backup asks once per group: the lookup allocates
    /// nothing unless some unit is fenced.
    fn usable(&self, kind: KeyKind, name: &str) -> Option<&Slot> {
        self.entries
            .named(kind, name)
            .filter(|e| self.is_usable(e, kind, name))
    }

    /// The key with this id (any kind; not the repository keys). The key
    /// of a fenced unit (being destroyed) is not given out.
    pub fn key(&self, id: &KeyId) -> Option<&KeyBytes> {
        self.entries.get(id).and_then(|e| self.unfenced(e))
    }

    /// Whether a key this vault does not give out ([`Vault::key`] is
    /// `None`) was destroyed: a tombstone names its id, or its unit is
    /// being destroyed. A key that is neither was never in this vault or
    /// went with a damaged or deleted shard: what it seals is out of
    /// reach, not shredded, and must not be reported as a destruction.
    pub fn destroyed(&self, id: &KeyId) -> bool {
        self.entries.get(id).is_some()
            || [Shard::Subject(id.0[0]), Shard::Period, Shard::Epoch]
                .iter()
                .any(|s| self.tombstones.get(s).is_some_and(|t| t.contains_key(id)))
    }

    /// The vault object that holds key `id` at every location: a
    /// customer's (`subject`), or a period's or epoch's.
    pub fn object_of(id: &KeyId, subject: bool) -> String {
        if subject {
            Shard::Subject(id.0[0]).name()
        } else {
            format!("{} or {}", Shard::Period.name(), Shard::Epoch.name())
        }
    }

    /// [`Vault::key`] of many ids (`None` for `None`), looked up together
    /// so that their cache misses overlap (the table's `get_many`);
    /// each key's bytes are prefetched.
    pub fn keys_many<'a>(&'a self, ids: &[Option<&KeyId>]) -> Vec<Option<&'a KeyBytes>> {
        self.entries
            .get_many(ids)
            .into_iter()
            .map(|e| e.and_then(|e| self.unfenced(e)))
            .collect()
    }

    /// A slot's key, unless its unit is fenced (being destroyed).
    fn unfenced<'a>(&self, e: &'a Slot) -> Option<&'a KeyBytes> {
        (self.fenced.is_empty()
            || !self
                .fenced
                .contains(&(e.kind, self.entries.name(e).to_string())))
        .then_some(&e.key)
    }

    /// What the vault knows about one key, without its bytes.
    pub fn entry(&self, id: &KeyId) -> Option<EntryInfo> {
        self.entries.get(id).map(|e| EntryInfo {
            kind: e.kind,
            name: self.entries.name(e).to_string(),
            key_id: *id,
            created: e.created,
        })
    }

    /// Every unit key, without its bytes, ordered by kind, name, id.
    pub fn entries(&self) -> Vec<EntryInfo> {
        let mut v: Vec<EntryInfo> = self
            .entries
            .iter()
            .filter_map(|e| self.entry(&e.id))
            .collect();
        v.sort_by(|a, b| (a.kind, &a.name, a.key_id).cmp(&(b.kind, &b.name, b.key_id)));
        v
    }

    /// Whether anything is waiting to be written by [`persist`](Self::persist).
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty() || !self.marker_missing.is_empty()
    }

    /// The URLs of the vault locations, in order.
    pub fn locations(&self) -> Vec<String> {
        self.locations.iter().map(|l| l.url.clone()).collect()
    }

    /// Whether this vault can be written: it was opened with the service's
    /// signing key, not its public key alone.
    pub fn can_write(&self) -> bool {
        self.keys.can_sign()
    }

    /// Marks every object dirty, so the next persist rewraps all of them to
    /// the current recipients (after a recovery key was added or removed).
    pub fn rewrap_all(&mut self) {
        let all: Vec<Shard> = self.shard_contents().into_keys().collect();
        self.dirty.extend(all);
    }

    /// Writes every dirty shard to EVERY location. A failure at any location
    /// is an error naming it; the shards stay dirty so a retry writes again.
    /// Fails without writing if a location could not be read at open.
    ///
    /// Before writing, the fences are re-read (a key created in this session
    /// for a unit now being destroyed is refused with
    /// [`VaultError::Fenced`]) and the tombstones stored at every location
    /// for the dirty shards are merged in, so a key destroyed by another
    /// process after this vault was opened is dropped, never written back.
    pub async fn persist(&mut self) -> Result<(), VaultError> {
        if let Some((url, reason)) = self.unread.first() {
            return Err(VaultError::NotRead {
                url: url.clone(),
                reason: reason.clone(),
            });
        }
        if self.dirty.is_empty() {
            return self.write_dirty(false).await;
        }
        let fences = self.read_fences().await?;
        // Usually no unit is fenced; then there is nothing to compare, and
        // the keys made here are not walked (a first backup's persists
        // each walked all of them, 260 k at 1 GiB).
        if !fences.is_empty() {
            for id in &self.created_here {
                if let Some(e) = self.entries.get(id) {
                    let k = (e.kind, self.entries.name(e).to_string());
                    if fences.contains(&k) {
                        return Err(VaultError::Fenced {
                            kind: k.0,
                            name: k.1,
                        });
                    }
                }
            }
        }
        self.merge_stored_tombstones().await?;
        self.write_dirty(false).await
    }

    /// Reads the tombstones of every dirty unit shard at every location and
    /// drops the entries they name.
    async fn merge_stored_tombstones(&mut self) -> Result<(), VaultError> {
        let shards: Vec<Shard> = self
            .dirty
            .iter()
            .copied()
            .filter(|s| *s != Shard::Meta)
            .collect();
        let mut dropped = false;
        for loc in &self.locations {
            for shard in &shards {
                let Some((p, _)) = read_shard(loc, *shard, &self.keys, self.signatures).await?
                else {
                    continue;
                };
                for (id, t) in p.tombstones {
                    let slot = self.tombstones.entry(*shard).or_default();
                    if slot.contains_key(&id) {
                        continue;
                    }
                    slot.insert(id, t);
                    if self.entries.remove(&id).is_some() {
                        tracing::info!(key_id = %id, "a key destroyed elsewhere is dropped before persist");
                        self.created_here.remove(&id);
                        dropped = true;
                    }
                }
            }
        }
        if dropped {
            self.entries.rebuild_names();
        }
        Ok(())
    }

    /// Encodes and wraps one shard as it stands in memory.
    /// `list` holds the shard's unit entries (ignored for the meta shard).
    fn seal_shard(&self, shard: Shard, list: &[EntryRef<'_>]) -> Result<Vec<u8>, VaultError> {
        let object = shard.name();
        let none = BTreeMap::new();
        let tomb = self.tombstones.get(&shard).unwrap_or(&none);
        let plain = match shard {
            Shard::Meta => encode_payload(
                &self.vault_id,
                &object,
                &[
                    (
                        KIND_REPO,
                        &self.meta.0,
                        NameRef::Text(NAME_META),
                        self.meta.1,
                        &self.meta.2,
                    ),
                    (
                        KIND_REPO,
                        &self.pseudonym.0,
                        NameRef::Text(NAME_PSEUDONYM),
                        self.pseudonym.1,
                        &self.pseudonym.2,
                    ),
                ],
                tomb,
            ),
            _ => encode_payload(&self.vault_id, &object, list, tomb),
        };
        seal_payload(&self.keys, &self.recipients, &object, plain)
    }

    async fn write_dirty(&mut self, creating: bool) -> Result<(), VaultError> {
        if (!self.dirty.is_empty() || !self.marker_missing.is_empty()) && !self.keys.can_sign() {
            return Err(VaultError::ReadOnly);
        }
        // One pass over the keys finds those of the dirty shards (by slot
        // number, 4 bytes a key). Then one shard at a time is sealed and
        // written to every location, so only one sealed shard is held: a
        // first backup of a million customers dirties every subject shard,
        // about 90 MB sealed in all.
        let mut members: BTreeMap<Shard, Vec<u32>> =
            self.dirty.iter().map(|s| (*s, Vec::new())).collect();
        for (i, e) in self.entries.numbered() {
            if let Some(l) = members.get_mut(&Shard::of(e.kind, &e.id)) {
                l.push(i);
            }
        }
        // Per location, the first write that failed; a location that
        // failed is not written again in this call.
        let mut failed: Vec<Option<VaultError>> = self.locations.iter().map(|_| None).collect();
        for (shard, numbers) in members {
            let list: Vec<EntryRef<'_>> = numbers
                .iter()
                .map(|&i| {
                    let e = self.entries.slot(i);
                    (
                        e.kind.code(),
                        &e.id,
                        self.entries.name(e),
                        e.created,
                        &e.key,
                    )
                })
                .collect();
            let name = shard.name();
            let bytes = bytes::Bytes::from(self.seal_shard(shard, &list)?);
            drop(list);
            for (loc, f) in self.locations.iter().zip(failed.iter_mut()) {
                if f.is_some() {
                    continue;
                }
                let r = loc
                    .store
                    .put(
                        &ObjPath::from(name.as_str()),
                        PutPayload::from(bytes.clone()),
                    )
                    .await;
                if let Err(source) = r {
                    *f = Some(VaultError::Write {
                        url: loc.url.clone(),
                        object: name.clone(),
                        source,
                    });
                }
            }
        }
        let marker = bytes::Bytes::from(
            serde_json::to_vec_pretty(&Marker {
                format: "custos-vault".into(),
                version: MARKER_VERSION,
                vault_id: hex::encode(self.vault_id),
                policy: self.policy.clone(),
                created: self.created,
            })
            .expect("marker serializes"),
        );

        let mut failures = Vec::new();
        let mut marker_done = BTreeSet::new();
        for ((i, loc), f) in self.locations.iter().enumerate().zip(failed) {
            let r: Result<(), VaultError> = async {
                if let Some(e) = f {
                    return Err(e);
                }
                // The marker goes last: a marker means the content is there.
                if self.marker_missing.contains(&i) {
                    let mode = if creating {
                        PutMode::Create
                    } else {
                        PutMode::Overwrite
                    };
                    loc.store
                        .put_opts(
                            &ObjPath::from(MARKER),
                            PutPayload::from(marker.clone()),
                            PutOptions::from(mode),
                        )
                        .await
                        .map_err(|source| match source {
                            object_store::Error::AlreadyExists { .. } => {
                                VaultError::AlreadyExists {
                                    url: loc.url.clone(),
                                }
                            }
                            source => VaultError::Write {
                                url: loc.url.clone(),
                                object: MARKER.into(),
                                source,
                            },
                        })?;
                }
                Ok(())
            }
            .await;
            match r {
                Ok(()) => {
                    marker_done.insert(i);
                }
                Err(e) => {
                    tracing::error!(url = %loc.url, error = %e, "vault write failed");
                    failures.push(e);
                }
            }
        }
        for i in marker_done {
            self.marker_missing.remove(&i);
        }
        if failures.is_empty() {
            self.dirty.clear();
        }
        all_written(failures, self.locations.len())
    }

    /// Destroys the key(s) of one unit: removes the entry, records a
    /// tombstone (the id only), rewrites its shard at every location, then
    /// re-reads the shard at every location with the service identity and
    /// confirms the key id is absent. Any other pending change is persisted too. On error
    /// the key is already gone from memory; call `destroy` again with the
    /// same kind and name to finish.
    pub async fn destroy(
        &mut self,
        kind: KeyKind,
        name: &str,
    ) -> Result<DestroyReport, VaultError> {
        let k = (kind, name.to_string());
        let asked = NameRef::of(name);
        let ids: Vec<KeyId> = self
            .entries
            .iter()
            .filter(|e| e.kind == kind && self.entries.name(e) == asked)
            .map(|e| e.id)
            .collect();
        let t = now();
        let mut pending = self.pending_destroy.remove(&k).unwrap_or_default();
        for id in ids {
            let commitment = self.entries.remove(&id).expect("listed above");
            pending.push((id, commitment));
            let shard = Shard::of(kind, &id);
            self.tombstones.entry(shard).or_default().insert(id, t);
            self.dirty.insert(shard);
        }
        if pending.is_empty() {
            return Err(VaultError::UnknownKey {
                kind,
                name: name.to_string(),
            });
        }
        self.entries.rebuild_names();
        self.pending_destroy.insert(k.clone(), pending.clone());

        self.persist().await?;

        let shards: BTreeSet<Shard> = pending.iter().map(|(id, _)| Shard::of(kind, id)).collect();
        let mut checked = Vec::new();
        for loc in &self.locations {
            for shard in &shards {
                if let Some((p, _)) = read_shard(loc, *shard, &self.keys, self.signatures).await? {
                    for (id, _) in &pending {
                        if p.entries.iter().any(|e| e.id == *id) {
                            return Err(VaultError::StillPresent {
                                url: loc.url.clone(),
                                key_id: *id,
                            });
                        }
                    }
                }
            }
            checked.push(loc.url.clone());
        }
        self.pending_destroy.remove(&k);
        Ok(DestroyReport {
            kind,
            name: name.to_string(),
            key_ids: pending.iter().map(|(id, _)| *id).collect(),
            commitments: pending.iter().map(|(_, c)| hex::encode(c)).collect(),
            locations_checked: checked,
            objects_checked: shards.iter().map(|s| s.name()).collect(),
        })
    }
}

/// The outcome of writing to `total` locations, from the write failures
/// (in location order): one failure as itself, several as
/// [`VaultError::Persist`] naming the first.
fn all_written(mut failures: Vec<VaultError>, total: usize) -> Result<(), VaultError> {
    if failures.is_empty() {
        return Ok(());
    }
    let failed = failures.len();
    let first = failures.remove(0);
    if failed == 1 {
        return Err(first);
    }
    Err(VaultError::Persist {
        failed,
        total,
        first: Box::new(first),
    })
}

/// The fences field of the shred ledger: the only part the vault reads.
#[derive(Deserialize)]
struct LedgerFences {
    #[serde(default)]
    fences: Vec<FenceRef>,
}

/// A unit named in the ledger's `fences`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FenceRef {
    pub kind: KeyKind,
    pub name: String,
}

/// The name of the shred ledger record (see [`Vault::read_record`]).
pub const LEDGER_RECORD: &str = "shred/ledger.age";

/// What [`Vault::sign_as_it_stands`] signed, and what the vault holds now
/// (what was trusted).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SignReport {
    /// Every location, read and written.
    pub locations: Vec<String>,
    /// The unsigned objects found and signed, as `url: object`; empty if
    /// the vault was signed already.
    pub signed: Vec<String>,
    /// Keys in the vault now, by kind.
    pub subject_keys: u64,
    pub period_keys: u64,
    pub epoch_keys: u64,
    /// Destroyed keys' tombstones in the vault now.
    pub tombstones: u64,
}

/// What [`Vault::verify_absent`] read and found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AbsenceReport {
    /// Every location that was listed and read in full.
    pub locations: Vec<String>,
    /// How many objects were read (all locations together).
    pub objects_read: u64,
    /// How many vault payloads were unwrapped and searched.
    pub payloads_searched: u64,
    /// Objects (url + name) still holding one of the keys: empty on success.
    pub holders: Vec<String>,
}

/// One object at a location as seen by [`Vault::inventory`].
fn known_object(name: &str) -> bool {
    name == MARKER || Shard::parse(name).is_some() || is_record_name(name)
}

fn is_record_name(name: &str) -> bool {
    name.strip_prefix("shred/")
        .and_then(|n| n.strip_suffix(".age"))
        .is_some_and(|n| {
            !n.is_empty()
                && n.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        })
}

impl Vault {
    /// The units fenced by the ledger at any readable location (union).
    /// A location that cannot be reached is skipped (open tolerates it;
    /// persist refuses to write while one is unread).
    async fn read_fences(&self) -> Result<BTreeSet<(KeyKind, String)>, VaultError> {
        let mut out = BTreeSet::new();
        for loc in &self.locations {
            let sealed = match get_bytes(loc, LEDGER_RECORD).await {
                Ok(Some(b)) => b,
                Ok(None) => continue,
                Err(VaultError::Unreachable { url, source, .. }) => {
                    tracing::warn!(url = %url, error = %source, "cannot read the shred ledger for fences");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let url = loc.url.clone();
            let (content, _) = self.open_record(&url, LEDGER_RECORD, &sealed)?;
            let f: LedgerFences =
                serde_json::from_slice(&content).map_err(|e| VaultError::Corrupt {
                    url,
                    object: LEDGER_RECORD.into(),
                    reason: format!("ledger fences: {e}"),
                })?;
            out.extend(f.fences.into_iter().map(|f| (f.kind, f.name)));
        }
        Ok(out)
    }

    /// The units this vault treats as fenced (read at open).
    pub fn fences(&self) -> Vec<FenceRef> {
        self.fenced
            .iter()
            .map(|(kind, name)| FenceRef {
                kind: *kind,
                name: name.clone(),
            })
            .collect()
    }

    /// Reads a sealed record (`shred/<name>.age`, age-wrapped like the key
    /// shards) at every location: `(url, plaintext)` per location, `None`
    /// where it is absent. An unreadable location is an error, since its
    /// record may be the newest.
    pub async fn read_record(
        &self,
        object: &str,
    ) -> Result<Vec<(String, Option<Zeroizing<Vec<u8>>>)>, VaultError> {
        if !is_record_name(object) {
            return Err(VaultError::BadRecordName {
                object: object.into(),
            });
        }
        let mut out = Vec::with_capacity(self.locations.len());
        for loc in &self.locations {
            let Some(sealed) = get_bytes(loc, object).await? else {
                out.push((loc.url.clone(), None));
                continue;
            };
            let (content, _) = self.open_record(&loc.url, object, &sealed)?;
            out.push((loc.url.clone(), Some(content)));
        }
        Ok(out)
    }

    /// Unwraps a record read from `url`, checks its signature and header,
    /// and returns its content (a signed payload's after its header, an
    /// unsigned format 1 payload whole) and whether it was signed.
    fn open_record(
        &self,
        url: &str,
        object: &str,
        sealed: &[u8],
    ) -> Result<(Zeroizing<Vec<u8>>, bool), VaultError> {
        let (mut plain, signed) = open_object(
            &self.keys,
            self.signatures,
            url,
            object,
            sealed,
            RECORD_MAGIC,
        )?;
        if signed {
            let n = record_header(&plain, &self.vault_id, object).map_err(|reason| {
                VaultError::Corrupt {
                    url: url.to_string(),
                    object: object.to_string(),
                    reason,
                }
            })?;
            plain.drain(..n);
        }
        Ok((plain, signed))
    }

    /// Writes a sealed record (wrapped with age to the vault's recipients)
    /// to EVERY location; fails naming the locations that failed.
    pub async fn write_record(&self, object: &str, plain: &[u8]) -> Result<(), VaultError> {
        if !is_record_name(object) {
            return Err(VaultError::BadRecordName {
                object: object.into(),
            });
        }
        let sealed = bytes::Bytes::from(self.seal_record(object, plain)?);
        let mut failures = Vec::new();
        for loc in &self.locations {
            if let Err(source) = loc
                .store
                .put(&ObjPath::from(object), PutPayload::from(sealed.clone()))
                .await
            {
                failures.push(VaultError::Write {
                    url: loc.url.clone(),
                    object: object.into(),
                    source,
                });
            }
        }
        all_written(failures, self.locations.len())
    }

    /// Signs and wraps a record's content for `object`.
    fn seal_record(&self, object: &str, content: &[u8]) -> Result<Vec<u8>, VaultError> {
        let payload = encode_record(&self.vault_id, object, content);
        seal_payload(&self.keys, &self.recipients, object, payload)
    }

    /// Deletes every object at every location that is not part of the vault
    /// (not the marker, a key shard or a `shred/` record): stale copies,
    /// renamed or half-written objects that could still hold keys. Returns
    /// `url: object` of each deleted object. A vault location must be
    /// custos's own (see the module docs); nothing else belongs there.
    pub async fn purge_stale(&self) -> Result<Vec<String>, VaultError> {
        let mut out = Vec::new();
        for loc in &self.locations {
            let listed = list_at(loc, None).await?;
            for m in listed {
                let name = m.location.to_string();
                if known_object(&name) {
                    continue;
                }
                loc.store
                    .delete(&m.location)
                    .await
                    .map_err(|source| VaultError::Write {
                        url: loc.url.clone(),
                        object: name.clone(),
                        source,
                    })?;
                tracing::warn!(url = %loc.url, object = %name, "purged a stale object from the key vault");
                out.push(format!("{}: {name}", loc.url));
            }
        }
        Ok(out)
    }

    /// Proves that no object at any location holds any of `key_ids` or a key
    /// whose [`Key32::commitment`] is in `commitments`: lists every object at
    /// every location, unwraps every key shard with the service identity
    /// and searches its entries (ids and commitments of the key bytes). Any
    /// object that is not part of the vault counts as a holder (it cannot
    /// be searched; run [`purge_stale`](Self::purge_stale) first).
    pub async fn verify_absent(
        &self,
        key_ids: &[KeyId],
        commitments: &[[u8; 32]],
    ) -> Result<AbsenceReport, VaultError> {
        let key_ids: HashSet<&KeyId> = key_ids.iter().collect();
        let commitments: HashSet<&[u8; 32]> = commitments.iter().collect();
        let mut r = AbsenceReport::default();
        for loc in &self.locations {
            let listed = list_at(loc, None).await?;
            for m in listed {
                let name = m.location.to_string();
                r.objects_read += 1;
                let Some(shard) = Shard::parse(&name) else {
                    if !known_object(&name) {
                        r.holders
                            .push(format!("{}: {name} (not a vault object)", loc.url));
                    }
                    continue;
                };
                let Some((p, _)) = read_shard(loc, shard, &self.keys, self.signatures).await?
                else {
                    continue;
                };
                r.payloads_searched += 1;
                for e in &p.entries {
                    if key_ids.contains(&e.id) || commitments.contains(&e.key.commitment()) {
                        r.holders.push(format!("{}: {name}", loc.url));
                    }
                }
            }
            r.locations.push(loc.url.clone());
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Zeroizing<Vec<u8>>, Key32, KeyId) {
        let k = Key32::from_bytes([9u8; 32]);
        let id = KeyId([0xab; 16]);
        let mut tomb = BTreeMap::new();
        tomb.insert(
            KeyId([0xab, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
            77,
        );
        let plain = encode_payload(
            &[1u8; 16],
            "keys/subject/ab.age",
            &[(KeyKind::Subject.code(), &id, NameRef::Text("p1"), 1234, &k)],
            &tomb,
        );
        (plain, k, id)
    }

    /// New subject keys fill one shard at a time, and no shard grows past
    /// twice the average (or 4096 keys), whatever the random tie-breaks.
    #[test]
    fn subject_fill_keeps_shards_near_the_average() {
        let mut fill = SubjectFill {
            counts: vec![0; 256],
            total: 0,
            current: None,
        };
        let mut switches = 0u32;
        let mut last = None;
        let mut x = 0x9e37_79b9_u32;
        for n in 1..=3_000_000u64 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let s = fill.next((x >> 24) as u8);
            if last != Some(s) {
                switches += 1;
                last = Some(s);
            }
            if n % 250_000 == 0 {
                let cap = SubjectFill::MIN_CAP.max(n * 2 / 256);
                let max = *fill.counts.iter().max().unwrap();
                assert!(u64::from(max) <= cap, "{max} over {cap} at {n}");
                assert_eq!(fill.counts.iter().map(|c| u64::from(*c)).sum::<u64>(), n);
            }
        }
        // 3 M keys over shards of 4096 to 23 k keys: a few hundred
        // switches, not one a key.
        assert!((256..2000).contains(&switches), "{switches}");
    }

    /// A vault's existing subject keys are counted by shard: a new session
    /// starts on the least filled one.
    #[test]
    fn subject_fill_starts_on_the_least_filled_shard() {
        let mut t = KeyTable::default();
        for b in 0..=255u8 {
            for n in 0..(if b == 0x42 { 1 } else { 3 }) {
                let mut id = [n; 16];
                id[0] = b;
                t.insert(KeyId(id), KeyKind::Subject, KeyName::new("x"), 1, 0);
            }
        }
        t.insert(
            KeyId([0x42; 16]),
            KeyKind::Period,
            KeyName::new("c:2026-01"),
            1,
            0,
        );
        let mut fill = SubjectFill::of(&t);
        assert_eq!(fill.total, 3 * 255 + 1);
        assert_eq!(fill.next(0), 0x42);
        assert_eq!(fill.next(0xff), 0x42, "then the same shard");
    }

    #[test]
    fn payload_round_trip() {
        let (plain, k, id) = sample();
        let p = decode_payload(&plain, Shard::Subject(0xab), "keys/subject/ab.age").unwrap();
        assert_eq!(p.vault_id, [1u8; 16]);
        assert_eq!(p.entries.len(), 1);
        let e = &p.entries[0];
        assert_eq!(
            (e.code, e.id, e.name.to_string().as_str(), e.created),
            (1, id, "p1", 1234)
        );
        assert_eq!(e.key.expose(), k.expose());
        assert_eq!(p.tombstones.len(), 1);
        assert_eq!(p.tombstones.values().next(), Some(&77));
    }

    #[test]
    fn payload_rejects_damage_and_misplacement() {
        let (plain, _, _) = sample();
        // Read under another object name (moved or copied object).
        assert!(decode_payload(&plain, Shard::Subject(0xac), "keys/subject/ac.age").is_err());
        // Entry in the wrong shard even if the name matched.
        assert!(decode_payload(&plain, Shard::Period, "keys/subject/ab.age").is_err());
        // Every truncation fails.
        for n in 0..plain.len() {
            assert!(
                decode_payload(&plain[..n], Shard::Subject(0xab), "keys/subject/ab.age").is_err(),
                "truncated at {n}"
            );
        }
        let mut long = plain.to_vec();
        long.push(0);
        assert!(decode_payload(&long, Shard::Subject(0xab), "keys/subject/ab.age").is_err());
        let mut v3 = plain.to_vec();
        v3[8] = 3;
        let e = decode_payload(&v3, Shard::Subject(0xab), "keys/subject/ab.age")
            .err()
            .unwrap();
        assert!(e.contains("version 3"), "{e}");
        // Version 1 (unsigned, read only to sign it) has the same layout.
        let mut v1 = plain.to_vec();
        v1[8] = 1;
        assert!(decode_payload(&v1, Shard::Subject(0xab), "keys/subject/ab.age").is_ok());
        let mut bad = plain.to_vec();
        bad[0] = b'X';
        assert!(decode_payload(&bad, Shard::Subject(0xab), "keys/subject/ab.age").is_err());
    }

    #[test]
    fn shard_names_round_trip() {
        let mut all = vec![Shard::Meta, Shard::Period, Shard::Epoch];
        all.extend((0..=255u8).map(Shard::Subject));
        for s in all {
            assert_eq!(Shard::parse(&s.name()), Some(s));
        }
        assert_eq!(Shard::parse("keys/subject/AB.age"), None);
        assert_eq!(Shard::parse("keys/subject/abc.age"), None);
        assert_eq!(Shard::parse("keys/other.age"), None);
    }

    #[test]
    fn key_id_text_and_serde() {
        let id = KeyId([0x0f; 16]);
        let s = id.to_string();
        assert_eq!(s, "0f".repeat(16));
        assert_eq!(s.parse::<KeyId>().unwrap(), id);
        assert!("0f".parse::<KeyId>().is_err());
        assert!("zz".repeat(16).parse::<KeyId>().is_err());
        let j = serde_json::to_string(&id).unwrap();
        assert_eq!(j, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<KeyId>(&j).unwrap(), id);
        assert_eq!(
            serde_json::to_string(&KeyKind::Period).unwrap(),
            "\"period\""
        );
    }

    #[test]
    fn wrap_unwrap_and_wrong_identity() {
        let a = Identity::generate();
        let b = Identity::generate();
        let sealed = wrap(b"secret payload", &recipient_set(&a, &[])).unwrap();
        assert_eq!(&unwrap(&a, &sealed).ok().unwrap()[..], b"secret payload");
        assert!(matches!(
            unwrap(&b, &sealed),
            Err(UnwrapError::NotRecipient)
        ));
        // Binary age format, not armored.
        assert!(sealed.starts_with(b"age-encryption.org/v1\n"));
    }

    #[test]
    fn recipient_set_dedups_and_starts_with_identity() {
        let a = Identity::generate();
        let r = Identity::generate().to_public();
        let set = recipient_set(&a, &[r.clone(), a.to_public(), r.clone()]);
        assert_eq!(set, vec![a.to_public(), r]);
    }

    fn service_keys() -> VaultKeys {
        VaultKeys::new(
            Identity::generate(),
            ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng),
        )
    }

    fn mem_locations() -> Vec<VaultLocation> {
        (0..2)
            .map(|i| VaultLocation {
                url: format!("memory://v{i}"),
                store: Arc::new(object_store::memory::InMemory::new()),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_writer_opened_before_a_destroy_cannot_write_the_key_back() {
        let id = service_keys();
        let locs = mem_locations();
        let mut a = Vault::create(locs.clone(), &id, &[], "p").await.unwrap();
        a.get_or_create(KeyKind::Period, "consumption:2026-01");
        a.persist().await.unwrap();
        let mut stale = Vault::open(locs.clone(), &id, &[]).await.unwrap();
        a.destroy(KeyKind::Period, "consumption:2026-01")
            .await
            .unwrap();
        // The stale writer adds a key to the same shard and persists.
        stale.get_or_create(KeyKind::Period, "consumption:2026-02");
        stale.persist().await.unwrap();
        let c = Vault::open(locs, &id, &[]).await.unwrap();
        assert!(c.lookup(KeyKind::Period, "consumption:2026-01").is_none());
        assert!(c.lookup(KeyKind::Period, "consumption:2026-02").is_some());
    }

    #[tokio::test]
    async fn the_repository_keys_open_without_reading_a_unit_key() {
        let id = service_keys();
        let locs = mem_locations();
        let mut a = Vault::create(locs.clone(), &id, &[], "p").await.unwrap();
        let mut shards = BTreeSet::new();
        for i in 0..64 {
            let (kid, _) = a.get_or_create(KeyKind::Subject, &format!("s{i}"));
            shards.insert(Shard::Subject(kid.0[0]));
        }
        a.get_or_create(KeyKind::Period, "consumption:2026-03");
        a.persist().await.unwrap();
        let keys = Vault::open_repository_keys(&locs, &id).await.unwrap();
        assert_eq!(keys.meta_key().expose(), a.meta_key().expose());
        assert_eq!(keys.pseudonym_key().expose(), a.pseudonym_key().expose());
        assert_eq!(keys.vault_id(), a.vault_id());
        // Every unit-key shard at every location replaced by garbage: a
        // full open refuses, the repository keys still open (so they read
        // none of those objects).
        for loc in &locs {
            for shard in shards.iter().chain([&Shard::Period]) {
                loc.store
                    .put(&ObjPath::from(shard.name()), b"not age".to_vec().into())
                    .await
                    .unwrap();
            }
        }
        assert!(matches!(
            Vault::open(locs.clone(), &id, &[]).await,
            Err(VaultError::Corrupt { .. })
        ));
        let again = Vault::open_repository_keys(&locs, &id).await.unwrap();
        assert_eq!(again.meta_key().expose(), a.meta_key().expose());
        // What the repository keys do read is checked as a full open checks
        // it: another identity, another vault at one location, no vault.
        let other = service_keys();
        assert!(matches!(
            Vault::open_repository_keys(&locs, &other).await,
            Err(VaultError::NotRecipient { .. })
        ));
        let elsewhere = mem_locations();
        Vault::create(elsewhere.clone(), &id, &[], "q")
            .await
            .unwrap();
        let mixed = vec![locs[0].clone(), elsewhere[1].clone()];
        assert!(matches!(
            Vault::open_repository_keys(&mixed, &id).await,
            Err(VaultError::Mismatch { .. })
        ));
        assert!(matches!(
            Vault::open_repository_keys(&mem_locations(), &id).await,
            Err(VaultError::NoVault { .. })
        ));
        assert!(matches!(
            Vault::open_repository_keys(&[], &id).await,
            Err(VaultError::NoLocations)
        ));
    }

    #[tokio::test]
    async fn a_fenced_unit_is_hidden_and_its_new_key_refused() {
        let id = service_keys();
        let locs = mem_locations();
        let mut a = Vault::create(locs.clone(), &id, &[], "p").await.unwrap();
        let (kid, _) = a.get_or_create(KeyKind::Period, "consumption:2026-03");
        let (other, _) = a.get_or_create(KeyKind::Period, "consumption:2026-02");
        a.persist().await.unwrap();
        a.write_record(
            LEDGER_RECORD,
            br#"{"fences":[{"kind":"period","name":"consumption:2026-03"}]}"#,
        )
        .await
        .unwrap();
        let mut b = Vault::open(locs, &id, &[]).await.unwrap();
        assert!(b.lookup(KeyKind::Period, "consumption:2026-03").is_none());
        assert!(b.key(&kid).is_none());
        assert_eq!(b.fences().len(), 1);
        let names = [
            "consumption:2026-03",
            "consumption:2026-02",
            "consumption:2026-04",
        ];
        let ids = |b: &Vault| -> Vec<Option<KeyId>> {
            let found = b.get_existing_many(KeyKind::Period, &names);
            found.into_iter().map(|f| f.map(|(id, _)| id)).collect()
        };
        assert_eq!(ids(&b), vec![None, Some(other), None]);
        // A key made by this process for a fenced unit is its own to use
        // (persisting it is what is refused).
        let (made, _) = b.get_or_create(KeyKind::Period, "consumption:2026-03");
        assert_eq!(ids(&b), vec![Some(made), Some(other), None]);
        assert!(matches!(b.persist().await, Err(VaultError::Fenced { .. })));
    }
}
