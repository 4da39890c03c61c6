//! The `outpost` command line, driven as a user (or a later issue's test) drives it.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;
mod fhir_check;

use common::{fails, init_edge, json, my_uid, new_session, ok, run, session_new_args};
use std::path::Path;

fn d(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn session_count(dir: &Path) -> u64 {
    json(&ok(&["status", "--dir", d(dir), "--json"]))["store"]["sessions"].as_u64().unwrap()
}

fn audit_entries(dir: &Path) -> u64 {
    json(&ok(&["status", "--dir", d(dir), "--json"]))["audit"]["entries"].as_u64().unwrap()
}

fn write_photo(path: &Path, seed: u64) -> Vec<u8> {
    let photo = outpost_node::photo::synthetic_jpeg(640, 480, seed).unwrap();
    std::fs::write(path, &photo.bytes).unwrap();
    photo.bytes
}

#[test]
fn a_session_is_created_worked_on_and_shown_with_receipts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    init_edge(&dir);
    let id = new_session(&dir);
    assert_eq!(id.len(), 26, "prints the new id: {id}");

    let msg = ok(&["message", "send", "--dir", d(&dir), &id, "Lesion 14 mm, irregular border"]);
    assert_eq!(msg.trim().len(), 26);
    let photo = tmp.path().join("close.jpg");
    let bytes = write_photo(&photo, 7);
    let attached = json(&ok(&[
        "photo",
        "attach",
        "--dir",
        d(&dir),
        &id,
        d(&photo),
        "--view",
        "close-up",
        "--body-site",
        "left forearm",
        "--consent",
        "verbal",
        "--json",
    ]));
    let hash = attached["hash"].as_str().unwrap().to_string();
    assert_eq!(hash, blake3::hash(&bytes).to_hex().as_str());
    ok(&["outcome", "set", "--dir", d(&dir), &id, "--side", "requester", "referral_avoided"]);

    let view = json(&ok(&["session", "show", "--dir", d(&dir), &id, "--json"]));
    assert_eq!(view["id"], id);
    assert_eq!(view["patient"]["nhs_number"], "9434765919");
    assert_eq!(view["service"]["snomed"], "394582007");
    assert_eq!(view["messages"][0]["text"], "Lesion 14 mm, irregular border");
    assert_eq!(view["messages"][0]["receipt"], "device");
    assert_eq!(view["media"][0]["view"], "close_up");
    assert_eq!(view["media"][0]["width"], 640);
    assert_eq!(view["outcome"]["requester"]["value"], "referral_avoided");
    assert_eq!(view["status"], "outcome_recorded");

    let text = ok(&["session", "show", "--dir", d(&dir), &id[..8]]);
    assert!(text.contains("on this device only"), "{text}");
    assert!(text.contains("NHS 943 476 5919"), "{text}");

    let list = json(&ok(&["session", "list", "--dir", d(&dir), "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["photos"], 1);
    assert_eq!(list[0]["on_device_only"], 2);

    let out = tmp.path().join("back.jpg");
    ok(&["photo", "get", "--dir", d(&dir), &hash, "--out", d(&out)]);
    assert_eq!(std::fs::read(&out).unwrap(), bytes, "the photo comes back byte for byte");

    // The list and the photo showed the patient: both are in the audit chain, with the session.
    let entries = json(&ok(&["audit", "show", "--dir", d(&dir), "--limit", "1000", "--json"]));
    let entries = entries.as_array().unwrap();
    let listed = entries.iter().find(|e| e["action"] == "session.list").expect("the list is recorded");
    assert_eq!(listed["detail"]["sessions"], serde_json::json!([id]), "{listed}");
    assert_eq!(listed["detail"]["via"], "cli", "{listed}");
    let looked = entries.iter().find(|e| e["action"] == "photo.view").expect("the photo's view is recorded");
    assert_eq!(looked["session"], id.as_str(), "{looked}");
}

/// This process's account name in /etc/passwd (the third field is the uid), if it is there.
fn my_account() -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let uid = my_uid().to_string();
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.get(2) == Some(&uid.as_str())).then(|| f[0].to_string())
    })
}

