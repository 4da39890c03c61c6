//! Calls: escalate, answer, hang up, the browser's audio socket, callbacks, the directory.

use super::*;

/// An escalation asked for.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Escalated {
    pub(super) session: SessionId,
    /// The escalation's id (the open one, if it was already asked).
    pub(super) call: String,
}

/// A ring answered.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Answered {
    pub(super) session: SessionId,
    pub(super) call: String,
    /// Which ring attempt was answered.
    pub(super) attempt: u32,
}

/// Asks for a live call (the requester's edge); the hub decides (`call` events follow).
#[utoipa::path(
    post, path = "/api/sessions/{id}/escalate", tag = "calls", params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 202, description = "Asked (or already asked: the open escalation); the hub decides and `call` events follow", body = Escalated),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "This device is on a call in another session", body = ErrorBody),
    )
)]
pub(super) async fn escalate(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    PathArgs(id): PathArgs<String>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    let call = as_person(&shared, &who, move |n| {
        let call = n.escalate(id, now_ms())?;
        // The app's person is on the call: this node joins its audio once it connects (a
        // plan set by `call escalate --play/--record` is kept).
        if !n.has_media_plan(&call)? {
            n.set_media_plan(&call, &crate::media::MediaPlan::default())?;
        }
        Ok(call)
    })
    .await?;
    if let Ok(mut people) = shared.call_people.lock()
        && people.get(&id).is_none_or(|(asked, _)| *asked != call)
    {
        people.insert(id, (call.clone(), who.id));
    }
    announce(&shared, id);
    Ok((StatusCode::ACCEPTED, Json(Escalated { session: id, call })).into_response())
}

/// Who asked for or answered the session's `call` here: kept in memory from the request, and
/// otherwise (after a restart) read from the audit chain, which names the person in the
/// escalation or the answer. Without that, after a restart any person signed in could end
/// the call, and its own clinician could not take its voice.
async fn call_person(shared: &Shared, id: SessionId, call: &str) -> Result<Option<i64>, ApiError> {
    let held = shared.call_people.lock().ok().and_then(|p| p.get(&id).filter(|(c, _)| c == call).map(|(_, who)| *who));
    if held.is_some() {
        return Ok(held);
    }
    let asked = call.to_string();
    let found = shared.store.call(move |n| n.call_person(id, &asked)).await??;
    if let (Some(who), Ok(mut people)) = (found, shared.call_people.lock()) {
        people.insert(id, (call.to_string(), who));
    }
    Ok(found)
}

/// Answers the call ringing at this desk in the session (409 when none rings here).
#[utoipa::path(
    post, path = "/api/sessions/{id}/answer", tag = "calls", params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "Answered; the hub connects the call", body = Answered),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Only a consultant answers", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "No call rings at this desk in this session, or this desk is on a call in another", body = ErrorBody),
    )
)]
pub(super) async fn answer(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    PathArgs(id): PathArgs<String>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    if who.role != PersonRole::Consultant {
        return Err(ApiError(StatusCode::FORBIDDEN, format!("a {} does not answer a desk's calls", who.role)));
    }
    match as_person(&shared, &who, move |n| Ok(n.answer_call(id, now_ms())?)).await? {
        Some((call, attempt)) => {
            if let Ok(mut people) = shared.call_people.lock() {
                people.insert(id, (call.clone(), who.id));
            }
            announce(&shared, id);
            Ok(Json(Answered { session: id, call, attempt }).into_response())
        }
        None => Err(ApiError(StatusCode::CONFLICT, "no call rings at this desk in this session".into())),
    }
}

/// Where the session's latest call stands.
#[utoipa::path(
    get, path = "/api/sessions/{id}/calls", tag = "calls", params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "Where the session's latest call stands (empty if it has none)", body = Vec<CallNow>),
        (status = 401, body = ErrorBody),
    )
)]
pub(super) async fn session_calls(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    PathArgs(id): PathArgs<String>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    let _turn = turn(&shared, &who).await;
    let now = shared.store.call(move |n| n.calls_now(&[id])).await??;
    Ok(Json(now).into_response())
}

