//! Space on a disk that fills: a reserve kept beside the store, released when the disk is
//! nearly full so that reading, the audit of reading and syncing (which frees space by
//! handing photos to the hub) keep working, while new clinical writes are refused with "disk
//! full" until space is freed. Without it a full tablet could not even offload its photos.

use std::path::{Path, PathBuf};

use super::{Store, StoreError};

/// Bytes kept in reserve (`outpost.reserve` beside the database).
pub const RESERVE_BYTES: u64 = 8 * 1024 * 1024;
/// Below this much free space, new clinical writes are refused (twice the reserve: once the
/// reserve is released, what it freed stays for reads and sync).
pub const LOW_SPACE_BYTES: u64 = 2 * RESERVE_BYTES;
/// The reserve is made again once this much is free.
const REMAKE_BYTES: u64 = 8 * RESERVE_BYTES;

/// Edits that add content (and so are refused on a nearly full disk), besides new sessions.
/// (A received photo's receipt is not one: its chunks are already stored, and refusing the
/// receipt would only stall the sender.)
pub const GROWING_ACTIONS: &[&str] = &["message.send", "photo.attach"];

/// The reserve file of the database at `db`.
pub fn reserve_path(db: &Path) -> PathBuf {
    db.with_file_name("outpost.reserve")
}

/// Bytes free to this process on the file system holding `db`, if the system says.
pub fn free_bytes(db: &Path) -> Option<u64> {
    let dir = db.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Before the store opens: on a nearly full disk, releases the reserve (so that the store can
/// be read and synced). Returns whether the disk is low.
pub fn release_if_low(db: &Path) -> bool {
    let low = free_bytes(db).is_some_and(|f| f < LOW_SPACE_BYTES);
    let reserve = reserve_path(db);
    if low && reserve.exists() {
        match std::fs::remove_file(&reserve) {
            Ok(()) => tracing::warn!(
                "the disk is nearly full: released the {} MiB reserve so that reading and syncing keep working; \
                 new sessions, messages and photos are refused until space is freed",
                RESERVE_BYTES >> 20
            ),
            Err(e) => tracing::warn!("the disk is nearly full and the reserve could not be released: {e}"),
        }
    }
    low
}

/// After the store opened: makes the reserve if it is missing and there is room to spare.
pub fn keep_reserve(db: &Path) {
    let reserve = reserve_path(db);
    if reserve.exists() || free_bytes(db).is_none_or(|f| f < REMAKE_BYTES) {
        return;
    }
    let made = (|| -> std::io::Result<()> {
        let tmp = reserve.with_extension("reserve.tmp");
        let f = std::fs::File::create(&tmp)?;
        // Blocks really allocated (a sparse file would reserve nothing).
        if rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, RESERVE_BYTES).is_err() {
            use std::io::Write;
            let mut w = std::io::BufWriter::new(&f);
            w.write_all(&vec![0u8; RESERVE_BYTES as usize])?;
            w.flush()?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &reserve)
    })();
    if let Err(e) = made {
        tracing::warn!("cannot keep a space reserve beside the store: {e}");
    }
}

impl Store {
    /// Refuses a new clinical write while the disk is nearly full (the space left is kept for
    /// reading and syncing); releases the reserve if it is still there.
    pub(crate) fn check_space(&self) -> Result<(), StoreError> {
        if release_if_low(&self.path) {
            return Err(StoreError::DiskFull {
                context: "writing: the disk is nearly full and the space left is kept for reading and syncing \
                          (sync with the hub to hand it the photos and free their space)",
            });
        }
        // Space came back (a long-running daemon never reopens): keep the reserve again.
        keep_reserve(&self.path);
        Ok(())
    }
}