/// Who read or changed what on the command line is in the audit chain: every entry a command
/// writes names the operating-system account that ran it (the kernel's real user id, its name
/// from the system's accounts), as the local API's entries name the person signed in.
#[test]
fn the_entries_a_command_writes_name_the_account_that_ran_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    init_edge(&dir);
    let id = new_session(&dir);
    ok(&["message", "send", "--dir", d(&dir), &id, "seen on the command line"]);
    ok(&["session", "show", "--dir", d(&dir), &id]);
    ok(&["session", "list", "--dir", d(&dir)]);
    ok(&["session", "export", "--dir", d(&dir), &id, "--format", "letter"]);
    let entries = json(&ok(&["audit", "show", "--dir", d(&dir), "--limit", "1000", "--json"]));
    let entries = entries.as_array().unwrap();
    for action in ["session.create", "message.send", "session.view", "session.list", "session.export"] {
        let entry =
            entries.iter().find(|e| e["action"] == action).unwrap_or_else(|| panic!("no {action}: {entries:?}"));
        let by = &entry["detail"]["by"];
        assert_eq!(by["via"], "command line", "{action}: {entry}");
        assert_eq!(by["uid"].as_u64(), Some(my_uid()), "{action}: {entry}");
        assert!(by["id"].is_null(), "an account is no person signed in: {entry}");
        assert_eq!(by["account"].as_str(), my_account().as_deref(), "{action}: {entry}");
    }
    // And on screen: each line says who.
    let text = ok(&["audit", "show", "--dir", d(&dir), "--limit", "1000"]);
    let line = text.lines().find(|l| l.contains("session.view")).expect("the view is listed");
    assert!(line.contains(&format!("uid {}", my_uid())), "{line}");
    // The administrator's commands too: the data key's rotation, a hub's rota.
    ok(&["key", "rotate", "--dir", d(&dir)]);
    let hub = tmp.path().join("hub");
    ok(&["init", "--dir", d(&hub), "--name", "hub-qhm", "--role", "hub", "--icb", "QHM"]);
    ok(&["rota", "set", "--dir", d(&hub), "--line", "dermatology", "--desk", "desk-1"]);
    for (node, action) in [(&dir, "key.rotate"), (&hub, "directory.set")] {
        let entries = json(&ok(&["audit", "show", "--dir", d(node), "--limit", "1000", "--json"]));
        let entry = entries
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("no {action}: {entries}"));
        assert_eq!(entry["detail"]["by"]["via"], "command line", "{action}: {entry}");
        assert_eq!(entry["detail"]["by"]["uid"].as_u64(), Some(my_uid()), "{action}: {entry}");
    }
}

#[test]
fn an_export_is_a_plain_automerge_document_and_a_json_view() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    init_edge(&dir);
    let id = new_session(&dir);
    ok(&["message", "send", "--dir", d(&dir), &id, "hello consultant"]);
    let am = tmp.path().join("s.automerge");
    ok(&["session", "export", "--dir", d(&dir), &id, "--format", "automerge", "--out", d(&am)]);
    // Any Automerge implementation can load it: read it with the plain automerge crate, no outpost types.
    use automerge::ReadDoc;
    let doc = automerge::AutoCommit::load(&std::fs::read(&am).unwrap()).unwrap();
    let (_, messages) = doc.get(automerge::ROOT, "messages").unwrap().unwrap();
    let (_, first) = doc.get(&messages, 0).unwrap().unwrap();
    let (text, _) = doc.get(&first, "text").unwrap().unwrap();
    assert_eq!(text.as_str(), Some("hello consultant"));

    let view = json(&ok(&["session", "export", "--dir", d(&dir), &id, "--format", "json"]));
    assert_eq!(view["messages"][0]["text"], "hello consultant");
}

#[test]
fn an_invalid_nhs_number_is_refused_by_name_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    init_edge(&dir);
    let before = audit_entries(&dir);
    let err = fails(
        &[
            "session",
            "new",
            "--dir",
            d(&dir),
            "--service-line",
            "dermatology",
            "--care-setting",
            "ambulance_on_scene",
            "--nhs-number",
            "9434765918",
            "--summary",
            "x",
        ],
        2,
    );
    assert!(err.contains("--nhs-number"), "names the field: {err}");
    assert!(err.contains("check digit"), "says why: {err}");
    assert_eq!(session_count(&dir), 0);
    assert_eq!(audit_entries(&dir), before);
}

#[test]
fn a_birth_date_that_is_no_calendar_date_is_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    init_edge(&dir);
    let before = audit_entries(&dir);
    for (date, why) in
        [("09/03/1944", "not a calendar date"), ("1944-02-30", "not a calendar date"), ("2999-01-01", "after today")]
    {
        let mut args = session_new_args(&dir);
        args.extend(["--birth-date", date]);
        let err = fails(&args, 2);
        assert!(err.contains(date) && err.contains(why) && err.contains("YYYY-MM-DD"), "{date}: {err}");
    }
    assert_eq!(session_count(&dir), 0);
    assert_eq!(audit_entries(&dir), before);
    let mut args = session_new_args(&dir);
    args.extend(["--birth-date", "1944-03-09"]);
    let id = ok(&args).trim().to_string();
    let view = json(&ok(&["session", "export", "--dir", d(&dir), &id, "--format", "json"]));
    assert_eq!(view["patient"]["birth_date"], "1944-03-09");
}

#[test]
fn unknown_vocabulary_is_refused_with_the_accepted_values() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    init_edge(&dir);
    let err = fails(
        &[
            "session",
            "new",
            "--dir",
            d(&dir),
            "--service-line",
            "podiatry",
            "--care-setting",
            "gp_urgent",
            "--summary",
            "x",
        ],
        2,
    );
    assert!(err.contains("--service-line") && err.contains("dermatology"), "{err}");
    let id = new_session(&dir);
    let err = fails(&["outcome", "set", "--dir", d(&dir), &id, "--side", "requester", "sent_home"], 2);
    assert!(err.contains("outcome") && err.contains("referral_avoided"), "{err}");
    let view = json(&ok(&["session", "show", "--dir", d(&dir), &id, "--json"]));
    assert!(view["outcome"]["requester"].is_null(), "nothing was written");
}

