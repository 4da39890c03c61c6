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
//! | `POST /api/sessions/{id}/escalate`, `.../answer`, `.../hangup`, `GET .../calls` | calls |
//! | `GET /api/callbacks` | callbacks owed |
//! | `GET /api/photos/{hash}[?thumbnail=true]`, `POST /api/photos/{hash}/read` | photos |
//! | `GET /api/directory` | the ICB's service lines, hours and rotas |
//! | `GET /api/events` | Server-Sent Events: `hello`, `session` (a card), `call`, `link`, `resync` |
//! | `GET /api/openapi.json` | the OpenAPI document ([`openapi_json`]), generated from these routes |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{NetError, Notice, Shared};
use crate::node::{CallNow, CallbackOwed, Node, NodeError, NodeStatus, PhotoRequest, SessionRequest, now_ms};
use crate::render::DirectoryJson;
use crate::store::SessionCard;
use crate::store::people::{Person, PersonRole};
use crate::store::{ListFilter, StoreError};
use sync_protocol::nhs::NhsNumber;
use sync_protocol::session::SessionView;
use sync_protocol::session::{Patient, Requester, Service, SessionId};
use sync_protocol::vocab::{
    CareSetting, Channel, ConsentKind, ConsentScope, NhsVerification, Outcome, PhotoView, Priority, Role, ServiceLine,
    Side, Status,
};

mod app;
mod tls;
pub use tls::ApiTls;

/// Starts serving the API on `addr` (over TLS with `tls`); returns the bound address and the
/// server's task.
pub(super) async fn serve(
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: Option<&ApiTls>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), NetError> {
    let tls = tls.map(tls::server_config).transpose().map_err(NetError::Tls)?;
    if tls.is_none() && !addr.ip().is_loopback() {
        // Bearer tokens in plain HTTP may cross nothing but loopback.
        let why = "the local API serves plain HTTP on loopback only (127.0.0.1 or ::1); to serve a LAN, give it \
                   a certificate: --api-cert FILE --api-key FILE";
        return Err(NetError::Bind { addr, source: std::io::Error::other(why) });
    }
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| NetError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(|source| NetError::Bind { addr, source })?;
    // The decoy hash that answers unknown names is made now, not by the first stranger.
    tokio::task::spawn_blocking(crate::store::people::warm_decoy);
    let app = router(shared, tls.is_some());
    let scheme = if tls.is_some() { "https" } else { "http" };
    let task = match tls {
        Some(cfg) => {
            let listener = tls::TlsListener::new(listener, cfg).map_err(|source| NetError::Bind { addr, source })?;
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!("the local API stopped: {e}");
                }
            })
        }
        None => tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("the local API stopped: {e}");
            }
        }),
    };
    tracing::info!(api = %format!("{scheme}://{local}"), "local API listening");
    Ok((local, task))
}

/// Largest JSON body taken (a photo upload has its own limit).
const MAX_JSON_BODY: usize = 64 * 1024;
/// Event streams open at once, every user together.
const MAX_STREAMS: usize = 64;

/// The API's description: every route below is registered with its OpenAPI path, so the
/// document and the router cannot disagree.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "outpost local API",
        description = "The API a node serves to the apps on its own device (`outpost run --api`). \
            Every call but `POST /api/login` and this document needs `Authorization: Bearer TOKEN`. \
            See docs/api.md.",
        license(name = "Proprietary")
    ),
    modifiers(&BearerToken),
    security(("token" = [])),
    tags(
        (name = "people", description = "Signing in and out"),
        (name = "sessions", description = "Advice sessions, their messages, receipts and outcomes"),
        (name = "photos", description = "Photos: upload with consent and body site, download, read receipts"),
        (name = "calls", description = "Escalation to a live call, answering, hanging up, callbacks owed"),
        (name = "node", description = "This node: status and the ICB's directory"),
        (name = "events", description = "One stream of everything that changes"),
    )
)]
struct ApiDoc;

/// Adds the bearer token scheme.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let comps = api.components.get_or_insert_with(Default::default);
        let scheme = Http::builder()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "A person's token from POST /api/login, or a system token from `outpost user add --token`",
            ))
            .build();
        comps.add_security_scheme("token", SecurityScheme::Http(scheme));
    }
}

