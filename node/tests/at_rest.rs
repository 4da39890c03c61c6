//! Encryption at rest: the SQLite file and its WAL hold no patient data in the clear.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use outpost_node::config::NodeDir;
use outpost_node::demo::scan_files;
use outpost_node::node::{InitParams, Node, PhotoRequest, SessionRequest};
use outpost_node::photo::synthetic_jpeg;
use outpost_node::store::wal_path;
use sync_protocol::NhsNumber;
use sync_protocol::session::{Patient, Requester, Service};
use sync_protocol::vocab::{
    CareSetting, Channel, ConsentKind, ConsentScope, NhsVerification, PhotoView, Priority, Role, ServiceLine,
};

const NHS: &str = "9434765919";
const SUMMARY: &str = "Mrs Evelyn Hartley-Smythe, pigmented lesion";
const MESSAGE: &str = "Bleeds on contact, irregular margin, grew 4 mm";
const NAME: &str = "Evelyn Hartley-Smythe";

#[test]
fn neither_the_database_nor_its_wal_holds_an_nhs_number_or_message_text_in_the_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = NodeDir::new(tmp.path().join("node"));
    let params =
        InitParams { name: "amb-07".into(), role: Role::Edge, org: None, icb: Some("QHM".into()), lines: vec![] };
    Node::init(&dir, &params, 1_790_000_000_000).unwrap();
    // Fold logs often, so that snapshots hold the sessions too and are checked.
    let opts = outpost_node::store::StoreOptions { compact_after: 4, ..Default::default() };
    let mut node = Node::open_with(&dir, opts).unwrap();
    let photo = synthetic_jpeg(800, 600, 11).unwrap();
    let mut ids = Vec::new();
    // Enough sessions and edits that logs are compacted into snapshots too.
    for i in 0..12 {
        let view = node
            .new_session(
                SessionRequest {
                    care_setting: CareSetting::AmbulanceOnScene,
                    requester: Requester { callback: Some("07700 900123".into()), ..Requester::default() },
                    patient: Patient {
                        nhs_number: Some(NhsNumber::parse(NHS).unwrap()),
                        verification: NhsVerification::Verified,
                        name: Some(NAME.into()),
                        ..Patient::default()
                    },
                    service: Service {
                        line: ServiceLine::Dermatology,
                        channel: Channel::Photo,
                        priority: Priority::Urgent,
                    },
                    summary: SUMMARY.into(),
                    draft: false,
                },
                1_790_000_000_000 + i,
            )
            .unwrap();
        for j in 0..10 {
            node.send_message(view.id, &format!("{MESSAGE} ({j})"), None, 1_790_000_001_000 + j).unwrap();
        }
        ids.push(view.id);
    }
    let req = PhotoRequest {
        view: PhotoView::CloseUp,
        body_site: "left forearm".into(),
        consent: ConsentKind::Verbal,
        scope: ConsentScope::RecordOnly,
    };
    node.attach_photo(ids[0], &photo, &req, 1_790_000_002_000).unwrap();
    let stats = node.stats().unwrap();
    assert!(stats.snapshots > 0, "compaction ran, so snapshots are checked too");
    assert!(stats.wal_file_bytes > 0, "the WAL is checked while it holds the writes");

    let files = [dir.db_path(), wal_path(&dir.db_path())];
    let photo_window = &photo.bytes[photo.bytes.len() / 2..photo.bytes.len() / 2 + 32];
    let needles: [&[u8]; 6] =
        [NHS.as_bytes(), SUMMARY.as_bytes(), MESSAGE.as_bytes(), NAME.as_bytes(), b"07700 900123", photo_window];
    assert_eq!(scan_files(&files, &needles).unwrap(), vec![0; needles.len()], "open store, WAL present");

    // And once everything is checkpointed into the main file.
    node.raw_store().checkpoint().unwrap();
    drop(node);
    assert_eq!(scan_files(&files, &needles).unwrap(), vec![0; needles.len()], "after checkpoint and close");

    // The check itself works: the same needles are found in a file that holds them.
    let plain = tmp.path().join("plain.txt");
    std::fs::write(&plain, format!("{NHS} {SUMMARY}")).unwrap();
    assert_eq!(scan_files(&[plain], &needles[..2]).unwrap(), vec![1, 1]);
}

