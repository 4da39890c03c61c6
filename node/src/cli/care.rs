//! `outpost backup`, `restore`, `key`, `cert` and `audit`: keeping a node: its copies, its data
//! key, its certificate and its audit chain.

use super::*;

pub(crate) fn run_backup(args: BackupArgs) -> anyhow::Result<()> {
    let BackupArgs { dir, out, json } = args;
    let report = crate::backup::backup(&NodeDir::new(&dir.dir), &out, now_ms())?;
    if json.json {
        print_json(&report)?;
    } else {
        println!(
            "backup of {} written to {} ({}, {} sessions), sealed under key {}: keep the key apart from it",
            report.node,
            report.file.display(),
            bytes(report.bytes),
            report.sessions,
            report.key_id
        );
    }
    Ok(())
}

pub(crate) fn run_restore(args: RestoreArgs) -> anyhow::Result<()> {
    let RestoreArgs { from, dir, key_file, json } = args;
    let _lock = if dir.dir.exists() { Some(crate::service::DaemonLock::acquire(&dir.dir)?) } else { None };
    let report = crate::backup::restore(&from, &NodeDir::new(&dir.dir), key_file.as_deref())?;
    if json.json {
        print_json(&report)?;
    } else {
        println!(
            "{} restored into {}: {} sessions as of {}. Run it (outpost run): its peers send back what \
             the backup lacks.",
            report.node,
            report.dir.display(),
            report.sessions,
            time(report.taken_ms)
        );
        if !report.staff.is_empty() {
            println!(
                "Staff who can sign in as of the backup: {}. Anyone disabled since it was taken can sign in again: \
                 check them against today's staff list and disable who has left (outpost user disable --dir {} \
                 --name NAME).",
                report.staff.join(", "),
                report.dir.display()
            );
        }
    }
    Ok(())
}

pub(crate) fn run_key(cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Rotate { dir, json } => {
            let nd = NodeDir::new(&dir.dir);
            nd.read_config().map_err(NodeError::from)?;
            let _lock = crate::service::DaemonLock::acquire(&dir.dir)?;
            let (done, old, new) = Node::rotate_key(&nd, now_ms())?;
            if json.json {
                print_json(&serde_json::json!({ "old_key_id": old, "new_key_id": new, "resealed": done }))?;
            } else {
                println!(
                    "data key rotated: {} values ({}) re-sealed under key {new} (was {old}); audit chain re-hashed \
                     over {} entries, the rotation recorded in it. Back up the new {} now: old backups need the old key.",
                    done.values,
                    bytes(done.bytes),
                    done.audit_entries,
                    nd.key_path().display()
                );
                if !done.pins_cleared.is_empty() {
                    println!(
                        "PINs cleared (they did not open as their person's: changed outside outpost); set new ones with \
                         `outpost user set-pin`: {}",
                        done.pins_cleared.join(", ")
                    );
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn run_cert(cmd: CertCommand) -> anyhow::Result<()> {
    match cmd {
        CertCommand::Request { dir, out } => {
            let mut node = open(&dir)?;
            let (csr, fingerprint) = node.request_certificate()?;
            let out = out.unwrap_or_else(|| dir.dir.join(format!("{}.csr", node.config().name)));
            write_file(&out, csr.as_bytes())?;
            println!(
                "certificate request for {} written to {}; its key stays in this node's store.\n\
                 key fingerprint {fingerprint}, author key {}: the CA must print the same before you \
                 install what it signs.\n\
                 On the CA's machine: outpost ca sign --ca CA_DIR {}\n\
                 Then here: outpost cert install --dir {} SIGNED.pem",
                node.config().name,
                out.display(),
                hex::encode(node.author_public()),
                out.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
                dir.dir.display()
            );
        }
        CertCommand::Install { dir, file } => {
            let mut node = open(&dir)?;
            let chain = std::fs::read_to_string(&file)
                .map_err(|e| InputError(format!("cannot read the signed certificate {}: {e}", file.display())))?;
            let until = node.install_signed(&chain)?;
            if let Some((cert, _, ca)) = node.tls_identity()? {
                let tls_dir = dir.dir.join("tls");
                std::fs::create_dir_all(&tls_dir)?;
                std::fs::write(tls_dir.join("node.crt"), cert)?;
                std::fs::write(tls_dir.join("ca.crt"), ca)?;
            }
            println!(
                "certificate installed for {}: valid until {} (restart a running daemon to use it)",
                node.config().name,
                time(until)
            );
        }
    }
    Ok(())
}

pub(crate) fn run_audit(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify { dir, json } => {
            let node = open(&dir)?;
            node.integrity_check()?;
            let check = node.verify_audit()?;
            if json.json {
                print_json(&check)?;
            } else {
                match check.broken_at {
                    None => println!("audit chain intact: {} entries", check.entries),
                    Some(seq) => println!("audit chain broken at entry {seq}"),
                }
            }
            if let Some(seq) = check.broken_at {
                return Err(StoreError::Damaged(format!("the audit chain is broken at entry {seq}")).into());
            }
        }
        AuditCommand::Show { dir, limit, json } => {
            let node = open(&dir)?;
            let entries = node.audit_tail(limit)?;
            if json.json {
                print_json(&entries)?;
            } else {
                for e in entries {
                    let who = who(e.detail.as_ref());
                    println!(
                        "{:>6}  {}  {:<14} {:<16} {:<26} {}",
                        e.seq,
                        time(e.at_ms),
                        e.node,
                        e.action,
                        e.session.unwrap_or_default(),
                        who
                    );
                }
            }
        }
    }
    Ok(())
}

/// Who an audit entry names, for a screen: the person the local API acted for (name, role,
/// registration), or the operating-system account that ran a command (`account (uid N)`, the
/// login account and a `sudo` claim when there), or nothing (the node's own work).
fn who(detail: Option<&serde_json::Value>) -> String {
    let Some(by) = detail.map(|d| &d["by"]).filter(|b| b.is_object()) else { return String::new() };
    if by["via"] == "command line" {
        let mut s = match (by["account"].as_str(), by["uid"].as_u64()) {
            (Some(name), Some(uid)) => format!("{name} (uid {uid})"),
            (None, Some(uid)) => format!("uid {uid}"),
            _ => "an unknown account".to_string(),
        };
        match (by["login_account"].as_str(), by["login_uid"].as_u64()) {
            (Some(name), _) => s.push_str(&format!(", logged in as {name}")),
            (None, Some(uid)) => s.push_str(&format!(", logged in as uid {uid}")),
            _ => {}
        }
        if let Some(sudo) = by["sudo_user"].as_str() {
            s.push_str(&format!(", sudo by {sudo} (claimed)"));
        }
        return format!("by {s} on the command line");
    }
    match (by["name"].as_str(), by["role"].as_str()) {
        (Some(name), Some(role)) => match by["registration"].as_str() {
            Some(reg) => format!("by {name} ({role}, {reg})"),
            None => format!("by {name} ({role})"),
        },
        (Some(name), None) => format!("by {name}"),
        _ => String::new(),
    }
}
