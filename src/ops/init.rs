//! `custos init`: creates the key vault at every vault location and the
//! repository marker on every target. Never clobbers: if everything already
//! exists it refuses; if an earlier init was interrupted (vault present,
//! some markers missing) it completes the missing markers only.

use super::{load_keys, open_target, vault_locations, OpsError};
use crate::policy::Policy;
use crate::repo::marker::{RepoMarker, MARKER_PATH};
use crate::repo::RepoError;
use crate::vault::{Vault, VaultError};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct InitReport {
    pub policy: String,
    pub targets: Vec<String>,
    pub vault: Vec<String>,
    /// True when this run only completed an interrupted init.
    pub resumed: bool,
    /// The vault locations whose store keeps earlier versions of objects
    /// (S3 bucket versioning), and what it said: a key destroyed there
    /// would outlive the destruction in them (`docs/SHREDDING.md`).
    pub vault_keeps_versions: Vec<super::VaultVersioning>,
}

pub async fn init(policy: &Policy) -> Result<InitReport, OpsError> {
    let (keys, recipients) = load_keys(policy)?;
    let mut targets = Vec::new();
    for t in &policy.targets {
        targets.push(open_target(policy, t, true)?);
    }
    let mut missing = Vec::new();
    for t in &targets {
        if t.get_opt(MARKER_PATH).await?.is_none() {
            missing.push(t);
        }
    }
    let locations = vault_locations(policy, true)?;
    let vault_urls: Vec<String> = locations.iter().map(|l| l.url.clone()).collect();
    let resumed = match Vault::create(locations, &keys, &recipients, &policy.name).await {
        Ok(_) => {
            if missing.len() != targets.len() {
                // Fresh vault but some targets hold a repository already:
                // refuse before writing markers (the new vault is harmless).
                let t = targets
                    .iter()
                    .find(|t| !missing.iter().any(|m| m.name == t.name))
                    .expect("a target with a marker");
                return Err(RepoError::AlreadyExists {
                    target: t.name.clone(),
                }
                .into());
            }
            false
        }
        Err(VaultError::AlreadyExists { .. }) if !missing.is_empty() => {
            // An interrupted init: the vault must open with our identity.
            let locations = vault_locations(policy, false)?;
            Vault::open(locations, &keys, &recipients).await?;
            true
        }
        Err(VaultError::AlreadyExists { .. }) => {
            return Err(RepoError::AlreadyExists {
                target: targets[0].name.clone(),
            }
            .into())
        }
        Err(e) => return Err(e.into()),
    };
    let repo_id = crate::repo::snapshot::Snapshot::new_id();
    for t in &missing {
        RepoMarker::new(&policy.name, &repo_id).create(t).await?;
    }
    let vault_keeps_versions = super::vault_versioning(policy)
        .await
        .into_iter()
        .filter(|v| v.versioning.keeps_versions())
        .collect();
    Ok(InitReport {
        policy: policy.name.clone(),
        targets: missing.iter().map(|t| t.name.clone()).collect(),
        vault: vault_urls,
        resumed,
        vault_keeps_versions,
    })
}
