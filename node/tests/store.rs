//! The store: compaction, lazy loading, two writers on one node, migrations, tampering.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use outpost_node::config::NodeDir;
use outpost_node::node::{InitParams, Node, NodeError, SessionRequest};
use outpost_node::store::{ListFilter, StoreError, StoreOptions};
use sync_protocol::session::{Patient, Requester, Service};
use sync_protocol::vocab::{CareSetting, Channel, Priority, Role, ServiceLine, Status};
use sync_protocol::wire::Hash;

const T: i64 = 1_790_000_000_000;

fn node_dir() -> (tempfile::TempDir, NodeDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = NodeDir::new(tmp.path().join("node"));
    let params = InitParams {
        name: "surgery-12".into(),
        role: Role::Edge,
        org: Some("B82005".into()),
        icb: Some("QOQ".into()),
        lines: vec![],
    };
    Node::init(&dir, &params, T).unwrap();
    (tmp, dir)
}

fn request(summary: &str) -> SessionRequest {
    SessionRequest {
        care_setting: CareSetting::GpElective,
        requester: Requester::default(),
        patient: Patient::default(),
        service: Service {
            line: ServiceLine::Gastroenterology,
            channel: Channel::Message,
            priority: Priority::Routine,
        },
        summary: summary.into(),
        draft: false,
    }
}

#[test]
fn compaction_folds_the_log_into_a_snapshot_without_losing_anything() {
    let (_tmp, dir) = node_dir();
    let opts = StoreOptions { compact_after: 4, ..StoreOptions::default() };
    let mut node = Node::open_with(&dir, opts).unwrap();
    let id = node.new_session(request("compaction"), T).unwrap().id;
    for i in 0..10 {
        node.send_message(id, &format!("message {i}"), None, T + i).unwrap();
    }
    let stats = node.stats().unwrap();
    assert_eq!(stats.snapshots, 1);
    assert!(stats.log_changes < 4, "log folded: {} changes left", stats.log_changes);
    drop(node);
    // A fresh process reads snapshot + log and sees every message in order.
    let mut node = Node::open(&dir).unwrap();
    let texts: Vec<String> = node.view(id).unwrap().messages.into_iter().map(|m| m.text).collect();
    assert_eq!(texts, (0..10).map(|i| format!("message {i}")).collect::<Vec<_>>());
}

#[test]
fn two_writers_on_one_node_see_each_others_changes() {
    // The daemon and the CLI are two processes on one store; here, two handles.
    let (_tmp, dir) = node_dir();
    let opts = StoreOptions { compact_after: 3, ..StoreOptions::default() };
    let mut a = Node::open_with(&dir, opts).unwrap();
    let mut b = Node::open_with(&dir, opts).unwrap();
    let id = a.new_session(request("two writers"), T).unwrap().id;
    for i in 0..9 {
        // Alternate, so each writer's cached document is stale at every turn, and the other
        // writer's compaction deletes log rows it has not read yet.
        let (w, name) = if i % 2 == 0 { (&mut a, "a") } else { (&mut b, "b") };
        w.send_message(id, &format!("{name}{i}"), None, T + i).unwrap();
    }
    for n in [&mut a, &mut b] {
        let texts: Vec<String> = n.view(id).unwrap().messages.into_iter().map(|m| m.text).collect();
        assert_eq!(texts, ["a0", "b1", "a2", "b3", "a4", "b5", "a6", "b7", "a8"]);
    }
}

