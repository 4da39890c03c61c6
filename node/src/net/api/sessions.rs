//! Sessions: list, create, show, read, messages, photos, outcomes.

use super::*;

/// How long a whole-chain audit check answers `GET /api/status`.
pub(super) const AUDIT_RECHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// Which sessions to list.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only sessions in this status.
    pub(super) status: Option<Status>,
    /// Only sessions of this service line.
    pub(super) service_line: Option<ServiceLine>,
    /// At most this many, newest first (default 500, at most 10,000).
    pub(super) limit: Option<usize>,
}

/// Sessions listed when the app does not say how many.
pub(super) const DEFAULT_LIST: usize = 500;
/// The most sessions one list call returns.
pub(super) const MAX_LIST: usize = 10_000;

#[utoipa::path(
    get, path = "/api/sessions", tag = "sessions", params(ListQuery),
    responses(
        (status = 200, description = "Session cards, newest first (at most `limit`, 500 by default)", body = Vec<SessionCard>),
        (status = 400, description = "An unknown status or service line", body = ErrorBody),
        (status = 401, body = ErrorBody),
    )
)]
pub(super) async fn list_sessions(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    QueryArgs(q): QueryArgs<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = Some(q.limit.unwrap_or(DEFAULT_LIST).min(MAX_LIST));
    let filter = ListFilter { status: q.status, service_line: q.service_line, limit };
    let cards = as_person(&shared, &who, move |n| Ok(n.list_shown(&filter, "api", now_ms())?)).await?;
    Ok(Json(cards).into_response())
}

/// A new session, as an app sends it.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct NewSessionBody {
    /// The specialty asked.
    pub(super) service_line: ServiceLine,
    /// Where the requester works.
    pub(super) care_setting: CareSetting,
    /// Default: routine.
    #[serde(default)]
    pub(super) priority: Option<Priority>,
    /// Default: photo for dermatology, call for emergency medicine, else message.
    #[serde(default)]
    pub(super) channel: Option<Channel>,
    /// The question, in the clinician's words.
    pub(super) summary: String,
    /// Ten digits (spaces allowed); the check digit is checked.
    #[serde(default)]
    pub(super) nhs_number: Option<String>,
    /// The number's trace status (PDS); required with a number.
    #[serde(default)]
    pub(super) nhs_verification: Option<NhsVerification>,
    /// Fallback demographics when there is no verified number.
    #[serde(default)]
    pub(super) patient_name: Option<String>,
    /// Date of birth (YYYY-MM-DD).
    #[serde(default)]
    pub(super) birth_date: Option<String>,
    /// The vehicle's call-sign, for an ambulance crew.
    #[serde(default)]
    pub(super) call_sign: Option<String>,
    /// The incident number, for an ambulance crew.
    #[serde(default)]
    pub(super) incident: Option<String>,
    /// A number to call back on.
    #[serde(default)]
    pub(super) callback: Option<String>,
    /// Keep it on this device until it is queued.
    #[serde(default)]
    pub(super) draft: bool,
    /// Any string unique to this create on the app (a double tap, or a retry after a lost
    /// response, returns the first session and writes nothing).
    #[serde(default)]
    pub(super) client_key: Option<String>,
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
pub(super) async fn create_session(
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
pub(super) fn person_only(who: &Person, act: &str) -> Result<(), ApiError> {
    if who.role == PersonRole::System {
        return Err(ApiError(StatusCode::FORBIDDEN, format!("{act} is done by a person, not an integrating system")));
    }
    Ok(())
}

pub(super) fn session_id(id: &str) -> Result<SessionId, ApiError> {
    id.parse().map_err(|_| ApiError(StatusCode::NOT_FOUND, format!("no session {id} on this node")))
}

#[utoipa::path(
    get, path = "/api/sessions/{id}", tag = "sessions", params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "The session; showing it writes no receipt", body = SessionView),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such session on this node", body = ErrorBody),
        (status = 429, description = "This person (or system) has opened as many different records in the last hour as this node allows; the ones opened this hour still open", body = ErrorBody),
    )
)]
pub(super) async fn show_session(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    PathArgs(id): PathArgs<String>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    let view = as_person(&shared, &who, move |n| Ok(n.show(id, now_ms())?)).await?;
    Ok(Json(view).into_response())
}

