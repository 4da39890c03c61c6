//! ARCHITECTURE.md's store invariant, held by a check of the source: every store write takes
//! SQLite's write lock up front (`BEGIN IMMEDIATE`), so a write never fails half-way because
//! another process (the daemon and the CLI share a node) wrote between its read and its write.
//! Deferred transactions are for reads only; single-statement writes are their own
//! (autocommit) transaction.
//!
//! And the node's: `Node` is the only way in. Its store is a private field; the one way past
//! it (`Node::raw_store`, for the store's own tests, benchmarks and attack tests) is called
//! nowhere in the crate's source outside `node`, but in the demo's stolen-tablet scene.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_multi_statement_store_write_begins_immediate() {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    assert!(files.len() > 20, "the source was read ({} files)", files.len());
    let mut immediate = 0;
    let mut offences = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("readable");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            immediate += code.matches("TransactionBehavior::Immediate").count();
            let deferred_write = ((code.contains("unchecked_transaction(")
                || code.contains(".transaction()")
                || code.contains("\"BEGIN"))
                && !code.contains("\"starting a read\""))
                || code.contains("TransactionBehavior::Deferred");
            if deferred_write {
                offences.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(immediate > 10, "the store's writes were found ({immediate} immediate transactions)");
    assert!(
        offences.is_empty(),
        "a store transaction that does not take the write lock up front (use \
         TransactionBehavior::Immediate, or label a read-only one \"starting a read\"):\n{}",
        offences.join("\n")
    );
}

#[test]
fn nothing_in_the_crate_reaches_past_the_node_to_its_store() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // The stolen-tablet scene plays the attacker and the wire: it signs a forged change with
    // the ambulance's own key and hands it straight to the hub's store.
    let allowed = [src.join("node.rs"), src.join("node"), src.join("demo").join("fleet.rs")];
    let mut offences = Vec::new();
    let mut node_fields = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).expect("readable");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if path.ends_with("node.rs")
                && (code.contains("    store: Store,") || code.contains("    config: NodeConfig,"))
            {
                node_fields += 1;
                assert!(!code.contains("pub"), "{}:{}: a public field of Node: {line}", path.display(), n + 1);
            }
            if code.contains("raw_store") && !allowed.iter().any(|a| path.starts_with(a)) {
                offences.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert_eq!(node_fields, 2, "Node's store and config fields were found (and are private)");
    assert!(offences.is_empty(), "reaching past Node to its store:\n{}", offences.join("\n"));
}

/// ARCHITECTURE.md: only `sync_protocol::session` writes session documents, and only
/// `sync_protocol::directory` the ICB directory. Applying a peer's changes (a merge) is not a
/// write of this kind; a test module may build documents by hand, and so may the simulator's
/// hostile node, which forges changes on purpose.
#[test]
fn only_the_model_writes_documents() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let proto = root.join("sync-protocol").join("src");
    let allowed = [proto.join("session.rs"), proto.join("directory.rs"), root.join("simulator/src/world/attack.rs")];
    let writes = [".put(ROOT", ".put(&", "put_object(", "insert_object(", ".splice(", "splice_text(", ".increment("];
    let mut files = Vec::new();
    for dir in [proto.clone(), root.join("node").join("src"), root.join("simulator").join("src")] {
        rust_files(&dir, &mut files);
    }
    assert!(files.len() > 60, "the sources were read ({} files)", files.len());
    let mut seen_in_model = 0;
    let mut offences = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("readable");
        let model = allowed.iter().any(|a| path == a);
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            let code = line.split("//").next().unwrap_or("");
            if writes.iter().any(|w| code.contains(w)) {
                if model {
                    seen_in_model += 1;
                } else {
                    offences.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(seen_in_model > 20, "the model's own writes were found ({seen_in_model})");
    assert!(
        offences.is_empty(),
        "a document written outside sync_protocol::session or ::directory:\n{}",
        offences.join("\n")
    );
}