#[test]
fn missing_non_image_and_truncated_photos_are_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    init_edge(&dir);
    let id = new_session(&dir);
    let attach = |file: &Path| {
        vec![
            "photo".to_string(),
            "attach".into(),
            "--dir".into(),
            d(&dir).into(),
            id.clone(),
            d(file).into(),
            "--view".into(),
            "site".into(),
            "--body-site".into(),
            "back".into(),
            "--consent".into(),
            "verbal".into(),
        ]
    };
    let missing = tmp.path().join("nope.jpg");
    let err = fails(&attach(&missing).iter().map(String::as_str).collect::<Vec<_>>(), 2);
    assert!(err.contains("does not exist") && err.contains("nope.jpg"), "{err}");

    let text = tmp.path().join("notes.jpg");
    std::fs::write(&text, "not a photo at all").unwrap();
    let err = fails(&attach(&text).iter().map(String::as_str).collect::<Vec<_>>(), 2);
    assert!(err.contains("not a photo"), "{err}");

    let cut = tmp.path().join("cut.jpg");
    let bytes = write_photo(&cut, 3);
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = fails(&attach(&cut).iter().map(String::as_str).collect::<Vec<_>>(), 2);
    assert!(err.contains("truncated"), "{err}");

    let view = json(&ok(&["session", "show", "--dir", d(&dir), &id, "--json"]));
    assert_eq!(view["media"].as_array().unwrap().len(), 0);
    let status = json(&ok(&["status", "--dir", d(&dir), "--json"]));
    assert_eq!(status["store"]["blobs"], 0);
}

#[test]
fn a_directory_that_is_not_a_node_is_named_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let err = fails(&["session", "list", "--dir", d(tmp.path())], 3);
    assert!(err.contains("not an outpost node directory") && err.contains("outpost init"), "{err}");
}

#[test]
fn an_unknown_session_exits_4() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    init_edge(&dir);
    let err = fails(&["message", "send", "--dir", d(&dir), "01ZZZZZZZZZZZZZZZZZZZZZZZZ", "hi"], 4);
    assert!(err.contains("no session"), "{err}");
}

#[test]
fn only_an_edge_creates_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("desk");
    ok(&["init", "--dir", d(&dir), "--name", "desk-derm-1", "--role", "desk"]);
    let err = fails(
        &[
            "session",
            "new",
            "--dir",
            d(&dir),
            "--service-line",
            "dermatology",
            "--care-setting",
            "gp_urgent",
            "--summary",
            "x",
        ],
        2,
    );
    assert!(err.contains("edge nodes") && err.contains("desk"), "{err}");
}

#[test]
fn a_full_disk_refuses_the_write_and_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    init_edge(&dir);
    let id = new_session(&dir);
    ok(&["message", "send", "--dir", d(&dir), &id, "acknowledged before the disk filled"]);
    let pages: u64 = {
        let conn = rusqlite::Connection::open(dir.join("outpost.db")).unwrap();
        conn.query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0)).unwrap() as u64
    };
    // The database may not grow at all: the next write cannot fit.
    let big = "x".repeat(12_000);
    let err = fails(&["debug", "limit-pages", "--dir", d(&dir), &pages.to_string(), "--send", &id, &big], 5);
    assert!(err.contains("disk is full") && err.contains("nothing was written"), "{err}");
    let view = json(&ok(&["session", "show", "--dir", d(&dir), &id, "--json"]));
    let texts: Vec<_> = view["messages"].as_array().unwrap().iter().map(|m| m["text"].clone()).collect();
    assert_eq!(texts, vec![serde_json::json!("acknowledged before the disk filled")]);
}

#[test]
fn a_closed_session_refuses_messages_until_reopened() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    init_edge(&dir);
    let id = new_session(&dir);
    ok(&["session", "set-status", "--dir", d(&dir), &id, "closed"]);
    let err = fails(&["message", "send", "--dir", d(&dir), &id, "late"], 2);
    assert!(err.contains("reopen"), "{err}");
    let err = fails(&["session", "set-status", "--dir", d(&dir), &id, "queued"], 2);
    assert!(err.contains("closed"), "{err}");
    ok(&["session", "reopen", "--dir", d(&dir), &id]);
    ok(&["message", "send", "--dir", d(&dir), &id, "after reopening"]);
    let view = json(&ok(&["session", "show", "--dir", d(&dir), &id, "--json"]));
    assert_eq!(view["reopened"], 1);
    assert_eq!(view["status"], "awaiting_reply");
}