/// How to export a session.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ExportQuery {
    /// `fhir` (a FHIR R4 Bundle following UK Core, `docs/fhir.md`), `letter` (the advice as
    /// plain text), `json` (the session view) or `automerge` (the whole document).
    pub(super) format: String,
}

#[utoipa::path(
    get, path = "/api/sessions/{id}/export", tag = "sessions",
    params(("id" = String, Path, description = "Session id"), ExportQuery),
    responses(
        (status = 200, description = "The session in that format; the export is written to the audit chain. Photos held whole here are in a FHIR bundle, the rest as references; none whose consent was withdrawn",
            content(("application/fhir+json"), ("text/plain"), ("application/json"), ("application/octet-stream"))),
        (status = 400, description = "An unknown format", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The session is outside what this node may hold", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 429, description = "This person (or system) has opened as many different records in the last hour as this node allows; the ones opened this hour still open", body = ErrorBody),
    )
)]
pub(super) async fn export_session(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    PathArgs(id): PathArgs<String>,
    QueryArgs(q): QueryArgs<ExportQuery>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    let format = crate::node::ExportFormat::parse(&q.format).ok_or_else(|| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("unknown export format {:?}: use fhir, letter, json or automerge", q.format),
        )
    })?;
    let bytes = as_person(&shared, &who, move |n| Ok(n.export(id, format, now_ms())?)).await?;
    Ok(([(header::CONTENT_TYPE, format.content_type())], bytes).into_response())
}

/// A consent withdrawn.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Withdrawn {
    /// The consent's id.
    pub(super) consent: String,
    /// How many of the session's photos were taken under it (all now left out of exports).
    pub(super) photos: usize,
}

