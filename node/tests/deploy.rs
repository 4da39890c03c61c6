//! What the engineer who deploys outpost does: certificates the right way round (the node's key
//! never leaves its directory), key rotation, backup and restore, and the storage faults a
//! surgery box meets.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fleet::{Fleet, daemon, free_port, wait_until};
use common::{fails, json, new_session, ok};

fn d(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() { stack.push(path) } else { out.push(path) }
        }
    }
    out
}

/// Whether any file under `dir` holds `needle`.
fn holds(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|f| std::fs::read(f).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)))
        .collect()
}

/// A synthetic photo of about `w` x `h` attached to session `id` with `outpost photo attach`;
/// returns its hash and bytes.
fn attach_photo(dir: &Path, id: &str, (w, h): (u32, u32), seed: u64) -> (String, Vec<u8>) {
    let photo = outpost_node::photo::synthetic_jpeg(w, h, seed).unwrap();
    let file = dir.with_file_name(format!("photo-{seed}.jpg"));
    std::fs::write(&file, &photo.bytes).unwrap();
    let out = ok(&[
        "photo",
        "attach",
        "--dir",
        d(dir),
        id,
        d(&file),
        "--view",
        "close-up",
        "--body-site",
        "forearm",
        "--consent",
        "verbal",
        "--json",
    ]);
    (json(&out)["hash"].as_str().unwrap().to_string(), photo.bytes)
}

#[test]
fn a_node_keeps_its_key_while_an_offline_ca_signs_its_request_and_renewal_is_warned_ahead() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    // The ambulance is initialised on its tablet; only its request travels to the CA.
    let amb = tmp.path().join("amb-07");
    ok(&["init", "--dir", d(&amb), "--name", "amb-07", "--role", "edge", "--org", "RX6", "--icb", "QHM"]);
    let carried = tmp.path().join("usb-stick");
    std::fs::create_dir_all(&carried).unwrap();
    let csr = carried.join("amb-07.csr");
    let said = ok(&["cert", "request", "--dir", d(&amb), "--out", d(&csr)]);
    assert!(said.contains("outpost ca sign"), "{said}");
    assert!(std::fs::read_to_string(&csr).unwrap().contains("BEGIN CERTIFICATE REQUEST"));

    // On the CA's machine: it prints what it certifies. 20 days, to see the renewal warning.
    let signed = ok(&["ca", "sign", "--ca", d(&fleet.ca), d(&csr), "--days", "20"]);
    assert!(signed.contains("amb-07 (edge, organisation RX6, ICB QHM"), "{signed}");
    let pem = carried.join("amb-07.pem");
    assert!(pem.exists(), "{signed}");

    // No private key anywhere but the CA's own and (sealed) the node's store.
    let private = holds(tmp.path(), b"PRIVATE KEY");
    assert_eq!(private, vec![fleet.ca.join("ca.key")], "only the CA's key is in the clear anywhere");

    // A certificate for another node's request is refused; so is a request that was altered.
    let other = tmp.path().join("amb-08");
    ok(&["init", "--dir", d(&other), "--name", "amb-08", "--role", "edge", "--icb", "QHM"]);
    let other_csr = carried.join("amb-08.csr");
    ok(&["cert", "request", "--dir", d(&other), "--out", d(&other_csr)]);
    ok(&["ca", "sign", "--ca", d(&fleet.ca), d(&other_csr)]);
    let err = fails(&["cert", "install", "--dir", d(&amb), d(&carried.join("amb-08.pem"))], 2);
    assert!(err.contains("another key"), "{err}");
    let forged = carried.join("forged.csr");
    let text = std::fs::read_to_string(&other_csr).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mid = lines.len() / 2;
    let flipped: String = lines[mid].chars().rev().collect();
    lines[mid] = flipped;
    std::fs::write(&forged, lines.join("\n")).unwrap();
    let err = fails(&["ca", "sign", "--ca", d(&fleet.ca), d(&forged)], 2);
    assert!(err.contains("certificate request"), "{err}");

    // Installed: the status warns 30 days ahead and says what to do; the node syncs.
    let said = ok(&["cert", "install", "--dir", d(&amb), d(&pem)]);
    assert!(said.contains("certificate installed for amb-07"), "{said}");
    let status = ok(&["status", "--dir", d(&amb)]);
    assert!(status.contains("RENEW SOON") && status.contains("outpost cert request"), "{status}");
    let quic = format!("127.0.0.1:{}", free_port());
    let hubd = daemon(&hub, &["--listen", &quic], &[]);
    wait_until(Duration::from_secs(60), "the hub to listen", || hubd.log_text().contains("outpost daemon started"));
    let id = new_session(&amb);
    let report = json(&ok(&["sync", "--dir", d(&amb), "--peer", &quic, "--json"]));
    assert_eq!(report["peer"], "hub-qhm");
    assert!(ok(&["session", "list", "--dir", d(&hub)]).contains(&id));

    // Renewal: a new request leaves the current certificate working until the new one is in.
    ok(&["cert", "request", "--dir", d(&amb), "--out", d(&csr)]);
    ok(&["sync", "--dir", d(&amb), "--peer", &quic]);
    ok(&["ca", "sign", "--ca", d(&fleet.ca), d(&csr)]);
    ok(&["cert", "install", "--dir", d(&amb), d(&pem)]);
    let st = json(&ok(&["status", "--dir", d(&amb), "--json"]));
    let days = (st["certificate_valid_until_ms"].as_i64().unwrap() - now_ms()) / 86_400_000;
    assert!((360..=366).contains(&days), "renewed for a year: {days} days");
    assert!(!ok(&["status", "--dir", d(&amb)]).contains("RENEW SOON"));
    ok(&["sync", "--dir", d(&amb), "--peer", &quic]);
    // A request is used once: installing the same certificate again finds no pending request.
    let err = fails(&["cert", "install", "--dir", d(&amb), d(&pem)], 2);
    assert!(err.contains("no pending certificate request"), "{err}");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// The texts of every session's messages, by session (what the node must never lose).