#[test]
fn a_key_from_the_environment_is_used_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let key = "11".repeat(32);
    let with_key = |k: &str, args: &[&str]| {
        std::process::Command::new(common::BIN).args(args).env("OUTPOST_NODE_KEY", k).output().unwrap()
    };
    let out = with_key(&key, &["init", "--dir", d(&dir), "--name", "surgery-1", "--role", "edge"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.join("node.key").exists(), "no key file when the key comes from the environment");
    let out = with_key(&key, &["status", "--dir", d(&dir)]);
    assert!(out.status.success());
    let out = with_key(&"22".repeat(32), &["status", "--dir", d(&dir)]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not this node's key"));
    let out = run(&["status", "--dir", d(&dir)]);
    assert_eq!(out.status.code(), Some(3), "without the key the node does not open");
}

#[test]
fn an_exposed_key_file_stops_the_node() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    init_edge(&dir);
    std::fs::set_permissions(dir.join("node.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = fails(&["status", "--dir", d(&dir)], 3);
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn the_audit_chain_records_changes_and_views_and_detects_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    init_edge(&dir);
    let id = new_session(&dir);
    ok(&["message", "send", "--dir", d(&dir), &id, "one"]);
    ok(&["session", "show", "--dir", d(&dir), &id]);
    let entries = json(&ok(&["audit", "show", "--dir", d(&dir), "--json"]));
    let actions: Vec<_> =
        entries.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap().to_string()).collect();
    assert_eq!(actions, ["session.create", "message.send", "session.view"]);
    // A list on the command line is recorded each time (a process remembers nothing).
    ok(&["session", "list", "--dir", d(&dir)]);
    ok(&["session", "list", "--dir", d(&dir)]);
    let entries = json(&ok(&["audit", "show", "--dir", d(&dir), "--limit", "1000", "--json"]));
    let lists = entries.as_array().unwrap().iter().filter(|e| e["action"] == "session.list").count();
    assert_eq!(lists, 2, "{entries}");
    ok(&["audit", "verify", "--dir", d(&dir)]);
    let conn = rusqlite::Connection::open(dir.join("outpost.db")).unwrap();
    conn.execute("UPDATE audit SET action = 'nothing' WHERE seq = 2", []).unwrap();
    drop(conn);
    let out = run(&["audit", "verify", "--dir", d(&dir)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("broken at entry 2"));
}

#[test]
fn reading_commands_work_while_another_process_holds_the_stores_write_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    init_edge(&dir);
    let id = new_session(&dir);
    // Another process in the middle of a long write (a daemon storing a batch, a key rotation).
    let conn = rusqlite::Connection::open(dir.join("outpost.db")).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    ok(&["audit", "verify", "--dir", d(&dir)]);
    ok(&["status", "--dir", d(&dir)]);
    ok(&["backup", "--dir", d(&dir), "--out", tmp.path().join("b.outpost").to_str().unwrap()]);
    // A list is recorded in the audit chain, a write: it waits for the other one to end.
    let writer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        conn.execute_batch("COMMIT").unwrap();
    });
    let listed = json(&ok(&["session", "list", "--dir", d(&dir), "--json"]));
    assert_eq!(listed.as_array().map(|a| a.len()), Some(1), "{listed}");
    assert!(listed.to_string().contains(&id), "{listed}");
    writer.join().unwrap();
}

/// The anchors beside the audit entries (what a hub is told of the chain) are checked too: one
/// written over by hand, which needs no key, makes `audit verify` fail at that entry.
#[test]
fn an_audit_anchor_altered_by_hand_is_found_by_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    init_edge(&dir);
    let id = new_session(&dir);
    for text in ["one", "two"] {
        ok(&["message", "send", "--dir", d(&dir), &id, text]);
    }
    ok(&["audit", "verify", "--dir", d(&dir)]);
    let conn = rusqlite::Connection::open(dir.join("outpost.db")).unwrap();
    let anchor: Vec<u8> = conn.query_row("SELECT anchor FROM audit WHERE seq = 3", [], |r| r.get(0)).unwrap();
    conn.execute("UPDATE audit SET anchor = ?1 WHERE seq = 2", [anchor]).unwrap();
    drop(conn);
    let out = run(&["audit", "verify", "--dir", d(&dir)]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("broken at entry 2"), "{text}");
}

