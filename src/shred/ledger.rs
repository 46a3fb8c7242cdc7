//! The shredding ledger: pending requests, legal holds, the destruction
//! journal and the history of completed destructions, kept as one sealed
//! record (`shred/ledger.age`) at every vault location.
//!
//! The ledger is age-wrapped like the key shards (it holds reasons and
//! request references, never subject ids: subjects are named by their
//! pseudonym). Every save increments `seq` and writes the whole ledger to
//! every location; a load takes the copy with the highest `seq`, so a
//! location that missed a save is repaired by the next one. Its `fences`
//! field (the units in the journal) is what [`crate::vault::Vault`] reads to
//! hide and refuse keys of units being destroyed.

use super::{ShredError, Unit};
use crate::vault::{FenceRef, KeyId, Vault, LEDGER_RECORD};
use serde::{Deserialize, Serialize};

/// The ledger format version this code writes (2 added `floors`; version
/// 1 is still read). A build that knows only version 1 refuses a version 2
/// ledger, so it cannot ignore the recorded floors.
pub const LEDGER_VERSION: u32 = 2;

/// A destruction waiting for its grace period to end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub unit: Unit,
    /// When it was requested (RFC 3339 UTC).
    pub requested: String,
    /// The first time a run may destroy it (RFC 3339 UTC).
    pub due: String,
    /// The grace period was skipped (`--now`).
    pub now: bool,
    /// Who asked (user name or job).
    pub requester: String,
    /// The operator's reason (free text; must not contain customer values).
    pub reason: Option<String>,
    /// The operator's request reference (e.g. a ticket number).
    pub request_ref: Option<String>,
}

/// A legal hold: the unit is never destroyed while it lasts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    pub unit: Unit,
    pub reason: String,
    /// When it was placed (RFC 3339 UTC).
    pub added: String,
    pub by: String,
}

/// A destruction in progress: written to every vault location before any
/// key is deleted, removed once the certificate is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalEntry {
    pub request: Pending,
    /// The ids of the unit's keys at the time the journal was written.
    pub key_ids: Vec<KeyId>,
    /// Their commitments (hex), same order: never the keys.
    pub commitments: Vec<String>,
    /// When the destruction started (RFC 3339 UTC).
    pub started: String,
    /// Who performs it.
    pub performer: String,
}

/// A completed destruction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Done {
    pub unit: Unit,
    pub certificate: String,
    /// When it completed (RFC 3339 UTC).
    pub destroyed: String,
}

/// The whole ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    pub format: String,
    pub version: u32,
    /// Save counter: the highest wins when locations disagree.
    pub seq: u64,
    /// The units in the journal (kept in step by [`Ledger::save`]).
    pub fences: Vec<FenceRef>,
    pub pending: Vec<Pending>,
    pub holds: Vec<Hold>,
    pub journal: Vec<JournalEntry>,
    pub history: Vec<Done>,
    /// Minimum retention floors (version 2; absent in version 1), only
    /// ever raised: see [`super::floor`].
    #[serde(default)]
    pub floors: Vec<super::floor::Floor>,
}

impl Ledger {
    /// Loads the newest copy from the vault's locations (an empty ledger if
    /// none exists yet). Fails if any location cannot be read.
    pub async fn load(vault: &Vault) -> Result<Ledger, ShredError> {
        let mut best: Option<Ledger> = None;
        for (url, plain) in vault.read_record(LEDGER_RECORD).await? {
            let Some(plain) = plain else { continue };
            let l = Ledger::decode(&url, &plain)?;
            if best.as_ref().is_none_or(|b| l.seq > b.seq) {
                best = Some(l);
            }
        }
        Ok(best.unwrap_or_else(|| Ledger {
            format: "custos-shred-ledger".into(),
            version: LEDGER_VERSION,
            ..Default::default()
        }))
    }

    /// Decodes one location's copy (`url` names it in errors).
    fn decode(url: &str, plain: &[u8]) -> Result<Ledger, ShredError> {
        let corrupt = |reason: String| ShredError::LedgerCorrupt {
            url: url.to_string(),
            reason,
        };
        let l: Ledger = serde_json::from_slice(plain).map_err(|e| corrupt(e.to_string()))?;
        if l.format != "custos-shred-ledger" || !(1..=LEDGER_VERSION).contains(&l.version) {
            return Err(corrupt(format!(
                "format `{}` version {} is not one this build reads (custos-shred-ledger {LEDGER_VERSION}); upgrade custos",
                l.format, l.version
            )));
        }
        // The next save writes seq + 1: a copy at the top of the range
        // would wrap to 0 (or panic) and lose to any stale copy.
        if l.seq == u64::MAX {
            return Err(corrupt(format!("seq {} cannot be incremented", l.seq)));
        }
        Ok(l)
    }

    /// Writes the ledger (seq + 1, fences = the journal's units) to every
    /// vault location.
    pub async fn save(&mut self, vault: &Vault) -> Result<(), ShredError> {
        self.seq += 1;
        self.version = LEDGER_VERSION;
        self.fences = self
            .journal
            .iter()
            .map(|j| FenceRef {
                kind: j.request.unit.kind,
                name: j.request.unit.name.clone(),
            })
            .collect();
        self.fences.sort();
        self.fences.dedup();
        let text = zeroize::Zeroizing::new(serde_json::to_vec(self).expect("ledger serializes"));
        vault.write_record(LEDGER_RECORD, &text).await?;
        Ok(())
    }

    /// The pending request of a unit.
    pub fn pending_of(&self, unit: &Unit) -> Option<&Pending> {
        self.pending.iter().find(|p| &p.unit == unit)
    }

    /// The hold of a unit.
    pub fn hold_of(&self, unit: &Unit) -> Option<&Hold> {
        self.holds.iter().find(|h| &h.unit == unit)
    }

    /// The journal entry of a unit.
    pub fn journal_of(&self, unit: &Unit) -> Option<&JournalEntry> {
        self.journal.iter().find(|j| &j.request.unit == unit)
    }

    /// The completed destruction of a unit.
    pub fn done_of(&self, unit: &Unit) -> Option<&Done> {
        self.history.iter().find(|d| &d.unit == unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_whose_seq_cannot_be_incremented_is_refused() {
        let mut l = Ledger {
            format: "custos-shred-ledger".into(),
            version: LEDGER_VERSION,
            seq: u64::MAX - 1,
            ..Default::default()
        };
        let ok = serde_json::to_vec(&l).unwrap();
        assert_eq!(Ledger::decode("file:///v", &ok).unwrap(), l);
        l.seq = u64::MAX;
        let top = serde_json::to_vec(&l).unwrap();
        let e = Ledger::decode("file:///v", &top).unwrap_err().to_string();
        assert!(
            e.contains("file:///v") && e.contains("cannot be incremented"),
            "{e}"
        );
    }
}