fn routes() -> OpenApiRouter<Arc<Shared>> {
    let photo_limit = axum::extract::DefaultBodyLimit::max(crate::photo::MAX_PHOTO_BYTES + 4096);
    let (photo_schemas, photo_paths, photo_route) = routes!(attach_photo);
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(status))
        .routes(routes!(list_sessions, create_session))
        .routes(routes!(show_session))
        .routes(routes!(read_session))
        .routes(routes!(send_message))
        .routes((photo_schemas, photo_paths, photo_route.layer(photo_limit)))
        .routes(routes!(set_outcome))
        .routes(routes!(escalate))
        .routes(routes!(answer))
        .routes(routes!(hang_up))
        .routes(routes!(call_audio))
        .routes(routes!(session_calls))
        .routes(routes!(callbacks))
        .routes(routes!(get_photo))
        .routes(routes!(read_photo))
        .routes(routes!(directory))
        .routes(routes!(events))
}

/// The OpenAPI document of this API, as served at `/api/openapi.json` and checked in as
/// `docs/api.json` (`outpost openapi` prints it).
pub fn openapi_json() -> String {
    let mut doc = routes().into_openapi();
    doc.paths.paths.insert(
        "/api/openapi.json".into(),
        utoipa::openapi::path::PathItem::new(
            utoipa::openapi::HttpMethod::Get,
            utoipa::openapi::path::OperationBuilder::new()
                .summary(Some("This document"))
                .tag("node")
                .security(utoipa::openapi::security::SecurityRequirement::default())
                .response("200", utoipa::openapi::Response::new("The OpenAPI document")),
        ),
    );
    let mut text = doc.to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}

/// The server's routes. Over plain HTTP (loopback), requests must name a loopback host; over
/// TLS, the certificate's name check does that work (a rebinding page cannot pass it).
fn router(shared: Arc<Shared>, tls: bool) -> Router {
    let spec = axum::body::Bytes::from(openapi_json());
    let (router, _) = routes().split_for_parts();
    let router = router
        .route(
            "/api/openapi.json",
            get(move || {
                let spec = spec.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], spec) }
            }),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_JSON_BODY))
        .merge(app::routes());
    let router = if tls { router } else { router.layer(axum::middleware::from_fn(loopback_host)) };
    router.with_state(shared)
}

/// Liveness, for a supervisor: the store thread answers within 2 s. No token; says nothing
/// about sessions.
pub(super) async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    let answered = tokio::time::timeout(std::time::Duration::from_secs(2), shared.store.call(|_| ())).await;
    match answered {
        Ok(Ok(())) => Json(serde_json::json!({ "status": "ok" })).into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "the store is not answering" })))
            .into_response(),
    }
}

/// Readiness: serving, and not stopping (503 once SIGTERM has come). No token; the node's
/// name, role and how many peers are connected now.
pub(super) async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let peers = shared.links.lock().map(|l| l.len()).unwrap_or(0);
    let body = |status: &str| {
        Json(serde_json::json!({
            "status": status, "node": shared.me.name, "role": shared.me.role, "peers_connected": peers,
        }))
    };
    if shared.stopping.load(std::sync::atomic::Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, body("stopping")).into_response();
    }
    body("ready").into_response()
}

/// Refuses requests whose `Host` is not this loopback API (a web page that rebinds a name of
/// its own to 127.0.0.1 sends its own name): 421.
async fn loopback_host(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let name = match host.rsplit_once(':') {
        Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => host,
    };
    if matches!(name, "127.0.0.1" | "localhost" | "[::1]") {
        next.run(req).await
    } else {
        ApiError(StatusCode::MISDIRECTED_REQUEST, format!("this API answers on loopback only, not as {host:?}"))
            .into_response()
    }
}

// ------------------------------------------------------------------------------------ errors

/// An API error: a status and a message for people.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

/// Every error's body: what went wrong and what to do next, for people.
#[derive(Serialize, utoipa::ToSchema)]
struct ErrorBody {
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
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
            StoreError::NoSuchSession(_)
            | StoreError::Ambiguous(_)
            | StoreError::NoSuchBlob(_)
            | StoreError::NoSuchUser(_) => StatusCode::NOT_FOUND,
            StoreError::Model { .. } => StatusCode::BAD_REQUEST,
            StoreError::ClientKeyReused { .. } | StoreError::Duplicate(_) => StatusCode::CONFLICT,
            StoreError::DiskFull { .. } => StatusCode::INSUFFICIENT_STORAGE,
            StoreError::BlobOffloaded(_) => StatusCode::GONE,
            StoreError::BlobIncomplete { .. } => StatusCode::CONFLICT,
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

/// A JSON body, its rejections (415, 422, 413, 400) in the API's own error form.
struct JsonBody<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e) => Err(ApiError(e.status(), e.body_text())),
        }
    }
}