#[test]
fn deleting_audit_entries_in_the_middle_or_at_the_end_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    init_edge(&dir);
    let id = new_session(&dir);
    for text in ["one", "two", "three"] {
        ok(&["message", "send", "--dir", d(&dir), &id, text]);
    }
    ok(&["session", "show", "--dir", d(&dir), &id]);
    ok(&["audit", "verify", "--dir", d(&dir)]);
    let copy_of = |name: &str| {
        let copy = tmp.path().join(name);
        std::fs::create_dir_all(&copy).unwrap();
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
            }
        }
        copy
    };
    let (copy, headless) = (copy_of("copy"), copy_of("headless"));
    // An entry taken out of the middle (the later ones renumbered would break every hash after).
    let conn = rusqlite::Connection::open(dir.join("outpost.db")).unwrap();
    conn.execute("DELETE FROM audit WHERE seq = 3", []).unwrap();
    drop(conn);
    let out = run(&["audit", "verify", "--dir", d(&dir)]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("broken at entry 4"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The newest entries cut off: what is left is a valid chain, but not the whole one.
    let conn = rusqlite::Connection::open(copy.join("outpost.db")).unwrap();
    let last: i64 = conn.query_row("SELECT max(seq) FROM audit", [], |r| r.get(0)).unwrap();
    conn.execute("DELETE FROM audit WHERE seq >= ?1", [last - 1]).unwrap();
    drop(conn);
    let out = run(&["audit", "verify", "--dir", d(&copy)]);
    assert!(!out.status.success(), "a chain cut short passed: {}", String::from_utf8_lossy(&out.stdout));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("broken at entry {}", last - 1)),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The head removed as well: a chain without its head is not vouched for.
    let conn = rusqlite::Connection::open(copy.join("outpost.db")).unwrap();
    conn.execute("DELETE FROM meta WHERE key = 'audit_head'", []).unwrap();
    drop(conn);
    let out = run(&["audit", "verify", "--dir", d(&copy)]);
    assert!(!out.status.success(), "a chain without its head passed: {}", String::from_utf8_lossy(&out.stdout));
    // The whole chain deleted with its head: an empty chain is a new store's, but this one
    // holds sessions made here, each of which wrote an entry.
    let conn = rusqlite::Connection::open(copy.join("outpost.db")).unwrap();
    conn.execute("DELETE FROM audit", []).unwrap();
    drop(conn);
    let out = run(&["audit", "verify", "--dir", d(&copy)]);
    assert!(!out.status.success(), "a wiped chain passed: {}", String::from_utf8_lossy(&out.stdout));
    // A store written before the head existed (schema 7) gets one when it is migrated, in an
    // entry that says so: the chain itself records from where the head vouches.
    let wind_back = |dir: &Path| {
        let conn = rusqlite::Connection::open(dir.join("outpost.db")).unwrap();
        conn.execute("DELETE FROM meta WHERE key = 'audit_head'", []).unwrap();
        // And without what schemas 9, 10 and 12 added.
        conn.execute_batch(
            "ALTER TABLE sessions DROP COLUMN escalating; DROP TABLE blob_possessors;
             ALTER TABLE session_media DROP COLUMN vouched; ALTER TABLE audit DROP COLUMN anchor;
             DROP TABLE audit_anchors; DELETE FROM meta WHERE key = 'audit_chain';
             PRAGMA user_version = 7",
        )
        .unwrap();
    };
    wind_back(&headless);
    ok(&["audit", "verify", "--dir", d(&headless)]);
    let entries = json(&ok(&["audit", "show", "--dir", d(&headless), "--json"]));
    let newest = entries.as_array().unwrap().last().unwrap().clone();
    assert_eq!(newest["action"], "audit.head", "{entries}");
    assert_eq!(newest["detail"]["missing_after"], last, "{entries}");
    // Winding it back again to have the head made anew (after cutting entries off, say) leaves
    // a second such entry, which no migration makes.
    wind_back(&headless);
    let out = run(&["audit", "verify", "--dir", d(&headless)]);
    assert!(!out.status.success(), "a second head made passed: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn demo_runs_an_offline_day_and_finds_no_plaintext_then_serves_the_apps_until_interrupted() {
    use std::io::{BufRead, Read};
    let mut child = std::process::Command::new(common::BIN)
        .args(["demo", "--serve"])
        .env_remove("OUTPOST_NODE_KEY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut out = String::new();
    let mut apps = Vec::new();
    loop {
        let mut line = String::new();
        assert!(lines.read_line(&mut line).unwrap() > 0, "the demo ended before serving its apps:\n{out}");
        out.push_str(&line);
        if let Some(at) = line.find("http://").filter(|_| line.contains("/app/")) {
            apps.push(line[at..].split_whitespace().next().unwrap().to_string());
        }
        if line.contains("Ctrl-C ends it") {
            break;
        }
    }
    // The hub's monitoring counts the photos' chunks it took in.
    let received = out.lines().find_map(|l| {
        l.trim().strip_prefix("outpost_photo_chunks_total{event=\"received\"} ").and_then(|v| v.parse::<f64>().ok())
    });
    assert!(received.is_some_and(|n| n > 0.0), "{out}");
    // Both apps are up, and the demo's users sign in to them.
    assert_eq!(apps.len(), 2, "{out}");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    for (url, name, pin) in [(&apps[0], "Sam Patel", "amb-pin-8302"), (&apps[1], "Dr Ada Okafor", "derm-desk-4471")] {
        let page = agent.get(url).call().unwrap().body_mut().read_to_string().unwrap();
        assert!(page.contains("/app/app.js"), "{url}: {page}");
        let login = url.replace("/app/", "/api/login");
        let status = agent.post(&login).send_json(serde_json::json!({ "name": name, "secret": pin })).unwrap().status();
        assert_eq!(status, 200, "{name} signs in at {login}");
    }
    // The dermatology session exported for the GP record, as the consultant's app fetched it,
    // passes the independent FHIR model's checks.
    let path = out.lines().find_map(|l| l.trim().strip_prefix("-> ").filter(|p| p.ends_with(".fhir.json"))).unwrap();
    let bundle = json(&std::fs::read_to_string(path).unwrap());
    fhir_check::check_bundle(&bundle);
    let counts = fhir_check::counts(&bundle);
    for (kind, n) in [("Patient", 1), ("ServiceRequest", 1), ("Media", 3), ("Consent", 1), ("Communication", 2)] {
        assert_eq!(counts.get(kind), Some(&n), "{kind} in {counts:?}");
    }
    assert!(counts.contains_key("Encounter") || out.contains("no call over this link"), "{counts:?}");
    // Ctrl-C ends it cleanly.
    let interrupted = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(interrupted.success());
    lines.read_to_string(&mut out).unwrap();
    assert!(child.wait().unwrap().success(), "{out}");
    assert!(out.contains("plaintext check") && out.contains(": 0 found"), "{out}");
    assert!(out.contains("audit chain") && out.contains("intact"), "{out}");
    assert!(out.contains("on this device only"), "{out}");
    // The apps: the consultant's app hears the case over its event stream, replies over HTTP,
    // and hears that the crew read the advice; the reply is signed with her name.
    assert!(out.contains("app: the case is on the consultant's screen"), "{out}");
    assert!(out.contains("signed Dr Ada Okafor (consultant, GMC-7012345)"), "{out}");
    assert!(out.contains("read by the crew"), "{out}");
    // The fleet part: the hub refuses a reply forged on the ambulance's tablet.
    assert!(
        out.contains("refused a reply forged on amb-07") && out.contains("a message's author is its writer"),
        "{out}"
    );
}

#[test]
fn certificates_issued_concurrently_are_all_recorded_and_revocable() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    ok(&["ca", "init", "--dir", ca.to_str().unwrap()]);
    let dirs: Vec<_> = (0..12).map(|i| tmp.path().join(format!("edge-{i}"))).collect();
    for (i, d) in dirs.iter().enumerate() {
        ok(&["init", "--dir", d.to_str().unwrap(), "--name", &format!("edge-{i}"), "--role", "edge", "--icb", "QHM"]);
    }
    // A provisioning script issuing in parallel must not lose a record or see a half-written one.
    std::thread::scope(|s| {
        for d in &dirs {
            let ca = &ca;
            s.spawn(move || ok(&["ca", "issue", "--ca", ca.to_str().unwrap(), "--node", d.to_str().unwrap()]));
        }
    });
    let record = json(&std::fs::read_to_string(ca.join("ca.json")).unwrap());
    assert_eq!(record["issued"].as_array().unwrap().len(), dirs.len());
    for i in 0..dirs.len() {
        ok(&["ca", "revoke", "--ca", ca.to_str().unwrap(), &format!("edge-{i}")]);
    }
}

#[test]
fn a_rota_with_bad_hours_a_bad_ring_time_or_a_desk_twice_is_refused_and_nothing_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("hub");
    ok(&["init", "--dir", d(&hub), "--name", "hub-qhm", "--role", "hub", "--icb", "QHM"]);
    ok(&[
        "rota",
        "set",
        "--dir",
        d(&hub),
        "--line",
        "dermatology",
        "--desk",
        "desk-1",
        "--hours",
        "mon-fri 08:00-18:00",
    ]);
    let before = ok(&["rota", "show", "--dir", d(&hub), "--json"]);
    for (args, says) in [
        (vec!["--hours", "08:00-25:00"], "--hours"),
        (vec!["--desk", "desk-1:soon"], "whole seconds"),
        (vec!["--desk", "desk-1", "--desk", "desk-1"], "named twice"),
        (vec!["--desk", "desk-1:900"], "ring time"),
    ] {
        let mut all = vec!["rota", "set", "--dir", d(&hub), "--line", "dermatology"];
        all.extend(args);
        let err = fails(&all, 2);
        assert!(err.contains(says), "{err}");
    }
    assert_eq!(ok(&["rota", "show", "--dir", d(&hub), "--json"]), before, "nothing was written");
}

