//! Users, roles and API tokens of the service (least privilege).
//!
//! Users live in one JSON file, `users.json`, in the policy directory (when
//! the service is started with `--policies DIR` and the file is there) or
//! else in the state directory:
//!
//! ```json
//! {
//!   "version": 1,
//!   "users": [
//!     {"name": "ann", "role": "auditor", "created": "2026-03-01T10:00:00Z",
//!      "salt": "<32 bytes hex>", "token_hash": "<32 bytes hex>"}
//!   ]
//! }
//! ```
//!
//! A token is `cst_` followed by 32 random bytes in hex; it is shown once
//! (by `users add` and `users rotate-token`) and stored only as
//! `BLAKE3-keyed(salt, token)` with a random per-user salt. Last use is kept
//! apart, in `<state>/users/last-used.json` (the users file may be
//! read-only configuration), and feeds the access review.
//!
//! | role | may |
//! |---|---|
//! | `operator` | read; run jobs; restore |
//! | `auditor` | read reports, certificates, the audit log, status, the access review |
//! | `retention` | read; request shreds; holds |
//! | `admin` | everything: policies, keys, users |

use chrono::{SecondsFormat, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// File name of the users file.
pub const USERS_FILE: &str = "users.json";
/// Prefix of every API token.
pub const TOKEN_PREFIX: &str = "cst_";
const VERSION: u32 = 1;

/// Errors of the users file.
#[derive(Debug, Error)]
pub enum UsersError {
    #[error("users file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("users file {path} is not readable: {why}; fix or remove it")]
    Malformed { path: PathBuf, why: String },
    #[error("user `{0}` already exists; use `custos users rotate-token` for a new token or `users remove` first")]
    Exists(String),
    #[error("no user `{0}`; `custos users list` shows the users")]
    NoSuchUser(String),
    #[error("`{0}` is not a valid user name: use 1 to 64 of a-z, 0-9, `.`, `_`, `-`, starting with a letter or digit")]
    BadName(String),
    #[error("`{0}` is not a role: use operator, auditor, retention or admin")]
    BadRole(String),
}

/// A user's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Operator,
    Auditor,
    Retention,
    Admin,
}

impl Role {
    /// The role's name as written in files and audit entries.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::Retention => "retention",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may perform `a`.
    pub fn allows(self, a: Action) -> bool {
        match a {
            Action::Read => true,
            Action::RunJob | Action::Restore => matches!(self, Role::Operator | Role::Admin),
            Action::Shred | Action::Hold => matches!(self, Role::Retention | Role::Admin),
            Action::PolicyChange | Action::Keys | Action::Users => self == Role::Admin,
            Action::AccessReview => matches!(self, Role::Auditor | Role::Admin),
        }
    }
}

impl std::str::FromStr for Role {
    type Err = UsersError;
    fn from_str(s: &str) -> Result<Role, UsersError> {
        match s {
            "operator" => Ok(Role::Operator),
            "auditor" => Ok(Role::Auditor),
            "retention" => Ok(Role::Retention),
            "admin" => Ok(Role::Admin),
            _ => Err(UsersError::BadRole(s.to_string())),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request wants to do, checked against the caller's [`Role`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read policies, snapshots, reports, certificates, the audit log, status.
    Read,
    /// Run a job now (backup, drill, replicate).
    RunJob,
    /// Restore customer data.
    Restore,
    /// Request or perform a shred.
    Shred,
    /// Place or lift a legal hold.
    Hold,
    /// Change a policy.
    PolicyChange,
    /// Key operations.
    Keys,
    /// Manage users.
    Users,
    /// Read the access review (who has which role, last use).
    AccessReview,
}

/// One user as stored (the token only as a salted hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// RFC 3339 UTC time the user was added.
    pub created: String,
    /// RFC 3339 UTC time the current token was issued.
    #[serde(default)]
    pub token_issued: Option<String>,
    /// 32 random bytes, hex.
    pub salt: String,
    /// BLAKE3 keyed with the salt over the token, hex.
    pub token_hash: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    version: u32,
    users: Vec<User>,
}

/// A freshly issued token: show it once, never store it.
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// One line of the access review.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReviewLine {
    pub name: String,
    pub role: Role,
    pub created: String,
    pub token_issued: Option<String>,
    /// Last successful authentication, `None` if never used.
    pub last_used: Option<String>,
}