#[test]
fn listing_reads_cards_not_documents_and_filters_by_index_columns() {
    let (_tmp, dir) = node_dir();
    let opts = StoreOptions { cache_bytes: 64 << 10, ..StoreOptions::default() };
    let mut node = Node::open_with(&dir, opts).unwrap();
    let mut ids = Vec::new();
    for i in 0..30 {
        let mut req = request(&format!("session {i}"));
        if i % 3 == 0 {
            req.service.line = ServiceLine::Cardiology;
        }
        ids.push(node.new_session(req, T + i).unwrap().id);
    }
    node.set_status(ids[4], Status::Closed, T + 100).unwrap();
    let all = node.list(&ListFilter::default()).unwrap();
    assert_eq!(all.len(), 30);
    assert_eq!(all[0].id, ids[4], "newest activity first");
    let cardio =
        node.list(&ListFilter { service_line: Some(ServiceLine::Cardiology), ..ListFilter::default() }).unwrap();
    assert_eq!(cardio.len(), 10);
    let closed = node.list(&ListFilter { status: Some(Status::Closed), ..ListFilter::default() }).unwrap();
    assert_eq!(closed.len(), 1);
    // Every document can still be read, through a cache of four.
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(node.view(*id).unwrap().summary, format!("session {i}"));
    }
}

#[test]
fn a_tampered_change_is_refused_not_silently_read() {
    let (_tmp, dir) = node_dir();
    let mut node = Node::open(&dir).unwrap();
    let id = node.new_session(request("tamper"), T).unwrap().id;
    node.send_message(id, "original", None, T + 1).unwrap();
    drop(node);
    let conn = rusqlite::Connection::open(dir.db_path()).unwrap();
    // Flip one byte of every stored form of the document (snapshot and log alike).
    let flip = "CAST(substr(sealed, 1, 30) || CASE WHEN substr(sealed, 31, 1) = x'00' THEN x'01' ELSE x'00' END
                || substr(sealed, 32) AS BLOB)";
    let changed = conn.execute(&format!("UPDATE doc_snapshots SET sealed = {flip}"), []).unwrap()
        + conn.execute(&format!("UPDATE doc_changes SET sealed = {flip}"), []).unwrap();
    assert!(changed > 0);
    drop(conn);
    let mut node = Node::open(&dir).unwrap();
    let err = node.view(id).unwrap_err();
    assert!(matches!(err, StoreError::Crypto(_)), "{err}");
    assert!(err.to_string().contains("failed to decrypt"), "{err}");
}

/// A row taken out of a session's change log is damage, not an older version of the session.
/// The newest (a consent withdrawal, say: the photo would be exported again) left a valid
/// older log that read as the session, and the index still named the change, so no peer would
/// send it back: now the read says the store is damaged and what to do. One in the middle
/// (the changes after it depend on it) is refused by Automerge's own load.
#[test]
fn a_change_row_taken_out_of_the_log_is_damage_not_an_older_session() {
    for (which, pick) in [("the newest", "MAX(seq)"), ("one in the middle", "MIN(seq) + 1")] {
        let (_tmp, dir) = node_dir();
        let mut node = Node::open(&dir).unwrap();
        let id = node.new_session(request("rollback"), T).unwrap().id;
        for i in 0..3 {
            node.send_message(id, &format!("observation {i}"), None, T + 1 + i).unwrap();
        }
        assert_eq!(node.view(id).unwrap().messages.len(), 3);
        drop(node);
        let conn = rusqlite::Connection::open(dir.db_path()).unwrap();
        let gone =
            conn.execute(&format!("DELETE FROM doc_changes WHERE seq = (SELECT {pick} FROM doc_changes)"), []).unwrap();
        assert_eq!(gone, 1, "{which}: no snapshot folded the log yet");
        drop(conn);
        let mut node = Node::open(&dir).unwrap();
        let err = node.view(id).map(|v| v.messages.len()).unwrap_err();
        if which == "the newest" {
            assert!(matches!(err, StoreError::Damaged(_)), "{which}: {err}");
            assert!(err.to_string().contains("restore the node from its latest backup"), "{which}: {err}");
        }
    }
}

#[test]
fn a_database_from_a_newer_outpost_is_refused() {
    let (_tmp, dir) = node_dir();
    let conn = rusqlite::Connection::open(dir.db_path()).unwrap();
    conn.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(conn);
    let err = Node::open(&dir).unwrap_err();
    assert!(matches!(err, NodeError::Store(StoreError::NewerSchema { found: 99, .. })), "{err}");
    assert!(err.to_string().contains("upgrade outpost"), "{err}");
}

