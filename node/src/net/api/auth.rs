//! Who is calling: bearer tokens, signing in and out with lockout, the caller's status.

use super::*;

/// The person a request comes from: its bearer token checked, and their role one that works
/// on this node.
pub struct Caller(pub(super) Person);

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
pub(super) fn bearer(headers: &axum::http::HeaderMap, uri: &axum::http::Uri) -> Option<String> {
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
pub(super) struct Login {
    /// The user's name, as `outpost user add` set it.
    pub(super) name: String,
    /// Their PIN or passphrase (or an integrating system's token).
    pub(super) secret: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct LoggedIn {
    /// The bearer token for every further call.
    pub(super) token: String,
    /// When it stops working (12 hours: a shift).
    pub(super) expires_ms: i64,
    /// Who signed in.
    pub(super) user: Person,
}

/// What one daemon's API bounds: logins checked at once, failed sign-ins by name, and event
/// streams open (kept per daemon, in its shared state).
#[derive(Debug)]
pub(crate) struct Guards {
    /// Logins checked at once (each costs tens of milliseconds of one core, off the store thread).
    pub(super) logins: tokio::sync::Semaphore,
    /// Sign-ins by name (its BLAKE3 hash: a name sent may be 64 KiB long): failures in a row
    /// and guesses being judged. After 5 failures that name waits, 30 s doubling up to 15 min,
    /// and then has one guess judged at a time.
    pub(super) lockouts: std::sync::Mutex<std::collections::HashMap<[u8; 32], Attempts>>,
    /// Photo uploads held in memory at once (each up to 25 MB).
    pub(super) uploads: tokio::sync::Semaphore,
    /// Photo previews being made at once (each a core for up to a fifth of a second).
    pub(super) previews: tokio::sync::Semaphore,
    /// Event streams open, in all and by person.
    pub(super) streams: Arc<std::sync::Mutex<super::events::Streams>>,
    /// The last whole-chain audit check, when made, and its wall-clock time.
    pub(super) audit: std::sync::Mutex<Option<(std::time::Instant, crate::store::AuditCheck, i64)>>,
    /// Each person's turn at the store thread ([`super::errors::turn`]), by person.
    pub(super) turns: std::sync::Mutex<std::collections::HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            logins: tokio::sync::Semaphore::new(2),
            lockouts: Default::default(),
            uploads: tokio::sync::Semaphore::new(4),
            previews: tokio::sync::Semaphore::new(1),
            streams: Default::default(),
            audit: Default::default(),
            turns: Default::default(),
        }
    }
}

pub(super) const FREE_TRIES: u32 = 5;
/// Names with failures kept track of before the oldest are looked at for forgetting.
const TRACKED_NAMES: usize = 10_000;
/// How long a name's failures are remembered once it is no longer locked out, when
/// [`TRACKED_NAMES`] are tracked: forgetting sooner would let a flood of made-up names wipe a
/// real name's failures and lockout (guesses are judged about 90 a second, so an hour of them
/// is some 30 MB of this map).
const FAILURES_KEPT: std::time::Duration = std::time::Duration::from_secs(3600);

/// One name's sign-ins: wrong ones in a row, when it may try again, and guesses being judged.
#[derive(Debug, Clone, Copy)]
pub(super) struct Attempts {
    fails: u32,
    until: std::time::Instant,
    judging: u32,
    /// When it last failed.
    last: std::time::Instant,
}

/// A guess let through to be judged: it counts against the name's free tries from the moment
/// it is let through, so that guesses sent at once cannot all pass a check made before any
/// is judged. [`Guess::judged`] records the verdict; a guess dropped unjudged (its client went
/// away) frees its place and counts as nothing, its verdict never having been told.
pub(super) struct Guess<'a> {
    guards: &'a Guards,
    name: [u8; 32],
    done: bool,
}

/// Lets a guess for `name` be judged, or says how long the name must wait: while it is locked
/// out, and while the guesses already being judged would use up its free tries (after a
/// lockout, one at a time).
pub(super) fn admit_guess<'a>(guards: &'a Guards, name: &str) -> Result<Guess<'a>, std::time::Duration> {
    let now = std::time::Instant::now();
    let key = *blake3::hash(name.as_bytes()).as_bytes();
    let Ok(mut map) = guards.lockouts.lock() else { return Err(std::time::Duration::from_secs(1)) };
    if map.len() > TRACKED_NAMES {
        map.retain(|_, a| a.judging > 0 || a.until > now || now.saturating_duration_since(a.last) < FAILURES_KEPT);
    }
    let a = map.entry(key).or_insert(Attempts { fails: 0, until: now, judging: 0, last: now });
    if a.fails >= FREE_TRIES {
        let left = a.until.saturating_duration_since(now);
        if !left.is_zero() {
            return Err(left);
        }
        if a.judging > 0 {
            return Err(std::time::Duration::from_secs(1));
        }
    } else if a.fails + a.judging >= FREE_TRIES {
        return Err(std::time::Duration::from_secs(1));
    }
    a.judging += 1;
    Ok(Guess { guards, name: key, done: false })
}

