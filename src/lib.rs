//! custos: encrypted, deduplicated, crypto-shreddable backups of record stores.
//!
//! The modules follow the data pipeline:
//! `store` (read and rebuild record stores) → `chunk` (content-defined
//! chunking) → `crypto` (keys, AEAD, pseudonyms) → `vault` (wrapped unit keys)
//! → `repo` (the stored objects: packs, index, manifests) → `target` (object
//! storage). `ops` holds the operations built from them (init, backup,
//! restore, check, prune), `policy` the policy file. After the pipeline:
//! `replicate` (copies across targets), `drill` (restore drills and their
//! reports), `retention` (what is due), `signed` (signed documents), `audit`
//! (the hash-chained trail), `state` (the local state directory), `demo`
//! (generated demo data), `shred` (crypto-shredding: requests, holds,
//! destruction, proof, certificates), `schedule` (the daemon: cron, job
//! state, leases), `users` (roles and API tokens), `console` (the auditor
//! console, JSON API and metrics of `custos serve`).

pub mod audit;
pub mod chunk;
pub mod console;
pub mod crypto;
pub mod demo;
pub mod drill;
pub mod keys;
pub mod ops;
pub mod policy;
pub mod prefetch;
pub mod progress;
pub mod replicate;
pub mod repo;
pub mod retention;
pub mod schedule;
pub mod shred;
pub mod signed;
pub mod state;
pub mod store;
pub mod target;
pub mod users;
pub mod vault;

/// The version string written into reports, manifests and certificates.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
