//! # field-tests
//!
//! Will hold (issue 5) tests that start real `outpost` processes, each with its own SQLite
//! directory, talking QUIC with mutual TLS through a user-space UDP link emulator that applies
//! the same named link profiles as the simulator: a degradation ladder from urban 4G to
//! satellite, crash loops with SIGKILL, identity refusals and a thundering herd of edges.
//!
//! The crash test of the store already lives with the node (`node/tests/crash.rs`), because it
//! needs nothing but the node binary.
