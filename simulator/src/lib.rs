//! # outpost-sim
//!
//! Will hold (issue 4) the deterministic simulator of a region: one thread, virtual time and
//! one seeded random generator driving many outpost nodes that run the real `sync-protocol`
//! code and the real session model over emulated links (the named link profiles of
//! `../shared/domain.md`), with in-memory storage that keeps the node's durability semantics,
//! composable faults (crash, partition, clog, clock skew, corrupt and duplicated frames) and
//! invariant checkers (convergence, nothing acknowledged lost, scope, truthful receipts,
//! status never backwards).
//!
//! Today it holds nothing but this description and a check that it links against the shared model.

/// The schema version of the session documents this simulator will drive.
pub const SESSION_SCHEMA: i64 = sync_protocol::session::SCHEMA_VERSION;