/// Query parameters, their rejection in the API's own error form.
struct QueryArgs<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryArgs<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(QueryArgs(v)),
            Err(e) => Err(ApiError(e.status(), e.body_text())),
        }
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
            n.set_acting(Some(&who));
            // The person is cleared however the operation ends, a panic included.
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(n)));
            n.set_acting(None);
            out.unwrap_or_else(|_| Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the operation failed".into())))
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
        let token = bearer(&parts.headers, &parts.uri).ok_or_else(|| {
            ApiError(StatusCode::UNAUTHORIZED, "sign in first: Authorization: Bearer TOKEN (POST /api/login)".into())
        })?;
        let person = shared.store.call(move |n| n.person_by_token(&token, now_ms())).await??.ok_or_else(|| {
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

/// The bearer token of a request: the `Authorization` header, or, on the event stream and the
/// call audio socket alone (a browser's `EventSource` and `WebSocket` cannot set headers), a
/// `token` query parameter.
fn bearer(headers: &axum::http::HeaderMap, uri: &axum::http::Uri) -> Option<String> {
    if let Some(h) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return h.strip_prefix("Bearer ").map(|t| t.trim().to_string());
    }
    if !matches!(uri.path(), "/api/events" | "/api/calls/audio") {
        return None;
    }
    uri.query()?.split('&').find_map(|kv| kv.strip_prefix("token=").map(str::to_string))
}

// -------------------------------------------------------------------------------- handlers

#[derive(Deserialize, utoipa::ToSchema)]
struct Login {
    /// The user's name, as `outpost user add` set it.
    name: String,
    /// Their PIN or passphrase (or an integrating system's token).
    secret: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct LoggedIn {
    /// The bearer token for every further call.
    token: String,
    /// When it stops working (12 hours: a shift).
    expires_ms: i64,
    /// Who signed in.
    user: Person,
}

/// What one daemon's API bounds: logins checked at once, failed sign-ins by name, and event
/// streams open (kept per daemon, in its shared state).
#[derive(Debug)]
pub(super) struct Guards {
    /// Logins checked at once (each costs tens of milliseconds of one core, off the store thread).
    logins: tokio::sync::Semaphore,
    /// Failed sign-ins by name: after 5 in a row, that name waits, 30 s doubling up to 15 min.
    lockouts: std::sync::Mutex<std::collections::HashMap<String, (u32, std::time::Instant)>>,
    /// Event streams open.
    streams: Arc<std::sync::atomic::AtomicUsize>,
    /// The last whole-chain audit check, when made, and its wall-clock time.
    audit: std::sync::Mutex<Option<(std::time::Instant, crate::store::AuditCheck, i64)>>,
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            logins: tokio::sync::Semaphore::new(2),
            lockouts: Default::default(),
            streams: Default::default(),
            audit: Default::default(),
        }
    }
}

const FREE_TRIES: u32 = 5;

fn lockout_left(guards: &Guards, name: &str) -> Option<std::time::Duration> {
    let map = guards.lockouts.lock().ok()?;
    let (fails, until) = map.get(name)?;
    (*fails >= FREE_TRIES).then(|| until.saturating_duration_since(std::time::Instant::now())).filter(|d| !d.is_zero())
}

fn record_attempt(guards: &Guards, name: &str, ok: bool) {
    let Ok(mut map) = guards.lockouts.lock() else { return };
    if ok {
        map.remove(name);
        return;
    }
    if map.len() > 10_000 {
        map.retain(|_, (_, until)| *until > std::time::Instant::now());
    }
    let e = map.entry(name.to_string()).or_insert((0, std::time::Instant::now()));
    e.0 = e.0.saturating_add(1);
    if e.0 >= FREE_TRIES {
        let secs = (30u64 << (e.0 - FREE_TRIES).min(5)).min(900);
        e.1 = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    }
}

#[utoipa::path(
    post, path = "/api/login", tag = "people", security(()),
    request_body = Login,
    responses(
        (status = 200, description = "Signed in for a shift", body = LoggedIn),
        (status = 401, description = "Unknown name or wrong secret", body = ErrorBody),
        (status = 403, description = "The person's role does not work on this kind of node", body = ErrorBody),
        (status = 429, description = "Too many wrong attempts for this name", body = ErrorBody),
    )
)]
async fn login(State(shared): State<Arc<Shared>>, JsonBody(body): JsonBody<Login>) -> Result<Json<LoggedIn>, ApiError> {
    if let Some(left) = lockout_left(&shared.api, &body.name) {
        return Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many wrong attempts for this name; try again in {} s", left.as_secs().max(1)),
        ));
    }
    let name = body.name.clone();
    let (person, phc) = shared.store.call(move |n| n.sign_in_material(&name)).await??;
    let good = {
        let _permit = shared
            .api
            .logins
            .acquire()
            .await
            .map_err(|_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()))?;
        let secret = body.secret;
        tokio::task::spawn_blocking(move || crate::store::people::verify_secret(&secret, &phc)).await.unwrap_or(false)
    };
    record_attempt(&shared.api, &body.name, good && person.is_some());
    let Some(user) = person.filter(|_| good) else {
        return Err(ApiError(StatusCode::UNAUTHORIZED, "unknown name or wrong PIN".into()));
    };
    if !user.role.works_on(shared.me.role) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("a {} does not work on a {} node", user.role, shared.me.role),
        ));
    }
    let who = user.clone();
    let (token, expires_ms) = shared.store.call(move |n| n.open_api_session(&who, now_ms())).await??;
    Ok(Json(LoggedIn { token, expires_ms, user }))
}

