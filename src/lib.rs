//! custos: encrypted, deduplicated, crypto-shreddable backups of record stores.
//!
//! The modules follow the data pipeline:
//! `store` (read and rebuild record stores) → `chunk` (content-defined
//! chunking) → `crypto` (keys, AEAD, pseudonyms) → `vault` (wrapped unit keys)
//! → `repo` (the stored objects: packs, index, manifests) → `target` (object
//! storage). `ops` holds the operations built from them (init, backup,
//! restore, check), `policy` the policy file, `state` the local state
//! directory, `demo` the generated demo data.

pub mod chunk;
pub mod crypto;
pub mod demo;
pub mod keys;
pub mod ops;
pub mod policy;
pub mod progress;
pub mod repo;
pub mod schedule;
pub mod state;
pub mod store;
pub mod target;
pub mod vault;

/// The version string written into reports, manifests and certificates.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
