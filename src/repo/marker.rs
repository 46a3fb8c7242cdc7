//! `custos-repo.json`: the plaintext format marker at the root of a target.
//!
//! It is the only object besides auditor documents that is not encrypted. It
//! names the format and version, the repository id (random), the policy and
//! the chunking parameters. It holds no secret and no customer data.

use super::RepoError;
use crate::chunk::ChunkParams;
use crate::target::Target;
use serde::{Deserialize, Serialize};

pub const MARKER_PATH: &str = "custos-repo.json";
pub const FORMAT_NAME: &str = "custos-repo";
/// The newest repository format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RepoMarker {
    pub format: String,
    pub version: u32,
    pub repo_id: String,
    pub policy: String,
    pub created: String,
    pub records_chunking: ChunkParams,
    pub files_chunking: ChunkParams,
}

impl RepoMarker {
    pub fn new(policy: &str, repo_id: &str) -> Self {
        RepoMarker {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            repo_id: repo_id.into(),
            policy: policy.into(),
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            records_chunking: ChunkParams::RECORDS,
            files_chunking: ChunkParams::FILES,
        }
    }

    /// Writes the marker, refusing if one exists (never clobbers).
    pub async fn create(&self, target: &Target) -> Result<(), RepoError> {
        let body = serde_json::to_vec_pretty(self).expect("marker serializes");
        if !target.put_new(MARKER_PATH, body.into()).await? {
            return Err(RepoError::AlreadyExists {
                target: target.name.clone(),
            });
        }
        Ok(())
    }

    /// Reads and validates the marker of a target.
    pub async fn load(target: &Target) -> Result<RepoMarker, RepoError> {
        let Some(bytes) = target.get_opt(MARKER_PATH).await? else {
            // Snapshots without a marker: a repository that lost it, not
            // an empty target.
            let lost = !target.list("snapshots/").await?.is_empty();
            let target = target.name.clone();
            return Err(if lost {
                RepoError::MarkerLost { target }
            } else {
                RepoError::NoRepository { target }
            });
        };
        let obj = format!("{}:{}", target.name, MARKER_PATH);
        let m: RepoMarker = serde_json::from_slice(&bytes)
            .map_err(|e| RepoError::malformed(&obj, e.to_string()))?;
        if m.format != FORMAT_NAME {
            return Err(RepoError::malformed(
                &obj,
                format!("format is `{}`", m.format),
            ));
        }
        if m.version > FORMAT_VERSION || m.version == 0 {
            return Err(RepoError::UnsupportedVersion {
                target: target.name.clone(),
                found: m.version,
                supported: FORMAT_VERSION,
            });
        }
        m.records_chunking
            .validate()
            .and_then(|_| m.files_chunking.validate())
            .map_err(|why| RepoError::malformed(&obj, why))?;
        Ok(m)
    }
}