/// Hangs up the call of this session that this node is a party of now: the audio stops at the
/// next frame, the other side is told, and this party's leg record is written (a `call` event
/// with state `ended` follows).
#[utoipa::path(
    post, path = "/api/sessions/{id}/hangup", tag = "calls", params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 202, description = "Hanging up", body = Escalated),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Not the person who asked for or answered this call here, or an integrating system", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "No call of this session is live on this node", body = ErrorBody),
    )
)]
pub(super) async fn hang_up(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    PathArgs(id): PathArgs<String>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    person_only(&who, "hanging up")?;
    let live = shared.live_call.lock().ok().and_then(|l| l.clone()).filter(|l| l.session == id);
    let Some(live) = live else {
        // 404 for a session this node does not hold; 409 for one with no call live here.
        shared
            .store
            .call(move |n| n.card(id))
            .await??
            .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no session {id} on this node")))?;
        return Err(ApiError(StatusCode::CONFLICT, "no call of this session is live on this node".into()));
    };
    // A person's call is theirs to end: on a surgery box another GP signed in does not end it.
    let party = call_person(&shared, id, &live.call).await?;
    if party.is_some_and(|p| p != who.id) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "this call is hung up by the person who asked for it or answered it here".into(),
        ));
    }
    // Named in the audit chain before the call ends (the leg record follows).
    as_person(&shared, &who, move |n| Ok(n.record_hang_up(id, now_ms())?)).await?;
    live.hang_up.store(true, std::sync::atomic::Ordering::Release);
    tracing::info!(session = %id, call = %live.call, by = %who.name, "hanging up");
    Ok((StatusCode::ACCEPTED, Json(Escalated { session: id, call: live.call })).into_response())
}

/// The page's microphone and speaker for the call this node carries (`/api/calls/audio`): a
/// WebSocket of binary messages, each 20 ms of 8 kHz mono audio (160 samples, 16-bit little
/// endian), both ways. Only for the session's call that is live on this node now, only for the
/// person who asked for it (edge) or answered it (desk) here, and one page at a time; it
/// closes when the call ends.
#[utoipa::path(
    get, path = "/api/calls/audio", tag = "calls",
    params(
        ("session" = String, Query, description = "The session whose call this page speaks in"),
        ("token" = Option<String>, Query, description = "The bearer token, for a browser's WebSocket (which cannot set headers)"),
    ),
    responses(
        (status = 101, description = "A WebSocket: binary messages of 320 bytes (20 ms of 8 kHz mono, 16-bit little endian) from the microphone; the same from the call for the speaker"),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Not the person who asked for or answered this call, or an integrating system", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "No call of this session is live here, or another page already carries its voice", body = ErrorBody),
    )
)]
pub(super) async fn call_audio(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    QueryArgs(q): QueryArgs<AudioQuery>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Result<Response, ApiError> {
    person_only(&who, "speaking in a call")?;
    let id = session_id(&q.session)?;
    let live = shared.live_call.lock().ok().and_then(|l| l.clone()).filter(|l| l.session == id);
    let Some(live) = live else {
        return Err(ApiError(StatusCode::CONFLICT, "no call of this session is live on this node".into()));
    };
    let speaker = call_person(&shared, id, &live.call).await?;
    if speaker != Some(who.id) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "this call's voice is for the person who asked for it or answered it here".into(),
        ));
    }
    if shared.voice_io.lock().map(|v| v.is_some()).unwrap_or(true) {
        return Err(ApiError(StatusCode::CONFLICT, "another page already carries this call's voice".into()));
    }
    let token = bearer(&headers, &uri).unwrap_or_default();
    let frame = 2 * sync_protocol::voice::FRAME_SAMPLES;
    Ok(ws
        .max_message_size(frame)
        .max_frame_size(frame)
        .on_upgrade(move |socket| voice_socket(shared, socket, token, id)))
}

#[derive(Deserialize)]
pub(super) struct AudioQuery {
    pub(super) session: String,
}