#[test]
fn a_repeated_create_with_the_same_client_key_makes_one_session_and_one_message() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    init_edge(&dir);
    let new = |key: &str, summary: &str, code: Option<i32>| {
        let args = [
            "session",
            "new",
            "--dir",
            d(&dir),
            "--service-line",
            "cardiology",
            "--care-setting",
            "gp_urgent",
            "--summary",
            summary,
            "--client-key",
            key,
        ];
        match code {
            None => ok(&args).trim().to_string(),
            Some(c) => fails(&args, c),
        }
    };
    // A double tap on a slow tablet: the same request twice.
    let first = new("6f1c2a9e-tap", "Chest pain, ECG attached", None);
    let second = new("6f1c2a9e-tap", "Chest pain, ECG attached", None);
    assert_eq!(first, second);
    let listed = json(&ok(&["session", "list", "--dir", d(&dir), "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    // The same key for another request is a mistake, not a repeat: refused, nothing written.
    let err = new("6f1c2a9e-tap", "Another patient", Some(2));
    assert!(err.contains("already used for a different session"), "{err}");
    let err = new("has space", "Chest pain, ECG attached", Some(2));
    assert!(err.contains("client key"), "{err}");
    assert_eq!(json(&ok(&["session", "list", "--dir", d(&dir), "--json"])).as_array().unwrap().len(), 1);
    // A different key is a different session.
    assert_ne!(new("second-patient", "Chest pain, ECG attached", None), first);

    let send = |key: &str, text: &str| {
        json(&ok(&["message", "send", "--dir", d(&dir), &first, text, "--client-key", key, "--json"]))
    };
    let m1 = send("msg-1", "BP 150/90, pain 6/10");
    let m2 = send("msg-1", "BP 150/90, pain 6/10");
    assert_eq!(m1["message"], m2["message"]);
    assert_eq!(m2["receipt"], "device");
    let err = fails(&["message", "send", "--dir", d(&dir), &first, "pain 8/10", "--client-key", "msg-1"], 2);
    assert!(err.contains("already used for a different message"), "{err}");
    send("msg-2", "BP 150/90, pain 6/10");
    let view = json(&ok(&["session", "show", "--dir", d(&dir), &first, "--json"]));
    let texts: Vec<&str> = view["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["BP 150/90, pain 6/10", "BP 150/90, pain 6/10"], "one per key");
}

#[test]
fn call_status_json_lists_typed_routing_steps_with_their_time_and_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    init_edge(&dir);
    let id = new_session(&dir);
    assert!(json(&ok(&["call", "status", "--dir", d(&dir), &id, "--json"]))["routing"].as_array().unwrap().is_empty());
    // Offline: the request is recorded here and waits for the hub.
    let asked = json(&ok(&["call", "escalate", "--dir", d(&dir), &id, "--json"]));
    assert_eq!(asked["state"], "asked", "{asked}");
    let call = asked["call"].as_str().unwrap();
    let status = json(&ok(&["call", "status", "--dir", d(&dir), &id, "--json"]));
    let steps = status["routing"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "{status}");
    let step = steps[0].as_object().unwrap();
    assert_eq!(step["kind"], "escalate");
    assert_eq!(step["call"], call);
    assert!(step["by"].as_str().is_some_and(|by| !by.is_empty()), "{status}");
    assert!(step["at_ms"].as_i64().unwrap() > 1_700_000_000_000, "{status}");
    assert_eq!(step.len(), 4, "only the kind's own fields: {status}");
    assert!(status["calls"].as_array().unwrap().is_empty());
    let text = ok(&["call", "status", "--dir", d(&dir), &id]);
    assert!(text.contains("asked for a call"), "{text}");
}

/// Input that once crashed a command or left it failing in the wrong way: each is refused with
/// its documented exit code, saying what to do, and leaves nothing behind.
mod refused_cleanly {
    use super::common::{BIN, init_edge, json, new_session, ok, run};
    use super::d;
    use std::process::{Command, Stdio};

    /// A PCM WAV (16-bit mono) with the given sample rate and `n` samples of silence.
    fn wav(rate: u32, n: u32) -> Vec<u8> {
        let data = n * 2;
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(36 + data).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes()); // PCM
        b.extend_from_slice(&1u16.to_le_bytes()); // mono
        b.extend_from_slice(&rate.to_le_bytes());
        b.extend_from_slice(&(rate * 2).to_le_bytes()); // bytes per second
        b.extend_from_slice(&2u16.to_le_bytes()); // block align
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&data.to_le_bytes());
        b.resize(b.len() + data as usize, 0);
        b
    }

    #[test]
    fn an_unknown_queue_for_the_link_emulator_is_bad_input() {
        let out = run(&["linkem", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--aqm", "red"]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{said}");
        assert!(said.contains("droptail, codel or step:<ms>"), "it says what it takes: {said}");
    }

    #[test]
    fn a_wav_at_a_sample_rate_no_call_can_play_is_bad_input() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("amb");
        init_edge(&dir);
        let id = new_session(&dir);
        for rate in [0, 1] {
            let play = tmp.path().join(format!("rate-{rate}.wav"));
            std::fs::write(&play, wav(rate, 160)).unwrap();
            let out = run(&["call", "escalate", "--dir", d(&dir), &id, "--play", play.to_str().unwrap()]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{stderr}");
            assert!(stderr.contains("sample rate"), "{stderr}");
        }
    }

    #[test]
    fn an_export_that_cannot_be_written_names_the_file_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("amb");
        init_edge(&dir);
        let id = new_session(&dir);
        let out = run(&["session", "export", "--dir", d(&dir), &id, "--format", "fhir", "--out", "/dev/full"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "a full disk: {stderr}");
        assert!(stderr.contains("/dev/full") && stderr.contains("Free space"), "{stderr}");
        // A directory that does not exist: an I/O failure, and no file.
        let missing = tmp.path().join("no-such-dir").join("letter.txt");
        let out = run(&[
            "session",
            "export",
            "--dir",
            d(&dir),
            &id,
            "--format",
            "letter",
            "--out",
            missing.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!missing.exists());
        // Written, the file is whole and only its owner's to read.
        let good = tmp.path().join("record.json");
        ok(&["session", "export", "--dir", d(&dir), &id, "--format", "json", "--out", good.to_str().unwrap()]);
        assert_eq!(json(&std::fs::read_to_string(&good).unwrap())["id"], id.as_str());
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers.len(), 2, "only the node and the export: {leftovers:?}");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&good).unwrap().permissions().mode() & 0o077, 0);
    }

    #[test]
    fn a_person_whose_records_would_be_refused_is_not_added() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("amb");
        init_edge(&dir);
        for registration in ["", "   ", &"X".repeat(4096)] {
            let mut child = Command::new(BIN)
                .args(["user", "add", "--dir", d(&dir), "--name", "Sam Patel", "--role", "paramedic"])
                .args(["--registration", registration])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write as _;
            writeln!(child.stdin.take().unwrap(), "amb-pin-4821").unwrap();
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{stderr}");
            assert!(stderr.contains("registration"), "{stderr}");
        }
        let people = json(&ok(&["user", "list", "--dir", d(&dir), "--json"]));
        assert_eq!(people.as_array().map(Vec::len), Some(0), "{people}");
    }

    /// A photo's hash is the key of its record in the session, written by the edge that took
    /// it; the letter shows its first twelve characters, whatever they are.
    #[test]
    fn the_letter_shows_a_photos_hash_whatever_its_characters() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("amb");
        init_edge(&dir);
        let id = new_session(&dir);
        let photo = tmp.path().join("p.jpg");
        std::fs::write(&photo, outpost_node::photo::synthetic_jpeg(64, 48, 1).unwrap().bytes).unwrap();
        ok(&[
            "photo",
            "attach",
            "--dir",
            d(&dir),
            &id,
            photo.to_str().unwrap(),
            "--view",
            "site",
            "--body-site",
            "left forearm",
            "--consent",
            "verbal",
        ]);
        let text = ok(&["session", "export", "--dir", d(&dir), &id, "--format", "json"]);
        let mut view: sync_protocol::session::SessionView = serde_json::from_value(json(&text)).unwrap();
        view.media[0].hash = format!("a{}", "é".repeat(31));
        let letter = outpost_node::export::letter::letter(&view, &|_| false, "amb-07", 0);
        assert!(letter.contains(&format!("a{}…", "é".repeat(11))), "{letter}");
    }
}