/// A session with no patient details, for the tests of the files themselves.
fn plain_session(node: &mut Node) -> sync_protocol::SessionId {
    let req = SessionRequest {
        care_setting: CareSetting::AmbulanceOnScene,
        requester: Requester::default(),
        patient: Patient::default(),
        service: Service { line: ServiceLine::Dermatology, channel: Channel::Photo, priority: Priority::Urgent },
        summary: SUMMARY.into(),
        draft: false,
    };
    node.new_session(req, 1_790_000_000_001).unwrap().id
}

fn edge(tmp: &std::path::Path) -> NodeDir {
    let dir = NodeDir::new(tmp.join("node"));
    let params =
        InitParams { name: "amb-07".into(), role: Role::Edge, org: None, icb: Some("QHM".into()), lines: vec![] };
    Node::init(&dir, &params, 1_790_000_000_000).unwrap();
    dir
}

/// Sealed or not, a store holds staff names and the hashes of their PINs: the node's directory,
/// its database, the log and index SQLite makes beside it, and a backup are the owner's alone,
/// whatever the umask of the shell that made them.
#[cfg(unix)]
#[test]
fn the_store_its_directory_and_a_backup_are_readable_by_their_owner_alone() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = edge(tmp.path());
    let mut node = Node::open(&dir).unwrap();
    plain_session(&mut node);
    let backup = tmp.path().join("amb-07.backup");
    outpost_node::backup::backup(&dir, &backup, 1_790_000_000_002).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.root()), 0o700, "the node's directory");
    for file in [dir.db_path(), wal_path(&dir.db_path()), backup] {
        assert_eq!(mode(&file) & 0o077, 0, "{} is {:o}", file.display(), mode(&file));
    }
    // A store made before this rule is tightened when it is next opened.
    drop(node);
    std::fs::set_permissions(dir.db_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(Node::open(&dir).unwrap());
    assert_eq!(mode(&dir.db_path()), 0o600);
}

/// A photo's size in the index is a number on disk like any other: a damaged one (negative, or
/// past any photo) is no reason to panic. The photo is read from its sealed chunks and checked
/// against its hash as always.
#[test]
fn a_damaged_photo_size_on_disk_does_not_panic_the_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = edge(tmp.path());
    let mut node = Node::open(&dir).unwrap();
    let id = plain_session(&mut node);
    let photo = synthetic_jpeg(640, 480, 3).unwrap();
    let req = PhotoRequest {
        view: PhotoView::CloseUp,
        body_site: "left forearm".into(),
        consent: ConsentKind::Verbal,
        scope: ConsentScope::RecordOnly,
    };
    let hash = node.attach_photo(id, &photo, &req, 1_790_000_000_002).unwrap().hash;
    drop(node);
    for size in [-1i64, i64::MAX] {
        let conn = rusqlite::Connection::open(dir.db_path()).unwrap();
        conn.execute("UPDATE blobs SET size = ?1", [size]).unwrap();
        drop(conn);
        let node = Node::open(&dir).unwrap();
        let read = node.raw_store_ref().blobs().read_blob(&hash);
        assert_eq!(read.unwrap(), photo.bytes, "size {size}: the photo is its chunks, checked by its hash");
    }
}

