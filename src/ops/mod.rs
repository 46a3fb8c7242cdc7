//! Operations built from the pipeline: `init`, `backup`, `restore`, `check`,
//! `snapshots`, `prune` (forget + prune). Each takes a loaded [`Policy`] and returns a report that the
//! binary prints (text or JSON).

pub mod backup;
pub mod check;
pub mod init;
pub mod lock;
pub mod prune;
pub mod repair;
pub mod restore;

use crate::keys::KeysError;
use crate::policy::{Policy, TargetConfig};
use crate::repo::marker::RepoMarker;
use crate::repo::RepoError;
use crate::store::files::FilesError;
use crate::store::sqlite::SqliteError;
use crate::target::{Target, TargetError};
use crate::vault::{Vault, VaultError, VaultLocation};
use std::sync::Arc;

/// Errors of operations. Each names what failed and where. The wrapped
/// module errors are boxed to keep `Result`s small on hot paths.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Repo(Box<RepoError>),
    #[error(transparent)]
    Target(Box<TargetError>),
    #[error(transparent)]
    Vault(Box<VaultError>),
    #[error(transparent)]
    Keys(Box<KeysError>),
    #[error("store: {0}")]
    Sqlite(Box<SqliteError>),
    #[error("store: {0}")]
    Files(Box<FilesError>),
    #[error("no target named `{0}` in the policy")]
    UnknownTarget(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
    /// Stored data failed verification (missing, altered, unauthentic).
    #[error("{0}")]
    Integrity(String),
    #[error("internal: {0}")]
    Internal(String),
}

macro_rules! boxed_from {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for OpsError {
            fn from(e: $t) -> Self {
                OpsError::$v(Box::new(e))
            }
        }
    )*};
}
boxed_from!(RepoError => Repo, TargetError => Target, VaultError => Vault, KeysError => Keys,
    SqliteError => Sqlite, FilesError => Files);

/// Opens one target of the policy.
pub fn open_target(policy: &Policy, t: &TargetConfig, create: bool) -> Result<Target, OpsError> {
    let store = crate::target::open_url(&t.url, &policy.s3_for(t), create)?;
    Ok(Target {
        name: t.name.clone(),
        url: t.url.clone(),
        offsite: t.offsite,
        store,
    })
}

/// Opens the named target, or the primary when `name` is None.
pub fn select_target(policy: &Policy, name: Option<&str>) -> Result<Target, OpsError> {
    let t = match name {
        Some(n) => policy
            .target(n)
            .ok_or_else(|| OpsError::UnknownTarget(n.to_string()))?,
        None => policy.primary(),
    };
    open_target(policy, t, false)
}

/// A vault location and whether its store keeps object versions.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VaultVersioning {
    /// The location, without credentials.
    pub location: String,
    /// What its store answered (serialized as `off`, `enabled`,
    /// `suspended`, `not asked (…)` or `unknown: why`).
    pub versioning: crate::target::Versioning,
}

/// What to do about a vault location that keeps object versions.
pub const VERSIONED_VAULT_HINT: &str = "use an unversioned bucket, or a lifecycle rule that expires noncurrent versions within the shred grace period (docs/SHREDDING.md)";

impl VaultVersioning {
    /// What a location that keeps object versions means for a shred, in
    /// one sentence naming it (for `init`'s warning and `check`'s finding).
    pub fn risk(&self) -> String {
        format!(
            "key vault location {} keeps object versions (S3 versioning {}): a key destroyed by a shred outlives it in earlier versions, which custos can neither list nor delete",
            self.location,
            self.versioning.describe()
        )
    }
}

/// Asks each of the policy's vault locations whether its store keeps
/// object versions ([`crate::target::bucket_versioning`]).
pub async fn vault_versioning(policy: &Policy) -> Vec<VaultVersioning> {
    let mut out = Vec::new();
    for url in &policy.keys.vault {
        out.push(VaultVersioning {
            location: crate::target::redact_url(url),
            versioning: crate::target::bucket_versioning(url, &policy.s3).await,
        });
    }
    out
}

/// Opens the policy's vault locations (S3 settings: the policy's `[s3]`).
pub fn vault_locations(policy: &Policy, create: bool) -> Result<Vec<VaultLocation>, OpsError> {
    policy
        .keys
        .vault
        .iter()
        .map(|url| {
            Ok(VaultLocation {
                url: url.clone(),
                store: crate::target::open_url(url, &policy.s3, create)?,
            })
        })
        .collect()
}