#[utoipa::path(
    post, path = "/api/logout", tag = "people",
    responses(
        (status = 204, description = "The token is ended"),
        (status = 400, description = "Not a signed-in session (a system token)", body = ErrorBody),
        (status = 401, description = "No token", body = ErrorBody),
    )
)]
async fn logout(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Result<StatusCode, ApiError> {
    let token = bearer(&headers, &uri).ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "no token to end".into()))?;
    if shared.store.call(move |n| n.sign_out(&token, now_ms())).await?? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(bad(
            "this token is not a signed-in session (a system token ends when its user is disabled: `outpost user disable`)",
        ))
    }
}

#[utoipa::path(
    get, path = "/api/me", tag = "people",
    responses((status = 200, description = "Who the token is", body = Person), (status = 401, body = ErrorBody))
)]
async fn me(Caller(who): Caller) -> Json<Person> {
    Json(who)
}

#[utoipa::path(
    get, path = "/api/status", tag = "node",
    responses((status = 200, description = "The node's honest status", body = NodeStatus), (status = 401, body = ErrorBody))
)]
async fn status(State(shared): State<Arc<Shared>>, Caller(_): Caller) -> Result<Response, ApiError> {
    // The chain is checked whole at most once a minute; in between the last check is given,
    // with its time (`audit_checked_ms`).
    let recent = shared.api.audit.lock().ok().and_then(|c| c.clone()).filter(|(at, ..)| at.elapsed() < AUDIT_RECHECK);
    let mut st = shared.store.call(move |n| n.status_with(recent.map(|(_, check, ms)| (check, ms)))).await??;
    let mut connected: Vec<String> = shared.links.lock().map(|l| l.keys().cloned().collect()).unwrap_or_default();
    connected.sort();
    st.connected_peers = Some(connected);
    if let Ok(mut c) = shared.api.audit.lock()
        && c.as_ref().is_none_or(|(at, ..)| at.elapsed() >= AUDIT_RECHECK)
    {
        *c = Some((std::time::Instant::now(), st.audit.clone(), st.audit_checked_ms));
    }
    Ok(Json(st).into_response())
}

/// How long a whole-chain audit check answers `GET /api/status`.
const AUDIT_RECHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// Which sessions to list.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only sessions in this status.
    status: Option<Status>,
    /// Only sessions of this service line.
    service_line: Option<ServiceLine>,
    /// At most this many, newest first (default 500, at most 10,000).
    limit: Option<usize>,
}

/// Sessions listed when the app does not say how many.
const DEFAULT_LIST: usize = 500;
/// The most sessions one list call returns.
const MAX_LIST: usize = 10_000;

#[utoipa::path(
    get, path = "/api/sessions", tag = "sessions", params(ListQuery),
    responses(
        (status = 200, description = "Session cards, newest first (at most `limit`, 500 by default)", body = Vec<SessionCard>),
        (status = 400, description = "An unknown status or service line", body = ErrorBody),
        (status = 401, body = ErrorBody),
    )
)]
async fn list_sessions(
    State(shared): State<Arc<Shared>>,
    Caller(_): Caller,
    QueryArgs(q): QueryArgs<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = Some(q.limit.unwrap_or(DEFAULT_LIST).min(MAX_LIST));
    let filter = ListFilter { status: q.status, service_line: q.service_line, limit };
    let cards = shared.store.call(move |n| n.list(&filter)).await??;
    Ok(Json(cards).into_response())
}

