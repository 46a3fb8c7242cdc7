//! Service keys: the service's `age` identity (it unwraps the key vault) and
//! its ed25519 signing key (it signs the key vault's objects, drill reports
//! and certificates).
//!
//! [`init_keys`] writes three files into one directory:
//!
//! * `service.age`: the age x25519 identity, in the text form `age-keygen`
//!   writes (comment lines starting with `#`, then one
//!   `AGE-SECRET-KEY-1...` line). Mode 0600.
//! * `signing.key`: the ed25519 secret key as a PKCS#8 PEM document
//!   (`-----BEGIN PRIVATE KEY-----`, RFC 8410), readable by OpenSSL. Mode 0600.
//! * `signing.pub`: the ed25519 public key as an SPKI PEM document
//!   (`-----BEGIN PUBLIC KEY-----`), for auditors. Mode 0644.
//!
//! Loaders never echo file contents in their errors: a malformed secret key
//! file is reported by path and by what was wrong with its shape only.

use ed25519_dalek::pkcs8::{
    spki::der::pem::LineEnding, DecodePrivateKey, DecodePublicKey, EncodePrivateKey,
    EncodePublicKey,
};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// File name of the service identity inside the keys directory.
pub const IDENTITY_FILE: &str = "service.age";
/// File name of the ed25519 signing key inside the keys directory.
pub const SIGNING_KEY_FILE: &str = "signing.key";
/// File name of the ed25519 public key inside the keys directory.
pub const PUBLIC_KEY_FILE: &str = "signing.pub";

/// Errors of this module. They name files, never their secret contents.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("refusing to overwrite existing key file {path}: move it away first, or use another directory")]
    Exists { path: PathBuf },
    #[error("cannot write key file {path}: {source}; check that the directory is writable")]
    Write { path: PathBuf, source: io::Error },
    #[error("key file {path} does not exist: create the service keys with `custos keys init` or fix the path in the policy")]
    Missing { path: PathBuf },
    #[error("cannot read key file {path}: {source}; check its permissions")]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("key file {path} is malformed: {reason}; expected {expected}")]
    Malformed {
        path: PathBuf,
        reason: &'static str,
        expected: &'static str,
    },
    #[error(
        "`{value}` is not an age x25519 recipient ({reason}): expected an `age1...` public key"
    )]
    Recipient { value: String, reason: &'static str },
    #[error("neither signing.key nor signing.pub is beside the identity {identity}, so the key vault's signatures cannot be checked: keep the three files of `custos keys init` together; to read with a recovery identity, copy the service's signing.pub beside it")]
    NoSigner { identity: PathBuf },
}

/// The paths and public recipient written by [`init_keys`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeysInit {
    /// `service.age`: the age identity (secret, mode 0600).
    pub identity_path: PathBuf,
    /// `signing.key`: the ed25519 secret key (mode 0600).
    pub signing_key_path: PathBuf,
    /// `signing.pub`: the ed25519 public key (mode 0644).
    pub public_key_path: PathBuf,
    /// The identity's public recipient, `age1...`.
    pub recipient: String,
}

/// Creates `out_dir` if missing and writes a fresh service identity, signing
/// key and public key into it. Refuses, writing nothing, if any of the three
/// files already exists.
pub fn init_keys(out_dir: &Path) -> Result<KeysInit, KeysError> {
    fs::create_dir_all(out_dir).map_err(|source| KeysError::Write {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let identity_path = out_dir.join(IDENTITY_FILE);
    let signing_key_path = out_dir.join(SIGNING_KEY_FILE);
    let public_key_path = out_dir.join(PUBLIC_KEY_FILE);
    for p in [&identity_path, &signing_key_path, &public_key_path] {
        if fs::symlink_metadata(p).is_ok() {
            return Err(KeysError::Exists { path: p.clone() });
        }
    }

    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let secret = {
        use age::secrecy::ExposeSecret;
        let s = identity.to_string();
        Zeroizing::new(format!(
            "# custos service identity (age x25519); keep secret\n# created: {}\n# public key: {}\n{}\n",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            recipient,
            s.expose_secret()
        ))
    };

    let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let signing_pem = signing
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| KeysError::Malformed {
            path: signing_key_path.clone(),
            reason: "the new key could not be encoded",
            expected: "a PKCS#8 ed25519 key",
        })?;
    let public_pem = signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|_| KeysError::Malformed {
            path: public_key_path.clone(),
            reason: "the new public key could not be encoded",
            expected: "an SPKI ed25519 public key",
        })?;

    write_new(&identity_path, secret.as_bytes(), 0o600)?;
    write_new(&signing_key_path, signing_pem.as_bytes(), 0o600)?;
    write_new(&public_key_path, public_pem.as_bytes(), 0o644)?;

    Ok(KeysInit {
        identity_path,
        signing_key_path,
        public_key_path,
        recipient,
    })
}

