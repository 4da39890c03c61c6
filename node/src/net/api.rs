//! The local HTTP API of a running node (`outpost run --api ADDR`): JSON resources for the
//! apps clinicians use, and one stream of events so that no app has to poll.
//!
//! Every call but `POST /api/login` needs `Authorization: Bearer TOKEN`: a person's token
//! from signing in, or an integrating system's from `outpost user add --token`. A missing or
//! unknown token gets 401, a person whose role does not work on this node or may not do the
//! act gets 403, and neither writes anything. Every operation runs on the node's store thread,
//! through the same [`Node`] operations the CLI uses, with the person recorded in the audit
//! chain.
//!
//! | call | what |
//! |---|---|
//! | `POST /api/login` `{name, secret}` | a token for a shift (`people::SESSION_MS`) |
//! | `POST /api/logout` | ends the token |
//! | `GET /api/me` | who the token is |
//! | `GET /api/status` | [`crate::node::NodeStatus`] |
//! | `GET /api/sessions?status=&service_line=&limit=` | session cards, newest first |
//! | `POST /api/sessions` | a new session (edge); `client_key` makes a repeat return the first |
//! | `GET /api/sessions/{id}` | one session (writes no receipt) |
//! | `POST /api/sessions/{id}/read` | a person has read it: this node's read receipts |
//! | `POST /api/sessions/{id}/messages` `{text, reply_to?, client_key?}` | a message, once durable |
//! | `POST /api/sessions/{id}/photos?view=&body_site=&consent=` (body: the image) | a photo |
//! | `POST /api/sessions/{id}/outcome` `{side, outcome}` | this side's outcome |
//! | `POST /api/sessions/{id}/escalate`, `.../answer`, `GET .../calls` | calls |
//! | `GET /api/photos/{hash}[?thumbnail=true]`, `POST /api/photos/{hash}/read` | photos |
//! | `GET /api/directory` | the ICB's service lines, hours and rotas |
//! | `GET /api/events` | Server-Sent Events: `hello`, `session` (a card), `link` (a peer up or down) |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::{NetError, Notice, Shared};
use crate::node::{Node, NodeError, PhotoRequest, SessionRequest, now_ms};
use crate::store::people::{Person, PersonRole};
use crate::store::{ListFilter, StoreError};
use sync_protocol::nhs::NhsNumber;
use sync_protocol::session::{Patient, Requester, Service, SessionId};
use sync_protocol::vocab::{
    CareSetting, Channel, ConsentKind, ConsentScope, NhsVerification, Outcome, PhotoView, Priority, Role, ServiceLine,
    Side, Status,
};

/// Starts serving the API on `addr`; returns the bound address and the server's task.
pub(super) async fn serve(
    shared: Arc<Shared>,
    addr: SocketAddr,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), NetError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| NetError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(|source| NetError::Bind { addr, source })?;
    let app = router(shared);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the local API stopped: {e}");
        }
    });
    tracing::info!(api = %local, "local API listening");
    Ok((local, task))
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/status", get(status))
        .route("/api/sessions", get(list_sessions).post(create_session))
        .route("/api/sessions/{id}", get(show_session))
        .route("/api/sessions/{id}/read", post(read_session))
        .route("/api/sessions/{id}/messages", post(send_message))
        .route("/api/sessions/{id}/photos", post(attach_photo))
        .route("/api/sessions/{id}/outcome", post(set_outcome))
        .route("/api/sessions/{id}/escalate", post(escalate))
        .route("/api/sessions/{id}/answer", post(answer))
        .route("/api/sessions/{id}/calls", get(session_calls))
        .route("/api/photos/{hash}", get(get_photo))
        .route("/api/photos/{hash}/read", post(read_photo))
        .route("/api/directory", get(directory))
        .route("/api/events", get(events))
        .layer(axum::extract::DefaultBodyLimit::max(crate::photo::MAX_PHOTO_BYTES + 4096))
        .with_state(shared)
}

// ------------------------------------------------------------------------------------ errors