/// The node's certificate and the fleet CA it trusts are public and kept in the clear, but not
/// unguarded: whoever can write the database (or a backup) could put a CA of their own there,
/// with a certificate it issued for this node's key, and the node would trust an impostor hub.
/// The private key is sealed bound to both, so the identity is refused once either changes,
/// with what to do; put back, it is taken again, and a key rotation keeps the binding.
#[test]
fn a_fleet_ca_swapped_in_the_database_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = edge(tmp.path());
    let issue = |ca_dir: &str, node: &mut Node| {
        let ca = outpost_node::tls::CaDir::new(tmp.path().join(ca_dir));
        ca.init(ca_dir).unwrap();
        ca.issue(&node.config().peer_info(), &node.raw_store().identity().author_public(), 30, false).unwrap()
    };
    let mut node = Node::open(&dir).unwrap();
    let fleet = issue("fleet-ca", &mut node);
    let rogue = issue("rogue-ca", &mut node);
    node.raw_store().identity_mut().set_tls_identity(&fleet.cert_pem, &fleet.key_pem, &fleet.ca_pem).unwrap();
    assert!(node.tls_identity().unwrap().is_some());
    drop(node);
    let swap = |cert: &str, ca: &str| {
        let conn = rusqlite::Connection::open(dir.db_path()).unwrap();
        conn.execute("UPDATE meta SET value = ?1 WHERE key = 'tls_cert'", [cert.as_bytes()]).unwrap();
        conn.execute("UPDATE meta SET value = ?1 WHERE key = 'tls_ca'", [ca.as_bytes()]).unwrap();
    };
    let refused = |what: &str| {
        let err = Node::open(&dir).unwrap().tls_identity().map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("changed outside outpost"), "{what}: {err}");
    };
    swap(&rogue.cert_pem, &rogue.ca_pem);
    refused("both swapped");
    swap(&fleet.cert_pem, &rogue.ca_pem);
    refused("the CA alone");
    swap(&fleet.cert_pem, &fleet.ca_pem);
    let (cert, _, ca) = Node::open(&dir).unwrap().tls_identity().unwrap().unwrap();
    assert_eq!((cert, ca), (fleet.cert_pem.clone(), fleet.ca_pem.clone()));
    // A key rotation seals the key again, bound as before.
    Node::rotate_key(&dir, 1_790_000_000_009).unwrap();
    assert!(Node::open(&dir).unwrap().tls_identity().unwrap().is_some());
    swap(&rogue.cert_pem, &rogue.ca_pem);
    refused("after a rotation");
}

/// A staff PIN is six digits: its argon2 hash, copied with the database (a backup, a disk
/// image), falls to an offline search in hours. The hash is sealed under the node's key, bound
/// to whose it is: a copy holds no hash in the clear, and a hash moved to another person's row,
/// or one in the clear, signs no one in (refused as a wrong PIN is, the log saying what to do).
/// `outpost user set-pin` mends it; a key rotation clears what does not open rather than stop.
#[test]
fn a_staff_pin_hash_is_sealed_and_one_moved_or_in_the_clear_signs_no_one_in() {
    use outpost_node::store::people::{Credential, NewPerson, PersonRole, verify_secret};
    let tmp = tempfile::tempdir().unwrap();
    let dir = edge(tmp.path());
    let mut node = Node::open(&dir).unwrap();
    let add = |node: &mut Node, name: &str, pin: &str| {
        let who =
            NewPerson { name: name.into(), role: PersonRole::Paramedic, registration: Some(format!("HCPC-{name}")) };
        node.add_person(&who, &Credential::Secret(pin.into()), 1_790_000_000_001).unwrap();
    };
    add(&mut node, "Sam Patel", "482193");
    add(&mut node, "Mallory", "000000");
    add(&mut node, "Jo Reyes", "771234");
    let signs_in = |dir: &NodeDir, name: &str, pin: &str| {
        let (who, phc) = Node::open(dir).unwrap().sign_in_material(name).unwrap();
        who.is_some() && verify_secret(pin, &phc)
    };
    assert!(signs_in(&dir, "Sam Patel", "482193"));
    assert!(!signs_in(&dir, "Sam Patel", "000000"));
    node.raw_store().checkpoint().unwrap();
    drop(node);
    let files = [dir.db_path(), wal_path(&dir.db_path())];
    assert_eq!(scan_files(&files, &[b"$argon2"]).unwrap(), vec![0], "no PIN hash in the clear");

    // Mallory's sealed hash copied into Sam's row opens for no one.
    let conn = rusqlite::Connection::open(dir.db_path()).unwrap();
    let copy = "UPDATE users SET secret = (SELECT secret FROM users WHERE name = 'Mallory') WHERE name = ?1";
    conn.execute(copy, ["Sam Patel"]).unwrap();
    assert!(!signs_in(&dir, "Sam Patel", "000000"));
    assert!(!signs_in(&dir, "Sam Patel", "482193"));
    // Nor does a hash of Mallory's PIN in the clear.
    let (_, mallorys) = Node::open(&dir).unwrap().sign_in_material("Mallory").unwrap();
    conn.execute("UPDATE users SET secret = ?1 WHERE name = 'Sam Patel'", [&mallorys]).unwrap();
    assert!(!signs_in(&dir, "Sam Patel", "000000"));
    // Nor Jo's own, once her role is changed by hand; put back, it opens again.
    conn.execute("UPDATE users SET role = 'consultant' WHERE name = 'Jo Reyes'", []).unwrap();
    assert!(!signs_in(&dir, "Jo Reyes", "771234"), "a role changed by hand");
    conn.execute("UPDATE users SET role = 'paramedic' WHERE name = 'Jo Reyes'", []).unwrap();
    assert!(signs_in(&dir, "Jo Reyes", "771234"));
    // A new PIN mends Sam's record.
    Node::open(&dir).unwrap().set_pin("Sam Patel", "905511", 1_790_000_000_005).unwrap();
    assert!(signs_in(&dir, "Sam Patel", "905511"));

    // A key rotation with a moved hash still in place clears it, names whose, and goes on.
    conn.execute(copy, ["Jo Reyes"]).unwrap();
    let (done, _, _) = Node::rotate_key(&dir, 1_790_000_000_009).unwrap();
    assert_eq!(done.pins_cleared, ["Jo Reyes"]);
    assert!(signs_in(&dir, "Mallory", "000000"));
    assert!(signs_in(&dir, "Sam Patel", "905511"));
    assert!(!signs_in(&dir, "Jo Reyes", "000000"));
    let node = Node::open(&dir).unwrap();
    let rotated = node.audit_tail(1).unwrap().pop().unwrap();
    assert_eq!(rotated.action, "key.rotate");
    assert_eq!(rotated.detail.unwrap()["pins_cleared"], serde_json::json!(["Jo Reyes"]));
    let cleared: Option<Vec<u8>> =
        conn.query_row("SELECT secret FROM users WHERE name = 'Jo Reyes'", [], |r| r.get(0)).unwrap();
    assert_eq!(cleared, None);
}