fn all_texts(dir: &Path) -> Vec<(String, Vec<String>)> {
    let list = json(&ok(&["session", "list", "--dir", d(dir), "--json"]));
    let mut out: Vec<(String, Vec<String>)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let id = c["id"].as_str().unwrap().to_string();
            let texts = common::fleet::texts(dir, &id).unwrap();
            (id, texts)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_key_rotation_killed_at_random_moments_twenty_times_loses_nothing_acknowledged() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("ROTATE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(now_ms_u64);
    eprintln!("key rotation kill test: seed {seed} (rerun with ROTATE_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let amb = tmp.path().join("amb-07");
    common::init_edge(&amb);
    // Sessions, messages and 4 photos of ~1.5 MB: enough rows that a rotation takes a while.
    let mut ids = Vec::new();
    for i in 0..4u64 {
        let id = new_session(&amb);
        let (hash, bytes) = attach_photo(&amb, &id, (1400, 1050), seed + i);
        ids.push((id, hash, bytes));
    }
    // How long one rotation takes here, to aim the kills inside it.
    let t = std::time::Instant::now();
    ok(&["key", "rotate", "--dir", d(&amb)]);
    let span = t.elapsed();
    eprintln!("one rotation: {span:?}");

    let (mut finished, mut completed, mut rolled_back) = (0, 0, 0);
    for round in 0..20 {
        let (id, _, _) = &ids[round % ids.len()];
        ok(&["message", "send", "--dir", d(&amb), id, &format!("round {round}")]);
        let before = all_texts(&amb);
        let key_before = std::fs::read_to_string(amb.join("node.key")).unwrap();
        let delay = span.mul_f64(rng.random_range(0.0..1.2));
        let mut child = std::process::Command::new(common::BIN)
            .args(["key", "rotate", "--dir", d(&amb)])
            .env_remove("OUTPOST_NODE_KEY")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let exited = child.try_wait().unwrap().is_some();
        let _ = child.kill();
        let status = child.wait().unwrap();
        // The next command finds the store whole, under one key it has.
        let after = all_texts(&amb);
        assert_eq!(after, before, "round {round} (seed {seed}, killed after {delay:?}): messages differ");
        let (_, hash, bytes) = &ids[round % ids.len()];
        let out = tmp.path().join("back.jpg");
        ok(&["photo", "get", "--dir", d(&amb), hash, "--out", d(&out)]);
        assert_eq!(&std::fs::read(&out).unwrap(), bytes, "round {round} (seed {seed}): the photo differs");
        let audit = ok(&["audit", "verify", "--dir", d(&amb)]);
        assert!(audit.contains("intact"), "round {round} (seed {seed}): {audit}");
        assert!(!amb.join("node.key.new").exists(), "round {round}: the next command settled the rotation");
        let key_after = std::fs::read_to_string(amb.join("node.key")).unwrap();
        match (exited || status.success(), key_after != key_before) {
            (true, _) => finished += 1,
            (false, true) => completed += 1,
            (false, false) => rolled_back += 1,
        }
    }
    eprintln!(
        "20 rotations killed at random: {finished} had finished, {completed} were completed by the next command, \
         {rolled_back} rolled back"
    );
    assert!(completed + rolled_back >= 5, "most kills landed inside a rotation (seed {seed})");
    let log = ok(&["audit", "show", "--dir", d(&amb), "--limit", "1000"]);
    assert!(log.matches("key.rotate").count() > finished, "each rotation that took effect is in the audit chain");
}

fn now_ms_u64() -> u64 {
    now_ms() as u64
}

#[test]
fn a_rotation_stopped_at_each_step_is_finished_or_rolled_back_by_the_next_open() {
    use outpost_node::config::NodeDir;
    use outpost_node::crypto::{NodeKey, Sealer};
    use outpost_node::node::Node;
    // Each step of `key rotate` stopped just after it: which key the next open must end with.
    for stop_after in ["key file torn", "key file written", "store re-sealed", "node.toml written"] {
        let tmp = tempfile::tempdir().unwrap();
        let amb = tmp.path().join("amb-07");
        common::init_edge(&amb);
        let id = new_session(&amb);
        ok(&["message", "send", "--dir", d(&amb), &id, "kept whatever happens"]);
        let dir = NodeDir::new(&amb);
        let (old, _) = NodeKey::load_file(&dir.key_path()).unwrap();
        let new = NodeKey::generate().unwrap();
        // Opened before the new key exists, as `key rotate` does (an open finding a new key
        // file settles it first).
        let mut node = Node::open(&dir).unwrap();
        match stop_after {
            "key file torn" => std::fs::write(dir.new_key_path(), &new.to_hex()[..20]).unwrap(),
            _ => new.write_new(&dir.new_key_path()).unwrap(),
        }
        if stop_after == "key file torn" {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.new_key_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        if matches!(stop_after, "store re-sealed" | "node.toml written") {
            node.raw_store().reseal(Sealer::new(&new), &old.id(), &new.id(), now_ms()).unwrap();
        }
        if stop_after == "node.toml written" {
            let mut cfg = dir.read_config().unwrap();
            cfg.key_id = new.id();
            dir.write_config(&cfg).unwrap();
        }
        drop(node);
        // The next command, whatever it is.
        let texts = common::fleet::texts(&amb, &id);
        assert_eq!(texts, Some(vec!["kept whatever happens".to_string()]), "stopped after {stop_after}");
        assert!(!dir.new_key_path().exists(), "stopped after {stop_after}: settled");
        let (now_key, _) = NodeKey::load_file(&dir.key_path()).unwrap();
        let expect = if matches!(stop_after, "store re-sealed" | "node.toml written") { new.id() } else { old.id() };
        assert_eq!(now_key.id(), expect, "stopped after {stop_after}: the key the store is under");
        assert_eq!(dir.read_config().unwrap().key_id, expect, "stopped after {stop_after}: node.toml names it");
        assert!(ok(&["audit", "verify", "--dir", d(&amb)]).contains("intact"), "stopped after {stop_after}");
    }
}

/// A message text a backup must never show in the clear.
fn obs(i: usize) -> String {
    format!("Observation {i}: BP 1{i:02}/80, SpO2 97% on air")
}

#[test]
fn a_backup_taken_while_the_daemon_writes_restores_on_a_new_tablet_and_resyncs_without_duplicates_or_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let amb = fleet.node("amb-07", "edge", &[]);
    let quic = format!("127.0.0.1:{}", free_port());
    let hubd = daemon(&hub, &["--listen", &quic], &[]);
    wait_until(Duration::from_secs(60), "the hub to listen", || hubd.log_text().contains("outpost daemon started"));
    let ambd = daemon(&amb, &["--peer", &quic], &[]);
    let id = new_session(&amb);

    // The crew keeps writing while the backup is taken.
    let bak = tmp.path().join("amb-07.backup");
    let backed_up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (amb, id, backed_up) = (amb.clone(), id.clone(), backed_up.clone());
        std::thread::spawn(move || {
            for i in 0..30 {
                // The last ten only once the backup is taken: it cannot hold them all.
                while i >= 20 && !backed_up.load(std::sync::atomic::Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                ok(&["message", "send", "--dir", d(&amb), &id, &obs(i)]);
            }
        })
    };
    wait_until(Duration::from_secs(60), "some messages before the backup", || {
        common::fleet::texts(&amb, &id).is_some_and(|t| t.len() >= 8)
    });
    let said = json(&ok(&["backup", "--dir", d(&amb), "--out", d(&bak), "--json"]));
    backed_up.store(true, std::sync::atomic::Ordering::Release);
    assert_eq!(said["node"], "amb-07");
    writer.join().unwrap();
    let all: Vec<String> = (0..30).map(obs).collect();
    wait_until(Duration::from_secs(60), "every message at the hub", || {
        common::fleet::texts(&hub, &id).is_some_and(|t| t == all)
    });
    let sealed = std::fs::read(&bak).unwrap();
    for clear in [b"Observation".as_slice(), b"9434765919", b"Rash on left forearm"] {
        assert!(
            !sealed.windows(clear.len()).any(|w| w == clear),
            "the backup shows {:?}",
            String::from_utf8_lossy(clear)
        );
    }

    // The tablet is lost. A new one gets the backup and the key (from the trust's key store).
    drop(ambd);
    let new_tablet = tmp.path().join("amb-07-replacement");
    let restored = json(&ok(&[
        "restore",
        "--from",
        d(&bak),
        "--dir",
        d(&new_tablet),
        "--key-file",
        d(&amb.join("node.key")),
        "--json",
    ]));
    assert_eq!(restored["sessions"], 1);
    let at_backup = common::fleet::texts(&new_tablet, &id).unwrap();
    assert!(
        at_backup.len() >= 8 && at_backup.len() < 30,
        "the backup holds what was written by then: {}",
        at_backup.len()
    );
    assert_eq!(at_backup[..], all[..at_backup.len()], "in order, nothing invented");
    eprintln!("the backup held {} of the 30 messages; the hub holds the rest", at_backup.len());

    let _newd = daemon(&new_tablet, &["--peer", &quic], &[]);
    wait_until(Duration::from_secs(60), "the restored tablet to hold every message again", || {
        common::fleet::texts(&new_tablet, &id).is_some_and(|t| t.len() >= 30)
    });
    assert_eq!(common::fleet::texts(&new_tablet, &id).unwrap(), all, "no duplicates, no loss");
    // It writes on: a fresh actor, so nothing it writes collides with what it lost.
    ok(&["message", "send", "--dir", d(&new_tablet), &id, "Handed over at ED"]);
    wait_until(Duration::from_secs(60), "the new message at the hub", || {
        common::fleet::texts(&hub, &id).is_some_and(|t| t.len() == 31)
    });
    let at_hub = common::fleet::texts(&hub, &id).unwrap();
    assert_eq!(at_hub[..30], all[..]);
    assert_eq!(at_hub[30], "Handed over at ED");
    assert!(ok(&["audit", "verify", "--dir", d(&new_tablet)]).contains("intact"));
}

/// A backup is a plain SQLite file: whoever holds one can edit it. A restore writes back only
/// the files a backup carries, each in its place in the node's directory (a name reaching
/// outside it is refused before anything is written), and refuses a backup whose audit chain
/// was changed after it was taken; the untouched backup restores.
#[test]
fn a_tampered_backup_is_refused_by_restore_and_nothing_is_written_outside_its_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let amb = fleet.node("amb-07", "edge", &[]);
    let id = new_session(&amb);
    ok(&["message", "send", "--dir", d(&amb), &id, "Observation 1"]);
    let bak = tmp.path().join("amb-07.backup");
    ok(&["backup", "--dir", d(&amb), "--out", d(&bak)]);
    let key = amb.join("node.key");
    let tampered = |name: &str, sql: &str| {
        let copy = tmp.path().join(name);
        std::fs::copy(&bak, &copy).unwrap();
        rusqlite::Connection::open(&copy).unwrap().execute_batch(sql).unwrap();
        copy
    };
    let restore =
        |from: &Path, into: &Path| fails(&["restore", "--from", d(from), "--dir", d(into), "--key-file", d(&key)], 2);

    let planted = tmp.path().join("planted");
    let escaping = tampered("escaping.backup", "INSERT INTO backup_files (name, bytes) VALUES ('../planted', x'41');");
    let into = tmp.path().join("restored-1");
    let said = restore(&escaping, &into);
    assert!(said.contains("carries only"), "{said}");
    assert!(!planted.exists(), "a file was written outside the node's directory");
    assert!(!into.join("outpost.db").exists());
    let absolute = format!("INSERT INTO backup_files (name, bytes) VALUES ('{}', x'41');", planted.display());
    let said = restore(&tampered("absolute.backup", &absolute), &into);
    assert!(said.contains("carries only") && !planted.exists(), "{said}");

    let cut = tampered("cut.backup", "DELETE FROM audit WHERE seq = (SELECT MIN(seq) + 1 FROM audit);");
    let into = tmp.path().join("restored-2");
    let said = restore(&cut, &into);
    assert!(said.contains("audit chain is broken"), "{said}");
    assert!(!into.join("outpost.db").exists(), "a refused restore leaves no store");

    let into = tmp.path().join("restored-3");
    ok(&["restore", "--from", d(&bak), "--dir", d(&into), "--key-file", d(&key)]);
    assert!(ok(&["audit", "verify", "--dir", d(&into)]).contains("intact"));
    // The chain says where it was brought back from: what was written after the backup stops
    // there.
    let entries = json(&ok(&["audit", "show", "--dir", d(&into), "--json"]));
    let newest = entries.as_array().unwrap().last().unwrap().clone();
    assert_eq!(newest["action"], "store.restore", "{entries}");
    assert_eq!(newest["detail"]["from"], d(&bak), "{newest}");
}

#[test]
fn a_missing_store_refuses_to_start_and_a_corrupt_one_is_reported_each_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let amb = fleet.node("amb-07", "edge", &[]);
    let id = new_session(&amb);
    let (hash, photo) = attach_photo(&amb, &id, (1200, 900), 7);
    ok(&["message", "send", "--dir", d(&amb), &id, "before the fault"]);
    let bak = tmp.path().join("amb.backup");
    ok(&["backup", "--dir", d(&amb), "--out", d(&bak)]);
    assert!(ok(&["status", "--dir", d(&amb)]).contains("integrity check passed"));

    // Missing: every command refuses (exit 3), names the fix, and creates nothing.
    // The store is lost, but a log of it is left behind (a disk restored without the database):
    // the restore must not replay it onto the backup.
    // (A daemon keeps the store open, so the write after the backup stays in the log.)
    let stale_log = {
        let ambd = daemon(&amb, &[], &[]);
        wait_until(Duration::from_secs(60), "the daemon", || ambd.log_text().contains("outpost daemon started"));
        ok(&["message", "send", "--dir", d(&amb), &id, "after the backup"]);
        let log = std::fs::read(amb.join("outpost.db-wal")).unwrap();
        drop(ambd);
        log
    };
    assert!(stale_log.len() > 4096, "the write is in the log");
    for f in ["outpost.db", "outpost.db-wal", "outpost.db-shm"] {
        let _ = std::fs::remove_file(amb.join(f));
    }
    std::fs::write(amb.join("outpost.db-wal"), &stale_log).unwrap();
    let err = fails(&["status", "--dir", d(&amb)], 3);
    assert!(err.contains("is missing") && err.contains("outpost restore --from BACKUP"), "{err}");
    let err = fails(&["run", "--dir", d(&amb)], 3);
    assert!(err.contains("is missing"), "{err}");
    fails(&common::session_new_args(&amb), 3);
    assert!(!amb.join("outpost.db").exists(), "no empty store was made in its place");
    // Restored into its own directory (its key and identity kept).
    ok(&["restore", "--from", d(&bak), "--dir", d(&amb)]);
    assert_eq!(common::fleet::texts(&amb, &id).unwrap(), vec!["before the fault".to_string()]);

    // Corrupt: a page in the middle of the file overwritten, as a failing disk might.
    let db = amb.join("outpost.db");
    let len = std::fs::metadata(&db).unwrap().len();
    assert!(!amb.join("outpost.db-wal").exists() || std::fs::metadata(amb.join("outpost.db-wal")).unwrap().len() == 0);
    let page = (len / 4096) / 2;
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        f.seek(SeekFrom::Start(page * 4096)).unwrap();
        f.write_all(&[0xA5; 4096]).unwrap();
    }
    let out = common::run(&["status", "--dir", d(&amb)]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "status says so and fails:\n{stdout}\n{stderr}");
    assert!(stderr.contains("damaged") && stderr.contains("outpost restore"), "{stdout}\n{stderr}");
    let err = fails(&["audit", "verify", "--dir", d(&amb)], 1);
    assert!(err.contains("damaged") && err.contains("outpost restore"), "{err}");
    // What was acknowledged is in the backup (and at the hub, in a fleet): restored elsewhere.
    let fresh = tmp.path().join("amb-07-restored");
    ok(&["restore", "--from", d(&bak), "--dir", d(&fresh), "--key-file", d(&amb.join("node.key"))]);
    assert_eq!(common::fleet::texts(&fresh, &id).unwrap(), vec!["before the fault".to_string()]);
    let back = tmp.path().join("back.jpg");
    assert_eq!(hash, blake3::hash(&photo).to_hex().to_string(), "a photo is named by its BLAKE3 hash");
    ok(&["photo", "get", "--dir", d(&fresh), &hash, "--out", d(&back)]);
    assert_eq!(std::fs::read(&back).unwrap(), photo);
}

