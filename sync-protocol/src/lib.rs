//! # sync-protocol
//!
//! The part of outpost that every node role and the simulator share, written without I/O:
//! no sockets, no files, no threads, no wall clock. Time arrives as an argument (milliseconds
//! since the Unix epoch), identifiers are chosen by the caller, and bytes go in and out as
//! plain slices and vectors.
//!
//! What lives here:
//! - [`vocab`]: the closed vocabularies of the domain (service lines with their SNOMED CT codes,
//!   care settings, priorities, statuses, outcomes, photo views, consent kinds, node roles).
//! - [`nhs`]: the NHS number and its modulus 11 check.
//! - [`session`]: one advice session as an Automerge document, its typed read view, and the
//!   operations that edit it so that every merge obeys the rules in `docs/schema.md`
//!   (status and receipts only move forward, a consent withdrawal always wins, logs only grow).
//! - [`authorship`]: signed changes and the fleet roster; [`rules`]: who may write what, checked
//!   on every received change.
//! - [`wire`]: the framing (type byte, length, payload), every frame, and a decoder that never panics.
//! - [`recon`]: fingerprints of document sets and range-based set reconciliation.
//! - [`blob`]: verified chunked blob transfer over BLAKE3's tree.
//! - [`scope`]: which node may hold which session.
//! - [`engine`]: one peer-to-peer conversation as a state machine over a [`engine::Replica`].
//! - [`mem`]: an in-memory replica, for tests and the simulator.
//! - [`call`]: call escalation: the routing log, the hub's router policy, the E-model gate.
//! - [`directory`]: an ICB's directory of service lines, their hours and rotas, as a document.
//! - [`voice`]: the call codec (IMA ADPCM, 32 kbit/s), voice datagrams, the jitter buffer.
//! - [`links`]: the named link profiles of the domain brief, shared by the simulator and the
//!   node's link emulator.

pub mod accept;
pub mod audit;
pub mod authorship;
pub mod blob;
pub mod call;
pub mod directory;
pub mod engine;
pub mod leg;
pub mod links;
pub mod mem;
pub mod nhs;
pub mod recon;
pub mod router;
pub mod routing;
pub mod rules;
pub mod scope;
pub mod session;
pub mod vocab;
pub mod voice;
pub mod wire;

pub use nhs::{NhsNumber, NhsNumberError};
pub use session::{ModelError, SessionDoc, SessionId, SessionView};

/// Milliseconds since the Unix epoch. The only notion of time in this crate: callers pass it in.
pub type TimeMs = i64;
