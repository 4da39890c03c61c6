//! Verified blob transfer: every chunk is checked on arrival against the blob's BLAKE3 hash.
//!
//! BLAKE3 hashes its input as a binary tree of 1 KiB chunks. A blob cut into chunks of a
//! power-of-two size (at least 1 KiB) at aligned offsets has one subtree per chunk, so the
//! *chaining value* of each chunk can be computed on its own (`blake3::hazmat`). A manifest
//! lists those chaining values; the receiver merges them up the tree and accepts the manifest
//! only if the result is the blob's hash, which it already has from the session document.
//! From then on every chunk is verified alone, before it is stored: a corrupt or forged chunk
//! is refused as soon as it arrives, and a transfer can stop and resume at any chunk.

use blake3::hazmat::{ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root};

use crate::wire::{BlobManifest, Hash};

/// Chunk size used by outpost for blobs.
pub const CHUNK_SIZE: u32 = 16 * 1024;

/// The largest photo a session may record (a phone JPEG is 2 to 4 MB): a record declaring more
/// is refused by the write rules, and a receiver fetches no more than this of any photo.
pub const MAX_BLOB_BYTES: u64 = 25 * 1024 * 1024;

/// Why a manifest or chunk is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// A chunk size that is not a power of two of at least 1 KiB.
    #[error("chunk size {0} is not a power of two of at least 1 KiB")]
    ChunkSize(u32),
    /// The manifest has the wrong number of chaining values for the size.
    #[error("manifest lists {found} chunks; a blob of {size} bytes has {expected}")]
    ChunkCount {
        /// Size of the blob.
        size: u64,
        /// Chunks listed.
        found: usize,
        /// Chunks expected.
        expected: u64,
    },
    /// The chaining values do not add up to the blob's hash.
    #[error("the manifest does not match the blob's hash")]
    Mismatch,
    /// A chunk index beyond the blob.
    #[error("chunk {index} is beyond the blob's {count} chunks")]
    Index {
        /// The index.
        index: u32,
        /// Chunks in the blob.
        count: u64,
    },
    /// A chunk whose bytes do not match the manifest.
    #[error("chunk {0} does not match its hash")]
    Chunk(u32),
}

/// Number of chunks for a blob of `size` bytes.
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size)).max(1)
}

/// The expected length of chunk `index`.
pub fn chunk_len(size: u64, chunk_size: u32, index: u32) -> u64 {
    let start = u64::from(index) * u64::from(chunk_size);
    size.saturating_sub(start).min(u64::from(chunk_size))
}

fn check_chunk_size(chunk_size: u32) -> Result<(), BlobError> {
    if chunk_size >= 1024 && chunk_size.is_power_of_two() { Ok(()) } else { Err(BlobError::ChunkSize(chunk_size)) }
}

/// The chaining value of one chunk at its place in the blob (the root hash for a one-chunk blob).
fn chunk_cv(data: &[u8], index: u32, chunk_size: u32, single: bool) -> ChainingValue {
    if single {
        return *blake3::hash(data).as_bytes();
    }
    let mut h = blake3::Hasher::new();
    h.set_input_offset(u64::from(index) * u64::from(chunk_size));
    h.update(data);
    h.finalize_non_root()
}

/// Builds the manifest of a blob held whole.
pub fn manifest(data: &[u8], chunk_size: u32) -> Result<BlobManifest, BlobError> {
    check_chunk_size(chunk_size)?;
    let size = data.len() as u64;
    let single = size <= u64::from(chunk_size);
    let cvs = if single {
        vec![chunk_cv(data, 0, chunk_size, true)]
    } else {
        data.chunks(chunk_size as usize).enumerate().map(|(i, c)| chunk_cv(c, i as u32, chunk_size, false)).collect()
    };
    Ok(BlobManifest { hash: Hash(*blake3::hash(data).as_bytes()), size, chunk_size, cvs })
}

/// Checks that a manifest describes the blob `hash`.
pub fn verify_manifest(m: &BlobManifest, hash: &Hash) -> Result<(), BlobError> {
    check_chunk_size(m.chunk_size)?;
    let expected = chunk_count(m.size, m.chunk_size);
    if m.cvs.len() as u64 != expected {
        return Err(BlobError::ChunkCount { size: m.size, found: m.cvs.len(), expected });
    }
    if m.hash != *hash {
        return Err(BlobError::Mismatch);
    }
    let root = if m.size <= u64::from(m.chunk_size) {
        m.cvs[0]
    } else {
        let (left, right) = split(m, 0, m.size);
        *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes()
    };
    if root == hash.0 { Ok(()) } else { Err(BlobError::Mismatch) }
}