/// A small file system of its own (tmpfs), unmounted when dropped: a disk that can really fill.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, mib: u32) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs", d(path)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test fills a real file system: it mounts a {mib} MiB tmpfs, which needs root (run the tests as \
             root, as CI does): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { path: path.to_path_buf() }
    }

    /// Writes a filler file until the file system refuses another byte.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        let mut one = [0u8; 1];
        while f.write(&one).is_ok_and(|n| n == 1) {
            one[0] = 1;
        }
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").args(["-l", d(&self.path)]).status();
    }
}

#[test]
fn on_a_full_disk_reads_and_sync_keep_working_and_a_write_is_refused_losing_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let disk = SmallDisk::mount(&tmp.path().join("tablet-disk"), 96);
    let amb = disk.path.join("amb-07");
    common::init_edge(&amb);
    ok(&["ca", "issue", "--ca", d(&fleet.ca), "--node", d(&amb)]);
    let id = new_session(&amb);
    ok(&["message", "send", "--dir", d(&amb), &id, "Rash spreading, photos attached"]);
    let mut photos = Vec::new();
    for i in 0..2u64 {
        photos.push(attach_photo(&amb, &id, (1400, 1050), 40 + i));
    }
    assert!(amb.join("outpost.reserve").exists(), "a reserve is kept while there is room");
    let filler = disk.fill();

    // Reads work: the list, the session, a photo, the status.
    assert!(ok(&["session", "list", "--dir", d(&amb)]).contains(&id));
    assert_eq!(common::fleet::texts(&amb, &id).unwrap(), vec!["Rash spreading, photos attached".to_string()]);
    let back = tmp.path().join("back.jpg");
    ok(&["photo", "get", "--dir", d(&amb), &photos[0].0, "--out", d(&back)]);
    assert_eq!(std::fs::read(&back).unwrap(), photos[0].1);
    let status = ok(&["status", "--dir", d(&amb)]);
    assert!(status.contains("not yet left this device: 3"), "{status}");
    // A write is refused, clearly, and leaves nothing half written.
    let err = fails(&["message", "send", "--dir", d(&amb), &id, "one more"], 5);
    assert!(err.contains("disk is full"), "{err}");
    assert_eq!(common::fleet::texts(&amb, &id).unwrap().len(), 1);

    // Sync works: the tablet's message and photos reach the hub, so the crew can hand over.
    let quic = format!("127.0.0.1:{}", free_port());
    let hubd = daemon(&hub, &["--listen", &quic], &[]);
    wait_until(Duration::from_secs(60), "the hub to listen", || hubd.log_text().contains("outpost daemon started"));
    let out = common::run(&["sync", "--dir", d(&amb), "--peer", &quic, "--json"]);
    eprintln!(
        "sync on a full disk: exit {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "sync on a full disk");
    assert_eq!(common::fleet::texts(&hub, &id).unwrap(), vec!["Rash spreading, photos attached".to_string()]);
    for (hash, bytes) in &photos {
        let copy = tmp.path().join("hub-copy.jpg");
        ok(&["photo", "get", "--dir", d(&hub), hash, "--out", d(&copy)]);
        assert_eq!(&std::fs::read(&copy).unwrap(), bytes, "the hub holds the photo whole");
    }

    // Space again: the next sync records the hub's receipts and frees the photos' space.
    std::fs::remove_file(&filler).unwrap();
    ok(&["sync", "--dir", d(&amb), "--peer", &quic]);
    let st = json(&ok(&["status", "--dir", d(&amb), "--json"]));
    assert_eq!(st["not_yet_left_this_device"]["items"], 0, "{st}");
    ok(&["message", "send", "--dir", d(&amb), &id, "one more"]);
    assert_eq!(common::fleet::texts(&amb, &id).unwrap().len(), 2);
}