/// A new session, as an app sends it.
#[derive(Deserialize, utoipa::ToSchema)]
struct NewSessionBody {
    /// The specialty asked.
    service_line: ServiceLine,
    /// Where the requester works.
    care_setting: CareSetting,
    /// Default: routine.
    #[serde(default)]
    priority: Option<Priority>,
    /// Default: photo for dermatology, call for emergency medicine, else message.
    #[serde(default)]
    channel: Option<Channel>,
    /// The question, in the clinician's words.
    summary: String,
    /// Ten digits (spaces allowed); the check digit is checked.
    #[serde(default)]
    nhs_number: Option<String>,
    /// The number's trace status (PDS); required with a number.
    #[serde(default)]
    nhs_verification: Option<NhsVerification>,
    /// Fallback demographics when there is no verified number.
    #[serde(default)]
    patient_name: Option<String>,
    /// Date of birth (YYYY-MM-DD).
    #[serde(default)]
    birth_date: Option<String>,
    /// The vehicle's call-sign, for an ambulance crew.
    #[serde(default)]
    call_sign: Option<String>,
    /// The incident number, for an ambulance crew.
    #[serde(default)]
    incident: Option<String>,
    /// A number to call back on.
    #[serde(default)]
    callback: Option<String>,
    /// Keep it on this device until it is queued.
    #[serde(default)]
    draft: bool,
    /// Any string unique to this create on the app (a double tap, or a retry after a lost
    /// response, returns the first session and writes nothing).
    #[serde(default)]
    client_key: Option<String>,
}

#[utoipa::path(
    post, path = "/api/sessions", tag = "sessions",
    request_body = NewSessionBody,
    responses(
        (status = 201, description = "The new session (or, for a repeated client key, the first)", body = SessionView),
        (status = 400, description = "An invalid field (the NHS number's check digit, for one)", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "A consultant, or a node that does not open sessions", body = ErrorBody),
        (status = 409, description = "The client key was used for a different request", body = ErrorBody),
    )
)]
async fn create_session(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    JsonBody(b): JsonBody<NewSessionBody>,
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

/// Acts that only a person does (reading is a person's act: an integrating system's token
/// may not say that someone read something).
fn person_only(who: &Person, act: &str) -> Result<(), ApiError> {
    if who.role == PersonRole::System {
        return Err(ApiError(StatusCode::FORBIDDEN, format!("{act} is done by a person, not an integrating system")));
    }
    Ok(())
}

fn session_id(id: &str) -> Result<SessionId, ApiError> {
    id.parse().map_err(|_| ApiError(StatusCode::NOT_FOUND, format!("no session {id} on this node")))
}

#[utoipa::path(
    get, path = "/api/sessions/{id}", tag = "sessions", params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "The session; showing it writes no receipt", body = SessionView),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such session on this node", body = ErrorBody),
    )
)]
async fn show_session(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    let view = as_person(&shared, &who, move |n| Ok(n.show(id, now_ms())?)).await?;
    Ok(Json(view).into_response())
}

#[derive(Serialize, utoipa::ToSchema)]
struct ReadBody {
    /// Whether anything was newly marked read (false when it had all been read already).
    new_receipts: bool,
}

#[utoipa::path(
    post, path = "/api/sessions/{id}/read", tag = "sessions", params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "This node's read receipts are written", body = ReadBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "An integrating system does not read", body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
async fn read_session(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    person_only(&who, "reading")?;
    let new_receipts = as_person(&shared, &who, move |n| Ok(n.mark_read(id, now_ms())?)).await?;
    if new_receipts {
        announce(&shared, id);
    }
    Ok(Json(ReadBody { new_receipts }).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct MessageBody {
    /// The message.
    text: String,
    /// The id of the message it answers.
    #[serde(default)]
    reply_to: Option<String>,
    /// Any string unique to this send on the app: a retry with it returns the first message.
    #[serde(default)]
    client_key: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Sent {
    session: SessionId,
    /// The message's id.
    message: String,
    /// How far it has travelled (`device` for a new message).
    receipt: Option<sync_protocol::vocab::ReceiptLevel>,
}

#[utoipa::path(
    post, path = "/api/sessions/{id}/messages", tag = "sessions", params(("id" = String, Path, description = "Session id")),
    request_body = MessageBody,
    responses(
        (status = 201, description = "The message is on this node's disk", body = Sent),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The client key was used for a different message", body = ErrorBody),
    )
)]
async fn send_message(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<MessageBody>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    if b.text.trim().is_empty() {
        return Err(bad("text: a message needs some text"));
    }
    let sent = as_person(&shared, &who, move |n| {
        let msg = n.send_message_once(id, &b.text, b.reply_to, b.client_key.as_deref(), now_ms())?;
        // A repeat answers with the first message, which may have travelled since.
        // (Stored whatever happens here: a failure to read it back is not the write's.)
        let receipt = n.message_receipt(id, &msg).ok().flatten();
        Ok(Sent { session: id, message: msg, receipt })
    })
    .await?;
    announce(&shared, id);
    Ok((StatusCode::CREATED, Json(sent)).into_response())
}

/// What a photo shows and the consent it was taken under.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PhotoQuery {
    /// What kind of photograph (close-up, regional, dermoscopic, ...).
    view: PhotoView,
    /// Where on the body ("left forearm").
    body_site: String,
    /// How the patient consented.
    consent: ConsentKind,
    /// What the consent covers (default: the record only).
    #[serde(default)]
    consent_scope: Option<ConsentScope>,
}