/// The vault keys (the service identity and its signing key, or its public
/// key alone for a recovery identity) and the policy's recipients.
pub fn load_keys(
    policy: &Policy,
) -> Result<(crate::vault::VaultKeys, Vec<age::x25519::Recipient>), OpsError> {
    let keys = crate::keys::load_vault_keys(&policy.keys.identity)?;
    let recipients = policy
        .keys
        .recipients
        .iter()
        .map(|r| crate::keys::parse_recipient(r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((keys, recipients))
}

/// Opens the policy's vault with its keys.
pub async fn open_vault(policy: &Policy) -> Result<Vault, OpsError> {
    let (keys, recipients) = load_keys(policy)?;
    let locations = vault_locations(policy, false)?;
    Ok(Vault::open(locations, &keys, &recipients).await?)
}

/// The repository keys alone (see [`Vault::open_repository_keys`]): for
/// the commands that read snapshots and index objects but no chunk, so
/// that they do not load every unit key of the vault.
pub async fn open_repository_keys(
    policy: &Policy,
) -> Result<crate::vault::RepositoryKeys, OpsError> {
    let keys = crate::keys::load_vault_keys(&policy.keys.identity)?;
    let locations = vault_locations(policy, false)?;
    Ok(Vault::open_repository_keys(&locations, &keys).await?)
}

/// Signs the policy's vault as it stands (see
/// [`Vault::sign_as_it_stands`]), holding the backup lock of every target
/// meanwhile so that no backup or shred run writes the vault.
pub async fn sign_vault(policy: &Policy) -> Result<crate::vault::SignReport, OpsError> {
    let (keys, recipients) = load_keys(policy)?;
    let locations = vault_locations(policy, false)?;
    let locks = lock::AllLocks::acquire(policy).await?;
    let r = Vault::sign_as_it_stands(locations, &keys, &recipients).await;
    locks.release().await;
    Ok(r?)
}

/// A target with its repository marker checked and the metadata key: what
/// listing snapshots and pruning need (no unit key is read).
pub struct MetaRepo {
    pub target: Target,
    pub marker: RepoMarker,
    pub meta: crate::crypto::MetaKey,
}

impl MetaRepo {
    pub async fn open(policy: &Policy, target: Option<&str>) -> Result<MetaRepo, OpsError> {
        let (target, marker) = marked_target(policy, target).await?;
        let keys = open_repository_keys(policy).await?;
        Ok(MetaRepo {
            target,
            marker,
            meta: crate::crypto::MetaKey::new(keys.meta_key()),
        })
    }

    /// As [`open`](Self::open), with repository keys already read (a
    /// caller going over several targets reads the vault once).
    pub async fn with_keys(
        policy: &Policy,
        target: Option<&str>,
        keys: &crate::vault::RepositoryKeys,
    ) -> Result<MetaRepo, OpsError> {
        let (target, marker) = marked_target(policy, target).await?;
        Ok(MetaRepo {
            target,
            marker,
            meta: crate::crypto::MetaKey::new(keys.meta_key()),
        })
    }
}

/// The target named (or the primary) with its repository marker checked.
async fn marked_target(
    policy: &Policy,
    target: Option<&str>,
) -> Result<(Target, RepoMarker), OpsError> {
    let target = select_target(policy, target)?;
    let marker = RepoMarker::load(&target).await?;
    Ok((target, marker))
}

/// A target with its repository marker checked and the vault open.
pub struct OpenRepo {
    pub target: Target,
    pub marker: RepoMarker,
    pub vault: Vault,
    pub meta: crate::crypto::MetaKey,
}

impl OpenRepo {
    pub async fn open(policy: &Policy, target: Option<&str>) -> Result<OpenRepo, OpsError> {
        let (target, marker) = marked_target(policy, target).await?;
        let vault = open_vault(policy).await?;
        let meta = crate::crypto::MetaKey::new(vault.meta_key());
        Ok(OpenRepo {
            target,
            marker,
            vault,
            meta,
        })
    }

    /// The seed of the FastCDC gear table (secret: derived from the
    /// metadata key, so chunk boundaries do not reveal content).
    pub fn chunk_seed(&self) -> u64 {
        chunk_seed(&self.vault)
    }
}

pub fn chunk_seed(vault: &Vault) -> u64 {
    let k = crate::crypto::derive(
        "custos 2026 chunk seed v1",
        &[&vault.meta_key().expose()[..]],
    );
    u64::from_le_bytes(k.expose()[..8].try_into().unwrap())
}

/// Shared handle type for the vault during a backup.
pub type SharedVault = Arc<tokio::sync::Mutex<Vault>>;

/// Human-readable byte counts.
pub fn human_bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}
