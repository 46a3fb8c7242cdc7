//! Leases: which agent runs which tick of a job.
//!
//! One object per job on the policy's primary target,
//! `locks/jobs/<job>.json` (format in `docs/FORMAT.md`). It names the
//! holder, the tick being run, when the claim expires and the last tick
//! done. A claim is a conditional put: `PutMode::Create` when there is no
//! lease yet, `PutMode::Update(etag)` otherwise, so of several agents
//! racing for one tick exactly one wins; the others see the tick held or
//! done and skip it. The holder renews the lease while the job runs; a
//! lease whose holder stopped renewing (or, on the same host, whose process
//! is gone) is taken over.
//!
//! Stores without conditional update (object_store's local file system:
//! it has `Create` but not `Update`) fall back to a plain put followed by a
//! read-back; that is safe for one agent per target but two agents racing
//! on one `file://` target may both win a tick. Share S3 (or GCS, Azure)
//! between agents.

use super::{JobKind, ScheduleError};
use crate::target::Target;
use chrono::{DateTime, Utc};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use std::time::Duration;

/// The folder of the job leases on the primary target.
pub const LEASE_PREFIX: &str = "locks/jobs";
/// The version of the lease object.
pub const LEASE_VERSION: u32 = 1;

/// The object path of a job's lease.
pub fn lease_path(job: JobKind) -> String {
    format!("{LEASE_PREFIX}/{job}.json")
}

/// Who holds a lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// A random id of the agent process (pids are reused).
    pub agent: String,
}

impl Holder {
    /// This process.
    pub fn current() -> &'static Holder {
        static ME: OnceLock<Holder> = OnceLock::new();
        ME.get_or_init(|| Holder {
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            pid: std::process::id(),
            agent: hex::encode(rand::random::<[u8; 8]>()),
        })
    }

    /// Provably gone: on this host, not this process, and no such process.
    fn gone(&self) -> bool {
        let me = Holder::current();
        self.host == me.host
            && self.agent != me.agent
            && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} pid {} (agent {})", self.host, self.pid, self.agent)
    }
}

/// The lease object as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub version: u32,
    pub policy: String,
    pub job: JobKind,
    /// The agent running `tick`; `None` when no tick is running.
    pub holder: Option<Holder>,
    /// The tick (scheduled time) being run.
    pub tick: Option<DateTime<Utc>>,
    /// When the claim lapses unless renewed.
    pub expires: Option<DateTime<Utc>>,
    /// The latest tick run to its end (any outcome); ticks up to it are done.
    pub last_tick: Option<DateTime<Utc>>,
    /// That run's outcome (`ok`, `failed`, ...).
    pub last_outcome: Option<String>,
}

impl LeaseRecord {
    fn running(&self, now: DateTime<Utc>) -> bool {
        match (&self.holder, self.tick, self.expires) {
            (Some(h), Some(_), Some(exp)) => exp > now && !h.gone(),
            _ => false,
        }
    }
}

/// The result of a claim.
#[derive(Debug)]
pub enum Claim {
    /// This agent runs the tick; renew and finish the lease.
    Claimed(Box<Lease>),
    /// The tick (or a later one) was already run.
    Done { last_tick: DateTime<Utc> },
    /// Another agent is running a tick of this job.
    Held {
        holder: Holder,
        tick: DateTime<Utc>,
        expires: DateTime<Utc>,
    },
}

/// A held lease.
#[derive(Debug)]
pub struct Lease {
    target: Target,
    path: String,
    record: LeaseRecord,
    version: Option<UpdateVersion>,
    ttl: Duration,
}

enum Put {
    Written(Option<UpdateVersion>),
    Conflict,
}