#[utoipa::path(
    post, path = "/api/sessions/{id}/photos/{hash}/withdraw-consent", tag = "photos",
    params(("id" = String, Path, description = "Session id"), ("hash" = String, Path, description = "The photo's BLAKE3 hash (or a unique prefix)")),
    responses(
        (status = 200, description = "The consent the photo was taken under is withdrawn, on this node's disk; every photo under it leaves exports", body = Withdrawn),
        (status = 400, description = "A prefix that names more than one photo of the session", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Not an edge or hub, or not a person", body = ErrorBody),
        (status = 404, description = "No such session here, or no such photo in it", body = ErrorBody),
    )
)]
pub(super) async fn withdraw_consent(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    PathArgs((id, hash)): PathArgs<(String, String)>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    person_only(&who, "withdrawing a consent")?;
    let (consent, photos) = as_person(&shared, &who, move |n| Ok(n.withdraw_consent(id, &hash, now_ms())?)).await?;
    announce(&shared, id);
    Ok(Json(Withdrawn { consent, photos }).into_response())
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ReadBody {
    /// Whether anything was newly marked read (false when it had all been read already).
    pub(super) new_receipts: bool,
}

#[utoipa::path(
    post, path = "/api/sessions/{id}/read", tag = "sessions", params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "This node's read receipts are written", body = ReadBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "An integrating system does not read", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 429, description = "A person past the limit of different records an hour, for a record they have not opened this hour: nothing is marked read", body = ErrorBody),
    )
)]
pub(super) async fn read_session(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    PathArgs(id): PathArgs<String>,
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
pub(super) struct MessageBody {
    /// The message.
    pub(super) text: String,
    /// The id of the message it answers.
    #[serde(default)]
    pub(super) reply_to: Option<String>,
    /// Any string unique to this send on the app: a retry with it returns the first message.
    #[serde(default)]
    pub(super) client_key: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Sent {
    pub(super) session: SessionId,
    /// The message's id.
    pub(super) message: String,
    /// How far it has travelled (`device` for a new message).
    pub(super) receipt: Option<sync_protocol::vocab::ReceiptLevel>,
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
pub(super) async fn send_message(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    PathArgs(id): PathArgs<String>,
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
pub(super) struct PhotoQuery {
    /// What kind of photograph (close-up, regional, dermoscopic, ...).
    pub(super) view: PhotoView,
    /// Where on the body ("left forearm").
    pub(super) body_site: String,
    /// How the patient consented.
    pub(super) consent: ConsentKind,
    /// What the consent covers (default: the record only).
    #[serde(default)]
    pub(super) consent_scope: Option<ConsentScope>,
}

/// A photo stored and attached.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct PhotoStored {
    pub(super) session: SessionId,
    /// BLAKE3 hash of the bytes (hex): the photo's name from now on.
    pub(super) hash: String,
    pub(super) size: u64,
    pub(super) mime: String,
    pub(super) width: u32,
    pub(super) height: u32,
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
        (status = 503, description = "The node is stopping", body = ErrorBody),
    )
)]
pub(super) async fn attach_photo(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    PathArgs(id): PathArgs<String>,
    QueryArgs(q): QueryArgs<PhotoQuery>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    // A few uploads at a time are held in memory (each up to 25 MB), every user together.
    let _upload = shared.api.uploads.acquire().await.map_err(|_| unavailable())?;
    let limit = crate::photo::MAX_PHOTO_BYTES + 4096;
    let body = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a photo is at most {} MB", crate::photo::MAX_PHOTO_BYTES >> 20),
        )
    })?;
    let photo = crate::photo::check_photo(std::path::Path::new("the uploaded photo"), Vec::from(body))
        .map_err(|e| bad(e.to_string()))?;
    // Its preview is made off the store thread, one at a time: decoding a large photo takes a
    // core for a fifth of a second, and the store thread serves sync and every page.
    let preview = {
        let _one = shared.api.previews.acquire().await.map_err(|_| unavailable())?;
        tokio::task::spawn_blocking(move || {
            let thumbnail = crate::photo::thumbnail(&photo);
            (photo, thumbnail)
        })
        .await
        .map_err(|_| unavailable())?
    };
    let (photo, thumbnail) = preview;
    let req = PhotoRequest {
        view: q.view,
        body_site: q.body_site,
        consent: q.consent,
        scope: q.consent_scope.unwrap_or(ConsentScope::RecordOnly),
    };
    let (width, height) = photo.dimensions;
    let info =
        as_person(&shared, &who, move |n| Ok(n.attach_photo_with_preview(id, &photo, thumbnail, &req, now_ms())?))
            .await?;
    announce(&shared, id);
    let body = PhotoStored { session: id, hash: info.hash, size: info.size, mime: info.mime, width, height };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Which form of the photo.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PhotoGet {
    /// The JPEG thumbnail instead of the photo (kept after the photo is handed on).
    #[serde(default)]
    pub(super) thumbnail: bool,
    /// The session it is shown in: the photo is given only if that session records it and its
    /// record came with the bytes (404 otherwise), and the look is audited under it.
    pub(super) session: String,
}

