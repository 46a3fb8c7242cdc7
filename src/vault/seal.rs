//! Sealing a vault object: its plaintext is signed with the service's
//! ed25519 key, then wrapped with age to every recipient. Opening unwraps it
//! and checks the signature before anything in it is decoded.
//!
//! age alone authenticates nothing about the writer: anyone holding a
//! recipient's public key can make an object that opens. The signature is
//! what tells the service's objects from planted ones (`docs/FORMAT.md`,
//! "Signed payloads").

use age::x25519::{Identity, Recipient};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use std::fmt;
use std::io::{Read, Write};
use zeroize::Zeroizing;

/// Length of the signature that ends a signed payload.
pub(super) const SIGNATURE_LEN: usize = 64;

/// What is signed: this context, then the BLAKE3-256 hash of the payload
/// before its signature.
const SIGNATURE_CONTEXT: &[u8] = b"custos vault payload\n";

/// The keys a vault is opened with: the age identity that unwraps its
/// objects, and the service's ed25519 key that signs them, or, for a reader
/// that holds only the service's public key (a recovery identity), checks
/// them. A vault opened with the public key alone reads but never writes.
#[derive(Clone)]
pub struct VaultKeys {
    identity: Identity,
    signer: Authority,
}

#[derive(Clone)]
enum Authority {
    Sign(SigningKey),
    Verify(VerifyingKey),
}

impl VaultKeys {
    /// The service's keys: objects are read and written.
    pub fn new(identity: Identity, signing: SigningKey) -> VaultKeys {
        VaultKeys {
            identity,
            signer: Authority::Sign(signing),
        }
    }

    /// An identity and the service's public key: objects are read (their
    /// signatures checked with `verifying`) and never written.
    pub fn read_only(identity: Identity, verifying: VerifyingKey) -> VaultKeys {
        VaultKeys {
            identity,
            signer: Authority::Verify(verifying),
        }
    }

    /// The age identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The public key every object must be signed with.
    pub fn verifying_key(&self) -> VerifyingKey {
        match &self.signer {
            Authority::Sign(k) => k.verifying_key(),
            Authority::Verify(k) => *k,
        }
    }

    /// Whether these keys can write (they hold the signing key).
    pub fn can_sign(&self) -> bool {
        matches!(self.signer, Authority::Sign(_))
    }

    /// The signature of `payload`, or `None` without the signing key.
    pub(super) fn sign(&self, payload: &[u8]) -> Option<[u8; SIGNATURE_LEN]> {
        match &self.signer {
            Authority::Sign(k) => Some(k.sign(&message(payload)).to_bytes()),
            Authority::Verify(_) => None,
        }
    }

    /// Whether `signature` is the service's signature of `payload`
    /// (strict verification: no malleable or small-order signatures).
    pub(super) fn verify(&self, payload: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = <[u8; SIGNATURE_LEN]>::try_from(signature) else {
            return false;
        };
        self.verifying_key()
            .verify_strict(&message(payload), &Signature::from_bytes(&sig))
            .is_ok()
    }
}

impl fmt::Debug for VaultKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultKeys")
            .field("recipient", &self.identity.to_public().to_string())
            .field(
                "verifying_key",
                &hex::encode(self.verifying_key().as_bytes()),
            )
            .field("can_sign", &self.can_sign())
            .finish()
    }
}

/// The signed message of a payload: the context and the payload's hash.
fn message(payload: &[u8]) -> [u8; SIGNATURE_CONTEXT.len() + 32] {
    let mut m = [0u8; SIGNATURE_CONTEXT.len() + 32];
    m[..SIGNATURE_CONTEXT.len()].copy_from_slice(SIGNATURE_CONTEXT);
    m[SIGNATURE_CONTEXT.len()..].copy_from_slice(blake3::hash(payload).as_bytes());
    m
}

/// Why a payload's signature was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SignatureError {
    /// The payload carries no signature (written in format 1).
    Unsigned,
    /// A signature that the service's key did not make.
    Invalid,
}

/// Splits a payload that starts with `magic` and a u16 version into what
/// was signed and checks its signature. Version 1 (or, for records, no
/// magic at all) is unsigned; version 2 and above end with the signature.
pub(super) fn signed_part<'a>(
    keys: &VaultKeys,
    plain: &'a [u8],
    magic: &[u8; 8],
) -> Result<&'a [u8], SignatureError> {
    if plain.len() < 10 || &plain[..8] != magic {
        return Err(SignatureError::Unsigned);
    }
    if u16::from_le_bytes([plain[8], plain[9]]) < 2 {
        return Err(SignatureError::Unsigned);
    }
    let Some(cut) = plain.len().checked_sub(SIGNATURE_LEN).filter(|c| *c >= 10) else {
        return Err(SignatureError::Invalid);
    };
    let (payload, sig) = plain.split_at(cut);
    if keys.verify(payload, sig) {
        Ok(payload)
    } else {
        Err(SignatureError::Invalid)
    }
}

