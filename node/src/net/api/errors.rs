//! Errors as HTTP answers, the JSON body and query extractors, and acting as a person.

use super::*;

/// An API error: a status and a message for people.
#[derive(Debug)]
pub struct ApiError(pub(super) StatusCode, pub(super) String);

/// Every error's body: what went wrong and what to do next, for people.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ErrorBody {
    pub(super) error: String,
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
            NodeError::Photo(_)
            | NodeError::WrongNodeForPerson { .. }
            | NodeError::Person(_)
            | NodeError::Pin(_)
            | NodeError::ClientKey { .. }
            | NodeError::Install(_)
            | NodeError::AmbiguousPhoto { .. }
            | NodeError::Backup(_)
            | NodeError::Rotation(_)
            | NodeError::NoIcb { .. } => StatusCode::BAD_REQUEST,
            NodeError::OnACall { .. } | NodeError::CallInTheWay { .. } => StatusCode::CONFLICT,
            NodeError::TooManyRecords { .. } => StatusCode::TOO_MANY_REQUESTS,
            NodeError::NoSuchPhoto { .. } => StatusCode::NOT_FOUND,
            NodeError::Encode { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            NodeError::Role { .. } | NodeError::OutOfScope { .. } => StatusCode::FORBIDDEN,
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
            StoreError::NotYours { .. } => StatusCode::FORBIDDEN,
            StoreError::ClientKeyReused { .. } | StoreError::Duplicate(_) => StatusCode::CONFLICT,
            StoreError::DiskFull { .. } => StatusCode::INSUFFICIENT_STORAGE,
            StoreError::BlobOffloaded(_) | StoreError::ConsentWithdrawn(_) => StatusCode::GONE,
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
pub(super) struct JsonBody<T>(pub(super) T);

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
pub(super) struct QueryArgs<T>(pub(super) T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryArgs<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(QueryArgs(v)),
            Err(e) => Err(ApiError(e.status(), e.body_text())),
        }
    }
}

/// Path parameters, their rejection (a segment that is not UTF-8 once percent-decoded) in the
/// API's own error form: axum's own is plain text.
pub(super) struct PathArgs<T>(pub(super) T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathArgs<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(PathArgs(v)),
            Err(e) => Err(ApiError(e.status(), e.body_text())),
        }
    }
}

pub(super) fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// Runs `f` on the store thread with the person recorded as acting (audit), and clears it.
pub(super) async fn as_person<T: Send + 'static>(
    shared: &Shared,
    who: &Person,
    f: impl FnOnce(&mut Node) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let _turn = turn(shared, who).await;
    let who = who.clone();
    shared
        .store
        .call(move |n| {
            // The person is cleared however the operation ends, a panic included.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| n.acting_as(&who, f)))
                .unwrap_or_else(|_| Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the operation failed".into())))
        })
        .await?
}

/// A person's turn at the store thread: their requests reach it one at a time, in the order
/// they came. The store thread serves every page and every peer's sync in turn, and one token
/// looping the expensive reads (every session, the callbacks owed) on many connections held a
/// job of its own in the queue for each: another person's first screen waited behind them all
/// (p99 233 ms against 0.8 ms quiet, with eight connections; `cargo bench --bench api`). Now
/// one person waits behind their own requests, and everyone else behind at most one of them.
pub(super) async fn turn(shared: &Shared, who: &Person) -> tokio::sync::OwnedMutexGuard<()> {
    let lane = {
        let mut turns = shared.api.turns.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if turns.len() >= TURNS_KEPT {
            // Forget the people with no request under way or waiting.
            turns.retain(|_, lane| Arc::strong_count(lane) > 1);
        }
        turns.entry(who.id).or_default().clone()
    };
    lane.lock_owned().await
}

/// People whose turns are kept before those with nothing under way are forgotten.
const TURNS_KEPT: usize = 256;

/// Tells connected peers and event streams that a session changed here. (The daemon's watch
/// on the database sees other processes' writes; this process's own it must be told of.)
pub(super) fn announce(shared: &Shared, id: SessionId) {
    let _ = shared.changes.send(Notice::Docs { from: 0, docs: Arc::new(vec![id.to_bytes()]) });
}