/// A store from before schema 11 kept the PIN hashes in the clear: its next open seals them,
/// they still sign their people in, and no piece of one is left in the file or its log.
#[test]
fn a_store_from_before_schema_11_has_its_pin_hashes_sealed_and_none_left_in_the_file() {
    use outpost_node::store::people::{Credential, NewPerson, PersonRole, verify_secret};
    let tmp = tempfile::tempdir().unwrap();
    let dir = edge(tmp.path());
    let mut node = Node::open(&dir).unwrap();
    let people = [("Sam Patel", "482193"), ("Jo Reyes", "771234")];
    for (name, pin) in people {
        let who = NewPerson { name: name.into(), role: PersonRole::Paramedic, registration: None };
        node.add_person(&who, &Credential::Secret(pin.into()), 1_790_000_000_001).unwrap();
    }
    plain_session(&mut node);
    // The store as an older outpost left it: each hash in the clear, schema 10.
    let clear: Vec<(String, String)> =
        people.iter().map(|(n, _)| (n.to_string(), node.sign_in_material(n).unwrap().1)).collect();
    drop(node);
    let conn = rusqlite::Connection::open(dir.db_path()).unwrap();
    for (name, phc) in &clear {
        conn.execute("UPDATE users SET secret = ?2 WHERE name = ?1", [name, phc]).unwrap();
    }
    // What schemas 11 and 12 add is taken out again, as a schema-10 store never had it.
    conn.execute_batch(
        "ALTER TABLE audit DROP COLUMN anchor; DROP TABLE audit_anchors;
         DELETE FROM meta WHERE key IN ('audit_chain', 'scrub_pending');
         PRAGMA user_version = 10",
    )
    .unwrap();
    drop(conn);
    // Each hash's own part (after its parameters and salt), as an offline search would need it.
    let hashes: Vec<&[u8]> = clear.iter().map(|(_, phc)| phc.rsplit('$').next().unwrap().as_bytes()).collect();
    let files = [dir.db_path(), wal_path(&dir.db_path())];
    let before = scan_files(&files, &hashes).unwrap();
    assert!(before.iter().all(|n| *n >= 1), "the older store's hashes, in the clear: {before:?}");

    let node = Node::open(&dir).unwrap();
    assert_eq!(scan_files(&files, &hashes).unwrap(), vec![0; 2], "nothing in the clear, the store open");
    for (name, pin) in &people {
        let (who, phc) = node.sign_in_material(name).unwrap();
        assert!(who.is_some() && verify_secret(pin, &phc), "{name}");
    }
}
