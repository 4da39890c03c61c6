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
//! | `GET /api/sessions/{id}/export?format=` | the session as `fhir`, `letter`, `json` or `automerge` (audited) |
//! | `POST /api/sessions/{id}/messages` `{text, reply_to?, client_key?}` | a message, once durable |
//! | `POST /api/sessions/{id}/photos?view=&body_site=&consent=` (body: the image) | a photo |
//! | `POST /api/sessions/{id}/photos/{hash}/withdraw-consent` | the patient withdraws a photo's consent |
//! | `POST /api/sessions/{id}/outcome` `{side, outcome}` | this side's outcome |
//! | `POST /api/sessions/{id}/status` `{act}` | `close`, `cancel` or `reopen` the session |
//! | `POST /api/sessions/{id}/escalate`, `.../answer`, `.../hangup`, `GET .../calls` | calls |
//! | `GET /api/callbacks` | callbacks owed |
//! | `GET /api/photos/{hash}[?session=ID][&thumbnail=true]`, `POST /api/photos/{hash}/read` | photos |
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
mod auth;
mod calls;
mod errors;
mod events;
mod sessions;
mod tls;

pub(crate) use auth::Guards;
use auth::*;
use calls::*;
pub use errors::ApiError;
use errors::*;
use events::*;
use sessions::*;
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
            tokio::spawn(tls::serve(listener, app))
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
/// Event streams one person (or integrating system) may hold open at once: a page on each of
/// a few devices or tabs. One token could otherwise take every stream, and every other page
/// would stop hearing of changes.
const MAX_STREAMS_PER_PERSON: usize = 4;

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
        .routes(routes!(export_session))
        .routes(routes!(withdraw_consent))
        .routes(routes!(send_message))
        .routes((photo_schemas, photo_paths, photo_route.layer(photo_limit)))
        .routes(routes!(set_outcome))
        .routes(routes!(set_session_status))
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
