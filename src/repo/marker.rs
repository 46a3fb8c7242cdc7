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
/// The newest repository format version this build writes and reads. A
/// repository's marker names the newest format of any object it may hold:
/// version 2 packs and index objects have compact entry tables (FORMAT
/// 3.2, 3.3), chunk ids are short and group pages list them in 16 bytes
/// (1.2, 3.4); version 3 adds chunks compressed as LZ4 blocks (codec 2,
/// 3.2); a version 1 repository holds only version 1 objects. This build
/// reads all three, and raises an older marker ([`RepoMarker::raise`])
/// before it writes a newer object there, so that an older build refuses
/// the repository instead of misreading it.
pub const FORMAT_VERSION: u32 = 3;

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

    /// The marker's bytes as stored: pretty-printed JSON.
    fn body(&self) -> bytes::Bytes {
        serde_json::to_vec_pretty(self)
            .expect("marker serializes")
            .into()
    }

    /// Writes the marker, refusing if one exists (never clobbers).
    pub async fn create(&self, target: &Target) -> Result<(), RepoError> {
        if !target.put_new(MARKER_PATH, self.body()).await? {
            return Err(RepoError::AlreadyExists {
                target: target.name.clone(),
            });
        }
        Ok(())
    }

    /// Raises the marker of `target` (this one, as loaded from it) to
    /// `version` if it is older, rewriting it in place with every other
    /// field kept; returns whether it did. Called by every writer of
    /// packs and index objects (backup, `check --repair-index`,
    /// replication) before it writes one: a crash after the raise leaves a
    /// repository of older objects under a newer marker, which this build
    /// reads alike.
    pub async fn raise(&mut self, target: &Target, version: u32) -> Result<bool, RepoError> {
        if self.version >= version {
            return Ok(false);
        }
        let raised = RepoMarker {
            version,
            ..self.clone()
        };
        target.put(MARKER_PATH, raised.body()).await?;
        tracing::info!(target = %target.name, from = self.version, to = version, "repository format raised");
        *self = raised;
        Ok(true)
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

/// A repository's marker raised to [`FORMAT_VERSION`] once, by the first
/// write that needs it ([`RepoMarker::raise`]): a backup that stores
/// nothing, or fails before it stores anything, leaves the marker as it
/// was.
pub struct FormatRaise {
    marker: RepoMarker,
    done: tokio::sync::OnceCell<()>,
}

impl FormatRaise {
    pub fn new(marker: RepoMarker) -> FormatRaise {
        FormatRaise {
            marker,
            done: tokio::sync::OnceCell::new(),
        }
    }

    /// Raises the marker if it is older than this build's format and was
    /// not raised yet; concurrent callers wait for the one raising it.
    pub async fn before_write(&self, target: &Target) -> Result<(), RepoError> {
        if self.marker.version >= FORMAT_VERSION {
            return Ok(());
        }
        self.done
            .get_or_try_init(|| async {
                let mut m = self.marker.clone();
                m.raise(target, FORMAT_VERSION).await.map(|_| ())
            })
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(name: &str) -> Target {
        let url = format!("memory://{name}");
        Target::open(
            "t",
            &url,
            false,
            &crate::target::S3Settings::default(),
            true,
        )
        .expect("memory target")
    }

    #[tokio::test]
    async fn a_version_1_marker_is_raised_once_with_its_other_fields_kept() {
        let target = memory("marker-raise");
        let mut old = RepoMarker::new("crm", "0123456789abcdef");
        old.version = 1;
        old.create(&target).await.unwrap();
        let loaded = RepoMarker::load(&target).await.unwrap();
        assert_eq!(loaded.version, 1, "version 1 repositories are read");
        let format = FormatRaise::new(loaded.clone());
        format.before_write(&target).await.unwrap();
        format.before_write(&target).await.unwrap();
        let raised = RepoMarker::load(&target).await.unwrap();
        assert_eq!(raised.version, FORMAT_VERSION);
        assert_eq!(
            RepoMarker {
                version: 1,
                ..raised.clone()
            },
            loaded
        );
        // A marker at this build's version (or newer) is not written.
        let mut same = raised.clone();
        assert!(!same.raise(&target, FORMAT_VERSION).await.unwrap());
        assert!(!same.raise(&target, 1).await.unwrap());
    }

    #[tokio::test]
    async fn a_marker_newer_than_this_build_is_refused() {
        let target = memory("marker-newer");
        let mut newer = RepoMarker::new("crm", "0123456789abcdef");
        newer.version = FORMAT_VERSION + 1;
        newer.create(&target).await.unwrap();
        let e = RepoMarker::load(&target).await.unwrap_err();
        assert!(
            matches!(e, RepoError::UnsupportedVersion { found, .. } if found == FORMAT_VERSION + 1),
            "{e}"
        );
    }
}