/// An API error: a status and a message for people.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: &self.1 })).into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let status = match &e {
            NodeError::Store(s) => return s.into(),
            NodeError::Photo(_) | NodeError::Invalid(_) => StatusCode::BAD_REQUEST,
            NodeError::Role { .. } => StatusCode::FORBIDDEN,
            NodeError::Config(_) | NodeError::Crypto(_) | NodeError::Tls(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl From<&StoreError> for ApiError {
    fn from(e: &StoreError) -> Self {
        let status = match e {
            StoreError::NoSuchSession(_) | StoreError::Ambiguous(_) | StoreError::NoSuchBlob(_) => {
                StatusCode::NOT_FOUND
            }
            StoreError::Model { .. } => StatusCode::BAD_REQUEST,
            StoreError::ClientKeyReused { .. } | StoreError::Duplicate(_) => StatusCode::CONFLICT,
            StoreError::DiskFull { .. } => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        (&e).into()
    }
}

impl From<NetError> for ApiError {
    fn from(e: NetError) -> Self {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// Runs `f` on the store thread with the person recorded as acting (audit), and clears it.
async fn as_person<T: Send + 'static>(
    shared: &Shared,
    who: &Person,
    f: impl FnOnce(&mut Node) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let who = who.clone();
    shared
        .store
        .call(move |n| {
            n.store.set_acting(Some(&who));
            let out = f(n);
            n.store.set_acting(None);
            out
        })
        .await?
}

/// Tells connected peers and event streams that a session changed here. (The daemon's watch
/// on the database sees other processes' writes; this process's own it must be told of.)
fn announce(shared: &Shared, id: SessionId) {
    let _ = shared.changes.send(Notice::Docs { from: 0, docs: Arc::new(vec![id.to_bytes()]) });
}

// -------------------------------------------------------------------------------- the caller

/// The person a request comes from: its bearer token checked, and their role one that works
/// on this node.
pub struct Caller(Person);

impl FromRequestParts<Arc<Shared>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or_else(|| {
            ApiError(StatusCode::UNAUTHORIZED, "sign in first: Authorization: Bearer TOKEN (POST /api/login)".into())
        })?;
        let person =
            shared.store.call(move |n| n.store.person_by_token(&token, now_ms())).await??.ok_or_else(|| {
                ApiError(StatusCode::UNAUTHORIZED, "this token is unknown or has expired; sign in again".into())
            })?;
        if !person.role.works_on(shared.me.role) {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!("a {} does not work on a {} node", person.role, shared.me.role),
            ));
        }
        Ok(Caller(person))
    }
}

/// The bearer token of a request: the `Authorization` header, or (for `EventSource`, which
/// cannot set headers) a `token` query parameter.
fn bearer(parts: &Parts) -> Option<String> {
    if let Some(h) = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return h.strip_prefix("Bearer ").map(|t| t.trim().to_string());
    }
    parts.uri.query()?.split('&').find_map(|kv| kv.strip_prefix("token=").map(str::to_string))
}

// -------------------------------------------------------------------------------- handlers

#[derive(Deserialize)]
struct Login {
    name: String,
    secret: String,
}

#[derive(Serialize)]
struct LoggedIn {
    token: String,
    expires_ms: i64,
    user: Person,
}

async fn login(State(shared): State<Arc<Shared>>, Json(body): Json<Login>) -> Result<Json<LoggedIn>, ApiError> {
    let signed = shared.store.call(move |n| n.store.sign_in(&body.name, &body.secret, now_ms())).await??;
    let Some((user, token, expires_ms)) = signed else {
        return Err(ApiError(StatusCode::UNAUTHORIZED, "unknown name or wrong PIN".into()));
    };
    if !user.role.works_on(shared.me.role) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("a {} does not work on a {} node", user.role, shared.me.role),
        ));
    }
    Ok(Json(LoggedIn { token, expires_ms, user }))
}

async fn logout(State(shared): State<Arc<Shared>>, parts: axum::http::HeaderMap) -> Result<StatusCode, ApiError> {
    let token = parts
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "no token to end".into()))?;
    shared.store.call(move |n| n.store.sign_out(&token)).await??;
    Ok(StatusCode::NO_CONTENT)
}

