//! # outpost-node
//!
//! The outpost node: everything that touches the disk, the clock and the network, around the
//! sans-IO core in `sync-protocol`. The `outpost` binary is a thin shell over [`cli`].
//!
//! - [`config`]: the node directory and `node.toml`; [`settings`]: how a daemon runs (`outpost.toml`,
//!   `OUTPOST_*`, flags).
//! - [`service`]: running as a service (the directory lock, stop signals).
//! - [`crypto`]: the node key and sealing (encryption at rest).
//! - [`store`]: the durable SQLite store of documents, blobs and the audit chain.
//! - [`photo`]: checking photos before they are stored.
//! - [`node`]: the clinical operations (create a session, send a message, attach a photo, ...).
//! - [`backup`]: backup and restore of a node directory; [`export`]: a session as FHIR R4 (UK
//!   Core) and as a letter, for other systems' records.
//! - [`cli`]: the command line; [`demo`]: `outpost demo`; [`render`]: text for people, shared
//!   by both and by the local API.
//! - [`net`]: QUIC with mutual TLS, conversations, the daemon, calls, the local API and metrics;
//!   [`tls`]: the fleet CA and identities; [`replica`]: the store as the engine sees it.
//! - [`media`]: call audio in and out; [`linkem`]: the user-space link emulator.

pub mod backup;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod export;
pub mod linkem;
pub mod media;
pub mod net;
pub mod node;
pub mod photo;
pub mod render;
pub mod replica;
pub mod service;
pub mod settings;
pub mod store;
pub mod tls;
