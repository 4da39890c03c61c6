//! `outpost ca`, `outpost user`, `outpost debug`: the fleet CA, people, diagnostics.

use super::*;

pub(crate) fn ca(cmd: CaCommand) -> anyhow::Result<()> {
    use crate::tls::CaDir;
    match cmd {
        CaCommand::Init { dir, fleet } => {
            CaDir::new(&dir).init(&fleet)?;
            println!("fleet CA {fleet} created in {} (keep ca.key offline)", dir.display());
        }
        CaCommand::Sign { ca, request, days, out } => {
            let csr = std::fs::read_to_string(&request)
                .map_err(|e| InputError(format!("cannot read the request {}: {e}", request.display())))?;
            let signed = CaDir::new(&ca).sign_request(&csr, days)?;
            let info = &signed.info;
            let out = out.unwrap_or_else(|| request.with_file_name(format!("{}.pem", info.name)));
            write_file(&out, signed.chain_pem.as_bytes())?;
            let lines: Vec<&str> = info.lines.iter().map(|l| l.as_str()).collect();
            println!(
                "signed for {} ({}, organisation {}, ICB {}{}) for {days} days: {}\n\
                 key fingerprint {}, author key {}: check both against what `outpost cert request` printed on \
                 the node; if they differ, do not carry the certificate back (`outpost ca revoke`)",
                info.name,
                info.role,
                info.org.as_deref().unwrap_or("none"),
                info.icb.as_deref().unwrap_or("none"),
                if lines.is_empty() { String::new() } else { format!(", lines {}", lines.join(", ")) },
                out.display(),
                signed.key_fingerprint,
                signed.author
            );
        }
        CaCommand::Issue { ca, node, days, expired } => {
            let mut n = Node::open(&NodeDir::new(&node))?;
            let info = n.config().peer_info();
            let issued = CaDir::new(&ca).issue(&info, &n.author_public(), days, expired)?;
            n.install_certificate(&issued.cert_pem, &issued.key_pem, &issued.ca_pem)?;
            let tls_dir = node.join("tls");
            std::fs::create_dir_all(&tls_dir)?;
            std::fs::write(tls_dir.join("node.crt"), &issued.cert_pem)?;
            std::fs::write(tls_dir.join("ca.crt"), &issued.ca_pem)?;
            // A node always starts with the fleet's current revocation list.
            let (number, der) = CaDir::new(&ca).crl()?;
            n.install_revocations(number, &der)?;
            println!(
                "issued {} ({} {}) a certificate valid {}; private key sealed in its store",
                info.name,
                info.role,
                crate::tls::identity_urn(&info),
                if expired { "never (expired)".to_string() } else { format!("{days} days") }
            );
        }
        CaCommand::Revoke { ca, name, publish } => {
            let (number, der) = CaDir::new(&ca).revoke(&name)?;
            println!("revoked {name}: revocation list {number}");
            for node in publish {
                install_crl(&ca, &node, number, &der)?;
            }
        }
        CaCommand::Publish { ca, node } => {
            let (number, der) = CaDir::new(&ca).crl()?;
            install_crl(&ca, &node, number, &der)?;
        }
    }
    Ok(())
}

pub(crate) fn install_crl(ca: &Path, node: &Path, number: u64, der: &[u8]) -> anyhow::Result<()> {
    let mut n = Node::open(&NodeDir::new(node))?;
    crate::tls::verify_crl(&crate::tls::CaDir::new(ca).cert()?, der)?;
    n.install_revocations(number, der)?;
    println!("installed revocation list {number} in {}", n.config().name);
    Ok(())
}