/// The chaining values of the two children of the subtree covering `[offset, offset + len)`.
fn split(m: &BlobManifest, offset: u64, len: u64) -> (ChainingValue, ChainingValue) {
    let left_len = left_subtree_len(len);
    (subtree(m, offset, left_len), subtree(m, offset + left_len, len - left_len))
}

fn subtree(m: &BlobManifest, offset: u64, len: u64) -> ChainingValue {
    let cs = u64::from(m.chunk_size);
    if len <= cs {
        // Aligned: every subtree boundary above one chunk is a multiple of the chunk size.
        return m.cvs[(offset / cs) as usize];
    }
    let (l, r) = split(m, offset, len);
    merge_subtrees_non_root(&l, &r, Mode::Hash)
}

/// Checks one chunk against a verified manifest.
pub fn verify_chunk(m: &BlobManifest, index: u32, data: &[u8]) -> Result<(), BlobError> {
    let count = chunk_count(m.size, m.chunk_size);
    if u64::from(index) >= count {
        return Err(BlobError::Index { index, count });
    }
    if data.len() as u64 != chunk_len(m.size, m.chunk_size, index) {
        return Err(BlobError::Chunk(index));
    }
    let single = m.size <= u64::from(m.chunk_size);
    if chunk_cv(data, index, m.chunk_size, single) == m.cvs[index as usize] {
        Ok(())
    } else {
        Err(BlobError::Chunk(index))
    }
}

/// How much of a photo a node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// None of it.
    Nothing,
    /// Some chunks (a transfer under way or interrupted).
    Partial,
    /// Every chunk, verified.
    Whole,
    /// It held it whole and let it go once its hub confirmed holding it (a thumbnail stays).
    Offloaded,
}

/// Whether node `me` should fetch a photo from `peer`, in a session both may see (the
/// caller's scope check): photos others attached, whose consent stands, not already held
/// whole (or let go) here, that the peer attached or has confirmed holding. The one rule the
/// node's store and the in-memory replica both follow.
pub fn should_fetch(
    me: &str,
    peer: &str,
    added_by: &str,
    consent_withdrawn: bool,
    peer_holds: bool,
    held: Held,
) -> bool {
    !consent_withdrawn
        && added_by != me
        && (added_by == peer || peer_holds)
        && matches!(held, Held::Nothing | Held::Partial)
}

/// How many photo chunks a receiving side keeps requested: enough to keep the link busy for
/// [`WINDOW_GAIN`] round trips at the rate chunks have been arriving, and at least
/// [`MIN_CHUNKS`] (the engine's default). The rate is the highest seen over the last two
/// seconds, measured over intervals of at least 100 ms; the round trip is the transport's
/// smoothed one, which on a loaded uplink includes the queue. The node feeds it QUIC's figures
/// and the simulator its link model's, so both size the window by this one rule.
#[derive(Debug, Clone, Default)]
pub struct ChunkWindow {
    /// Start of the current measuring interval, and the bytes received by then.
    since: Option<(u64, u64)>,
    /// The best rate (bytes per second) and when it was seen.
    best: f64,
    best_at: Option<u64>,
}

/// Round trips' worth of chunks kept requested: one for the link, the rest for the chunks
/// held up behind a lost packet while it is sent again (one stream carries them in order).
pub const WINDOW_GAIN: f64 = 4.0;
/// The smallest window, in chunks.
pub const MIN_CHUNKS: usize = 3;
/// The largest window, in chunks (2 MiB).
pub const MAX_CHUNKS: usize = 128;
/// The shortest interval over which a rate is measured, milliseconds.
const RATE_INTERVAL_MS: u64 = 100;
/// How long the best rate is kept, milliseconds.
const RATE_MEMORY_MS: u64 = 2_000;

impl ChunkWindow {
    /// A window for a new connection.
    pub fn new() -> Self {
        ChunkWindow::default()
    }