async fn me(Caller(who): Caller) -> Json<Person> {
    Json(who)
}

async fn status(State(shared): State<Arc<Shared>>, Caller(_): Caller) -> Result<Response, ApiError> {
    let st = shared.store.call(|n| n.status()).await??;
    Ok(Json(st).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<Status>,
    service_line: Option<ServiceLine>,
    limit: Option<usize>,
}

async fn list_sessions(
    State(shared): State<Arc<Shared>>,
    Caller(_): Caller,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let filter = ListFilter { status: q.status, service_line: q.service_line, limit: q.limit };
    let cards = shared.store.call(move |n| n.store.list(&filter)).await??;
    Ok(Json(cards).into_response())
}

/// A new session, as an app sends it.
#[derive(Deserialize)]
struct NewSessionBody {
    service_line: ServiceLine,
    care_setting: CareSetting,
    #[serde(default)]
    priority: Option<Priority>,
    #[serde(default)]
    channel: Option<Channel>,
    summary: String,
    #[serde(default)]
    nhs_number: Option<String>,
    #[serde(default)]
    nhs_verification: Option<NhsVerification>,
    #[serde(default)]
    patient_name: Option<String>,
    #[serde(default)]
    birth_date: Option<String>,
    #[serde(default)]
    call_sign: Option<String>,
    #[serde(default)]
    incident: Option<String>,
    #[serde(default)]
    callback: Option<String>,
    #[serde(default)]
    draft: bool,
    #[serde(default)]
    client_key: Option<String>,
}

async fn create_session(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    Json(b): Json<NewSessionBody>,
) -> Result<Response, ApiError> {
    if who.role == PersonRole::Consultant {
        return Err(ApiError(StatusCode::FORBIDDEN, "sessions are opened by the requesting clinician".into()));
    }
    let nhs_number =
        b.nhs_number.as_deref().map(NhsNumber::parse).transpose().map_err(|e| bad(format!("nhs_number: {e}")))?;
    let verification = SessionRequest::verification(nhs_number.is_some(), b.nhs_verification)
        .map_err(|e| bad(format!("nhs_verification: {e} (nhs_number)")))?;
    let req = SessionRequest {
        care_setting: b.care_setting,
        requester: Requester {
            registration: who.registration.clone(),
            role: Some(who.role.as_str().to_string()),
            org_ods: None,
            call_sign: b.call_sign,
            incident: b.incident,
            callback: b.callback,
        },
        patient: Patient {
            nhs_number,
            verification,
            name: b.patient_name,
            birth_date: b.birth_date,
            sex: None,
            postcode: None,
        },
        service: Service {
            line: b.service_line,
            channel: b.channel.unwrap_or(SessionRequest::default_channel(b.service_line)),
            priority: b.priority.unwrap_or(Priority::Routine),
        },
        summary: b.summary,
        draft: b.draft,
    };
    let key = b.client_key;
    let view = as_person(&shared, &who, move |n| Ok(n.new_session_once(req, key.as_deref(), now_ms())?)).await?;
    announce(&shared, view.id);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

fn session_id(id: &str) -> Result<SessionId, ApiError> {
    id.parse().map_err(|_| ApiError(StatusCode::NOT_FOUND, format!("no session {id} on this node")))
}

async fn show_session(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    let view = as_person(&shared, &who, move |n| Ok(n.show(id, now_ms())?)).await?;
    Ok(Json(view).into_response())
}

#[derive(Serialize)]
struct ReadBody {
    new_receipts: bool,
}

async fn read_session(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    let new_receipts = as_person(&shared, &who, move |n| Ok(n.mark_read(id, now_ms())?)).await?;
    if new_receipts {
        announce(&shared, id);
    }
    Ok(Json(ReadBody { new_receipts }).into_response())
}

#[derive(Deserialize)]
struct MessageBody {
    text: String,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    client_key: Option<String>,
}

#[derive(Serialize)]
struct Sent {
    session: SessionId,
    message: String,
    receipt: Option<sync_protocol::vocab::ReceiptLevel>,
}

async fn send_message(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Json(b): Json<MessageBody>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    if b.text.trim().is_empty() {
        return Err(bad("text: a message needs some text"));
    }
    let sent = as_person(&shared, &who, move |n| {
        let msg = n.send_message_once(id, &b.text, b.reply_to, b.client_key.as_deref(), now_ms())?;
        // A repeat answers with the first message, which may have travelled since.
        let receipt = n.store.view(id)?.messages.into_iter().find(|m| m.id == msg).map(|m| m.receipt);
        Ok(Sent { session: id, message: msg, receipt })
    })
    .await?;
    announce(&shared, id);
    Ok((StatusCode::CREATED, Json(sent)).into_response())
}

#[derive(Deserialize)]
struct PhotoQuery {
    view: PhotoView,
    body_site: String,
    consent: ConsentKind,
    #[serde(default)]
    consent_scope: Option<ConsentScope>,
}

/// A photo: its bytes (JPEG or PNG) as the body, what it shows and the consent in the query.
/// Attaching the same photo again writes nothing (photos are known by their hash).
async fn attach_photo(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Query(q): Query<PhotoQuery>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    let photo = crate::photo::check_photo(std::path::Path::new("the uploaded photo"), body.to_vec())
        .map_err(|e| bad(e.to_string()))?;
    let req = PhotoRequest {
        view: q.view,
        body_site: q.body_site,
        consent: q.consent,
        scope: q.consent_scope.unwrap_or(ConsentScope::RecordOnly),
    };
    let dims = photo.dimensions;
    let info = as_person(&shared, &who, move |n| Ok(n.attach_photo(id, &photo, &req, now_ms())?)).await?;
    announce(&shared, id);
    let body = serde_json::json!({
        "session": id, "hash": info.hash, "size": info.size, "mime": info.mime,
        "width": dims.0, "height": dims.1,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Deserialize)]
struct PhotoGet {
    #[serde(default)]
    thumbnail: bool,
}

/// A photo's bytes as this node holds them (or its thumbnail). Writes no receipt.
async fn get_photo(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    Path(hash): Path<String>,
    Query(q): Query<PhotoGet>,
) -> Result<Response, ApiError> {
    let (bytes, mime) = as_person(&shared, &who, move |n| {
        if q.thumbnail {
            Ok((n.store.read_thumbnail(&hash)?, "image/jpeg".to_string()))
        } else {
            let mime = n.store.blob_info(&hash)?.mime;
            Ok((n.open_photo(&hash, false, now_ms())?, mime))
        }
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, mime)], bytes).into_response())
}

/// A person has opened the photo: this node's read receipt on it.
async fn read_photo(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    Path(hash): Path<String>,
) -> Result<StatusCode, ApiError> {
    let ids = as_person(&shared, &who, move |n| {
        n.open_photo(&hash, true, now_ms())?;
        Ok(n.store.sessions_with_photo(&hash)?)
    })
    .await?;
    for id in ids {
        announce(&shared, id);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct OutcomeBody {
    side: Side,
    outcome: Outcome,
}

async fn set_outcome(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Json(b): Json<OutcomeBody>,
) -> Result<StatusCode, ApiError> {
    let id = session_id(&id)?;
    as_person(&shared, &who, move |n| Ok(n.set_outcome(id, b.side, b.outcome, now_ms())?)).await?;
    announce(&shared, id);
    Ok(StatusCode::NO_CONTENT)
}

/// Asks for a live call (the requester's edge); the hub decides (`call` events follow).
async fn escalate(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    let call = as_person(&shared, &who, move |n| Ok(n.escalate(id, now_ms())?)).await?;
    announce(&shared, id);
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "session": id, "call": call }))).into_response())
}