/// The users file and the last-use record beside the state.
#[derive(Clone, Debug)]
pub struct Users {
    path: PathBuf,
    last_used_path: PathBuf,
}

/// The users file to use: `<policies>/users.json` when a policy directory
/// is given and the file exists there, else `<state>/users.json`.
pub fn default_path(policies: Option<&Path>, state: &Path) -> PathBuf {
    if let Some(p) = policies {
        let f = p.join(USERS_FILE);
        if f.exists() {
            return f;
        }
    }
    state.join(USERS_FILE)
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn hash_token(salt: &[u8; 32], token: &str) -> blake3::Hash {
    blake3::keyed_hash(salt, token.as_bytes())
}

fn valid_name(n: &str) -> bool {
    let mut cs = n.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

impl Users {
    /// The users at `path`, with last use recorded at `state/users/last-used.json`.
    pub fn at(path: impl Into<PathBuf>, state: &Path) -> Users {
        Users {
            path: path.into(),
            last_used_path: state.join("users").join("last-used.json"),
        }
    }

    /// The users file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, path: &Path, source: std::io::Error) -> UsersError {
        UsersError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Every user (an absent file is no users).
    pub fn list(&self) -> Result<Vec<User>, UsersError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(&self.path, e)),
        };
        let f: UsersFile = serde_json::from_str(&text).map_err(|e| UsersError::Malformed {
            path: self.path.clone(),
            why: e.to_string(),
        })?;
        if f.version != VERSION {
            return Err(UsersError::Malformed {
                path: self.path.clone(),
                why: format!(
                    "version {} is not known (this custos reads {VERSION})",
                    f.version
                ),
            });
        }
        Ok(f.users)
    }

    fn save(&self, users: Vec<User>) -> Result<(), UsersError> {
        let f = UsersFile {
            version: VERSION,
            users,
        };
        let text = serde_json::to_string_pretty(&f).expect("users serialize") + "\n";
        write_atomic(&self.path, text.as_bytes()).map_err(|e| self.io(&self.path, e))
    }

    fn issue() -> (Token, String, String) {
        let mut t = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut t);
        let token = format!("{TOKEN_PREFIX}{}", hex::encode(t));
        let mut salt = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let h = hash_token(&salt, &token);
        (Token(token), hex::encode(salt), h.to_hex().to_string())
    }

    /// Adds a user and returns its token (shown once).
    pub fn add(&self, name: &str, role: Role) -> Result<Token, UsersError> {
        if !valid_name(name) {
            return Err(UsersError::BadName(name.to_string()));
        }
        let mut users = self.list()?;
        if users.iter().any(|u| u.name == name) {
            return Err(UsersError::Exists(name.to_string()));
        }
        let (token, salt, token_hash) = Self::issue();
        let t = now();
        users.push(User {
            name: name.to_string(),
            role,
            created: t.clone(),
            token_issued: Some(t),
            salt,
            token_hash,
        });
        self.save(users)?;
        Ok(token)
    }

    /// Removes a user.
    pub fn remove(&self, name: &str) -> Result<User, UsersError> {
        let mut users = self.list()?;
        let pos = users
            .iter()
            .position(|u| u.name == name)
            .ok_or_else(|| UsersError::NoSuchUser(name.to_string()))?;
        let u = users.remove(pos);
        self.save(users)?;
        Ok(u)
    }

    /// Replaces a user's token; the old one stops working at once.
    pub fn rotate_token(&self, name: &str) -> Result<Token, UsersError> {
        let mut users = self.list()?;
        let u = users
            .iter_mut()
            .find(|u| u.name == name)
            .ok_or_else(|| UsersError::NoSuchUser(name.to_string()))?;
        let (token, salt, token_hash) = Self::issue();
        u.salt = salt;
        u.token_hash = token_hash;
        u.token_issued = Some(now());
        self.save(users)?;
        Ok(token)
    }

    /// The user holding `token`, if any (comparison in constant time per
    /// user). Does not record the use: see [`record_use`](Self::record_use).
    pub fn authenticate(&self, token: &str) -> Result<Option<User>, UsersError> {
        if !token.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        for u in self.list()? {
            let Some(salt) = hex::decode(&u.salt)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            else {
                continue;
            };
            let Some(stored) = hex::decode(&u.token_hash)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            else {
                continue;
            };
            // blake3::Hash equality is constant-time.
            if hash_token(&salt, token) == blake3::Hash::from(stored) {
                return Ok(Some(u));
            }
        }
        Ok(None)
    }

    fn last_used(&self) -> BTreeMap<String, String> {
        std::fs::read_to_string(&self.last_used_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// Records that `name` authenticated now.
    pub fn record_use(&self, name: &str) -> Result<(), UsersError> {
        let mut m = self.last_used();
        m.insert(name.to_string(), now());
        if let Some(dir) = self.last_used_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.io(dir, e))?;
        }
        let text = serde_json::to_string_pretty(&m).expect("a map serializes") + "\n";
        write_atomic(&self.last_used_path, text.as_bytes())
            .map_err(|e| self.io(&self.last_used_path, e))
    }

    /// The access review: every user, role, and last use.
    pub fn review(&self) -> Result<Vec<ReviewLine>, UsersError> {
        let last = self.last_used();
        Ok(self
            .list()?
            .into_iter()
            .map(|u| ReviewLine {
                last_used: last.get(&u.name).cloned(),
                name: u.name,
                role: u.role,
                created: u.created,
                token_issued: u.token_issued,
            })
            .collect())
    }
}