/// Writes a file that must not exist yet, with the given mode (unix).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeysError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            KeysError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            KeysError::Write {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    // The umask may have narrowed the mode; set it exactly.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|source| KeysError::Write {
                path: path.to_path_buf(),
                source,
            })?;
    }
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|source| KeysError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Reads a key file into a zeroizing string.
fn read_secret(path: &Path) -> Result<Zeroizing<String>, KeysError> {
    match fs::read(path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            match std::str::from_utf8(&bytes) {
                Ok(s) => Ok(Zeroizing::new(s.to_owned())),
                Err(_) => Err(KeysError::Malformed {
                    path: path.to_path_buf(),
                    reason: "it is not UTF-8 text",
                    expected: "a text key file",
                }),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(KeysError::Missing {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(KeysError::Unreadable {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Loads the service's age identity from a file in `age-keygen` form:
/// blank lines and `#` comments are ignored; exactly one
/// `AGE-SECRET-KEY-1...` line must remain.
pub fn load_identity(path: &Path) -> Result<age::x25519::Identity, KeysError> {
    const EXPECTED: &str =
        "one AGE-SECRET-KEY-1... line (as written by `custos keys init` or `age-keygen`)";
    let text = read_secret(path)?;
    let mut found: Option<age::x25519::Identity> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if found.is_some() {
            return Err(KeysError::Malformed {
                path: path.to_path_buf(),
                reason: "it holds more than one key line",
                expected: EXPECTED,
            });
        }
        let id = line
            .parse::<age::x25519::Identity>()
            .map_err(|_| KeysError::Malformed {
                path: path.to_path_buf(),
                reason: "its key line is not a valid age x25519 identity",
                expected: EXPECTED,
            })?;
        found = Some(id);
    }
    let id = found.ok_or_else(|| KeysError::Malformed {
        path: path.to_path_buf(),
        reason: "it holds no key line",
        expected: EXPECTED,
    })?;
    warn_if_exposed(path);
    Ok(id)
}

/// Logs a warning when a secret key file is readable by group or others.
fn warn_if_exposed(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = fs::metadata(path) {
            if m.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "secret key file is readable by group or others; chmod 600 it");
            }
        }
    }
}

/// The signing key file that sits next to an identity file (`signing.key` in
/// the same directory).
pub fn signing_key_path_for(identity_path: &Path) -> PathBuf {
    match identity_path.parent() {
        Some(dir) => dir.join(SIGNING_KEY_FILE),
        None => PathBuf::from(SIGNING_KEY_FILE),
    }
}

/// The keys the key vault is opened with: the identity at `identity_path`
/// and the `signing.key` beside it (reads and writes), or, without one,
/// the `signing.pub` beside it (reads only: a recovery identity).
pub fn load_vault_keys(identity_path: &Path) -> Result<crate::vault::VaultKeys, KeysError> {
    let identity = load_identity(identity_path)?;
    let signing = signing_key_path_for(identity_path);
    if signing.exists() {
        return Ok(crate::vault::VaultKeys::new(
            identity,
            load_signing_key(&signing)?,
        ));
    }
    let public = signing.with_file_name(PUBLIC_KEY_FILE);
    if public.exists() {
        return Ok(crate::vault::VaultKeys::read_only(
            identity,
            load_public_key(&public)?,
        ));
    }
    Err(KeysError::NoSigner {
        identity: identity_path.to_path_buf(),
    })
}

/// Loads the ed25519 signing key (PKCS#8 PEM, `-----BEGIN PRIVATE KEY-----`).
pub fn load_signing_key(path: &Path) -> Result<ed25519_dalek::SigningKey, KeysError> {
    let text = read_secret(path)?;
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(text.trim()).map_err(|_| {
        KeysError::Malformed {
            path: path.to_path_buf(),
            reason: "it is not a PKCS#8 PEM ed25519 private key",
            expected: "a `-----BEGIN PRIVATE KEY-----` document as written by `custos keys init`",
        }
    })?;
    warn_if_exposed(path);
    Ok(key)
}

/// Loads an ed25519 public key (SPKI PEM, `-----BEGIN PUBLIC KEY-----`).
pub fn load_public_key(path: &Path) -> Result<ed25519_dalek::VerifyingKey, KeysError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(KeysError::Missing {
                path: path.to_path_buf(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return Err(KeysError::Malformed {
                path: path.to_path_buf(),
                reason: "it is not UTF-8 text",
                expected: "a `-----BEGIN PUBLIC KEY-----` document",
            })
        }
        Err(source) => {
            return Err(KeysError::Unreadable {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    ed25519_dalek::VerifyingKey::from_public_key_pem(text.trim()).map_err(|_| {
        KeysError::Malformed {
            path: path.to_path_buf(),
            reason: "it is not an SPKI PEM ed25519 public key",
            expected: "a `-----BEGIN PUBLIC KEY-----` document as written by `custos keys init`",
        }
    })
}

/// Parses an age x25519 recipient (`age1...`), e.g. a recovery key from a
/// policy. Surrounding whitespace is ignored.
pub fn parse_recipient(s: &str) -> Result<age::x25519::Recipient, KeysError> {
    s.trim()
        .parse::<age::x25519::Recipient>()
        .map_err(|reason| KeysError::Recipient {
            value: s.trim().chars().take(80).collect(),
            reason,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, Verifier};

    #[test]
    fn init_then_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("keys");
        let k = init_keys(&out).unwrap();
        let id = load_identity(&k.identity_path).unwrap();
        assert_eq!(id.to_public().to_string(), k.recipient);
        assert_eq!(parse_recipient(&k.recipient).unwrap(), id.to_public());
        assert_eq!(signing_key_path_for(&k.identity_path), k.signing_key_path);
        let sk = load_signing_key(&k.signing_key_path).unwrap();
        let pk = load_public_key(&k.public_key_path).unwrap();
        assert_eq!(sk.verifying_key(), pk);
        let sig = sk.sign(b"report");
        assert!(pk.verify(b"report", &sig).is_ok());
        assert!(pk.verify(b"rep0rt", &sig).is_err());
    }

    #[test]
    fn malformed_identity_error_does_not_echo_contents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("service.age");
        fs::write(&p, "# comment\nAGE-SECRET-KEY-1NOTAREALKEYBUTSECRETISH\n").unwrap();
        let e = load_identity(&p).err().unwrap();
        assert!(matches!(e, KeysError::Malformed { .. }));
        assert!(!e.to_string().contains("NOTAREALKEY"), "{e}");

        fs::write(&p, "# only comments\n\n").unwrap();
        assert!(matches!(
            load_identity(&p).err().unwrap(),
            KeysError::Malformed { .. }
        ));

        let two = format!(
            "{}\n{}\n",
            age::secrecy::ExposeSecret::expose_secret(
                &age::x25519::Identity::generate().to_string()
            ),
            age::secrecy::ExposeSecret::expose_secret(
                &age::x25519::Identity::generate().to_string()
            )
        );
        fs::write(&p, two).unwrap();
        assert!(matches!(
            load_identity(&p).err().unwrap(),
            KeysError::Malformed { .. }
        ));
    }

    #[test]
    fn missing_files_are_reported_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope.age");
        assert!(matches!(load_identity(&p), Err(KeysError::Missing { .. })));
        assert!(matches!(
            load_signing_key(&p),
            Err(KeysError::Missing { .. })
        ));
        assert!(matches!(
            load_public_key(&p),
            Err(KeysError::Missing { .. })
        ));
        let e = load_identity(&p).err().unwrap().to_string();
        assert!(e.contains("nope.age"), "{e}");
    }

    #[test]
    fn malformed_signing_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("signing.key");
        fs::write(
            &p,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(matches!(
            load_signing_key(&p),
            Err(KeysError::Malformed { .. })
        ));
        assert!(matches!(
            load_public_key(&p),
            Err(KeysError::Malformed { .. })
        ));
    }

    #[test]
    fn bad_recipient_is_refused() {
        assert!(matches!(
            parse_recipient("age1notarecipient"),
            Err(KeysError::Recipient { .. })
        ));
        let id = age::x25519::Identity::generate();
        let s = format!("  {}\n", id.to_public());
        assert_eq!(parse_recipient(&s).unwrap(), id.to_public());
    }
}