/// Carries one page's audio until it closes, the call ends, or the person's token ends.
pub(super) async fn voice_socket(
    shared: Arc<Shared>,
    socket: axum::extract::ws::WebSocket,
    token: String,
    session: SessionId,
) {
    use axum::extract::ws::{CloseFrame, Message};
    use futures_util::{SinkExt, StreamExt};
    let frame_bytes = 2 * sync_protocol::voice::FRAME_SAMPLES;
    let (speaker, mut to_page) = tokio::sync::mpsc::channel::<Vec<i16>>(50);
    let id = shared.next_conn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let io = Arc::new(crate::net::VoiceIo { id, mic: Default::default(), speaker });
    {
        let Ok(mut slot) = shared.voice_io.lock() else { return };
        if slot.is_some() {
            return; // another page got there between the check and the upgrade
        }
        *slot = Some(io.clone());
    }
    let (mut sink, mut from_page) = socket.split();
    let mut watch = tokio::time::interval(std::time::Duration::from_millis(200));
    let mut checked = std::time::Instant::now();
    let send_limit = std::time::Duration::from_secs(1);
    let close = |reason: &str| Message::Close(Some(CloseFrame { code: 1000, reason: reason.to_string().into() }));
    loop {
        tokio::select! {
            msg = from_page.next() => match msg {
                Some(Ok(Message::Binary(b))) if b.len() == frame_bytes => {
                    let pcm: Vec<i16> = b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
                    if let Ok(mut q) = io.mic.lock() {
                        if q.len() >= crate::net::MIC_QUEUE_FRAMES {
                            q.pop_front();
                        }
                        q.push_back(pcm);
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let reason = format!("each message is {frame_bytes} bytes: 20 ms of 8 kHz 16-bit mono");
                    let frame = Message::Close(Some(CloseFrame { code: 1003, reason: reason.into() }));
                    let _ = tokio::time::timeout(send_limit, sink.send(frame)).await;
                    break;
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            out = to_page.recv() => {
                let Some(pcm) = out else { break };
                let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
                // A page that stops reading is closed, never waited for.
                match tokio::time::timeout(send_limit, sink.send(Message::Binary(bytes.into()))).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
            }
            _ = watch.tick() => {
                let live = shared.live_call.lock().map(|l| l.as_ref().is_some_and(|l| l.session == session)).unwrap_or(false);
                if !live {
                    let _ = tokio::time::timeout(send_limit, sink.send(close("the call ended"))).await;
                    break;
                }
                if checked.elapsed() >= RECHECK {
                    checked = std::time::Instant::now();
                    let token = token.clone();
                    let valid =
                        shared.store.call(move |n| token_holds(n, &token)).await;
                    if !valid.unwrap_or(false) {
                        let _ = tokio::time::timeout(send_limit, sink.send(close("signed out"))).await;
                        break;
                    }
                }
            }
        }
    }
    if let Ok(mut slot) = shared.voice_io.lock()
        && slot.as_ref().is_some_and(|x| x.id == id)
    {
        *slot = None;
    }
}

/// The callbacks owed: on a desk, what its consultants must call back; on an edge, what the
/// crew waits for. Oldest first.
#[utoipa::path(
    get, path = "/api/callbacks", tag = "calls",
    responses(
        (status = 200, description = "Callbacks arranged and not yet settled (by a later call, the consultant's outcome or closing)", body = Vec<CallbackOwed>),
        (status = 401, body = ErrorBody),
    )
)]
pub(super) async fn callbacks(State(shared): State<Arc<Shared>>, Caller(who): Caller) -> Result<Response, ApiError> {
    let owed = as_person(&shared, &who, |n| {
        let owed = n.callbacks_owed()?;
        n.record_shown(owed.iter().map(|c| c.session), "callbacks", now_ms())?;
        Ok(owed)
    })
    .await?;
    Ok(Json(owed).into_response())
}

/// This node's copy of its ICB's directory (service lines, hours, rotas).
#[utoipa::path(
    get, path = "/api/directory", tag = "node",
    responses(
        (status = 200, description = "The ICB's service lines, hours and rotas, or null before the first copy arrives", body = Option<DirectoryJson>),
        (status = 401, body = ErrorBody),
    )
)]
pub(super) async fn directory(State(shared): State<Arc<Shared>>, Caller(who): Caller) -> Result<Response, ApiError> {
    let own = shared.me.role == Role::Hub;
    let _turn = turn(&shared, &who).await;
    let dir = shared.store.call(|n| n.directory()).await??;
    Ok(Json(dir.map(|v| DirectoryJson::of(&v, own))).into_response())
}