/// Writes `data` to a temporary file beside `path`, syncs it and renames
/// it over `path` (mode 0600 on Unix).
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_only_as_salted_hashes() {
        let d = tempfile::tempdir().unwrap();
        let us = Users::at(d.path().join(USERS_FILE), d.path());
        let t1 = us.add("ann", Role::Auditor).unwrap();
        let t2 = us.add("bob", Role::Operator).unwrap();
        let text = std::fs::read_to_string(us.path()).unwrap();
        assert!(!text.contains(&t1.0) && !text.contains(&t1.0[4..]));
        assert_eq!(us.authenticate(&t1.0).unwrap().unwrap().name, "ann");
        assert_eq!(
            us.authenticate(&t2.0).unwrap().unwrap().role,
            Role::Operator
        );
        assert!(us.authenticate("cst_00").unwrap().is_none());
        assert!(matches!(
            us.add("ann", Role::Admin),
            Err(UsersError::Exists(_))
        ));
        assert!(matches!(
            us.add("Ann!", Role::Admin),
            Err(UsersError::BadName(_))
        ));

        let t3 = us.rotate_token("ann").unwrap();
        assert!(us.authenticate(&t1.0).unwrap().is_none());
        assert_eq!(us.authenticate(&t3.0).unwrap().unwrap().name, "ann");

        us.record_use("ann").unwrap();
        let r = us.review().unwrap();
        assert_eq!(r.len(), 2);
        assert!(r[0].last_used.is_some() && r[1].last_used.is_none());
        us.remove("bob").unwrap();
        assert!(us.authenticate(&t2.0).unwrap().is_none());
        assert!(matches!(us.remove("bob"), Err(UsersError::NoSuchUser(_))));
    }

    #[test]
    fn roles_follow_least_privilege() {
        use Action::*;
        for a in [RunJob, Restore, Shred, Hold, PolicyChange, Keys, Users] {
            assert!(!Role::Auditor.allows(a), "{a:?}");
        }
        assert!(Role::Auditor.allows(Read) && Role::Auditor.allows(AccessReview));
        assert!(Role::Operator.allows(Restore) && !Role::Operator.allows(Shred));
        assert!(Role::Retention.allows(Shred) && !Role::Retention.allows(Restore));
        assert!(!Role::Operator.allows(PolicyChange) && Role::Admin.allows(PolicyChange));
    }
}