impl Lease {
    /// Claims tick `tick` of `job` on `target` for `ttl` (renew it well
    /// before that: [`Lease::renew_every`]).
    pub async fn claim(
        target: &Target,
        policy: &str,
        job: JobKind,
        tick: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<Claim, ScheduleError> {
        let path = lease_path(job);
        let me = Holder::current().clone();
        for _ in 0..8 {
            let now = Utc::now();
            let current = read(target, policy, &path).await?;
            let (base, version) = match current {
                None => (
                    LeaseRecord {
                        version: LEASE_VERSION,
                        policy: policy.to_string(),
                        job,
                        holder: None,
                        tick: None,
                        expires: None,
                        last_tick: None,
                        last_outcome: None,
                    },
                    None,
                ),
                Some((rec, v)) => {
                    if let Some(done) = rec.last_tick.filter(|d| *d >= tick) {
                        return Ok(Claim::Done { last_tick: done });
                    }
                    if rec.running(now) {
                        return Ok(Claim::Held {
                            holder: rec.holder.clone().expect("running lease has a holder"),
                            tick: rec.tick.expect("running lease has a tick"),
                            expires: rec.expires.expect("running lease expires"),
                        });
                    }
                    if let (Some(h), Some(t)) = (&rec.holder, rec.tick) {
                        tracing::warn!(policy, job = %job, holder = %h, tick = %t,
                            "taking over an expired job lease");
                    }
                    (rec, Some(v))
                }
            };
            let record = LeaseRecord {
                holder: Some(me.clone()),
                tick: Some(tick),
                expires: Some(now + ttl),
                ..base
            };
            let create = version.is_none();
            match write(target, policy, &path, &record, version.clone(), create).await? {
                Put::Written(v) => {
                    let lease = Lease {
                        target: target.clone(),
                        path: path.clone(),
                        record,
                        version: v,
                        ttl,
                    };
                    return Ok(Claim::Claimed(Box::new(lease)));
                }
                Put::Conflict => continue, // someone else wrote first: look again
            }
        }
        Err(lease_err(policy, &path, "the lease kept changing under us (8 attempts); another agent is very busy on it, the tick is skipped"))
    }

    /// How often to renew: a third of the time to live.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// The tick claimed.
    pub fn tick(&self) -> DateTime<Utc> {
        self.record.tick.expect("a held lease has a tick")
    }

    /// Extends the claim. An error means the lease was lost (taken over, or
    /// the target is unreachable): stop the job.
    pub async fn renew(&mut self) -> Result<(), ScheduleError> {
        let mut rec = self.record.clone();
        rec.expires = Some(Utc::now() + self.ttl);
        let policy = self.record.policy.clone();
        match write(
            &self.target,
            &policy,
            &self.path,
            &rec,
            self.version.clone(),
            false,
        )
        .await?
        {
            Put::Written(v) => {
                self.record = rec;
                self.version = v;
                Ok(())
            }
            Put::Conflict => Err(lease_err(
                &policy,
                &self.path,
                "the lease was taken over by another agent (it expired before it was renewed)",
            )),
        }
    }

    /// Releases the lease; when `done`, records the tick as done with its
    /// outcome word so no agent runs it again.
    pub async fn finish(mut self, done: bool, outcome: &str) -> Result<(), ScheduleError> {
        let mut rec = self.record.clone();
        rec.holder = None;
        rec.tick = None;
        rec.expires = None;
        if done {
            let t = self.tick();
            rec.last_tick = Some(rec.last_tick.map_or(t, |l| l.max(t)));
            rec.last_outcome = Some(outcome.to_string());
        }
        let policy = self.record.policy.clone();
        match write(&self.target, &policy, &self.path, &rec, self.version.take(), false).await? {
            Put::Written(_) => Ok(()),
            Put::Conflict => Err(lease_err(
                &policy,
                &self.path,
                "the lease was taken over by another agent before the job finished; the tick may run twice: raise --lease-ttl",
            )),
        }
    }
}

fn lease_err(policy: &str, path: &str, why: impl Into<String>) -> ScheduleError {
    ScheduleError::Lease {
        policy: policy.to_string(),
        path: path.to_string(),
        why: why.into(),
    }
}

/// Reads the lease and its version (etag), or `None`.
pub async fn read(
    target: &Target,
    policy: &str,
    path: &str,
) -> Result<Option<(LeaseRecord, UpdateVersion)>, ScheduleError> {
    let p = object_store::path::Path::from(path);
    let res = match target.store.get(&p).await {
        Ok(r) => r,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => {
            return Err(lease_err(
                policy,
                path,
                crate::target::map_err(&target.name, "get", path, e).to_string(),
            ))
        }
    };
    let version = UpdateVersion {
        e_tag: res.meta.e_tag.clone(),
        version: res.meta.version.clone(),
    };
    let bytes = res.bytes().await.map_err(|e| {
        lease_err(
            policy,
            path,
            crate::target::map_err(&target.name, "get", path, e).to_string(),
        )
    })?;
    let rec: LeaseRecord = serde_json::from_slice(&bytes).map_err(|e| {
        lease_err(
            policy,
            path,
            format!("is not a custos job lease ({e}); if no agent is running, delete it"),
        )
    })?;
    Ok(Some((rec, version)))
}

async fn write(
    target: &Target,
    policy: &str,
    path: &str,
    rec: &LeaseRecord,
    version: Option<UpdateVersion>,
    create: bool,
) -> Result<Put, ScheduleError> {
    let p = object_store::path::Path::from(path);
    let body = bytes::Bytes::from(serde_json::to_vec_pretty(rec).expect("lease serializes"));
    let fail = |e: object_store::Error| {
        lease_err(
            policy,
            path,
            crate::target::map_err(&target.name, "put", path, e).to_string(),
        )
    };
    let mode = match (&version, create) {
        (_, true) => PutMode::Create,
        (Some(v), false) => PutMode::Update(v.clone()),
        // No version to condition on: the fallback below.
        (None, false) => return overwrite_and_read_back(target, &p, body, fail).await,
    };
    match target
        .store
        .put_opts(
            &p,
            PutPayload::from_bytes(body.clone()),
            PutOptions::from(mode),
        )
        .await
    {
        Ok(r) => Ok(Put::Written(Some(UpdateVersion {
            e_tag: r.e_tag,
            version: r.version,
        }))),
        Err(object_store::Error::AlreadyExists { .. })
        | Err(object_store::Error::Precondition { .. }) => Ok(Put::Conflict),
        Err(object_store::Error::NotImplemented { .. }) => {
            overwrite_and_read_back(target, &p, body, fail).await
        }
        Err(e) => Err(fail(e)),
    }
}

/// For stores without conditional update (local file system): a plain put,
/// then a read-back to see that ours is the one that stayed. The version
/// returned is the put's, so the next write (a renewal, the finish) comes
/// here again; a `None` would have made it a create, which fails on the
/// existing object: the lease looked lost at its second renewal, or at its
/// first when the object existed before the claim.
async fn overwrite_and_read_back(
    target: &Target,
    p: &object_store::path::Path,
    body: bytes::Bytes,
    fail: impl Fn(object_store::Error) -> ScheduleError,
) -> Result<Put, ScheduleError> {
    let r = target
        .store
        .put(p, PutPayload::from_bytes(body.clone()))
        .await
        .map_err(&fail)?;
    let back = target
        .store
        .get(p)
        .await
        .map_err(&fail)?
        .bytes()
        .await
        .map_err(&fail)?;
    if back == body {
        Ok(Put::Written(Some(UpdateVersion {
            e_tag: r.e_tag,
            version: r.version,
        })))
    } else {
        Ok(Put::Conflict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem_target() -> Target {
        Target {
            name: "primary".into(),
            url: "memory://".into(),
            offsite: false,
            store: std::sync::Arc::new(object_store::memory::InMemory::new()),
        }
    }

    /// A claim of the backup job's tick `tick`.
    async fn backup_claim(t: &Target, tick: DateTime<Utc>, ttl: Duration) -> Claim {
        Lease::claim(t, "crm", JobKind::Backup, tick, ttl)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn one_claim_per_tick_then_done() {
        let t = mem_target();
        let tick = Utc::now();
        let ttl = Duration::from_secs(60);
        let Claim::Claimed(mut lease) = Lease::claim(&t, "crm", JobKind::Backup, tick, ttl)
            .await
            .unwrap()
        else {
            panic!("first claim must win");
        };
        // Held while running (same agent, but running: held).
        assert!(matches!(
            backup_claim(&t, tick, ttl).await,
            Claim::Held { .. }
        ));
        lease.renew().await.unwrap();
        lease.finish(true, "ok").await.unwrap();
        assert!(matches!(
            backup_claim(&t, tick, ttl).await,
            Claim::Done { .. }
        ));
        // The next tick is free again.
        let next = tick + chrono::Duration::seconds(2);
        assert!(matches!(
            backup_claim(&t, next, ttl).await,
            Claim::Claimed(_)
        ));
    }

    #[tokio::test]
    async fn a_lease_on_a_local_folder_renews_and_finishes_tick_after_tick() {
        // The local file system has no conditional update: every write
        // after the first is a plain put and a read-back.
        let dir = tempfile::tempdir().unwrap();
        // The store a `file://` target opens, as the daemon gets it.
        let url = format!("file://{}", dir.path().display());
        let t = Target {
            name: "primary".into(),
            store: crate::target::open_url(&url, &Default::default(), false).unwrap(),
            url,
            offsite: false,
        };
        let ttl = Duration::from_secs(60);
        let first = Utc::now();
        for tick in [first, first + chrono::Duration::seconds(2)] {
            let Claim::Claimed(mut lease) = backup_claim(&t, tick, ttl).await else {
                panic!("the tick must be free");
            };
            for _ in 0..3 {
                lease.renew().await.unwrap();
            }
            lease.finish(true, "ok").await.unwrap();
            assert!(matches!(
                backup_claim(&t, tick, ttl).await,
                Claim::Done { .. }
            ));
        }
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_and_the_old_holder_loses_it() {
        let t = mem_target();
        let tick = Utc::now();
        let Claim::Claimed(mut old) =
            Lease::claim(&t, "crm", JobKind::Drill, tick, Duration::from_millis(1))
                .await
                .unwrap()
        else {
            panic!("claim");
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let Claim::Claimed(new) =
            Lease::claim(&t, "crm", JobKind::Drill, tick, Duration::from_secs(60))
                .await
                .unwrap()
        else {
            panic!("an expired lease must be taken over");
        };
        assert!(
            old.renew().await.is_err(),
            "the old holder must see it lost the lease"
        );
        new.finish(true, "ok").await.unwrap();
    }
}
