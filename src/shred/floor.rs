//! Minimum retention floors (`[shred] min_retention`): per data class, the
//! time a record must be kept after its period ends, set by law (e.g.
//! usage records at least 180 days). A policy edit must not be able to
//! undercut it, so the floor that counts is the one recorded in the
//! shredding ledger (sealed at every vault location), not the policy's:
//!
//! * [`sync`] copies the policy's value into the ledger the first time a
//!   class has one, and raises the recorded value when the policy asks for
//!   more; a lower or missing policy value never lowers it.
//! * [`check`] refuses to destroy a unit before its floor has passed:
//!   a period or epoch unit `class:label` not before the end of the label's
//!   period plus the class's floor; a subject (whose key covers every class)
//!   not before the latest such time over every group of the subject in any
//!   snapshot of the primary target (newest data is written there first),
//!   so erasing a customer cannot destroy usage records the law still
//!   requires.

use super::ledger::Ledger;
use super::{rfc3339, ShredError, Unit};
use crate::crypto::{Id, MetaKey};
use crate::policy::Policy;
use crate::repo::cache::PackCache;
use crate::repo::snapshot::Snapshot;
use crate::repo::tree;
use crate::vault::{KeyId, KeyKind, Vault};
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// One recorded floor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Floor {
    /// The data class (`consumption`, ...).
    pub class: String,
    /// The minimum retention after the end of a period, in seconds.
    pub seconds: u64,
    /// When it was first recorded (RFC 3339 UTC).
    pub recorded: String,
    /// When it was last raised, if ever (RFC 3339 UTC).
    pub raised: Option<String>,
    /// Who recorded or last raised it.
    pub by: String,
}

/// Records the policy's `min_retention` values in the ledger: a class seen
/// for the first time is added, a higher value raises the recorded one, a
/// lower or missing one changes nothing. Returns whether the ledger changed
/// (the caller saves it).
pub fn sync(ledger: &mut Ledger, policy: &Policy, actor: &str, at: DateTime<Utc>) -> bool {
    let mut changed = false;
    for (class, d) in &policy.shred.min_retention {
        let secs = d.as_secs();
        match ledger.floors.iter_mut().find(|f| f.class == class.as_str()) {
            Some(f) if f.seconds >= secs => {
                if f.seconds > secs {
                    tracing::warn!(
                        policy = %policy.name,
                        class = class.as_str(),
                        "[shred] min_retention is lower than the floor recorded in the shred ledger; the recorded floor stays in force"
                    );
                }
            }
            Some(f) => {
                f.seconds = secs;
                f.raised = Some(rfc3339(at));
                f.by = actor.to_string();
                changed = true;
            }
            None => {
                ledger.floors.push(Floor {
                    class: class.as_str().to_string(),
                    seconds: secs,
                    recorded: rfc3339(at),
                    raised: None,
                    by: actor.to_string(),
                });
                changed = true;
            }
        }
    }
    ledger.floors.sort_by(|a, b| a.class.cmp(&b.class));
    changed
}

/// The recorded floor of a class.
pub fn floor_of<'a>(ledger: &'a Ledger, class: &str) -> Option<&'a Floor> {
    ledger.floors.iter().find(|f| f.class == class)
}

/// The end (exclusive, UTC) of a period or epoch label: `YYYY`, `YYYY-MM`,
/// `YYYY-MM-DD` or `YYYY-Qn`.
pub fn label_end(label: &str) -> Option<DateTime<Utc>> {
    let start = |y: i32, m: u32, d: u32| {
        NaiveDate::from_ymd_opt(y, m, d).and_then(|d| d.and_hms_opt(0, 0, 0))
    };
    let next_month = |y: i32, m: u32| if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    // A label comes from a vault key name or a tree page's unit, either
    // of which may be hostile: sliced with `get`, so a multi-byte character
    // across a cut is "no known end", not a panic.
    let end = match label.len() {
        4 => start(label.parse::<i32>().ok()? + 1, 1, 1)?,
        7 if label.get(4..6) == Some("-Q") => {
            let y: i32 = label.get(..4)?.parse().ok()?;
            let q: u32 = label.get(6..)?.parse().ok()?;
            if !(1..=4).contains(&q) {
                return None;
            }
            let (y, m) = next_month(y, q * 3);
            start(y, m, 1)?
        }
        7 => {
            let y: i32 = label.get(..4)?.parse().ok()?;
            let m: u32 = label.get(5..)?.parse().ok()?;
            start(y, m, 1)?;
            let (y, m) = next_month(y, m);
            start(y, m, 1)?
        }
        10 => {
            let d = NaiveDate::parse_from_str(label, "%Y-%m-%d").ok()?;
            d.succ_opt()?.and_hms_opt(0, 0, 0)?
        }
        _ => return None,
    };
    if end.year() < 1 {
        return None;
    }
    Some(Utc.from_utc_datetime(&end))
}