#[test]
fn the_schema_is_migrated_to_its_version_on_creation() {
    let (_tmp, dir) = node_dir();
    let conn = rusqlite::Connection::open(dir.db_path()).unwrap();
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(v, outpost_node::store::DB_SCHEMA_VERSION);
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn a_failed_edit_leaves_the_document_as_it_was() {
    let (_tmp, dir) = node_dir();
    let mut node = Node::open(&dir).unwrap();
    let id = node.new_session(request("refusals"), T).unwrap().id;
    node.set_status(id, Status::AwaitingReply, T + 1).unwrap();
    assert!(node.set_status(id, Status::Queued, T + 2).is_err());
    let err = node.send_message(id, "   ", None, T + 3).unwrap_err();
    assert!(err.to_string().contains("must not be empty"), "{err}");
    // Only a desk says the consultant has responded: every peer would refuse it from an edge.
    let err = node.set_status(id, Status::Responded, T + 3).unwrap_err();
    assert!(matches!(err, NodeError::Store(StoreError::NotYours { .. })), "{err}");
    node.send_message(id, "fine", None, T + 4).unwrap();
    let v = node.view(id).unwrap();
    assert_eq!(v.status, Status::AwaitingReply);
    assert_eq!(v.messages.len(), 1);
    assert_eq!(node.raw_store().audit().verify_audit().unwrap().broken_at, None);
}

/// The sums a Summary sends and the delta a reconnect sends are kept up to date per write:
/// after every step of a random history (new sessions on several lines, messages, shares,
/// peers confirming our heads, older heads or nothing, the store reopened) they equal what a
/// full scan of the index gives, for peers of every kind.
#[test]
fn kept_reconciliation_sums_and_deltas_equal_a_full_scan_after_every_write() {
    use rand::{Rng, SeedableRng};
    use sync_protocol::engine::Knowledge;
    use sync_protocol::recon::{Fingerprint, digest};
    use sync_protocol::scope::PeerInfo;

    let peer = |name: &str, role: Role, icb: &str, lines: &[ServiceLine]| PeerInfo {
        name: name.into(),
        role,
        org: None,
        icb: Some(icb.into()),
        lines: lines.to_vec(),
    };
    let peers = [
        peer("hub-qoq", Role::Hub, "QOQ", &[]),
        peer("desk-derm", Role::Desk, "QOQ", &[ServiceLine::Dermatology]),
        peer("desk-gastro", Role::Desk, "QOQ", &[ServiceLine::Gastroenterology, ServiceLine::Cardiology]),
        peer("surgery-12", Role::Edge, "QOQ", &[]),
        peer("surgery-40", Role::Edge, "QOQ", &[]),
        peer("hub-other", Role::Hub, "QWE", &[]),
    ];
    let lines = [ServiceLine::Dermatology, ServiceLine::Gastroenterology, ServiceLine::Cardiology];
    for seed in 0..4u64 {
        let (_tmp, dir) = node_dir();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut node = Node::open(&dir).unwrap();
        let mut ids = Vec::new();
        // Heads of each session as they were after each write: what a peer may confirm later.
        let mut past: Vec<Vec<Vec<Hash>>> = Vec::new();
        for step in 0..120i64 {
            let now = T + step;
            match rng.random_range(0..12) {
                0..=2 => {
                    let mut req = request(&format!("session {step}"));
                    req.service.line = lines[rng.random_range(0..lines.len())];
                    ids.push(node.new_session(req, now).unwrap().id);
                    past.push(Vec::new());
                }
                3..=4 if !ids.is_empty() => {
                    let i = rng.random_range(0..ids.len());
                    node.send_message(ids[i], &format!("message {step}"), None, now).unwrap();
                }
                5 if !ids.is_empty() => {
                    let i = rng.random_range(0..ids.len());
                    let id = ids[i];
                    node.raw_store()
                        .sessions_mut()
                        .edit(id, "session.share", None, now, |_, doc| {
                            doc.share_with("surgery-40", now).map_err(|source| StoreError::Model { id, source })
                        })
                        .unwrap();
                }
                6..=8 if !ids.is_empty() => {
                    // A peer confirms: our heads, heads of an earlier version, or nothing.
                    let p = &peers[rng.random_range(0..peers.len())];
                    let mut updates = Vec::new();
                    for _ in 0..rng.random_range(1..4) {
                        let i = rng.random_range(0..ids.len());
                        let heads = match rng.random_range(0..3) {
                            0 if !past[i].is_empty() => past[i][rng.random_range(0..past[i].len())].clone(),
                            1 => Vec::new(),
                            _ => node.raw_store().peers().heads_of(&ids[i].to_bytes()).unwrap().unwrap(),
                        };
                        updates.push((ids[i].to_bytes(), Knowledge { heads, shared: Vec::new() }));
                    }
                    node.raw_store().peers_mut().set_knowledge(p, &updates).unwrap();
                }
                10 | 11 => {
                    // A whole sync: the peer confirms our heads of everything it may see.
                    let p = &peers[rng.random_range(0..peers.len())];
                    let updates: Vec<_> = node
                        .raw_store()
                        .peers()
                        .items_for(p)
                        .unwrap()
                        .iter()
                        .map(|i| {
                            (
                                i.id,
                                Knowledge {
                                    heads: node.raw_store().peers().heads_of(&i.id).unwrap().unwrap(),
                                    shared: Vec::new(),
                                },
                            )
                        })
                        .collect();
                    node.raw_store().peers_mut().set_knowledge(p, &updates).unwrap();
                }
                9 => {
                    drop(node);
                    node = Node::open(&dir).unwrap();
                }
                _ => {}
            }
            for (i, id) in ids.iter().enumerate() {
                let heads = node.raw_store().peers().heads_of(&id.to_bytes()).unwrap().unwrap();
                if past[i].last() != Some(&heads) {
                    past[i].push(heads);
                }
            }
            for p in &peers {
                let items = node.raw_store().peers().items_for(p).unwrap();
                let full = (items.len() as u64, Fingerprint::of_all(&items));
                assert_eq!(
                    node.raw_store().peers().summary_for(p).unwrap(),
                    full,
                    "seed {seed} step {step}: sums for {}",
                    p.name
                );
                let mut want = Vec::new();
                for item in &items {
                    let known = node.raw_store().peers().knowledge(p, &item.id).unwrap().map(|k| digest(&k.heads));
                    if known != Some(item.digest) {
                        want.push((item.id, node.raw_store().peers().heads_of(&item.id).unwrap().unwrap()));
                    }
                }
                // Twice: the second call reads from the moved mark.
                for round in 0..2 {
                    assert_eq!(
                        node.raw_store().peers_mut().delta_for(p).unwrap(),
                        want,
                        "seed {seed} step {step} round {round}: delta for {}",
                        p.name
                    );
                }
            }
        }
    }
}

#[test]
fn known_changes_are_answered_from_the_index_and_the_document_alike() {
    use sync_protocol::scope::PeerInfo;
    let (_tmp, dir) = node_dir();
    let hub = PeerInfo { name: "hub-qoq".into(), role: Role::Hub, org: None, icb: Some("QOQ".into()), lines: vec![] };
    // A budget of one small document: every question below finds the session evicted.
    let opts = StoreOptions { cache_bytes: 1, ..StoreOptions::default() };
    let mut node = Node::open_with(&dir, opts).unwrap();
    let id = node.new_session(request("known changes"), T).unwrap().id;
    let other = node.new_session(request("another"), T).unwrap().id;
    node.send_message(id, "first", None, T + 1).unwrap();
    node.send_message(id, "second", None, T + 2).unwrap();
    let doc = automerge::AutoCommit::load(&node.raw_store().sessions_mut().export_automerge(id).unwrap()).unwrap();
    let mut doc = doc;
    let heads: Vec<Hash> = doc.get_heads().iter().map(|h| Hash::from(*h)).collect();
    let all: Vec<Hash> = doc.get_changes(&[]).iter().map(|c| Hash::from(c.hash())).collect();
    let older: Vec<Hash> = all.iter().filter(|h| !heads.contains(h)).copied().collect();
    assert!(!older.is_empty() && !heads.is_empty());
    let stranger = Hash([7u8; 32]);
    let key = id.to_bytes();
    let ask = |node: &mut Node, hashes: &[Hash]| node.raw_store().peers_mut().known_hashes(&hub, &key, hashes).unwrap();
    // Our heads (index), an older change (only the document knows it is held here), a change
    // held by no session (no signature recorded), and a change held by another session.
    assert_eq!(ask(&mut node, &heads), heads);
    assert_eq!(ask(&mut node, &older), older);
    assert_eq!(ask(&mut node, &[stranger]), Vec::<Hash>::new());
    let mut mixed = heads.clone();
    mixed.push(stranger);
    mixed.push(older[0]);
    assert_eq!(ask(&mut node, &mixed), [heads.clone(), vec![older[0]]].concat());
    let theirs: Vec<Hash> =
        automerge::AutoCommit::load(&node.raw_store().sessions_mut().export_automerge(other).unwrap())
            .unwrap()
            .get_heads()
            .iter()
            .map(|h| Hash::from(*h))
            .collect();
    assert_eq!(ask(&mut node, &theirs), Vec::<Hash>::new(), "another session's change is not this one's");
    // A peer that may not see the session learns nothing of it.
    let far = PeerInfo { name: "hub-far".into(), role: Role::Hub, org: None, icb: Some("QWE".into()), lines: vec![] };
    assert!(node.raw_store().peers_mut().known_hashes(&far, &key, &heads).unwrap().is_empty());
}

#[test]
fn a_document_cache_smaller_than_one_session_still_reads_and_writes_everything() {
    let (_tmp, dir) = node_dir();
    let opts = StoreOptions { cache_bytes: 1, ..StoreOptions::default() };
    let mut node = Node::open_with(&dir, opts).unwrap();
    let ids: Vec<_> = (0..5).map(|i| node.new_session(request(&format!("s{i}")), T).unwrap().id).collect();
    for round in 0..3 {
        for (i, id) in ids.iter().enumerate() {
            node.send_message(*id, &format!("m{round}-{i}"), None, T + round).unwrap();
        }
    }
    for (i, id) in ids.iter().enumerate() {
        let texts: Vec<String> = node.view(*id).unwrap().messages.into_iter().map(|m| m.text).collect();
        assert_eq!(texts, (0..3).map(|r| format!("m{r}-{i}")).collect::<Vec<_>>());
    }
}

/// The person who asked for a call through the local API is on it until it ends: only they
/// speak in it and hang it up. The daemon keeps that in memory; after a restart it is read back
/// from the audit chain, which names the person in the escalation. A call asked for from the
/// command line names nobody.
#[test]
fn the_person_who_asked_for_a_call_is_known_again_after_a_restart() {
    use outpost_node::store::people::{Credential, NewPerson, PersonRole};
    let (_t, dir) = node_dir();
    let mut node = Node::open(&dir).unwrap();
    let gp = NewPerson { name: "Dr Kim Lee".into(), role: PersonRole::Gp, registration: Some("GMC-7654321".into()) };
    let (gp, _) = node.raw_store().people_mut().add_person(&gp, &Credential::Secret("482913".into()), T).unwrap();
    let asked = node.new_session(request("chest pain on exertion"), T).unwrap().id;
    let by_hand = node.new_session(request("abdominal pain"), T).unwrap().id;
    node.set_acting(Some(&gp));
    let call = node.escalate(asked, T + 1_000).unwrap();
    node.set_acting(None);
    let other = node.escalate(by_hand, T + 2_000).unwrap();
    drop(node);
    let node = Node::open(&dir).unwrap();
    assert_eq!(node.call_person(asked, &call).unwrap(), Some(gp.id));
    assert_eq!(node.call_person(asked, &other).unwrap(), None, "another call of the same person's session");
    assert_eq!(node.call_person(by_hand, &other).unwrap(), None, "asked for from the command line");
}

/// A list shown again and again (the app lists at every screen) is recorded once an hour per
/// person and kind of list: not again within the hour, again after it, and at once for another
/// person or another kind of list (a callback's card carries its number, a list's does not).
/// A repeated create, answered with the session as it stands, is a view.
#[test]
fn a_session_shown_in_a_list_is_recorded_once_an_hour_per_person_and_kind_of_list() {
    use outpost_node::store::people::{Credential, NewPerson, PersonRole};
    let (_t, dir) = node_dir();
    let mut node = Node::open(&dir).unwrap();
    let add = |node: &mut Node, name: &str| {
        let who = NewPerson { name: name.into(), role: PersonRole::Gp, registration: None };
        node.raw_store().people_mut().add_person(&who, &Credential::Secret("482913".into()), T).unwrap().0
    };
    let (kim, ann) = (add(&mut node, "Dr Kim Lee"), add(&mut node, "Dr Ann Shah"));
    let a = node.new_session(request("chest pain on exertion"), T).unwrap().id;
    let b = node.new_session(request("abdominal pain"), T).unwrap().id;
    let shown = |node: &mut Node, who, ids: &[_], via, at| {
        node.acting_as(who, |n| n.record_shown(ids.iter().copied(), via, at).unwrap())
    };
    assert_eq!(shown(&mut node, &kim, &[a, b], "api", T), 2);
    assert_eq!(shown(&mut node, &kim, &[a, b, a], "api", T + 3_599_999), 0, "within the hour");
    assert_eq!(shown(&mut node, &ann, &[a], "api", T + 1), 1, "another person");
    assert_eq!(shown(&mut node, &kim, &[a], "callbacks", T + 2), 1, "another kind of list");
    assert_eq!(shown(&mut node, &kim, &[a, b], "api", T + 3_600_000), 2, "an hour on");
    let entries = node.audit_tail(100).unwrap();
    let lists: Vec<_> = entries.iter().filter(|e| e.action == "session.list").collect();
    assert_eq!(lists.len(), 4);
    assert_eq!(lists[0].detail.as_ref().unwrap()["by"]["name"], "Dr Kim Lee");
    assert_eq!(lists[1].detail.as_ref().unwrap()["by"]["name"], "Dr Ann Shah");
    assert_eq!(lists[2].detail.as_ref().unwrap()["via"], "callbacks");

    // The same create sent again returns the first session, which is then a look at it.
    let views = |node: &Node| node.audit_tail(100).unwrap().iter().filter(|e| e.action == "session.view").count();
    let first = node.new_session_once(request("syncope"), Some("tap-1"), T + 5).unwrap().id;
    assert_eq!(views(&node), 0);
    assert_eq!(node.new_session_once(request("syncope"), Some("tap-1"), T + 6).unwrap().id, first);
    assert_eq!(views(&node), 1);
}

/// A node set up anew under a name the hub knew (a replacement tablet) has another audit chain:
/// it is compared with nothing, and what the hub had seen of the old one is no loss.
#[test]
fn a_node_set_up_anew_under_a_known_name_is_not_taken_for_a_cut_back_chain() {
    use sync_protocol::engine::AuditHeads;
    let (_t, dir) = node_dir();
    let mut node = Node::open(&dir).unwrap();
    node.new_session(request("chest pain"), T).unwrap();
    let store = node.raw_store();
    let (mine, head) = (store.audit().chain_id().unwrap(), store.audit().head_seq().unwrap());
    assert_ne!(mine, 0, "a chain id is made with the store");
    let heads = |seen_chain, seen| AuditHeads { chain: 9, head: 5, seen_chain, seen, ..Default::default() };
    // The hub had seen a longer chain, but another one: nothing is lost here.
    let found = store.audit_mut().note_audit_head("hub-qhm", heads(mine ^ 1, head + 40), true, T).unwrap();
    assert!(!found.ours_cut);
    // This very chain, seen longer by a hub: lost. Seen longer by an edge: not its word to take.
    assert!(store.audit_mut().note_audit_head("hub-qhm", heads(mine, head + 40), true, T).unwrap().ours_cut);
    assert!(!store.audit_mut().note_audit_head("amb-09", heads(mine, head + 70), false, T).unwrap().ours_cut);
    // A peer's own chain: the furthest end told is kept; an end before it is its loss, once;
    // another chain under the same name starts afresh.
    // Each answering for entry 100, the end kept once it was told.
    let theirs = |chain, head| AuditHeads { chain, head, proof: 100, ..Default::default() };
    let audit = |s: &mut outpost_node::store::Store, h| s.audit_mut().note_audit_head("amb-09", h, false, T).unwrap();
    assert!(!audit(store, theirs(7, 100)).theirs_cut);
    // An older answer overtaken by another conversation's (it vouches for an end before the
    // one kept) is no loss: a daemon's and a one-shot sync's, side by side.
    let overtaken = AuditHeads { chain: 7, head: 99, proof: 98, ..Default::default() };
    assert!(!audit(store, overtaken).theirs_cut);
    assert_eq!(store.audit().their_head("amb-09").unwrap(), (7, 100));
    assert!(audit(store, theirs(7, 60)).theirs_cut);
    assert!(!audit(store, theirs(7, 60)).theirs_cut);
    assert_eq!(store.audit().their_head("amb-09").unwrap(), (7, 100));
    assert!(!audit(store, theirs(8, 3)).theirs_cut, "a new tablet under the name");
    assert_eq!(store.audit().their_head("amb-09").unwrap(), (8, 3));
}

/// One sync's audit heads between a tablet and its hub, as the engine exchanges them: the hub
/// (the responder) tells first, the tablet answers vouching for the end the hub had seen.
/// Returns what the tablet found, then what the hub found.
fn exchange_audit_heads(
    tablet: &mut Node,
    hub: &mut Node,
    now: i64,
) -> (outpost_node::store::HeadsFound, outpost_node::store::HeadsFound) {
    let from_hub = hub.raw_store().audit().audit_heads_for("amb-07", None).unwrap();
    let ours = tablet.raw_store().audit_mut().note_audit_head("hub-qhm", from_hub, true, now).unwrap();
    let from_tablet = tablet.raw_store().audit().audit_heads_for("hub-qhm", Some(from_hub.seen)).unwrap();
    let theirs = hub.raw_store().audit_mut().note_audit_head("amb-07", from_tablet, false, now).unwrap();
    (ours, theirs)
}

fn audit_actions(node: &mut Node) -> Vec<String> {
    node.raw_store().audit().audit_tail(10_000).unwrap().into_iter().map(|e| e.action).collect()
}

/// An older copy of a tablet's store put back, then written past where the hub had seen its
/// chain end (a shift's offline work, or entries written on purpose to pad it): the entry the
/// hub had seen is another one now, and both sides find it; an honest sync after finds nothing.
#[test]
fn an_older_copy_written_past_where_the_hub_had_seen_it_is_found_by_both_sides() {
    let (_t, dir) = node_dir();
    let (_t2, hub_dir) = node_dir();
    let mut hub = Node::open(&hub_dir).unwrap();
    let mut tablet = Node::open(&dir).unwrap();
    tablet.new_session(request("chest pain"), T).unwrap();
    // The copy, taken while the tablet is closed.
    drop(tablet);
    let copy = tempfile::tempdir().unwrap();
    copy_files(dir.root(), copy.path());
    let mut tablet = Node::open(&dir).unwrap();
    let id = tablet.new_session(request("syncope"), T + 1).unwrap().id;
    for i in 0..40 {
        tablet.view(id).unwrap();
        tablet.raw_store().audit_mut().audit_event("test.view", serde_json::json!({ "i": i }), T + 2).unwrap();
    }
    let seen = tablet.raw_store().audit().head_seq().unwrap();
    assert_eq!(exchange_audit_heads(&mut tablet, &mut hub, T + 3), Default::default(), "first contact");
    assert_eq!(exchange_audit_heads(&mut tablet, &mut hub, T + 4), Default::default(), "nothing moved");
    // The older copy is put back and written past where the hub had seen the chain end.
    drop(tablet);
    for f in std::fs::read_dir(copy.path()).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.root().join(f.file_name())).unwrap();
    }
    let _ = std::fs::remove_file(dir.root().join("outpost.db-wal"));
    let mut tablet = Node::open(&dir).unwrap();
    for i in 0..60 {
        tablet.raw_store().audit_mut().audit_event("test.pad", serde_json::json!({ "i": i }), T + 5).unwrap();
    }
    assert!(tablet.raw_store().audit().head_seq().unwrap() > seen, "padded past the end the hub saw");
    assert!(tablet.raw_store().audit().verify_audit().unwrap().broken_at.is_none(), "the chain itself verifies");
    let (ours, theirs) = exchange_audit_heads(&mut tablet, &mut hub, T + 6);
    assert!(ours.ours_cut, "the tablet finds its chain is not the one its hub saw");
    assert!(theirs.theirs_cut, "the hub finds the tablet's chain rewritten where it had seen it end");
    assert!(audit_actions(&mut tablet).contains(&"audit.behind".to_string()));
    assert!(audit_actions(&mut hub).contains(&"peer.audit_behind".to_string()));
    // Found once: the next sync, with nothing lost since, finds nothing.
    assert_eq!(exchange_audit_heads(&mut tablet, &mut hub, T + 7), Default::default());
}

