//! Signed documents: drill reports, destruction certificates and audit
//! checkpoints, signed with the service's ed25519 key so that anyone holding
//! the public key alone can check them.
//!
//! A signed document is one JSON object, written in its canonical form:
//! object keys sorted, two-space indentation (`serde_json`'s pretty form),
//! one trailing newline.
//!
//! ```json
//! {
//!   "body": { ... },
//!   "kind": "custos.drill-report",
//!   "signature": {
//!     "alg": "ed25519",
//!     "key_id": "<first 16 bytes of BLAKE3(public key), hex>",
//!     "value": "<64-byte signature, hex>"
//!   }
//! }
//! ```
//!
//! The signature covers `"custos-signed-v1\n" || kind || "\n" ||
//! compact-canonical(body)`, where compact-canonical is the body as JSON with
//! sorted keys and no whitespace. Verification also requires the file to be
//! exactly in canonical form, so that any edit (even of a space) is refused,
//! not only edits of values.

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;

const DOMAIN: &[u8] = b"custos-signed-v1\n";

/// Why a signed document was refused.
#[derive(Debug, Error)]
pub enum SignedError {
    #[error("not a JSON document: {0}")]
    Json(String),
    #[error("not a signed custos document: {0}")]
    Shape(&'static str),
    #[error("the document is not in canonical form (it was edited after signing)")]
    NotCanonical,
    #[error("the document is signed by key {found}, not by the given key {expected}")]
    OtherKey { found: String, expected: String },
    #[error("the signature does not match the content (the document was altered)")]
    BadSignature,
    #[error("the document is a {found}, expected a {expected}")]
    WrongKind { found: String, expected: String },
}

/// The short id of a public key: the first 16 bytes of its BLAKE3 hash, hex.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&blake3::hash(key.as_bytes()).as_bytes()[..16])
}

/// Signs `body` as a document of `kind`; returns the canonical text
/// (ending with a newline) to store as is.
pub fn sign<T: Serialize>(key: &SigningKey, kind: &str, body: &T) -> Result<String, SignedError> {
    let body = serde_json::to_value(body).map_err(|e| SignedError::Json(e.to_string()))?;
    let sig = key.sign(&message(kind, &body));
    let mut sigobj = Map::new();
    sigobj.insert("alg".into(), Value::String("ed25519".into()));
    sigobj.insert("key_id".into(), Value::String(key_id(&key.verifying_key())));
    sigobj.insert("value".into(), Value::String(hex::encode(sig.to_bytes())));
    let mut doc = Map::new();
    doc.insert("body".into(), body);
    doc.insert("kind".into(), Value::String(kind.into()));
    doc.insert("signature".into(), Value::Object(sigobj));
    Ok(pretty(&Value::Object(doc)))
}

/// A verified document: its kind, body and signer.
#[derive(Clone, Debug)]
pub struct Verified {
    pub kind: String,
    pub body: Value,
    pub key_id: String,
}