impl Guess<'_> {
    /// Records the verdict: a right one clears the name's failures, a wrong one adds to them.
    pub(super) fn judged(mut self, ok: bool) {
        self.done = true;
        let Ok(mut map) = self.guards.lockouts.lock() else { return };
        let Some(a) = map.get_mut(&self.name) else { return };
        a.judging = a.judging.saturating_sub(1);
        if ok {
            a.fails = 0;
        } else {
            a.fails = a.fails.saturating_add(1);
            a.last = std::time::Instant::now();
            if a.fails >= FREE_TRIES {
                let secs = (30u64 << (a.fails - FREE_TRIES).min(5)).min(900);
                a.until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
            }
        }
        if a.fails == 0 && a.judging == 0 {
            map.remove(&self.name);
        }
    }
}

impl Drop for Guess<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Ok(mut map) = self.guards.lockouts.lock()
            && let Some(a) = map.get_mut(&self.name)
        {
            a.judging = a.judging.saturating_sub(1);
            if a.fails == 0 && a.judging == 0 {
                map.remove(&self.name);
            }
        }
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
pub(super) async fn login(
    State(shared): State<Arc<Shared>>,
    JsonBody(body): JsonBody<Login>,
) -> Result<Json<LoggedIn>, ApiError> {
    let guess = admit_guess(&shared.api, &body.name).map_err(|left| {
        ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many wrong attempts for this name; try again in {} s", left.as_secs().max(1)),
        )
    })?;
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
    guess.judged(good && person.is_some());
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
pub(super) async fn logout(
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
pub(super) async fn me(Caller(who): Caller) -> Json<Person> {
    Json(who)
}

#[utoipa::path(
    get, path = "/api/status", tag = "node",
    responses((status = 200, description = "The node's honest status", body = NodeStatus), (status = 401, body = ErrorBody))
)]
pub(super) async fn status(State(shared): State<Arc<Shared>>, Caller(_): Caller) -> Result<Response, ApiError> {
    // The chain is checked whole at most once a minute; in between the last check is given,
    // with its time (`audit_checked_ms`).
    let recent = shared.api.audit.lock().ok().and_then(|c| c.clone()).filter(|(at, ..)| at.elapsed() < AUDIT_RECHECK);
    let mut st = shared.store.call(move |n| n.status_with(recent.map(|(_, check, ms)| (check, ms)))).await??;
    let mut connected: Vec<String> = shared.links.lock().map(|l| l.keys().cloned().collect()).unwrap_or_default();
    connected.sort();
    st.connected_peers = Some(connected);
    // Who was flagged is for the deployer (`outpost status`, the metrics' count), not for every
    // colleague signed in, nor for a stolen token to learn that it has been noticed.
    st.unusual_access.clear();
    if let Ok(mut c) = shared.api.audit.lock()
        && c.as_ref().is_none_or(|(at, ..)| at.elapsed() >= AUDIT_RECHECK)
    {
        *c = Some((std::time::Instant::now(), st.audit.clone(), st.audit_checked_ms));
    }
    Ok(Json(st).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(guards: &Guards, name: &str) {
        admit_guess(guards, name).unwrap_or_else(|_| panic!("{name} may guess")).judged(false);
    }

    #[test]
    fn a_flood_of_made_up_names_does_not_wipe_a_real_names_failures() {
        let guards = Guards::default();
        for _ in 0..FREE_TRIES - 1 {
            fail(&guards, "Dr Ada Okafor");
        }
        // Made-up names, long ones, past what is tracked.
        for i in 0..=TRACKED_NAMES {
            fail(&guards, &format!("{}{i}", "x".repeat(1024)));
        }
        assert!(guards.lockouts.lock().unwrap().len() > TRACKED_NAMES, "recent failures are all kept");
        // One free try left, then the lockout.
        fail(&guards, "Dr Ada Okafor");
        let left = admit_guess(&guards, "Dr Ada Okafor").err().expect("locked out after five failures in all");
        assert!(left > std::time::Duration::from_secs(20), "{left:?}");
    }
}