/// Runs `outpost user set-pin` with `pin` on standard input.
fn set_pin(dir: &Path, name: &str, pin: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut child = std::process::Command::new(common::BIN)
        .args(["user", "set-pin", "--dir", d(dir), "--name", name])
        .env_remove("OUTPOST_NODE_KEY")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{pin}").unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn a_new_pin_is_set_from_standard_input_audited_and_refused_for_what_has_none() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    init_edge(&dir);
    common::fleet::add_user(&dir, "Sam Patel", "paramedic", "HCPC-PA123456", "482193");
    ok(&["user", "add", "--dir", d(&dir), "--name", "ePR bridge", "--role", "system", "--token"]);
    let code = |o: &std::process::Output| (o.status.code(), String::from_utf8_lossy(&o.stderr).to_string());
    let (status, err) = code(&set_pin(&dir, "Sam Patel", "123"));
    assert_eq!(status, Some(2), "too short: {err}");
    let (status, err) = code(&set_pin(&dir, "Nobody", "905511"));
    assert_eq!(status, Some(4), "{err}");
    let (status, err) = code(&set_pin(&dir, "ePR bridge", "905511"));
    assert_eq!(status, Some(2), "{err}");
    assert!(err.contains("integrating system"), "{err}");
    let before = audit_entries(&dir);
    let (status, err) = code(&set_pin(&dir, "Sam Patel", "905511"));
    assert_eq!(status, Some(0), "{err}");
    assert_eq!(audit_entries(&dir), before + 1);
    let entries = json(&ok(&["audit", "show", "--dir", d(&dir), "--limit", "1", "--json"]));
    assert_eq!(entries[0]["action"], "user.set_pin", "{entries}");
    assert_eq!(entries[0]["detail"]["user"]["name"], "Sam Patel", "{entries}");
}