/// A photo stored and attached.
#[derive(Serialize, utoipa::ToSchema)]
struct PhotoStored {
    session: SessionId,
    /// BLAKE3 hash of the bytes (hex): the photo's name from now on.
    hash: String,
    size: u64,
    mime: String,
    width: u32,
    height: u32,
}

/// A photo: its bytes (JPEG or PNG) as the body, what it shows and the consent in the query.
/// Attaching the same photo again writes nothing (photos are known by their hash).
#[utoipa::path(
    post, path = "/api/sessions/{id}/photos", tag = "photos",
    params(("id" = String, Path, description = "Session id"), PhotoQuery),
    request_body(description = "The photo: JPEG or PNG, at most 25 MB and 50 megapixels", content(("image/jpeg"), ("image/png"))),
    responses(
        (status = 201, description = "The photo is stored and attached", body = PhotoStored),
        (status = 400, description = "Not a readable JPEG or PNG, or too many pixels", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 413, description = "Larger than 25 MB", body = ErrorBody),
    )
)]
async fn attach_photo(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    Path(id): Path<String>,
    QueryArgs(q): QueryArgs<PhotoQuery>,
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
    let (width, height) = photo.dimensions;
    let info = as_person(&shared, &who, move |n| Ok(n.attach_photo(id, &photo, &req, now_ms())?)).await?;
    announce(&shared, id);
    let body = PhotoStored { session: id, hash: info.hash, size: info.size, mime: info.mime, width, height };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Which form of the photo.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PhotoGet {
    /// The JPEG thumbnail instead of the photo (kept after the photo is handed on).
    #[serde(default)]
    thumbnail: bool,
}

/// A photo's bytes as this node holds them (or its thumbnail). Writes no receipt.
#[utoipa::path(
    get, path = "/api/photos/{hash}", tag = "photos",
    params(("hash" = String, Path, description = "The photo's BLAKE3 hash (hex)"), PhotoGet),
    responses(
        (status = 200, description = "The photo's bytes (or its JPEG thumbnail); writes no receipt", content(("image/jpeg"), ("image/png"))),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Still being received", body = ErrorBody),
        (status = 410, description = "Handed to the hub and deleted here (the thumbnail remains)", body = ErrorBody),
    )
)]
async fn get_photo(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    Path(hash): Path<String>,
    QueryArgs(q): QueryArgs<PhotoGet>,
) -> Result<Response, ApiError> {
    let (bytes, mime) = as_person(&shared, &who, move |n| {
        if q.thumbnail {
            Ok((n.thumbnail(&hash)?, "image/jpeg".to_string()))
        } else {
            let mime = n.photo_info(&hash)?.mime;
            Ok((n.open_photo(&hash, false, now_ms())?, mime))
        }
    })
    .await?;
    // The type comes from the session, which another node wrote: only the two image types a
    // photo may be go out as such, and nothing is sniffed.
    let mime = match mime.as_str() {
        "image/jpeg" | "image/png" => mime,
        _ => "application/octet-stream".to_string(),
    };
    Ok(([(header::CONTENT_TYPE, mime), (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string())], bytes).into_response())
}