/// A photo's bytes as this node holds them (or its thumbnail), shown in a session that records
/// it: audited (`photo.view`), but no receipt.
#[utoipa::path(
    get, path = "/api/photos/{hash}", tag = "photos",
    params(("hash" = String, Path, description = "The photo's BLAKE3 hash (hex)"), PhotoGet),
    responses(
        (status = 200, description = "The photo's bytes (or its JPEG thumbnail); audited, writes no receipt", content(("image/jpeg"), ("image/png"))),
        (status = 400, description = "No session named", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "The session does not record the photo, or its record came without the bytes", body = ErrorBody),
        (status = 409, description = "Still being received", body = ErrorBody),
        (status = 410, description = "Handed to the hub and deleted here (the thumbnail remains), or withheld: the patient withdrew its consent", body = ErrorBody),
        (status = 429, description = "This person (or system) has opened as many different records in the last hour as this node allows; the ones opened this hour still open", body = ErrorBody),
    )
)]
pub(super) async fn get_photo(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    PathArgs(hash): PathArgs<String>,
    QueryArgs(q): QueryArgs<PhotoGet>,
) -> Result<Response, ApiError> {
    let session = session_id(&q.session)?;
    let (bytes, mime) = as_person(&shared, &who, move |n| {
        n.photo_in_session(session, &hash)?;
        let shown = if q.thumbnail {
            (n.thumbnail(&hash)?, "image/jpeg".to_string())
        } else {
            let mime = n.photo_info(&hash)?.mime;
            (n.open_photo(&hash, false, now_ms())?, mime)
        };
        n.audit_photo_view(session, now_ms())?;
        Ok(shown)
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
        (status = 429, description = "A person past the limit of different records an hour, for a record they have not opened this hour: nothing is marked read", body = ErrorBody),
    )
)]
pub(super) async fn read_photo(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    PathArgs(hash): PathArgs<String>,
) -> Result<StatusCode, ApiError> {
    person_only(&who, "opening a photo")?;
    let ids = as_person(&shared, &who, move |n| Ok(n.mark_photo_read(&hash, now_ms())?)).await?;
    for id in ids {
        announce(&shared, id);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct OutcomeBody {
    /// Whose outcome: the requester's on an edge, the responder's on a desk.
    pub(super) side: Side,
    /// The outcome.
    pub(super) outcome: Outcome,
    /// Any string unique to this act on the app: a retry with it writes nothing, even after
    /// another outcome was recorded.
    #[serde(default)]
    pub(super) client_key: Option<String>,
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
pub(super) async fn set_outcome(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    PathArgs(id): PathArgs<String>,
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

/// What to do with a session's status.
#[derive(Deserialize, utoipa::ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(super) enum StatusAct {
    /// The work is done.
    Close,
    /// Made by mistake (a duplicate), or no longer needed.
    Cancel,
    /// A closed or cancelled session, to go on with it.
    Reopen,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct StatusBody {
    /// `close`, `cancel` or `reopen`.
    pub(super) act: StatusAct,
    /// Makes a reopen safe to retry: the same key again (an answer lost on the way back)
    /// reopens nothing more and answers 204. (Closing and cancelling need none: one already
    /// so answers 204.)
    #[serde(default)]
    pub(super) client_key: Option<String>,
}

#[utoipa::path(
    post, path = "/api/sessions/{id}/status", tag = "sessions", params(("id" = String, Path, description = "Session id")),
    request_body = StatusBody,
    responses(
        (status = 204, description = "Done (or already so)"),
        (status = 400, description = "Not from its status: a cancelled session cannot be closed, an open one cannot be reopened", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "This node may not (an edge that did not make the session, or a desk cancelling)", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "A call is connected in the session (hang up first), or being put through for another node; or the client key was used to reopen another session", body = ErrorBody),
        (status = 429, description = "A person past the limit of different records an hour, for a record they have not opened this hour: nothing is changed", body = ErrorBody),
    )
)]
pub(super) async fn set_session_status(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    PathArgs(id): PathArgs<String>,
    JsonBody(b): JsonBody<StatusBody>,
) -> Result<StatusCode, ApiError> {
    let id = session_id(&id)?;
    as_person(&shared, &who, move |n| {
        let now = now_ms();
        // Past the person's hourly limit, a record they have not opened this hour is not acted
        // on: its answer (204 for one already so, 400 naming its status, 404) would tell what
        // opening it would have (429 alike for every id, held here or not).
        n.may_open(id, now)?;
        match b.act {
            StatusAct::Close => n.set_status(id, Status::Closed, now).map(drop),
            StatusAct::Cancel => n.set_status(id, Status::Cancelled, now).map(drop),
            StatusAct::Reopen => n.reopen_once(id, b.client_key.as_deref(), now).map(drop),
        }
        .map_err(ApiError::from)
    })
    .await?;
    announce(&shared, id);
    Ok(StatusCode::NO_CONTENT)
}

fn unavailable() -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping".into())
}