    /// The window in chunks, given a monotonic time in milliseconds, the bytes received on the
    /// connection so far and its round trip in milliseconds.
    pub fn update(&mut self, now_ms: u64, received: u64, rtt_ms: f64) -> usize {
        match self.since {
            None => self.since = Some((now_ms, received)),
            Some((t0, b0)) => {
                let dt = now_ms.saturating_sub(t0);
                if dt >= RATE_INTERVAL_MS {
                    let rate = received.saturating_sub(b0) as f64 * 1000.0 / dt as f64;
                    let stale = self.best_at.is_none_or(|t| now_ms.saturating_sub(t) > RATE_MEMORY_MS);
                    if rate >= self.best || stale {
                        self.best = rate;
                        self.best_at = Some(now_ms);
                    }
                    self.since = Some((now_ms, received));
                }
            }
        }
        let in_flight = self.best * rtt_ms.max(0.0) / 1000.0 * WINDOW_GAIN / f64::from(CHUNK_SIZE);
        let want = (in_flight.ceil().min(MAX_CHUNKS as f64) as usize).saturating_add(2);
        want.clamp(MIN_CHUNKS, MAX_CHUNKS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn manifests_verify_for_sizes_around_the_tree_boundaries() {
        let cs = 1024u32 * 4;
        for n in [0, 1, 1023, 4096, 4097, 8192, 8193, 12_288, 40_000, 65_536, 65_537, 300_001] {
            let d = data(n);
            let m = manifest(&d, cs).unwrap();
            verify_manifest(&m, &Hash(*blake3::hash(&d).as_bytes())).unwrap_or_else(|e| panic!("size {n}: {e}"));
            for (i, c) in d.chunks(cs as usize).enumerate() {
                verify_chunk(&m, i as u32, c).unwrap();
            }
        }
    }

    #[test]
    fn a_forged_chunk_or_manifest_is_refused() {
        let d = data(100_000);
        let mut m = manifest(&d, CHUNK_SIZE).unwrap();
        let hash = Hash(*blake3::hash(&d).as_bytes());
        let mut bad = d[..CHUNK_SIZE as usize].to_vec();
        bad[7] ^= 1;
        assert_eq!(verify_chunk(&m, 0, &bad), Err(BlobError::Chunk(0)));
        assert!(verify_chunk(&m, 99, &bad).is_err());
        m.cvs[2][0] ^= 1;
        assert_eq!(verify_manifest(&m, &hash), Err(BlobError::Mismatch));
        m.cvs.pop();
        assert!(matches!(verify_manifest(&m, &hash), Err(BlobError::ChunkCount { .. })));
    }

    proptest! {
        #[test]
        fn any_blob_and_chunk_size_verifies(n in 0usize..200_000, shift in 10u32..16) {
            let d = data(n);
            let cs = 1u32 << shift;
            let m = manifest(&d, cs).unwrap();
            prop_assert!(verify_manifest(&m, &Hash(*blake3::hash(&d).as_bytes())).is_ok());
            if !d.is_empty() {
                let last = (d.len() - 1) / cs as usize;
                let start = last * cs as usize;
                prop_assert!(verify_chunk(&m, last as u32, &d[start..]).is_ok());
            }
        }
    }

    #[test]
    fn the_chunk_window_follows_the_bandwidth_delay_product() {
        let mut w = ChunkWindow::new();
        assert_eq!(w.update(0, 0, 100.0), MIN_CHUNKS, "nothing measured yet");
        // 500 kB/s for a second, 100 ms round trip: 50 kB in flight, four times that requested.
        let mut got = 0;
        for i in 1..=10u64 {
            got = w.update(100 * i, 50_000 * i, 100.0);
        }
        assert_eq!(got, (500_000.0 * 0.1 * WINDOW_GAIN / f64::from(CHUNK_SIZE)).ceil() as usize + 2);
        // A long round trip on a fast link is capped.
        assert_eq!(w.update(1_100, 550_000, 60_000.0), MAX_CHUNKS);
        // A rate falls only once the best one is two seconds old.
        assert_eq!(w.update(1_200, 550_000, 100.0), got, "a still moment keeps the best rate");
        assert_eq!(w.update(3_300, 551_000, 100.0), MIN_CHUNKS, "a stopped link shrinks it");
    }

    #[test]
    fn a_photo_is_fetched_only_from_a_peer_that_holds_it_and_only_while_it_is_wanted_here() {
        use Held::*;
        // A hub fetching from the ambulance that attached it.
        assert!(should_fetch("hub", "amb", "amb", false, false, Nothing));
        assert!(should_fetch("hub", "amb", "amb", false, false, Partial), "an interrupted transfer resumes");
        // A desk fetching from a hub that confirmed holding it, not from one that did not.
        assert!(should_fetch("desk", "hub", "amb", false, true, Nothing));
        assert!(!should_fetch("desk", "hub", "amb", false, false, Nothing));
        // Never one's own, never after consent is withdrawn, never once held or let go.
        assert!(!should_fetch("amb", "hub", "amb", false, true, Nothing));
        assert!(!should_fetch("hub", "amb", "amb", true, false, Nothing));
        assert!(!should_fetch("hub", "amb", "amb", false, false, Whole));
        assert!(!should_fetch("amb", "hub", "desk", false, true, Offloaded));
    }
}