/// Verifies a signed document's text with `key`; with `kind`, also
/// requires the document to be of that kind.
pub fn verify(text: &str, key: &VerifyingKey, kind: Option<&str>) -> Result<Verified, SignedError> {
    let v: Value = serde_json::from_str(text).map_err(|e| SignedError::Json(e.to_string()))?;
    let Value::Object(doc) = &v else {
        return Err(SignedError::Shape("the top level is not an object"));
    };
    if doc.len() != 3 {
        return Err(SignedError::Shape(
            "expected exactly body, kind and signature",
        ));
    }
    if pretty(&v) != text {
        return Err(SignedError::NotCanonical);
    }
    let body = doc.get("body").ok_or(SignedError::Shape("no body"))?;
    let doc_kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .ok_or(SignedError::Shape("no kind"))?;
    let sig = doc
        .get("signature")
        .and_then(Value::as_object)
        .ok_or(SignedError::Shape("no signature"))?;
    if sig.get("alg").and_then(Value::as_str) != Some("ed25519") {
        return Err(SignedError::Shape("signature algorithm is not ed25519"));
    }
    let found = sig
        .get("key_id")
        .and_then(Value::as_str)
        .ok_or(SignedError::Shape("no signature key_id"))?;
    let expected = key_id(key);
    if found != expected {
        return Err(SignedError::OtherKey {
            found: found.to_string(),
            expected,
        });
    }
    let value = sig
        .get("value")
        .and_then(Value::as_str)
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
        .ok_or(SignedError::Shape("signature value is not 64 bytes of hex"))?;
    let sig = ed25519_dalek::Signature::from_bytes(&value);
    key.verify(&message(doc_kind, body), &sig)
        .map_err(|_| SignedError::BadSignature)?;
    if let Some(k) = kind {
        if k != doc_kind {
            return Err(SignedError::WrongKind {
                found: doc_kind.to_string(),
                expected: k.to_string(),
            });
        }
    }
    Ok(Verified {
        kind: doc_kind.to_string(),
        body: body.clone(),
        key_id: found.to_string(),
    })
}

/// Reads a signed document's kind and body WITHOUT verifying it (for
/// listing); use [`verify`] before trusting it.
pub fn peek(text: &str) -> Result<(String, Value), SignedError> {
    let v: Value = serde_json::from_str(text).map_err(|e| SignedError::Json(e.to_string()))?;
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .ok_or(SignedError::Shape("no kind"))?
        .to_string();
    let body = v
        .get("body")
        .cloned()
        .ok_or(SignedError::Shape("no body"))?;
    Ok((kind, body))
}

fn message(kind: &str, body: &Value) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(kind.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(&compact(body));
    m
}

/// A copy of `v` with every object's keys in sorted order, whatever map
/// type serde_json was built with.
pub fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for k in keys {
                out.insert(k.clone(), sorted(&m[k]));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Compact JSON with sorted keys.
pub fn compact(v: &Value) -> Vec<u8> {
    serde_json::to_vec(&sorted(v)).expect("a JSON value serializes")
}

/// Pretty JSON with sorted keys and a trailing newline: the canonical
/// text of a signed document.
pub fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(&sorted(v)).expect("a JSON value serializes");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> SigningKey {
        SigningKey::generate(&mut rand::rngs::OsRng)
    }

    #[test]
    fn round_trip_and_every_single_byte_edit_fails() {
        let k = key();
        let body = json!({"verdict": "PASS", "tables": [{"name": "cdrs", "rows": 12}], "a": 1.5});
        let text = sign(&k, "custos.test", &body).unwrap();
        let v = verify(&text, &k.verifying_key(), Some("custos.test")).unwrap();
        assert_eq!(v.body, body);
        assert_eq!(v.kind, "custos.test");
        let bytes = text.as_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] ^= 0x01;
            let Ok(t) = String::from_utf8(b) else {
                continue;
            };
            assert!(
                verify(&t, &k.verifying_key(), None).is_err(),
                "edit at byte {i} was accepted"
            );
        }
    }

    #[test]
    fn other_key_and_kind_are_refused() {
        let k = key();
        let text = sign(&k, "custos.a", &json!({"x": 1})).unwrap();
        assert!(matches!(
            verify(&text, &key().verifying_key(), None),
            Err(SignedError::OtherKey { .. })
        ));
        assert!(matches!(
            verify(&text, &k.verifying_key(), Some("custos.b")),
            Err(SignedError::WrongKind { .. })
        ));
    }

    #[test]
    fn reformatted_document_is_refused() {
        let k = key();
        let text = sign(&k, "custos.a", &json!({"x": 1, "y": [1, 2]})).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let compact = serde_json::to_string(&v).unwrap();
        assert!(matches!(
            verify(&compact, &k.verifying_key(), None),
            Err(SignedError::NotCanonical)
        ));
    }
}
