//! The event stream (`GET /api/events`): what changed, for the apps.

use super::*;

/// What the event stream says.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum ApiEvent {
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
pub(super) type CallMark = (String, &'static str, Option<(i64, u32)>);

/// Event streams open: how many in all, and by person.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    open: usize,
    by_person: std::collections::HashMap<i64, usize>,
}

/// An open event stream's place among [`MAX_STREAMS`] and its person's
/// [`MAX_STREAMS_PER_PERSON`], given back when the stream ends.
pub(super) struct StreamSlot {
    streams: Arc<std::sync::Mutex<Streams>>,
    person: i64,
}

/// Why a stream was not opened.
pub(super) enum NoSlot {
    /// Every stream the node serves is open.
    Node,
    /// This person's are.
    Person,
}

impl StreamSlot {
    fn take(streams: &Arc<std::sync::Mutex<Streams>>, person: i64) -> Result<StreamSlot, NoSlot> {
        let Ok(mut s) = streams.lock() else { return Err(NoSlot::Node) };
        if s.open >= MAX_STREAMS {
            return Err(NoSlot::Node);
        }
        let mine = s.by_person.entry(person).or_default();
        if *mine >= MAX_STREAMS_PER_PERSON {
            return Err(NoSlot::Person);
        }
        *mine += 1;
        s.open += 1;
        Ok(StreamSlot { streams: streams.clone(), person })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut s) = self.streams.lock() {
            s.open = s.open.saturating_sub(1);
            if let Some(mine) = s.by_person.get_mut(&self.person) {
                *mine = mine.saturating_sub(1);
                if *mine == 0 {
                    s.by_person.remove(&self.person);
                }
            }
        }
    }
}

/// Whether a token still names a person who may act (not signed out, expired or disabled).
pub(super) fn token_holds(n: &mut Node, token: &str) -> bool {
    n.person_by_token(token, now_ms()).ok().flatten().is_some()
}

/// How often a quiet stream checks that its token still holds (signed out, expired, disabled).
pub(super) const RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

#[utoipa::path(
    get, path = "/api/events", tag = "events",
    params(("token" = Option<String>, Query, description = "The bearer token, for a browser's EventSource (which cannot set headers)")),
    responses(
        (status = 200, description = "Server-Sent Events; each event's name is its `type`", content_type = "text/event-stream", body = ApiEvent),
        (status = 401, body = ErrorBody),
        (status = 429, description = "This person has as many streams open as one may (a page per device or tab): close one", body = ErrorBody),
        (status = 503, description = "Too many streams are open", body = ErrorBody),
    )
)]
pub(super) async fn events(
    State(shared): State<Arc<Shared>>,
    Caller(who): Caller,
    parts: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let slot = StreamSlot::take(&shared.api.streams, who.id).map_err(|why| match why {
        NoSlot::Node => ApiError(StatusCode::SERVICE_UNAVAILABLE, "too many event streams are open".into()),
        NoSlot::Person => ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{} has {MAX_STREAMS_PER_PERSON} event streams open already: close a page first", who.name),
        ),
    })?;
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
                    Some(Ok(Notice::Docs { docs, .. } | Notice::Held { docs })) => {
                        let ids: Vec<SessionId> = docs.iter().map(|d| SessionId::from_bytes(*d)).collect();
                        let token = held.1.clone();
                        // The token is checked again with every change it would be told of.
                        let found = shared
                            .store
                            .call(move |n| {
                                let who = n.person_by_token(&token, now_ms()).ok().flatten()?;
                                let cards: Vec<_> = ids.iter().filter_map(|id| n.card(*id).ok().flatten()).collect();
                                // Each card shows its patient to the stream's person: recorded
                                // as a list is. A card that cannot be recorded is not shown:
                                // the stream ends, and the app reconnects and lists again.
                                n.acting_as(&who, |n| n.record_shown(cards.iter().map(|c| c.id), "events", now_ms()))
                                    .ok()?;
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
