//! custos: encrypted, deduplicated, crypto-shreddable backups of record stores.
//!
//! The modules follow the data pipeline:
//! `store` (read and rebuild record stores) → `chunk` (content-defined
//! chunking) → `crypto` (keys, AEAD, pseudonyms) → `vault` (wrapped unit keys)
//! → `repo` (the stored objects: packs, index, manifests) → `target` (object
//! storage). `ops` holds the operations built from them (init, backup,
//! restore, check), `policy` the policy file, `state` the local state
//! directory, `signed` signed documents (reports, certificates), `audit` the
//! hash-chained audit trail, `users` roles and API tokens, `console` the
//! auditor console and metrics (`custos serve`), `demo` the generated demo data.

pub mod audit;
pub mod chunk;
pub mod console;
pub mod crypto;
pub mod demo;
pub mod keys;
pub mod ops;
pub mod policy;
pub mod progress;
pub mod repo;
pub mod signed;
pub mod state;
pub mod store;
pub mod target;
pub mod users;
pub mod vault;

/// The version string written into reports, manifests and certificates.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