/// Wraps a payload with age (binary format) to every recipient.
pub(super) fn wrap(plain: &[u8], recipients: &[Recipient]) -> Result<Vec<u8>, String> {
    let enc = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(plain.len() + 256 + 100 * recipients.len());
    let mut w = enc.wrap_output(&mut out).map_err(|e| e.to_string())?;
    w.write_all(plain).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// Why an age object could not be unwrapped.
pub(super) enum UnwrapError {
    NotRecipient,
    Other(String),
}

/// What an age error says about the object, in one line. age's own text
/// for a header it cannot parse suggests upgrading, which misleads here:
/// custos wrote the object, so an unreadable header is damage.
fn damage(e: &age::DecryptError) -> String {
    use age::DecryptError as E;
    match e {
        E::UnknownFormat | E::InvalidHeader => "its age header is damaged or missing".into(),
        E::InvalidMac => "its age header does not authenticate (damaged)".into(),
        E::KeyDecryptionFailed => "its file key does not decrypt (damaged)".into(),
        E::DecryptionFailed => "its payload does not decrypt (damaged or cut short)".into(),
        E::Io(e) => format!("it does not read as age ({e}): damaged or cut short"),
        e => e.to_string().lines().next().unwrap_or_default().to_string(),
    }
}

/// Unwraps an age object with the identity into a zeroizing buffer.
pub(super) fn unwrap(
    identity: &Identity,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, UnwrapError> {
    let dec = age::Decryptor::new_buffered(sealed).map_err(|e| UnwrapError::Other(damage(&e)))?;
    let mut r = dec
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => UnwrapError::NotRecipient,
            e => UnwrapError::Other(damage(&e)),
        })?;
    // Plaintext is shorter than the ciphertext: one allocation, no copies left behind.
    let mut plain = Zeroizing::new(Vec::with_capacity(sealed.len()));
    r.read_to_end(&mut plain).map_err(|e| {
        UnwrapError::Other(format!(
            "its payload does not decrypt (damaged or cut short: {e})"
        ))
    })?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> VaultKeys {
        VaultKeys::new(
            Identity::generate(),
            SigningKey::generate(&mut rand::rngs::OsRng),
        )
    }

    fn signed(k: &VaultKeys, body: &[u8]) -> Vec<u8> {
        let mut b = b"CUSTOSVK\x02\x00".to_vec();
        b.extend_from_slice(body);
        let sig = k.sign(&b).unwrap();
        b.extend_from_slice(&sig);
        b
    }

    #[test]
    fn a_signed_payload_is_accepted_and_any_change_is_not() {
        let k = keys();
        let p = signed(&k, b"entries and tombstones");
        assert_eq!(
            signed_part(&k, &p, b"CUSTOSVK").unwrap(),
            &p[..p.len() - SIGNATURE_LEN]
        );
        for i in 0..p.len() {
            let mut bad = p.clone();
            bad[i] ^= 0x20;
            assert!(
                signed_part(&k, &bad, b"CUSTOSVK").is_err(),
                "byte {i} changed"
            );
        }
        for n in 0..p.len() {
            assert!(signed_part(&k, &p[..n], b"CUSTOSVK").is_err(), "cut at {n}");
        }
        // Another service's key, and the right key read-only.
        assert_eq!(
            signed_part(&keys(), &p, b"CUSTOSVK"),
            Err(SignatureError::Invalid)
        );
        let reader = VaultKeys::read_only(Identity::generate(), k.verifying_key());
        assert!(signed_part(&reader, &p, b"CUSTOSVK").is_ok());
        assert_eq!(reader.sign(&p), None);
        assert!(!reader.can_sign());
    }

    #[test]
    fn version_one_and_foreign_payloads_are_unsigned() {
        let k = keys();
        assert_eq!(
            signed_part(&k, b"CUSTOSVK\x01\x00rest", b"CUSTOSVK"),
            Err(SignatureError::Unsigned)
        );
        assert_eq!(
            signed_part(&k, b"{\"format\":\"custos-shred-ledger\"}", b"CUSTOSVR"),
            Err(SignatureError::Unsigned)
        );
        // A signed shard is not a signed record.
        let p = signed(&k, b"x");
        assert_eq!(
            signed_part(&k, &p, b"CUSTOSVR"),
            Err(SignatureError::Unsigned)
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let k = keys();
        let d = format!("{k:?}");
        use age::secrecy::ExposeSecret;
        assert!(!d.contains(k.identity().to_string().expose_secret()));
        assert!(d.contains("can_sign: true"));
    }

    #[test]
    fn a_damaged_object_is_called_damaged_in_one_line() {
        let id = Identity::generate();
        let sealed = wrap(&[7u8; 3000], &[id.to_public()]).unwrap();
        let reason = |bytes: &[u8]| match unwrap(&id, bytes) {
            Ok(_) => panic!("a damaged object unwrapped"),
            Err(UnwrapError::NotRecipient) => panic!("damage taken for another identity"),
            Err(UnwrapError::Other(r)) => r,
        };
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for at in [0, 5, 30, sealed.len() / 2, sealed.len() - 3] {
            let mut b = sealed.clone();
            b[at] ^= 0x20;
            cases.push(b);
        }
        cases.push(sealed[..sealed.len() - 40].to_vec());
        cases.push(sealed[..20].to_vec());
        cases.push(Vec::new());
        for (n, b) in cases.iter().enumerate() {
            let r = reason(b);
            assert!(
                r.contains("damaged") || r.contains("cut short"),
                "case {n}: {r}"
            );
            assert!(!r.contains('\n') && !r.contains("upgrad"), "case {n}: {r}");
        }
    }
}
