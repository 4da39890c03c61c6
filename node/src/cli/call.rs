//! `outpost call` and `outpost rota`: escalations, following a call, the hub's rotas.

use super::*;

pub(crate) fn run_call(cmd: CallCommand) -> anyhow::Result<()> {
    match cmd {
        CallCommand::Escalate { dir, id, wait, play, record, json } => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            if let Some(p) = &play {
                crate::media::read_wav(p)?;
            }
            let with_audio = play.is_some() || record.is_some();
            let call = node.escalate(sid, now_ms())?;
            if let Some(note) = line_note(&mut node, sid, now_ms())? {
                eprintln!("{note}");
            }
            if with_audio {
                node.set_media_plan(&call, &crate::media::MediaPlan { play, record })?;
            }
            let Some(limit) = wait else {
                if json.json {
                    print_json(&serde_json::json!({ "session": sid, "call": call, "state": "asked" }))?;
                } else {
                    println!("{call}");
                    eprintln!("escalation recorded; the hub rings a consultant once their desk holds the whole case");
                }
                return Ok(());
            };
            // Follow the routing log as it reaches this device: never more than it says.
            let start = std::time::Instant::now();
            let mut shown = 0usize;
            loop {
                let (routing, legs) = node.call_logs(sid)?;
                let steps: Vec<_> = routing.iter().filter(|s| s.entry.call() == Some(call.as_str())).collect();
                if !json.json {
                    for e in steps.iter().skip(shown) {
                        println!("{}", describe_step(e));
                    }
                }
                shown = steps.len();
                let state = sync_protocol::call::calls_in_steps(&routing).into_iter().find(|c| c.call == call);
                // With audio, the call is over once this device has recorded its leg.
                let leg = legs.iter().find(|l| l.call == call && l.node == node.config().name).cloned();
                if let Some(c) =
                    state.filter(|c| !c.is_open() && (!with_audio || c.callback.is_some() || leg.is_some()))
                {
                    if json.json {
                        print_json(&serde_json::json!({
                            "session": sid, "call": call,
                            "state": if c.connected.is_some() { "connected" } else { "callback" },
                            "desk": c.connected.as_ref().map(|d| d.0.clone()),
                            "reason": c.callback.as_ref().map(|r| r.0.clone()),
                            "steps": steps,
                            "leg": leg,
                        }))?;
                    } else if let Some(l) = &leg {
                        println!("{}", describe_leg(l));
                        println!(
                            "record the outcome: outpost outcome set --dir {} {sid} --side requester OUTCOME",
                            dir.dir.display()
                        );
                    }
                    return Ok(());
                }
                if start.elapsed().as_secs() >= limit {
                    return Err(anyhow::Error::new(crate::net::NetError::NoAnswer { waited_s: limit }));
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
        CallCommand::Answer { dir, id } => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            match node.answer_call(sid, now_ms())? {
                Some((call, attempt)) => println!("answered call {call} (attempt {attempt})"),
                None => return Err(InputError(format!("no call is ringing at this desk in session {sid}")).into()),
            }
        }
        CallCommand::Status { dir, id, json } => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            let (routing, calls) = node.call_logs(sid)?;
            if json.json {
                print_json(&serde_json::json!({ "routing": routing, "calls": calls }))?;
            } else if routing.is_empty() {
                println!("no escalation in session {sid}");
            } else {
                for step in &routing {
                    println!("{}", describe_step(step));
                }
                for l in &calls {
                    println!("{}: {}", l.node, describe_leg(l));
                }
            }
        }
    }
    Ok(())
}

/// What this device's copy of the directory says of a session's line, for the clinician
/// (the hub decides; this only prepares them for a callback).
pub(crate) fn line_note(node: &mut Node, sid: sync_protocol::SessionId, now: i64) -> anyhow::Result<Option<String>> {
    let line = node.service_line_of(sid)?;
    let Some(dir) = node.directory()? else { return Ok(None) };
    let as_of = time(dir.updated_ms);
    Ok(Some(match dir.lines.get(&line) {
        None => format!("this device's directory (as of {as_of}) lists no {line} line: expect a callback"),
        Some(e) => match (e.call_refusal(now), &e.fallback_hub) {
            (Some(why), Some(hub)) => format!(
                "this device's directory (as of {as_of}) says {why}: the hub may hand the call to {hub}'s line, or arrange a callback"
            ),
            (Some(why), None) => format!("this device's directory (as of {as_of}) says {why}: expect a callback"),
            (None, _) => format!(
                "this device's directory (as of {as_of}): the {line} line is open, {} desk(s) on its rota",
                e.rota.len()
            ),
        },
    }))
}

pub(crate) fn parse_desk(text: &str, default_ring_s: u32) -> Result<RotaDesk, InputError> {
    match text.rsplit_once(':') {
        Some((desk, secs)) => {
            let ring_s = secs.parse().map_err(|_| {
                InputError(format!("--desk {text:?}: the ring time after ':' must be whole seconds, like desk-a:30"))
            })?;
            Ok(RotaDesk { desk: desk.to_string(), ring_s })
        }
        None => Ok(RotaDesk { desk: text.to_string(), ring_s: default_ring_s }),
    }
}

pub(crate) fn run_rota(cmd: RotaCommand) -> anyhow::Result<()> {
    match cmd {
        RotaCommand::Set { dir, line, remove: true, .. } => {
            let mut node = open(&dir)?;
            let (was, view) = node.remove_line(line, now_ms())?;
            if !was {
                eprintln!("the directory had no {line} line");
            }
            print_directory(&view, true, now_ms());
        }
        RotaCommand::Set { dir, line, desks, ring_secs, hours, channels, fallback_hub, remove: false } => {
            let mut node = open(&dir)?;
            let current = node.directory()?.and_then(|d| d.lines.get(&line).cloned());
            let rota = if desks.is_empty() {
                current.as_ref().map(|c| c.rota.clone()).unwrap_or_default()
            } else {
                desks.iter().map(|d| parse_desk(d, ring_secs)).collect::<Result<_, _>>()?
            };
            let hours = match hours {
                Some(h) => Hours::parse(&h).map_err(|e| InputError(format!("--hours: {e}")))?,
                None => current.as_ref().map_or(Hours::Always, |c| c.hours.clone()),
            };
            let channels = channels
                .or_else(|| current.as_ref().map(|c| c.channels.clone()))
                .unwrap_or_else(|| vec![Channel::Call, Channel::Photo, Channel::Message]);
            let fallback_hub = match fallback_hub.as_deref() {
                Some("none") => None,
                Some(hub) => Some(hub.to_string()),
                None => current.as_ref().and_then(|c| c.fallback_hub.clone()),
            };
            let now = now_ms();
            let entry = LineEntry { line, hours, channels, rota, fallback_hub, updated_ms: now };
            let view = node.set_line(entry, now)?;
            print_directory(&view, true, now);
        }
        RotaCommand::Show { dir, json } => {
            let node = open(&dir)?;
            let own = node.config().role == Role::Hub;
            match node.directory()? {
                None if json.json => print_json(&serde_json::Value::Null)?,
                None if own => println!(
                    "no directory yet: `outpost rota set` adds a line; until then every escalation ends in a callback"
                ),
                None => println!("no directory from the hub yet: it arrives at the next sync with the hub"),
                Some(view) if json.json => print_json(&DirectoryJson::of(&view, own))?,
                Some(view) => print_directory(&view, own, now_ms()),
            }
        }
    }
    Ok(())
}