/// Answers the call ringing at this desk in the session (409 when none rings here).
async fn answer(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    if who.role != PersonRole::Consultant && who.role != PersonRole::System {
        return Err(ApiError(StatusCode::FORBIDDEN, format!("a {} does not answer a desk's calls", who.role)));
    }
    match as_person(&shared, &who, move |n| Ok(n.answer_call(id, now_ms())?)).await? {
        Some((call, attempt)) => {
            announce(&shared, id);
            Ok(Json(serde_json::json!({ "session": id, "call": call, "attempt": attempt })).into_response())
        }
        None => Err(ApiError(StatusCode::CONFLICT, "no call rings at this desk in this session".into())),
    }
}

/// Where the session's latest call stands.
async fn session_calls(
    State(shared): State<Arc<Shared>>,
    Caller(_): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    let now = shared.store.call(move |n| n.calls_now(&[id])).await??;
    Ok(Json(now).into_response())
}

/// This node's copy of its ICB's directory (service lines, hours, rotas).
async fn directory(State(shared): State<Arc<Shared>>, Caller(_): Caller) -> Result<Response, ApiError> {
    let own = shared.me.role == Role::Hub;
    let dir = shared.store.call(|n| n.directory()).await??;
    Ok(Json(dir.map(|v| crate::cli::directory_json(&v, own))).into_response())
}

