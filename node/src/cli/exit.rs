//! Exit codes: what each error means to a script (the table in `cli.rs` and `docs/cli.md`).

use super::*;

/// The documented exit code for an error.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<NodeError>() {
            return match e {
                NodeError::Config(
                    ConfigError::NotANode { .. } | ConfigError::Invalid { .. } | ConfigError::StoreMissing { .. },
                ) => 3,
                NodeError::Config(ConfigError::Io { .. }) => 1,
                NodeError::Config(_) => 2,
                NodeError::Crypto(CryptoError::Random(_)) => 1,
                NodeError::Crypto(CryptoError::Open { .. }) => 3,
                NodeError::Crypto(_) => 3,
                NodeError::Store(s) => store_code(s),
                NodeError::Photo(_)
                | NodeError::Role { .. }
                | NodeError::OutOfScope { .. }
                | NodeError::WrongNodeForPerson { .. }
                | NodeError::Person(_)
                | NodeError::Pin(_)
                | NodeError::ClientKey { .. }
                | NodeError::Install(_)
                | NodeError::Backup(_)
                | NodeError::AmbiguousPhoto { .. }
                | NodeError::Rotation(_)
                | NodeError::NoIcb { .. }
                | NodeError::OnACall { .. }
                | NodeError::CallInTheWay { .. }
                | NodeError::TooManyRecords { .. } => 2,
                NodeError::Encode { .. } => 1,
                NodeError::NoSuchPhoto { .. } => 4,
                NodeError::Tls(crate::tls::TlsError::Invalid { what: "signed certificate", .. }) => 2,
                NodeError::Tls(_) => 3,
            };
        }
        if let Some(s) = cause.downcast_ref::<StoreError>() {
            return store_code(s);
        }
        if cause.downcast_ref::<InputError>().is_some() {
            return 2;
        }
        if let Some(e) = cause.downcast_ref::<OutputError>() {
            return if e.source.kind() == std::io::ErrorKind::StorageFull { 5 } else { 1 };
        }
        if let Some(e) = cause.downcast_ref::<crate::media::MediaError>() {
            return match e {
                crate::media::MediaError::Read { .. } => 2,
                crate::media::MediaError::Write { .. } => 1,
            };
        }
        if let Some(e) = cause.downcast_ref::<crate::net::NetError>() {
            return match e {
                crate::net::NetError::Store(s) => store_code(s),
                crate::net::NetError::Tls(crate::tls::TlsError::NoCertificate(_)) => 3,
                crate::net::NetError::Tls(_) => 3,
                _ => 6,
            };
        }
        if let Some(e) = cause.downcast_ref::<crate::settings::SettingsError>() {
            return match e {
                crate::settings::SettingsError::Io { .. } => 1,
                _ => 2,
            };
        }
        if let Some(e) = cause.downcast_ref::<crate::service::ServiceError>() {
            return match e {
                crate::service::ServiceError::AlreadyRunning { .. } => 7,
                _ => 1,
            };
        }
        if let Some(e) = cause.downcast_ref::<crate::tls::TlsError>() {
            return match e {
                crate::tls::TlsError::NotACa(_) | crate::tls::TlsError::AlreadyACa(_) => 3,
                crate::tls::TlsError::UnknownNode(_) => 4,
                crate::tls::TlsError::Invalid { what: "certificate request", .. }
                | crate::tls::TlsError::AuthorKeyTaken { .. }
                | crate::tls::TlsError::AuthorKeyRevoked { .. } => 2,
                _ => 1,
            };
        }
    }
    1
}

pub(crate) fn store_code(e: &StoreError) -> u8 {
    match e {
        StoreError::NoSuchSession(_)
        | StoreError::NoSuchUser(_)
        | StoreError::Ambiguous(_)
        | StoreError::NoSuchBlob(_)
        | StoreError::BlobOffloaded(_)
        | StoreError::ConsentWithdrawn(_)
        | StoreError::BlobIncomplete { .. } => 4,
        StoreError::DiskFull { .. } => 5,
        StoreError::Model { .. }
        | StoreError::NotYours { .. }
        | StoreError::Directory(DirectoryError::Invalid(_))
        | StoreError::ClientKeyReused { .. }
        | StoreError::Duplicate(_) => 2,
        StoreError::Crypto(_) => 3,
        _ => 1,
    }
}

/// Bad input found by the CLI itself.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// A file the CLI was asked to write (`--out`) could not be written; nothing was left at its
/// path (a regular file is written aside and moved into place whole).
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}; nothing was left there. {}", path.display(), output_hint(source))]
pub struct OutputError {
    /// The file asked for.
    pub path: PathBuf,
    /// Why it could not be written.
    pub source: std::io::Error,
}

fn output_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::StorageFull {
        "Free space on that disk (or give another --out) and retry"
    } else {
        "Check the path and its permissions (or give another --out) and retry"
    }
}
