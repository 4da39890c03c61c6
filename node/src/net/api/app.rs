//! The clinician's web app (`node/app/`), built into the binary and served beside the API:
//! `/app/` on the node's own API address. Plain files, no build step; the app talks to this
//! node only, so it works with every network link gone.
//!
//! Every answer carries a Content-Security-Policy that allows scripts, styles and connections
//! from this origin only (no inline script, no other host), so text from a session can never
//! run as code even if it reached the page's markup.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::Shared;

const INDEX: &str = include_str!("../../../app/index.html");
const APP_JS: &str = include_str!("../../../app/app.js");
const APP_CSS: &str = include_str!("../../../app/app.css");
const VOICE_WORKLET: &str = include_str!("../../../app/voice-worklet.js");

/// The app's policy: its own files and its own node, nothing else.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; \
                   media-src 'self' blob:; connect-src 'self'; font-src 'self'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// The app's routes (no token needed: the files hold nothing but the app itself).
pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/app/") }))
        .route("/app", get(|| async { Redirect::to("/app/") }))
        .route("/app/", get(|| async { file("text/html; charset=utf-8", INDEX) }))
        .route("/app/app.js", get(|| async { file("text/javascript; charset=utf-8", APP_JS) }))
        .route("/app/app.css", get(|| async { file("text/css; charset=utf-8", APP_CSS) }))
        .route("/app/voice-worklet.js", get(|| async { file("text/javascript; charset=utf-8", VOICE_WORKLET) }))
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Small files: always asked again, so an upgraded node serves its own app at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}