pub(crate) fn debug(cmd: DebugCommand) -> anyhow::Result<()> {
    match cmd {
        DebugCommand::WriteLoop { dir, id, count } => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            let mut out = std::io::stdout().lock();
            let mut n = 0u64;
            while count.is_none_or(|c| n < c) {
                let now = now_ms();
                let acked = if n % 5 == 4 {
                    let photo = photo::synthetic_png(n as u32 % 64 + 16, 24, n).map_err(NodeError::from)?;
                    let req = PhotoRequest {
                        view: PhotoView::Site,
                        body_site: "test".into(),
                        consent: ConsentKind::Verbal,
                        scope: ConsentScope::RecordOnly,
                    };
                    node.attach_photo(sid, &photo, &req, now)?.hash
                } else {
                    node.send_message(sid, &format!("crash-test write {n}"), None, now)?
                };
                writeln!(out, "ack {acked}")?;
                out.flush()?;
                n += 1;
            }
        }
        DebugCommand::LimitPages { dir, pages, send } => {
            let mut node = open(&dir)?;
            node.debug_limit_pages(pages)?;
            if let [id, text] = send.as_slice() {
                let sid = node.resolve(id)?;
                let msg = node.send_message(sid, text, None, now_ms())?;
                println!("{msg}");
            }
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` on disk before returning: a regular file whole or not at all (written
/// beside it, readable by this user only, and moved into place), a device or pipe as it goes.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let fail = |source: std::io::Error| OutputError { path: path.to_path_buf(), source };
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        let mut f = std::fs::OpenOptions::new().write(true).open(path).map_err(fail)?;
        f.write_all(bytes).and_then(|()| f.flush()).map_err(fail)?;
        return Ok(());
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
    tmp.write_all(bytes).and_then(|()| tmp.as_file().sync_all()).map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}

pub(crate) fn run_user(cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add { dir, name, role, registration, token, json } => {
            let mut node = open(&dir)?;
            if !role.works_on(node.config().role) {
                return Err(InputError(format!(
                    "a {role} does not work on a {} node; people on this node are {}",
                    node.config().role,
                    crate::store::people::PersonRole::NAMES
                        .iter()
                        .filter(|r| PersonRole::parse(r).is_ok_and(|r| r.works_on(node.config().role)))
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .into());
            }
            if name.trim().is_empty() || name.len() > 100 {
                return Err(InputError("--name: 1 to 100 characters".into()).into());
            }
            let cred = if token { Credential::Token } else { Credential::Secret(read_secret()?) };
            let new = NewPerson { name, role, registration };
            let (person, token) = node.add_person(&new, &cred, now_ms())?;
            if json.json {
                print_json(&serde_json::json!({ "user": person, "token": token }))?;
            } else {
                println!("added {} ({})", person.name, person.role);
                if let Some(t) = token {
                    println!("token (shown once; keep it in the integrating system's secret store): {t}");
                }
            }
        }
        UserCommand::SetPin { dir, name } => {
            let mut node = open(&dir)?;
            let secret = read_secret()?;
            node.set_pin(&name, &secret, now_ms())?;
            println!("new PIN set for {name}: their API sessions have ended; they sign in with it");
        }
        UserCommand::Disable { dir, name } => {
            let mut node = open(&dir)?;
            node.disable_person(&name, now_ms())?;
            println!("disabled {name}: their token and sessions no longer work");
        }
        UserCommand::List { dir, json } => {
            let node = open(&dir)?;
            let people = node.people()?;
            if json.json {
                print_json(&people)?;
            } else if people.is_empty() {
                println!("no users");
            } else {
                for p in people {
                    println!("{:<30} {:<11} {}", p.name, p.role.as_str(), p.registration.as_deref().unwrap_or("-"));
                }
            }
        }
    }
    Ok(())
}

/// A PIN or passphrase from the first line of standard input (so that it appears in no process
/// list or shell history), checked for length before anything is written.
fn read_secret() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let secret = line.trim_end_matches(['\r', '\n']).to_string();
    if secret.chars().count() < crate::store::people::MIN_SECRET {
        return Err(InputError(format!(
            "the PIN or passphrase (first line of standard input) needs at least {} characters; nothing was written",
            crate::store::people::MIN_SECRET
        ))
        .into());
    }
    Ok(secret)
}