/// A copy of a store taken before the upgrade to schema 12 and restored after it is the same
/// chain as the store it was copied from: migrated apart, both get the same chain id and the
/// same anchors, so a hub that had seen the chain up to the copy's end finds nothing lost.
#[test]
fn two_copies_of_a_store_migrated_apart_get_the_same_chain_id_and_anchors() {
    let (_t, dir) = node_dir();
    let mut node = Node::open(&dir).unwrap();
    node.new_session(request("chest pain"), T).unwrap();
    drop(node);
    // The store as schema 11 left it.
    let conn = rusqlite::Connection::open(dir.db_path()).unwrap();
    conn.execute_batch(
        "ALTER TABLE audit DROP COLUMN anchor; DROP TABLE audit_anchors;
         DELETE FROM meta WHERE key = 'audit_chain'; PRAGMA user_version = 11",
    )
    .unwrap();
    drop(conn);
    let copy = tempfile::tempdir().unwrap();
    copy_files(dir.root(), copy.path());
    let heads = |root: &std::path::Path| {
        let mut n = Node::open(&NodeDir::new(root.to_path_buf())).unwrap();
        n.raw_store().audit().audit_heads_for("hub-qhm", None).unwrap()
    };
    let (one, other) = (heads(dir.root()), heads(copy.path()));
    assert_ne!(one.anchor, [0; 32]);
    assert_eq!((one.chain, one.head, one.anchor), (other.chain, other.head, other.anchor));
}

/// The files of a node's directory (its store, key and configuration, not its photos), copied.
fn copy_files(from: &std::path::Path, to: &std::path::Path) {
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap();
        if f.file_type().unwrap().is_file() {
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    }
}