/// A person has opened the photo: this node's read receipt on it.
#[utoipa::path(
    post, path = "/api/photos/{hash}/read", tag = "photos",
    params(("hash" = String, Path, description = "The photo's BLAKE3 hash (hex)")),
    responses(
        (status = 204, description = "A person opened the photo: this node's read receipt is written"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
async fn read_photo(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    Path(hash): Path<String>,
) -> Result<StatusCode, ApiError> {
    person_only(&who, "opening a photo")?;
    let ids = as_person(&shared, &who, move |n| Ok(n.mark_photo_read(&hash, now_ms())?)).await?;
    for id in ids {
        announce(&shared, id);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
struct OutcomeBody {
    /// Whose outcome: the requester's on an edge, the responder's on a desk.
    side: Side,
    /// The outcome.
    outcome: Outcome,
    /// Any string unique to this act on the app: a retry with it writes nothing, even after
    /// another outcome was recorded.
    #[serde(default)]
    client_key: Option<String>,
}

#[utoipa::path(
    post, path = "/api/sessions/{id}/outcome", tag = "sessions", params(("id" = String, Path, description = "Session id")),
    request_body = OutcomeBody,
    responses(
        (status = 204, description = "Recorded"),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "This side's outcome is not recorded on this node", body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
async fn set_outcome(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<OutcomeBody>,
) -> Result<StatusCode, ApiError> {
    let id = session_id(&id)?;
    as_person(&shared, &who, move |n| {
        Ok(n.set_outcome_once(id, b.side, b.outcome, b.client_key.as_deref(), now_ms())?)
    })
    .await?;
    announce(&shared, id);
    Ok(StatusCode::NO_CONTENT)
}

/// An escalation asked for.
#[derive(Serialize, utoipa::ToSchema)]
struct Escalated {
    session: SessionId,
    /// The escalation's id (the open one, if it was already asked).
    call: String,
}

/// A ring answered.
#[derive(Serialize, utoipa::ToSchema)]
struct Answered {
    session: SessionId,
    call: String,
    /// Which ring attempt was answered.
    attempt: u32,
}

/// Asks for a live call (the requester's edge); the hub decides (`call` events follow).
#[utoipa::path(
    post, path = "/api/sessions/{id}/escalate", tag = "calls", params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 202, description = "Asked (or already asked: the open escalation); the hub decides and `call` events follow", body = Escalated),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
async fn escalate(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    Path(id): Path<String>,
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
    if let Ok(mut people) = shared.call_people.lock() {
        people.insert(id, who.id);
    }
    announce(&shared, id);
    Ok((StatusCode::ACCEPTED, Json(Escalated { session: id, call })).into_response())
}

/// Answers the call ringing at this desk in the session (409 when none rings here).
#[utoipa::path(
    post, path = "/api/sessions/{id}/answer", tag = "calls", params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "Answered; the hub connects the call", body = Answered),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Only a consultant answers", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "No call rings at this desk in this session", body = ErrorBody),
    )
)]
async fn answer(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    if who.role != PersonRole::Consultant {
        return Err(ApiError(StatusCode::FORBIDDEN, format!("a {} does not answer a desk's calls", who.role)));
    }
    match as_person(&shared, &who, move |n| Ok(n.answer_call(id, now_ms())?)).await? {
        Some((call, attempt)) => {
            if let Ok(mut people) = shared.call_people.lock() {
                people.insert(id, who.id);
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
async fn session_calls(
    State(shared): State<Arc<Shared>>,
    Caller(_): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
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
        (status = 403, description = "An integrating system does not hang up a person's call", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "No call of this session is live on this node", body = ErrorBody),
    )
)]
async fn hang_up(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    Path(id): Path<String>,
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
async fn call_audio(
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
    if live.is_none() {
        return Err(ApiError(StatusCode::CONFLICT, "no call of this session is live on this node".into()));
    }
    let speaker = shared.call_people.lock().ok().and_then(|p| p.get(&id).copied());
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
struct AudioQuery {
    session: String,
}

/// Carries one page's audio until it closes, the call ends, or the person's token ends.
async fn voice_socket(shared: Arc<Shared>, socket: axum::extract::ws::WebSocket, token: String, session: SessionId) {
    use axum::extract::ws::{CloseFrame, Message};
    use futures_util::{SinkExt, StreamExt};
    let frame_bytes = 2 * sync_protocol::voice::FRAME_SAMPLES;
    let (speaker, mut to_page) = tokio::sync::mpsc::channel::<Vec<i16>>(50);
    let id = shared.next_conn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let io = Arc::new(super::VoiceIo { id, mic: Default::default(), speaker });
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
                        if q.len() >= super::MIC_QUEUE_FRAMES {
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
async fn callbacks(State(shared): State<Arc<Shared>>, Caller(_): Caller) -> Result<Response, ApiError> {
    let owed = shared.store.call(|n| n.callbacks_owed()).await??;
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
async fn directory(State(shared): State<Arc<Shared>>, Caller(_): Caller) -> Result<Response, ApiError> {
    let own = shared.me.role == Role::Hub;
    let dir = shared.store.call(|n| n.directory()).await??;
    Ok(Json(dir.map(|v| DirectoryJson::of(&v, own))).into_response())
}

// -------------------------------------------------------------------------------- events

/// What the event stream says.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ApiEvent {
    /// The stream is open; `node` and its role.
    Hello { node: String, role: Role },
    /// A session was created or changed (here or by a peer): its card as it is now.
    Session { card: crate::store::SessionCard },
    /// A peer connected or its connection ended.
    Link { peer: String, up: bool },
    /// A session's latest call moved: asked, ringing (here or elsewhere), connected, ended,
    /// or a callback arranged instead.
    Call { call: crate::node::CallNow },
    /// The stream fell behind and missed some changes: reload sessions and calls.
    Resync { missed: u64 },
}

impl ApiEvent {
    fn name(&self) -> &'static str {
        match self {
            ApiEvent::Hello { .. } => "hello",
            ApiEvent::Session { .. } => "session",
            ApiEvent::Link { .. } => "link",
            ApiEvent::Call { .. } => "call",
            ApiEvent::Resync { .. } => "resync",
        }
    }

    fn to_sse(&self) -> Event {
        Event::default().event(self.name()).data(serde_json::to_string(self).unwrap_or_else(|_| "{}".into()))
    }
}

/// A call's id, state and current ring: what the event stream has said of it.
type CallMark = (String, &'static str, Option<(i64, u32)>);

/// An open event stream's place among [`MAX_STREAMS`], given back when the stream ends.
struct StreamSlot(Arc<std::sync::atomic::AtomicUsize>);

impl StreamSlot {
    fn take(open: &Arc<std::sync::atomic::AtomicUsize>) -> Option<StreamSlot> {
        use std::sync::atomic::Ordering;
        let taken = open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_STREAMS).then_some(n + 1));
        taken.is_ok().then(|| StreamSlot(open.clone()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Whether a token still names a person who may act (not signed out, expired or disabled).
fn token_holds(n: &mut Node, token: &str) -> bool {
    n.person_by_token(token, now_ms()).ok().flatten().is_some()
}

/// How often a quiet stream checks that its token still holds (signed out, expired, disabled).
const RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

#[utoipa::path(
    get, path = "/api/events", tag = "events",
    params(("token" = Option<String>, Query, description = "The bearer token, for a browser's EventSource (which cannot set headers)")),
    responses(
        (status = 200, description = "Server-Sent Events; each event's name is its `type`", content_type = "text/event-stream", body = ApiEvent),
        (status = 401, body = ErrorBody),
        (status = 503, description = "Too many streams are open", body = ErrorBody),
    )
)]
async fn events(
    State(shared): State<Arc<Shared>>,
    Caller(_): Caller,
    parts: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let slot = StreamSlot::take(&shared.api.streams)
        .ok_or_else(|| ApiError(StatusCode::SERVICE_UNAVAILABLE, "too many event streams are open".into()))?;
    let token = bearer(&parts, &uri).unwrap_or_default();
    let rx = shared.changes.subscribe();
    let hello = ApiEvent::Hello { node: shared.me.name.clone(), role: shared.me.role };
    // What the stream has said of each call: it speaks again only when the call moves.
    let seen: std::collections::HashSet<CallMark> = Default::default();
    let state = (shared, rx, vec![hello], seen, (slot, token));
    let stream =
        futures_util::stream::unfold(state, |(shared, mut rx, mut pending, mut seen_calls, held)| async move {
            loop {
                if let Some(e) = pending.pop() {
                    return Some((Ok(e.to_sse()), (shared, rx, pending, seen_calls, held)));
                }
                let notice = tokio::select! {
                    n = rx.recv() => Some(n),
                    _ = tokio::time::sleep(RECHECK) => None,
                };
                match notice {
                    None => {
                        let token = held.1.clone();
                        if !shared.store.call(move |n| token_holds(n, &token)).await.unwrap_or(false) {
                            return None;
                        }
                    }
                    Some(Ok(Notice::Docs { docs, .. })) => {
                        let ids: Vec<SessionId> = docs.iter().map(|d| SessionId::from_bytes(*d)).collect();
                        let token = held.1.clone();
                        // The token is checked again with every change it would be told of.
                        let found = shared
                            .store
                            .call(move |n| {
                                if !token_holds(n, &token) {
                                    return None;
                                }
                                let cards: Vec<_> = ids.iter().filter_map(|id| n.card(*id).ok().flatten()).collect();
                                Some((cards, n.calls_now(&ids).unwrap_or_default()))
                            })
                            .await
                            .unwrap_or_default();
                        let (cards, calls) = found?;
                        // A call that moved, then the sessions' cards; `pending` is popped from
                        // its end, so it holds them in reverse.
                        let news = calls.into_iter().filter(|c| seen_calls.insert((c.call.clone(), c.state, c.rung)));
                        let events: Vec<ApiEvent> = news
                            .map(|call| ApiEvent::Call { call })
                            .chain(cards.into_iter().map(|card| ApiEvent::Session { card }))
                            .collect();
                        pending = events.into_iter().rev().collect();
                    }
                    Some(Ok(Notice::Link { peer, up })) => pending.push(ApiEvent::Link { peer, up }),
                    Some(Ok(Notice::Revocations)) => {}
                    Some(Err(broadcast::error::RecvError::Lagged(missed))) => {
                        tracing::warn!("an API event stream fell {missed} notices behind; told it to reload");
                        // What it missed may include a call ringing here: forget what was said of
                        // calls, so that the next change of each is told again in full.
                        seen_calls.clear();
                        pending.push(ApiEvent::Resync { missed });
                    }
                    Some(Err(broadcast::error::RecvError::Closed)) => return None,
                }
            }
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