// -------------------------------------------------------------------------------- events

/// What the event stream says.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ApiEvent {
    /// The stream is open; `node` and its role.
    Hello { node: String, role: Role },
    /// A session was created or changed (here or by a peer): its card as it is now.
    Session { card: crate::store::SessionCard },
    /// A peer connected or its connection ended.
    Link { peer: String, up: bool },
    /// A session's latest call moved: asked, ringing (here or elsewhere), connected, or a
    /// callback arranged instead.
    Call { call: crate::node::CallNow },
}

impl ApiEvent {
    fn name(&self) -> &'static str {
        match self {
            ApiEvent::Hello { .. } => "hello",
            ApiEvent::Session { .. } => "session",
            ApiEvent::Link { .. } => "link",
            ApiEvent::Call { .. } => "call",
        }
    }

    fn to_sse(&self) -> Event {
        Event::default().event(self.name()).data(serde_json::to_string(self).unwrap_or_else(|_| "{}".into()))
    }
}

/// A call's id, state and current ring: what the event stream has said of it.
type CallMark = (String, &'static str, Option<(i64, u32)>);

async fn events(
    State(shared): State<Arc<Shared>>,
    Caller(_): Caller,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let rx = shared.changes.subscribe();
    let hello = ApiEvent::Hello { node: shared.me.name.clone(), role: shared.me.role };
    // What the stream has said of each call: it speaks again only when the call moves.
    let seen: std::collections::HashSet<CallMark> = Default::default();
    let state = (shared, rx, vec![hello], seen);
    let stream = futures_util::stream::unfold(state, |(shared, mut rx, mut pending, mut seen_calls)| async move {
        loop {
            if let Some(e) = pending.pop() {
                return Some((Ok(e.to_sse()), (shared, rx, pending, seen_calls)));
            }
            match rx.recv().await {
                Ok(Notice::Docs { docs, .. }) => {
                    let ids: Vec<SessionId> = docs.iter().map(|d| SessionId::from_bytes(*d)).collect();
                    let (cards, calls) = shared
                        .store
                        .call(move |n| {
                            let cards: Vec<_> = ids.iter().filter_map(|id| n.store.card(*id).ok().flatten()).collect();
                            (cards, n.calls_now(&ids).unwrap_or_default())
                        })
                        .await
                        .unwrap_or_default();
                    // A call that moved, then the sessions' cards; `pending` is popped from
                    // its end, so it holds them in reverse.
                    let news = calls.into_iter().filter(|c| seen_calls.insert((c.call.clone(), c.state, c.rung)));
                    let events: Vec<ApiEvent> = news
                        .map(|call| ApiEvent::Call { call })
                        .chain(cards.into_iter().map(|card| ApiEvent::Session { card }))
                        .collect();
                    pending = events.into_iter().rev().collect();
                }
                Ok(Notice::Link { peer, up }) => pending.push(ApiEvent::Link { peer, up }),
                Ok(Notice::Revocations) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("an API event stream fell {n} notices behind; its app should reload");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