/// A restore brings back the staff as the backup had them: whoever was disabled since can sign
/// in again, so the command names who can, and says how to disable who has left.
#[test]
fn a_restore_names_the_staff_who_can_sign_in_as_of_the_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    init_edge(&dir);
    common::fleet::add_user(&dir, "Sam Patel", "paramedic", "HCPC-PA123456", "482193");
    common::fleet::add_user(&dir, "Jo Reyes", "paramedic", "HCPC-PA654321", "771234");
    ok(&["user", "add", "--dir", d(&dir), "--name", "ePR bridge", "--role", "system", "--token"]);
    let bak = tmp.path().join("node.bak");
    ok(&["backup", "--dir", d(&dir), "--out", d(&bak)]);
    // Jo leaves after the backup.
    ok(&["user", "disable", "--dir", d(&dir), "--name", "Jo Reyes"]);
    let key = dir.join("node.key");
    let into = tmp.path().join("restored");
    let text = ok(&["restore", "--from", d(&bak), "--dir", d(&into), "--key-file", d(&key)]);
    assert!(text.contains("Staff who can sign in as of the backup: Jo Reyes, Sam Patel."), "{text}");
    assert!(text.contains("outpost user disable"), "{text}");
    let into2 = tmp.path().join("restored-json");
    let said = json(&ok(&["restore", "--from", d(&bak), "--dir", d(&into2), "--key-file", d(&key), "--json"]));
    assert_eq!(said["staff"], serde_json::json!(["Jo Reyes", "Sam Patel"]), "{said}");
}