fn human(secs: u64) -> String {
    if secs.is_multiple_of(86_400) {
        format!("{}d", secs / 86_400)
    } else {
        format!("{secs}s")
    }
}

/// The earliest time a record of `class` in period `label` may be
/// destroyed, with the reason, if the class has a floor.
fn earliest(ledger: &Ledger, class: &str, label: &str) -> Option<(DateTime<Utc>, String)> {
    let f = floor_of(ledger, class)?;
    let Some(end) = label_end(label) else {
        // A label this code cannot place in time: keep it for the floor
        // from now on, never destroy it early.
        return Some((
            DateTime::<Utc>::MAX_UTC,
            format!("its {class} period `{label}` has no known end"),
        ));
    };
    // A floor read from the ledger may be any u64: one past what a time
    // can hold keeps the records for ever (never a wrap to a negative
    // floor, nor a panic in the conversion).
    let t = i64::try_from(f.seconds)
        .ok()
        .and_then(chrono::TimeDelta::try_seconds)
        .and_then(|d| end.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    Some((
        t,
        format!(
            "{class} records of period {label} must be kept {} after the period ends (floor recorded {} in the shred ledger)",
            human(f.seconds),
            f.raised.as_deref().unwrap_or(&f.recorded)
        ),
    ))
}

/// Refuses (with [`ShredError::BelowFloor`]) to destroy `unit` at `when`
/// if that would destroy records younger than their class's recorded
/// floor; a subject's records are the ones [`subject_floors`] found (a
/// subject it was not asked about has none).
pub fn check_with(
    ledger: &Ledger,
    unit: &Unit,
    when: DateTime<Utc>,
    subjects: &SubjectFloors,
) -> Result<(), ShredError> {
    if ledger.floors.is_empty() {
        return Ok(());
    }
    let worst = match unit.kind {
        KeyKind::Period | KeyKind::Epoch => {
            let (class, label) = unit.name.split_once(':').unwrap_or((&unit.name, ""));
            earliest(ledger, class, label)
        }
        KeyKind::Subject => subjects.worst.get(&unit.name).cloned().flatten(),
    };
    match worst {
        Some((t, why)) if t > when => Err(ShredError::BelowFloor {
            unit: unit.to_string(),
            earliest: if t == DateTime::<Utc>::MAX_UTC {
                "never (see why)".to_string()
            } else {
                rfc3339(t)
            },
            why,
        }),
        _ => Ok(()),
    }
}

/// Each subject's latest "earliest destruction time" (and why), over
/// every group of the subject in any snapshot of the primary target.
#[derive(Default)]
pub struct SubjectFloors {
    worst: HashMap<String, Option<(DateTime<Utc>, String)>>,
}

/// Finds [`SubjectFloors`] of the subject units among `units` in one walk
/// of the primary target, however many they are (a retention run may
/// check hundreds). Nothing is read when no class has a floor.
pub async fn subject_floors(
    target: &crate::target::Target,
    vault: &Vault,
    ledger: &Ledger,
    units: &[&Unit],
) -> Result<SubjectFloors, ShredError> {
    let mut out = SubjectFloors::default();
    if ledger.floors.is_empty() {
        return Ok(out);
    }
    // Each subject key id's unit name.
    let subjects = units.iter().filter(|u| u.kind == KeyKind::Subject);
    let of_key: HashMap<KeyId, String> = vault
        .key_ids_of(subjects.map(|u| (u.kind, u.name.as_str())))
        .into_iter()
        .flat_map(|((_, name), ids)| ids.into_iter().map(move |id| (id, name.clone())))
        .collect();
    if of_key.is_empty() {
        return Ok(out);
    }
    // Looked up for every group walked: sorted, searched without hashing.
    let mut asked: Vec<KeyId> = of_key.keys().copied().collect();
    asked.sort_unstable();
    let meta = MetaKey::new(vault.meta_key());
    let unverifiable = |e: &dyn std::fmt::Display| {
        let mut names: Vec<&String> = of_key.values().collect();
        names.sort();
        names.dedup();
        ShredError::FloorUnverifiable {
            unit: names
                .iter()
                .map(|n| format!("subject:{n}"))
                .collect::<Vec<_>>()
                .join(", "),
            why: format!("a snapshot of the primary target is unreadable ({e})"),
        }
    };
    // The snapshots' heads, then one snapshot at a time: a snapshot's page
    // ids are held while it is walked, not every snapshot's at once.
    let (heads, bad) = Snapshot::heads_with_ids(target, &meta)
        .await
        .map_err(crate::ops::OpsError::from)?;
    if let Some((_, e)) = bad.first() {
        return Err(unverifiable(e));
    }
    // Through the index objects of the packs each window lists, not the
    // target's whole index (see `tree::WindowIndex`).
    let mut locate = tree::WindowIndex::new(Arc::new(target.clone()), Arc::new(meta.clone()));
    let mut cache = PackCache::new(Arc::new(target.clone()), 8);
    let mut seen: HashSet<Id> = HashSet::new();
    // (subject, unit label) pairs already weighed.
    let mut seen_units: HashSet<(KeyId, String)> = HashSet::new();
    for head in &heads {
        let snap = Snapshot::load(target, &meta, &head.id)
            .await
            .map_err(|e| unverifiable(&e))?;
        for table in snap.record_tables() {
            for w in table.page_windows() {
                // Only pages no earlier window named: the groups of the
                // others were weighed with it (later snapshots name their
                // parents' base pages again). Every entry of a page, as
                // stored: one an overlay superseded or deleted still has
                // its records in the packs.
                let fresh: Vec<Id> = table.pages[w.range]
                    .iter()
                    .filter(|pid| seen.insert(**pid))
                    .copied()
                    .collect();
                if fresh.is_empty() {
                    continue;
                }
                let listed = w.mark.and_then(|i| table.windows[i].packs.as_deref());
                let read = locate
                    .load_plain_pages(&mut cache, listed, &fresh)
                    .await
                    .map_err(crate::ops::OpsError::from)?;
                for (object, plain) in &read {
                    weigh_page(
                        object,
                        plain,
                        &asked,
                        &of_key,
                        ledger,
                        &mut seen_units,
                        &mut out,
                    )?;
                }
            }
        }
    }
    Ok(out)
}

/// Weighs one tree page (`plain`, named `object`) of the primary target
/// into `out`: the time unit of its groups (a page's groups share one)
/// for every subject asked about (`asked`, sorted; `of_key` names them)
/// that has a group on it, once per (subject, unit) (`seen`). A page of
/// files has no subject.
fn weigh_page(
    object: &str,
    plain: &[u8],
    asked: &[KeyId],
    of_key: &HashMap<KeyId, String>,
    ledger: &Ledger,
    seen: &mut HashSet<(KeyId, String)>,
    out: &mut SubjectFloors,
) -> Result<(), ShredError> {
    if plain.first() == Some(&b'F') {
        return Ok(());
    }
    // Walked in place: the page's groups are not copied out.
    let mut named: Vec<KeyId> = Vec::new();
    let head = tree::scan_groups(plain, |_, g| {
        if let Some(s) = g.s.filter(|s| asked.binary_search(s).is_ok()) {
            if !named.contains(&s) {
                named.push(s);
            }
        }
    })
    .map_err(|why| crate::ops::OpsError::from(crate::repo::RepoError::malformed(object, why)))?;
    // `period:<class>:<label>` or `epoch:<class>:<label>`.
    let mut parts = head.unit.splitn(3, ':');
    let (_, class, label) = (parts.next(), parts.next(), parts.next());
    let (Some(class), Some(label)) = (class, label) else {
        return Ok(());
    };
    for s in named {
        if !seen.insert((s, head.unit.to_string())) {
            continue;
        }
        if let Some((t, why)) = earliest(ledger, class, label) {
            let worst = out.worst.entry(of_key[&s].clone()).or_default();
            if worst.as_ref().is_none_or(|(w, _)| t > *w) {
                *worst = Some((t, format!("the subject has {why}")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_ends() {
        let t = |s: &str| label_end(s).map(rfc3339);
        assert_eq!(t("2026").as_deref(), Some("2027-01-01T00:00:00Z"));
        assert_eq!(t("2026-03").as_deref(), Some("2026-04-01T00:00:00Z"));
        assert_eq!(t("2026-12").as_deref(), Some("2027-01-01T00:00:00Z"));
        assert_eq!(t("2026-02-28").as_deref(), Some("2026-03-01T00:00:00Z"));
        assert_eq!(t("2026-Q4").as_deref(), Some("2027-01-01T00:00:00Z"));
        assert_eq!(t("2026-Q1").as_deref(), Some("2026-04-01T00:00:00Z"));
        assert_eq!(t("2026-Q5"), None);
        assert_eq!(t("2026-13"), None);
        assert_eq!(t("26-03"), None);
        // Seven bytes with a multi-byte character across a cut (hostile
        // unit labels): no known end, not a panic.
        for bad in ["abc\u{e9}xy", "2026\u{e9}1", "202\u{e9}-1", "2026-\u{e9}"] {
            assert_eq!(bad.len(), 7, "{bad}");
            assert_eq!(t(bad), None, "{bad}");
        }
    }

    const POLICY: &str = "[policy]\nname = \"crm\"\n\n[store]\nkind = \"sqlite\"\npath = \"/x/crm.db\"\n\n[[store.tables]]\nname = \"cdrs\"\nclass = \"consumption\"\nretain = { after = \"t\", for = \"90d\" }\n\n[keys]\nidentity = \"/x/service.age\"\nrecipients = []\nvault = [\"file:///x/v\"]\n\n[[targets]]\nname = \"p\"\nurl = \"file:///x/t\"\n\n[shred]\n";

    fn load(extra: &str) -> Result<Policy, String> {
        Policy::from_str(&format!("{POLICY}{extra}"), std::path::Path::new("p.toml"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn policy_min_retention_is_checked() {
        let p = load("min_retention = { consumption = \"60d\" }\n").unwrap();
        assert_eq!(
            p.shred.min_retention[&crate::policy::DataClass::Consumption].as_secs(),
            60 * 86_400
        );
        let e = load("min_retention = { usage = \"60d\" }\n").unwrap_err();
        assert!(e.contains("`usage` is not a data class"), "{e}");
        let e = load("min_retention = { consumption = \"180d\" }\n").unwrap_err();
        assert!(
            e.contains("shred.min_retention.consumption") && e.contains("retain.for"),
            "{e}"
        );
    }

    #[test]
    fn a_floor_beyond_any_time_keeps_the_records_for_ever() {
        let unit = Unit {
            kind: KeyKind::Period,
            name: "consumption:2026-03".into(),
        };
        let now = Utc::now();
        // Past i64 (read as negative before), past what a TimeDelta holds
        // (a panic before), and past the last representable time.
        for seconds in [u64::MAX, 1 << 63, 10_000_000_000_000_000, 1 << 60] {
            let mut l = Ledger::default();
            l.floors.push(Floor {
                class: "consumption".into(),
                seconds,
                recorded: rfc3339(now),
                raised: None,
                by: "hostile".into(),
            });
            let e = check_with(&l, &unit, now, &SubjectFloors::default()).unwrap_err();
            assert!(
                matches!(&e, ShredError::BelowFloor { earliest, .. } if earliest.starts_with("never")),
                "{seconds}: {e}"
            );
        }
    }

    #[test]
    fn sync_records_and_only_raises() {
        let mut l = Ledger::default();
        let t = Utc::now();
        let p60 = load("min_retention = { consumption = \"60d\" }\n").unwrap();
        let p30 = load("min_retention = { consumption = \"30d\" }\n").unwrap();
        let p80 = load("min_retention = { consumption = \"80d\" }\n").unwrap();
        let none = load("").unwrap();
        assert!(sync(&mut l, &p60, "a", t));
        assert!(!sync(&mut l, &p30, "b", t));
        assert!(!sync(&mut l, &none, "b", t));
        assert_eq!(l.floors[0].seconds, 60 * 86_400);
        assert!(sync(&mut l, &p80, "c", t));
        assert_eq!(l.floors[0].seconds, 80 * 86_400);
        assert_eq!(l.floors[0].by, "c");
    }
}
