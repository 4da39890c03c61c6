//! `outpost session`: create, list, show, edit, close, share, export.

use super::*;

pub(crate) fn session(cmd: SessionCommand) -> anyhow::Result<()> {
    match cmd {
        SessionCommand::New(args) => {
            let a = *args;
            let verification = SessionRequest::verification(a.nhs_number.is_some(), a.nhs_verification)
                .map_err(|e| InputError(format!("--nhs-verification: {e} (--nhs-number)")))?;
            let req = SessionRequest {
                care_setting: a.care_setting,
                requester: Requester {
                    registration: a.registration,
                    role: a.requester_role,
                    org_ods: None,
                    call_sign: a.call_sign,
                    incident: a.incident,
                    callback: a.callback,
                },
                patient: Patient {
                    nhs_number: a.nhs_number,
                    verification,
                    name: a.patient_name,
                    birth_date: a.birth_date,
                    sex: None,
                    postcode: None,
                },
                service: Service {
                    line: a.service_line,
                    channel: a.channel.unwrap_or(SessionRequest::default_channel(a.service_line)),
                    priority: a.priority,
                },
                summary: a.summary,
                draft: a.draft,
            };
            let mut node = open(&a.dir)?;
            let view = node.new_session_once(req, a.client_key.as_deref(), now_ms())?;
            if a.json.json {
                print_json(&serde_json::json!({ "id": view.id, "status": view.status }))?;
            } else {
                println!("{}", view.id);
            }
        }
        SessionCommand::List { dir, status, service_line, limit, json } => {
            let mut node = open(&dir)?;
            let cards = node.list_shown(&ListFilter { status, service_line, limit }, "cli", now_ms())?;
            if json.json {
                print_json(&cards)?;
            } else {
                print_cards(&cards)?;
            }
        }
        SessionCommand::Show { dir, id, read, json } => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            if read {
                node.mark_read(sid, now_ms())?;
            }
            let view = node.show(sid, now_ms())?;
            if json.json {
                print_json(&view)?;
            } else {
                print!("{}", render_session(&view, &node.config().name));
            }
        }
        SessionCommand::Export { dir, id, format, out } => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            let as_format = crate::node::ExportFormat::parse(&format).ok_or_else(|| {
                InputError(format!("unknown export format {format}: use automerge, json, fhir or letter"))
            })?;
            let bytes = node.export(sid, as_format, now_ms())?;
            match out {
                Some(path) => write_file(&path, &bytes)?,
                None => {
                    use std::io::IsTerminal;
                    if format == "automerge" && std::io::stdout().is_terminal() {
                        return Err(InputError(
                            "refusing to write binary Automerge bytes to a terminal; use --out FILE or a pipe".into(),
                        )
                        .into());
                    }
                    std::io::stdout().lock().write_all(&bytes)?;
                }
            }
        }
        SessionCommand::SetStatus { dir, id, status } => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            let changed = node.set_status(sid, status, now_ms())?;
            println!("{sid}: {}", if changed { format!("now {status}") } else { format!("already {status}") });
        }
        SessionCommand::Share { dir, id, node: target } => {
            crate::config::check_name(&target).map_err(NodeError::from)?;
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            node.share(sid, &target, now_ms())?;
            println!("{sid}: shared with {target}");
        }
        SessionCommand::Reopen { dir, id } => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            let epoch = node.reopen(sid, now_ms())?;
            println!("{sid}: reopened (time {epoch}), awaiting reply");
        }
    }
    Ok(())
}

pub(crate) fn run_message(cmd: MessageCommand) -> anyhow::Result<()> {
    match cmd {
        MessageCommand::Send { dir, id, text, reply_to, client_key, json } => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            let msg = node.send_message_once(sid, &text, reply_to, client_key.as_deref(), now_ms())?;
            if json.json {
                // A repeat answers with the first message, which may have travelled since.
                let receipt = node.message_receipt(sid, &msg)?;
                print_json(&serde_json::json!({ "session": sid, "message": msg, "receipt": receipt }))?;
            } else {
                println!("{msg}");
            }
        }
    }
    Ok(())
}

pub(crate) fn run_photo(cmd: PhotoCommand) -> anyhow::Result<()> {
    match cmd {
        PhotoCommand::Attach { dir, id, file, view, body_site, consent, consent_scope, json } => {
            // Check the photo before opening the node, so a bad file writes nothing.
            let photo = photo::load_photo(&file).map_err(NodeError::from)?;
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            let req = PhotoRequest { view, body_site, consent, scope: consent_scope };
            let info = node.attach_photo(sid, &photo, &req, now_ms())?;
            if json.json {
                print_json(&serde_json::json!({
                    "session": sid, "hash": info.hash, "size": info.size, "mime": info.mime,
                    "chunks": info.chunks, "width": photo.dimensions.0, "height": photo.dimensions.1,
                }))?;
            } else {
                println!("{}", info.hash);
            }
        }
        PhotoCommand::WithdrawConsent { dir, id, photo } => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            let (consent, photos) = node.withdraw_consent(sid, &photo, now_ms())?;
            println!("consent {consent} withdrawn: {photos} photo(s) of {sid} now left out of exports and letters");
        }
        PhotoCommand::Get { dir, hash, out, thumbnail, read } => {
            let mut node = open(&dir)?;
            let bytes = if thumbnail { node.thumbnail(&hash)? } else { node.open_photo(&hash, read, now_ms())? };
            node.audit_photo_view_anywhere(&hash, now_ms())?;
            write_file(&out, &bytes)?;
        }
    }
    Ok(())
}

pub(crate) fn run_outcome(cmd: OutcomeCommand) -> anyhow::Result<()> {
    match cmd {
        OutcomeCommand::Set { dir, id, side, outcome, client_key } => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            node.set_outcome_once(sid, side, outcome, client_key.as_deref(), now_ms())?;
            println!("{side} outcome of {sid}: {outcome}");
        }
    }
    Ok(())
}