/// `systemd-analyze`, installed with Debian's `systemd` package when missing (as root).
fn systemd_analyze() -> &'static str {
    let bin = "/usr/bin/systemd-analyze";
    if !Path::new(bin).exists() {
        let uid = std::process::Command::new("id").arg("-u").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "this test checks the unit with systemd-analyze: run `apt-get install -y systemd` as root (the test \
             installs it itself when run as root)"
        );
        for args in [&["update", "-qq"][..], &["install", "-y", "-qq", "--no-install-recommends", "systemd"][..]] {
            let out = std::process::Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .output()
                .unwrap();
            assert!(out.status.success(), "apt-get {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
    }
    bin
}

#[test]
fn the_systemd_unit_is_accepted_by_systemd_analyze_and_hardened() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/outpost.service")).unwrap();
    for line in [
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/outpost",
        "NoNewPrivileges=yes",
        "User=outpost",
        "KillSignal=SIGTERM",
        "RestartPreventExitStatus=2 3 7",
    ] {
        assert!(unit.lines().any(|l| l.trim() == line), "the unit sets {line}");
    }
    // Verified as installed, with the binary where the unit says (here: the one just built).
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("outpost.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/outpost", common::BIN)).unwrap();
    let analyze = systemd_analyze();
    let out = std::process::Command::new(analyze).args(["verify", d(&path)]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    // Its exposure as systemd scores it (0 best, 10 worst): "OK" is below 2.
    let out = std::process::Command::new(analyze).args(["security", "--offline=true", d(&path)]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for outpost.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in: {text}{}", String::from_utf8_lossy(&out.stderr)));
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(score < 2.0, "exposure {score}:\n{text}");
    // The check can fail: a misspelt directive is reported.
    std::fs::write(
        &path,
        unit.replace("ProtectSystem=strict", "ProtectSytem=strict").replace("/usr/local/bin/outpost", common::BIN),
    )
    .unwrap();
    let out = std::process::Command::new(analyze).args(["verify", d(&path)]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unknown key"), "a misspelt key is caught");
}

#[test]
fn a_key_rotation_never_lets_another_process_write_under_the_old_key() {
    let tmp = tempfile::tempdir().unwrap();
    let amb = tmp.path().join("amb-07");
    common::init_edge(&amb);
    let id = new_session(&amb);
    // The crew writes on while rotations are attempted. After every fourth message the crew
    // pauses until told to go on, so some rotations are made in a known quiet moment (they must
    // succeed) however slow a busy machine makes each write; the others race the writes.
    const MESSAGES: usize = 16;
    let (idle_tx, idle_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let writer = {
        let (amb, id) = (amb.clone(), id.clone());
        std::thread::spawn(move || {
            let mut sent = Vec::new();
            for i in 0..MESSAGES {
                let text = format!("note {i}");
                ok(&["message", "send", "--dir", d(&amb), &id, &text]);
                sent.push(text);
                if i % 4 == 3 {
                    idle_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                } else {
                    std::thread::sleep(Duration::from_millis(30));
                }
            }
            sent
        })
    };
    let (mut quiet, mut raced, mut refused) = (0, 0, 0);
    while !writer.is_finished() {
        let quiet_now = idle_rx.try_recv().is_ok();
        let out = common::run(&["key", "rotate", "--dir", d(&amb)]);
        match (quiet_now, out.status.code()) {
            (true, Some(0)) => quiet += 1,
            (false, Some(0)) => raced += 1,
            (false, Some(2)) => {
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(err.contains("another outpost process"), "{err}");
                refused += 1;
            }
            (_, other) => panic!(
                "key rotate (writer {}) exited {other:?}: {}",
                if quiet_now { "paused" } else { "writing" },
                String::from_utf8_lossy(&out.stderr)
            ),
        }
        if quiet_now {
            let _ = go_tx.send(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = writer.join().unwrap();
    eprintln!(
        "{quiet} rotations while the crew paused, {raced} between writes, {refused} refused while another process \
         had the store open; {} messages",
        sent.len()
    );
    assert_eq!(quiet, MESSAGES / 4, "every quiet moment rotated the key");
    // Every acknowledged message readable under the final key; the list, status and chain whole.
    assert_eq!(common::fleet::texts(&amb, &id).unwrap(), sent);
    assert!(ok(&["status", "--dir", d(&amb)]).contains("integrity check passed"));
    assert!(ok(&["audit", "verify", "--dir", d(&amb)]).contains("intact"));
}

#[test]
fn a_sync_to_a_hub_that_does_not_answer_says_so_within_five_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let amb = fleet.node("amb-07", "edge", &[]);
    // Nothing listens there: the datagrams go unanswered, as over a dead link.
    let silent = format!("127.0.0.1:{}", free_port());
    let started = std::time::Instant::now();
    let mut child = std::process::Command::new(common::BIN)
        .args(["sync", "--dir", d(&amb), "--peer", &silent, "--timeout", "9"])
        .env_remove("OUTPOST_NODE_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The notice comes while the dial goes on (read as it arrives, not at the end).
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    let noticed = started.elapsed();
    assert!(line.contains(&format!("no answer from {silent} within 5 s")) && line.contains("still trying"), "{line}");
    assert!(child.try_wait().unwrap().is_none(), "it keeps trying after saying so");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(6), "it gives up at its time limit");
    eprintln!("said after {noticed:?}, gave up after {:?}", started.elapsed());
}
