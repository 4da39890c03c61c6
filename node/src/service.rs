//! Running as a service: one daemon per node directory (a lock), and the signals that stop it
//! (SIGTERM from systemd, SIGINT from a terminal).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Why the daemon cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Another daemon holds the directory.
    #[error(
        "another outpost daemon already runs on {dir}{}; stop it first (systemctl stop outpost, or Ctrl-C where it \
         runs): one directory has one daemon",
        holder.map(|p| format!(" (process {p})")).unwrap_or_default()
    )]
    AlreadyRunning {
        /// The node directory.
        dir: PathBuf,
        /// The holder's process id, as it wrote it.
        holder: Option<u32>,
    },
    /// The lock file could not be made or locked.
    #[error("cannot lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The signal handlers could not be installed.
    #[error("cannot listen for SIGTERM and SIGINT: {0}")]
    Signals(std::io::Error),
}

/// The lock file in a node directory.
pub const LOCK_FILE: &str = "daemon.lock";

/// Held while a daemon runs on a directory: an exclusive lock on `daemon.lock` (released by
/// the kernel when the process ends, however it ends, so a crash leaves no stale lock).
#[derive(Debug)]
pub struct DaemonLock {
    _file: File,
}

impl DaemonLock {
    /// Takes the directory's lock, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DaemonLock, ServiceError> {
        let path = dir.join(LOCK_FILE);
        let err = |source| ServiceError::Lock { path: path.clone(), source };
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(ServiceError::AlreadyRunning { dir: dir.to_path_buf(), holder: text.trim().parse().ok() });
            }
            Err(TryLockError::Error(e)) => return Err(err(e)),
        }
        // The holder's pid, for the message a second daemon prints.
        file.set_len(0).map_err(err)?;
        file.rewind().map_err(err)?;
        writeln!(file, "{}", std::process::id()).map_err(err)?;
        Ok(DaemonLock { _file: file })
    }
}

/// Waits for SIGTERM or SIGINT; returns which came.
pub async fn stop_signal() -> Result<&'static str, ServiceError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(ServiceError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServiceError::Signals)?;
    tokio::select! {
        _ = term.recv() => Ok("SIGTERM"),
        _ = int.recv() => Ok("SIGINT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_directory_is_refused_naming_the_holder_and_freed_when_dropped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = DaemonLock::acquire(dir.path()).expect("first lock");
        let second = DaemonLock::acquire(dir.path()).expect_err("second lock");
        let text = second.to_string();
        assert!(text.contains("already runs") && text.contains(&std::process::id().to_string()), "{text}");
        drop(first);
        DaemonLock::acquire(dir.path()).expect("the lock is free once the holder is gone");
    }
}
