//! The local HTTP API over real HTTP against real `outpost run` daemons: a hub, an ambulance
//! and a consultant's desk, each with its own API and users.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::io::{BufReader, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::fleet::{Fleet, add_user, daemon, free_port, wait_until};
use common::{fails, json, ok};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(30);

fn d(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Asks to open the call audio WebSocket; returns the HTTP status and, when it opened, the
/// connection (held open as long as it is kept).
fn audio_upgrade(port: u16, session: &str, token: &str) -> (u16, Option<std::net::TcpStream>) {
    use std::io::BufRead;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET /api/calls/audio?session={session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap()).read_line(&mut line).unwrap();
    let status = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, (status == 101).then_some(s))
}

struct Api {
    base: String,
    agent: ureq::Agent,
}

impl Api {
    fn new(port: u16) -> Api {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        Api { base: format!("http://127.0.0.1:{port}"), agent }
    }

    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let auth = token.map(|t| format!("Bearer {t}"));
        let resp = match (method, body) {
            ("GET", _) => {
                let mut r = self.agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            (_, body) => {
                let mut r = self.agent.post(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                match body {
                    Some(b) => r.send_json(b),
                    None => r.send_empty(),
                }
            }
        };
        let mut resp = resp.unwrap();
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// POSTs raw bytes (a photo) and returns the status and JSON answer.
    fn post_bytes(&self, path: &str, token: &str, bytes: &[u8]) -> (u16, Value) {
        let mut resp = self
            .agent
            .post(&format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", "image/jpeg")
            .send(bytes)
            .unwrap();
        let status = resp.status().as_u16();
        (status, serde_json::from_str(&resp.body_mut().read_to_string().unwrap_or_default()).unwrap_or(Value::Null))
    }

    /// GETs raw bytes.
    fn get_bytes(&self, path: &str, token: &str) -> (u16, Vec<u8>) {
        let mut resp = self
            .agent
            .get(&format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.body_mut().with_config().limit(64 << 20).read_to_vec().unwrap_or_default())
    }

    fn login(&self, name: &str, secret: &str) -> String {
        let (status, body) = self.call("POST", "/api/login", None, Some(json!({ "name": name, "secret": secret })));
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_string()
    }

    fn wait_up(&self) {
        wait_until(LIMIT, "the API", || self.agent.get(&format!("{}/api/me", self.base)).call().is_ok());
    }

    /// Opens the event stream; events arrive on the receiver as (name, data).
    fn events(&self, token: &str) -> mpsc::Receiver<(String, Value)> {
        let (tx, rx) = mpsc::channel();
        let resp = self
            .agent
            .get(&format!("{}/api/events", self.base))
            .header("Authorization", format!("Bearer {token}"))
            .config()
            .timeout_global(None)
            .build()
            .call()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let reader = BufReader::new(resp.into_body().into_reader());
        std::thread::spawn(move || outpost_node::net::read_events(reader, |name, data| tx.send((name, data)).is_ok()));
        rx
    }
}

impl Api {
    /// Asks for an event stream expected to be refused: its status and error text.
    fn events_refused(&self, token: &str) -> (u16, String) {
        let resp = self
            .agent
            .get(&format!("{}/api/events", self.base))
            .header("Authorization", format!("Bearer {token}"))
            .call();
        let mut resp = resp.unwrap();
        (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap_or_default())
    }
}

/// Waits for an event that satisfies `check`, skipping others.
fn expect_event(rx: &mpsc::Receiver<(String, Value)>, what: &str, check: impl Fn(&str, &Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let left = LIMIT.checked_sub(start.elapsed()).unwrap_or_else(|| panic!("no event: {what}"));
        let (name, data) = rx.recv_timeout(left).unwrap_or_else(|_| panic!("no event: {what}"));
        if check(&name, &data) {
            return data;
        }
    }
}

#[test]
fn a_session_goes_from_the_ambulance_app_to_the_desk_app_and_the_reply_and_receipts_come_back() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let amb = fleet.node("amb-07", "edge", &[]);
    let desk = fleet.node("desk-cardio-1", "desk", &["--service-line", "cardiology"]);
    add_user(&amb, "Sam Patel", "paramedic", "HCPC-PA123456", "amb-pin-4821");
    add_user(&desk, "Dr Ada Okafor", "consultant", "GMC-7012345", "desk-pass-9930");
    // A consultant does not work on an ambulance's tablet.
    let err = fails(&["user", "add", "--dir", d(&amb), "--name", "X", "--role", "consultant", "--token"], 2);
    assert!(err.contains("does not work on a edge node") || err.contains("does not work on an edge node"), "{err}");

    let quic = format!("127.0.0.1:{}", free_port());
    let (amb_port, desk_port) = (tcp_port(), tcp_port());
    let _hub = daemon(&hub, &["--listen", &quic], &[]);
    let _amb = daemon(&amb, &["--peer", &quic, "--api", &format!("127.0.0.1:{amb_port}")], &[]);
    let _desk = daemon(&desk, &["--peer", &quic, "--api", &format!("127.0.0.1:{desk_port}")], &[]);
    let (amb_api, desk_api) = (Api::new(amb_port), Api::new(desk_port));
    amb_api.wait_up();
    desk_api.wait_up();

    // No token, a wrong token, a wrong PIN: 401, and nothing is written.
    let new_session = json!({
        "service_line": "cardiology", "care_setting": "ambulance_on_scene", "priority": "urgent",
        "summary": "Chest pain 40 min, ST elevation V2-V4?", "nhs_number": "9434765919",
        "call_sign": "AMB-07", "client_key": "b7e0c1d2-first-tap"
    });
    assert_eq!(amb_api.call("POST", "/api/sessions", None, Some(new_session.clone())).0, 401);
    assert_eq!(amb_api.call("POST", "/api/sessions", Some("opt_nonsense"), Some(new_session.clone())).0, 401);
    assert_eq!(amb_api.call("GET", "/api/sessions", None, None).0, 401);
    let (status, _) = amb_api.call("POST", "/api/login", None, Some(json!({ "name": "Sam Patel", "secret": "wrong" })));
    assert_eq!(status, 401);
    let listed = json(&ok(&["session", "list", "--dir", d(&amb), "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 0, "nothing written: {listed}");

    let sam = amb_api.login("Sam Patel", "amb-pin-4821");
    let ada = desk_api.login("Dr Ada Okafor", "desk-pass-9930");
    // A consultant may not open a session (403), on the desk's own API; nothing is written.
    let (status, body) = desk_api.call("POST", "/api/sessions", Some(&ada), Some(new_session.clone()));
    assert_eq!(status, 403, "{body}");
    assert_eq!(desk_api.call("GET", "/api/sessions", Some(&ada), None).1.as_array().unwrap().len(), 0);

    let desk_events = desk_api.events(&ada);
    expect_event(&desk_events, "hello", |n, _| n == "hello");
    let amb_events = amb_api.events(&sam);
    // One person holds at most four event streams (a page on each of a few devices or tabs):
    // one token cannot take every stream the node serves.
    let more: Vec<_> = (0..3).map(|_| desk_api.events(&ada)).collect();
    let (status, refused) = desk_api.events_refused(&ada);
    assert_eq!(status, 429, "{refused}");
    assert!(refused.contains("Dr Ada Okafor") && refused.contains("close a page"), "{refused}");
    drop(more);

    // The paramedic opens the session; a double tap makes one.
    let (status, first) = amb_api.call("POST", "/api/sessions", Some(&sam), Some(new_session.clone()));
    assert_eq!(status, 201, "{first}");
    let id = first["id"].as_str().unwrap().to_string();
    let (_, again) = amb_api.call("POST", "/api/sessions", Some(&sam), Some(new_session.clone()));
    assert_eq!(again["id"], id.as_str());
    assert_eq!(amb_api.call("GET", "/api/sessions", Some(&sam), None).1.as_array().unwrap().len(), 1);
    let (status, sent) = amb_api.call(
        "POST",
        &format!("/api/sessions/{id}/messages"),
        Some(&sam),
        Some(json!({ "text": "BP 150/90, SpO2 97%, pain 7/10", "client_key": "m-1" })),
    );
    assert_eq!((status, sent["receipt"].as_str()), (201, Some("device")), "{sent}");

    // A photo from the tablet's camera, with what it shows and the consent.
    let photo = outpost_node::photo::synthetic_jpeg(640, 480, 3).unwrap().bytes;
    let (status, attached) = amb_api.post_bytes(
        &format!("/api/sessions/{id}/photos?view=close-up&body_site=left%20forearm&consent=verbal"),
        &sam,
        &photo,
    );
    assert_eq!(status, 201, "{attached}");
    let hash = attached["hash"].as_str().unwrap().to_string();
    assert_eq!(hash, blake3::hash(&photo).to_hex().as_str());
    let (status, err) = amb_api.post_bytes(
        &format!("/api/sessions/{id}/photos?view=close-up&body_site=x&consent=verbal"),
        &sam,
        b"not a photo",
    );
    assert_eq!(status, 400, "{err}");

    // The desk's app hears of it without polling, message, photo and all.
    expect_event(&desk_events, "the session at the desk", |n, v| {
        n == "session" && v["card"]["id"] == id.as_str() && v["card"]["messages"] == 1 && v["card"]["photos"] == 1
    });
    wait_until(LIMIT, "the photo at the desk", || {
        desk_api.get_bytes(&format!("/api/photos/{hash}?session={id}"), &ada) == (200, photo.clone())
    });
    // A photo is shown under a session, never by its hash alone.
    assert_eq!(desk_api.get_bytes(&format!("/api/photos/{hash}"), &ada).0, 400);
    // Named with the session it is shown in (as the app asks), the photo is given for a session
    // that records it, and for no other.
    assert_eq!(desk_api.get_bytes(&format!("/api/photos/{hash}?session={id}"), &ada), (200, photo.clone()));
    let elsewhere = sync_protocol::SessionId::from_parts(1_790_000_000_000, 4242).to_string();
    assert_eq!(desk_api.get_bytes(&format!("/api/photos/{hash}?session={elsewhere}"), &ada).0, 404);
    assert_eq!(desk_api.get_bytes(&format!("/api/photos/{hash}?session=not-a-session"), &ada).0, 404);
    assert_eq!(desk_api.call("POST", &format!("/api/photos/{hash}/read"), Some(&ada), None).0, 204);
    let (status, view) = desk_api.call("GET", &format!("/api/sessions/{id}"), Some(&ada), None);
    assert_eq!(status, 200);
    assert_eq!(view["messages"][0]["text"], "BP 150/90, SpO2 97%, pain 7/10");
    assert_eq!(view["requester"]["registration"], "HCPC-PA123456", "the paramedic's registration travels: {view}");
    let by = &view["messages"][0]["clinician"];
    assert_eq!((by["name"].as_str(), by["role"].as_str()), (Some("Sam Patel"), Some("paramedic")), "{view}");
    // The tablet's status says it is connected to its hub now.
    let st = amb_api.call("GET", "/api/status", Some(&sam), None).1;
    assert_eq!(st["connected_peers"], json!(["hub-qhm"]), "{st}");
    // The photo names who took it, as well as the tablet.
    let by = &view["media"][0]["clinician"];
    assert_eq!((by["name"].as_str(), by["registration"].as_str()), (Some("Sam Patel"), Some("HCPC-PA123456")));
    assert_eq!(view["media"][0]["added_by"], "amb-07");
    let (status, _) = desk_api.call("POST", &format!("/api/sessions/{id}/read"), Some(&ada), None);
    assert_eq!(status, 200);
    let msg_id = view["messages"][0]["id"].as_str().unwrap().to_string();
    let (status, reply) = desk_api.call(
        "POST",
        &format!("/api/sessions/{id}/messages"),
        Some(&ada),
        Some(json!({ "text": "Activate the PPCI pathway; convey to the heart attack centre", "reply_to": msg_id })),
    );
    assert_eq!(status, 201, "{reply}");

    // The ambulance's app sees the reply arrive, and the consultant's read receipt.
    expect_event(&amb_events, "the reply on the tablet", |n, v| {
        n == "session" && v["card"]["id"] == id.as_str() && v["card"]["messages"] == 2
    });
    wait_until(LIMIT, "the consultant's read receipt at the ambulance", || {
        amb_api.call("GET", &format!("/api/sessions/{id}"), Some(&sam), None).1["messages"][0]["receipt"] == "read"
    });
    // The advice names the consultant who gave it, in the session itself (checked by the hub's
    // and the ambulance's write rules on the way).
    let view = amb_api.call("GET", &format!("/api/sessions/{id}"), Some(&sam), None).1;
    let by = &view["messages"][1]["clinician"];
    assert_eq!(
        (by["name"].as_str(), by["registration"].as_str()),
        (Some("Dr Ada Okafor"), Some("GMC-7012345")),
        "{view}"
    );
    // The reply has reached the crew's tablet: the desk's stream says so before anyone reads it.
    expect_event(&desk_events, "the reply at the requester, seen at the desk", |n, v| {
        let card = &v["card"];
        n == "session"
            && card["id"] == id.as_str()
            && card["messages"] == 2
            && card["last_message_receipt"] == "requester"
    });
    // The crew reads the advice; the desk's stream tells it, and the reply shows read.
    let (status, _) = amb_api.call("POST", &format!("/api/sessions/{id}/read"), Some(&sam), None);
    assert_eq!(status, 200);
    expect_event(&desk_events, "the crew's read receipt at the desk", |n, v| {
        let card = &v["card"];
        n == "session" && card["id"] == id.as_str() && card["messages"] == 2 && card["last_message_receipt"] == "read"
    });
    let (_, view) = desk_api.call("GET", &format!("/api/sessions/{id}"), Some(&ada), None);
    assert_eq!(view["messages"][1]["receipt"], "read", "{view}");

    // The consultant's read of the photo reached the tablet; the crew records its outcome.
    wait_until(LIMIT, "the photo read at the ambulance", || {
        amb_api.call("GET", &format!("/api/sessions/{id}"), Some(&sam), None).1["media"][0]["receipt"] == "read"
    });
    let outcome = json!({ "side": "requester", "outcome": "conveyed_ed" });
    let (status, body) = amb_api.call("POST", &format!("/api/sessions/{id}/outcome"), Some(&sam), Some(outcome));
    assert_eq!(status, 204, "{body}");
    // The desk's card says whose outcome is in: the consultant's is still owed.
    wait_until(LIMIT, "the crew's outcome on the desk's card", || {
        let cards = desk_api.call("GET", "/api/sessions", Some(&ada), None).1;
        cards.as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["id"] == id.as_str() && c["status"] == "outcome_recorded" && c["outcomes"] == json!(["requester"])
            })
        })
    });
    // The consultant records theirs; each side's outcome names its clinician on the other side.
    let outcome = json!({ "side": "responder", "outcome": "advice_only" });
    let (status, body) = desk_api.call("POST", &format!("/api/sessions/{id}/outcome"), Some(&ada), Some(outcome));
    assert_eq!(status, 204, "{body}");
    // A desk closes a session, but does not cancel the crew's (the side that asked does).
    let cancel = json!({ "act": "cancel" });
    let (status, body) = desk_api.call("POST", &format!("/api/sessions/{id}/status"), Some(&ada), Some(cancel));
    assert_eq!(status, 403, "{body}");
    wait_until(LIMIT, "the consultant's outcome at the ambulance", || {
        let view = amb_api.call("GET", &format!("/api/sessions/{id}"), Some(&sam), None).1;
        view["outcome"]["responder"]["clinician"]["name"] == "Dr Ada Okafor"
    });
    wait_until(LIMIT, "the crew's outcome at the desk", || {
        let view = desk_api.call("GET", &format!("/api/sessions/{id}"), Some(&ada), None).1;
        view["outcome"]["requester"]["clinician"]["registration"] == "HCPC-PA123456"
    });

    // The record leaves for other systems: from the desk's API a FHIR bundle naming the
    // consultant by GMC number, with the photo's bytes; a letter for people; an unknown format
    // is a clear 400.
    let export = |api: &Api, token: &str, format: &str| {
        let (status, bytes) = api.get_bytes(&format!("/api/sessions/{id}/export?format={format}"), token);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
        bytes
    };
    let bundle: Value = serde_json::from_slice(&export(&desk_api, &ada, "fhir")).unwrap();
    assert_eq!(bundle["resourceType"], "Bundle");
    let text = bundle.to_string();
    assert!(text.contains("https://fhir.hl7.org.uk/Id/gmc-number") && text.contains("\"7012345\""), "{text}");
    let media = |b: &Value| {
        b["entry"].as_array().unwrap().iter().find(|e| e["resource"]["resourceType"] == "Media").unwrap()["resource"]
            ["content"]
            .clone()
    };
    assert!(media(&bundle)["data"].is_string(), "the desk holds the photo");
    let letter = String::from_utf8(export(&desk_api, &ada, "letter")).unwrap();
    assert!(letter.contains("ADVICE GIVEN") && letter.contains("Dr Ada Okafor (consultant, GMC-7012345)"), "{letter}");
    let (status, body) = desk_api.call("GET", &format!("/api/sessions/{id}/export?format=pdf"), Some(&ada), None);
    assert_eq!(status, 400, "{body}");
    // The patient withdraws consent for the photo, on the crew's app (a desk may not): the image
    // leaves every export, the desk's too once the withdrawal reaches it.
    let withdraw = format!("/api/sessions/{id}/photos/{}/withdraw-consent", &hash[..12]);
    assert_eq!(desk_api.call("POST", &withdraw, Some(&ada), None).0, 403);
    let unknown = format!("/api/sessions/{id}/photos/00000000000000000000/withdraw-consent");
    let (status, body) = amb_api.call("POST", &unknown, Some(&sam), None);
    assert_eq!(status, 404, "a photo the session does not have: {body}");
    let (status, body) = amb_api.call("POST", &withdraw, Some(&sam), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["photos"], 1);
    wait_until(LIMIT, "the withdrawal at the desk", || {
        let bundle: Value = serde_json::from_slice(&export(&desk_api, &ada, "fhir")).unwrap();
        media(&bundle).get("data").is_none()
    });
    // Nor is it shown any more, whole or as a thumbnail, on either side.
    assert_eq!(desk_api.get_bytes(&format!("/api/photos/{hash}?session={id}"), &ada).0, 410);
    assert_eq!(amb_api.get_bytes(&format!("/api/photos/{hash}?session={id}&thumbnail=true"), &sam).0, 410);

    // The audit chain names the person, not only the node, and is intact.
    let audit = ok(&["audit", "show", "--dir", d(&amb), "--json"]);
    assert!(audit.contains("Sam Patel") && audit.contains("HCPC-PA123456"), "{audit}");
    // Each look at a photo is in the desk's chain, naming the consultant.
    let desk_audit = json(&ok(&["audit", "show", "--dir", d(&desk), "--limit", "1000", "--json"]));
    let looked = desk_audit.as_array().unwrap().iter().filter(|e| e["action"] == "photo.view").collect::<Vec<_>>();
    assert!(!looked.is_empty(), "{desk_audit}");
    assert!(looked.iter().all(|e| e.to_string().contains("Dr Ada Okafor")), "{looked:?}");
    let verify = json(&ok(&["audit", "verify", "--dir", d(&amb), "--json"]));
    assert!(verify["broken_at"].is_null(), "{verify}");

    // Signing out ends the token.
    assert_eq!(amb_api.call("POST", "/api/logout", Some(&sam), None).0, 204);
    assert_eq!(amb_api.call("GET", "/api/me", Some(&sam), None).0, 401);
    // Adding the user, each sign-in and the sign-out are in the chain, naming the person; a
    // wrong PIN is not (a stranger must not be able to grow the chain at will).
    let (status, _) =
        amb_api.call("POST", "/api/login", None, Some(json!({ "name": "Sam Patel", "secret": "nope-0000" })));
    assert_eq!(status, 401);
    let entries = json(&ok(&["audit", "show", "--dir", d(&amb), "--limit", "1000", "--json"]));
    let acts: Vec<(String, String)> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"].as_str().is_some_and(|a| a.starts_with("user.") || a.starts_with("api.")))
        .map(|e| {
            let who = e["detail"]["by"]["name"].as_str().or(e["detail"]["user"]["name"].as_str()).unwrap_or("");
            (e["action"].as_str().unwrap().to_string(), who.to_string())
        })
        .collect();
    let act = |a: &str| (a.to_string(), "Sam Patel".to_string());
    assert_eq!(acts.first(), Some(&act("user.add")), "{acts:?}");
    assert!(acts.contains(&act("api.sign_in")), "{acts:?}");
    assert_eq!(acts.last(), Some(&act("api.sign_out")), "{acts:?}");
    assert!(json(&ok(&["audit", "verify", "--dir", d(&amb), "--json"]))["broken_at"].is_null());
}

#[test]
fn a_create_whose_response_was_lost_and_is_sent_again_makes_one_session() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let surgery = fleet.node("surgery-12", "edge", &[]);
    let out = json(&ok(&[
        "user",
        "add",
        "--dir",
        d(&surgery),
        "--name",
        "EMIS bridge",
        "--role",
        "system",
        "--token",
        "--json",
    ]));
    let token = out["token"].as_str().unwrap().to_string();
    let port = tcp_port();
    let _node = daemon(&surgery, &["--api", &format!("127.0.0.1:{port}")], &[]);
    let api = Api::new(port);
    api.wait_up();
    assert_eq!(api.call("GET", "/api/events", None, None).0, 401, "the event stream needs a token too");

    let body = json!({
        "service_line": "gastroenterology", "care_setting": "gp_elective",
        "summary": "Iron deficiency anaemia, 2WW?", "client_key": "emis-7781-a"
    })
    .to_string();
    // The request goes out whole and is done; the link drops before the answer is read.
    let mut first = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        first,
        "POST /api/sessions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    first.flush().unwrap();
    let list = || api.call("GET", "/api/sessions", Some(&token), None).1.as_array().unwrap().len();
    wait_until(LIMIT, "the first request written", || list() == 1);
    drop(first);
    // The app, having heard nothing, sends it again with the same key.
    let (status, again) = api.call("POST", "/api/sessions", Some(&token), Some(serde_json::from_str(&body).unwrap()));
    assert_eq!(status, 201, "{again}");
    assert_eq!(list(), 1, "one session, however many times it was sent");
    let cards = api.call("GET", "/api/sessions", Some(&token), None).1;
    assert_eq!(cards[0]["id"], again["id"]);
    // An NHS number that fails its check digit, or a trace status without a number: 400, nothing written.
    let bad_nhs = json!({ "service_line": "cardiology", "care_setting": "gp_elective", "summary": "x", "nhs_number": "9434765918" });
    let (status, err) = api.call("POST", "/api/sessions", Some(&token), Some(bad_nhs));
    assert_eq!(status, 400, "{err}");
    assert!(err["error"].as_str().unwrap().contains("nhs_number"), "{err}");
    let no_number = json!({ "service_line": "cardiology", "care_setting": "gp_elective", "summary": "x", "nhs_verification": "01" });
    assert_eq!(api.call("POST", "/api/sessions", Some(&token), Some(no_number)).0, 400);
    assert_eq!(list(), 1);
    // The same key for another request is a conflict, and writes nothing.
    let other = json!({ "service_line": "cardiology", "care_setting": "gp_elective", "summary": "Palpitations", "client_key": "emis-7781-a" });
    let (status, err) = api.call("POST", "/api/sessions", Some(&token), Some(other));
    assert_eq!(status, 409, "{err}");
    assert_eq!(list(), 1);

    // An outcome sent twice with its key is recorded once: a late retry of the first does not
    // undo a second recorded since; the same outcome again writes nothing new.
    let id = again["id"].as_str().unwrap();
    let outcome = |value: &str, key: &str| {
        let body = json!({ "side": "requester", "outcome": value, "client_key": key });
        api.call("POST", &format!("/api/sessions/{id}/outcome"), Some(&token), Some(body)).0
    };
    let outcomes_written = || {
        let entries = json(&ok(&["audit", "show", "--dir", d(&surgery), "--limit", "1000", "--json"]));
        entries.as_array().unwrap().iter().filter(|e| e["action"] == "outcome.set").count()
    };
    assert_eq!(outcome("referral_avoided", "outcome-1"), 204);
    assert_eq!(outcome("referral_made", "outcome-2"), 204);
    assert_eq!(outcome("referral_avoided", "outcome-1"), 204);
    let view = api.call("GET", &format!("/api/sessions/{id}"), Some(&token), None).1;
    assert_eq!(view["outcome"]["requester"]["value"], "referral_made", "{view}");
    assert_eq!(outcome("referral_made", "outcome-3"), 204);
    assert_eq!(outcomes_written(), 2, "two outcomes recorded, the repeats wrote nothing");
}

#[test]
fn a_desk_app_hears_its_call_ring_from_the_event_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let amb = fleet.node("amb-07", "edge", &[]);
    let desk = fleet.node("desk-cardio-1", "desk", &["--service-line", "cardiology"]);
    ok(&["rota", "set", "--dir", d(&hub), "--line", "cardiology", "--desk", "desk-cardio-1", "--ring-secs", "30"]);
    add_user(&desk, "Dr Ada Okafor", "consultant", "GMC-7012345", "desk-pass-9930");
    let quic = format!("127.0.0.1:{}", free_port());
    let port = tcp_port();
    let _hub = daemon(&hub, &["--listen", &quic], &[]);
    add_user(&amb, "Sam Patel", "paramedic", "HCPC-PA123456", "amb-pin-4821");
    let amb_port = tcp_port();
    let _amb = daemon(&amb, &["--peer", &quic, "--api", &format!("127.0.0.1:{amb_port}")], &[]);
    let _desk = daemon(&desk, &["--peer", &quic, "--api", &format!("127.0.0.1:{port}")], &[]);
    let api = Api::new(port);
    api.wait_up();
    let ada = api.login("Dr Ada Okafor", "desk-pass-9930");
    let events = api.events(&ada);

    let id = ok(&[
        "session",
        "new",
        "--dir",
        d(&amb),
        "--service-line",
        "cardiology",
        "--care-setting",
        "ambulance_on_scene",
        "--priority",
        "urgent",
        "--summary",
        "Broad complex tachycardia, BP 85/50",
    ])
    .trim()
    .to_string();
    ok(&["message", "send", "--dir", d(&amb), &id, "Rate 180, conscious, clammy"]);
    let amb_api = Api::new(amb_port);
    amb_api.wait_up();
    let sam = amb_api.login("Sam Patel", "amb-pin-4821");
    // The desk cannot answer what does not ring; a consultant's token is no use on the tablet.
    assert_eq!(amb_api.call("POST", &format!("/api/sessions/{id}/escalate"), Some(&ada), None).0, 401);
    wait_until(LIMIT, "the case at the desk", || {
        api.call("GET", &format!("/api/sessions/{id}"), Some(&ada), None).0 == 200
    });
    assert_eq!(api.call("POST", &format!("/api/sessions/{id}/answer"), Some(&ada), None).0, 409);
    // No call is live here yet: the page's voice socket has nothing to carry.
    assert_eq!(audio_upgrade(port, &id, &ada).0, 409);
    let (status, asked) = amb_api.call("POST", &format!("/api/sessions/{id}/escalate"), Some(&sam), None);
    assert_eq!(status, 202, "{asked}");
    // A second crew member asking again joins the same call, but its voice stays with the
    // first to ask.
    add_user(&amb, "Kim Lee", "paramedic", "HCPC-PA654321", "amb-pin-7350");
    let kim = amb_api.login("Kim Lee", "amb-pin-7350");
    let (status, again) = amb_api.call("POST", &format!("/api/sessions/{id}/escalate"), Some(&kim), None);
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["call"], asked["call"], "one call per session at a time");

    let ring = expect_event(&events, "the call ringing at this desk", |n, v| {
        n == "call" && v["call"]["session"] == id.as_str() && v["call"]["ringing_here"] == true
    });
    assert_eq!(ring["call"]["state"], "ringing");
    assert_eq!(ring["call"]["desk"], "desk-cardio-1");
    let rung_at = ring["call"]["rung"][0].as_i64().unwrap();
    eprintln!("ring to event: {} ms", outpost_node::node::now_ms() - rung_at);
    assert_eq!(ring["call"]["call"], asked["call"]);
    // The case is already on the desk when it rings.
    let (status, view) = api.call("GET", &format!("/api/sessions/{id}"), Some(&ada), None);
    assert_eq!(status, 200);
    assert_eq!(view["messages"][0]["text"], "Rate 180, conscious, clammy");
    // The consultant answers from the app; both apps hear the call connect.
    let (status, answered) = api.call("POST", &format!("/api/sessions/{id}/answer"), Some(&ada), None);
    assert_eq!(status, 200, "{answered}");
    expect_event(&events, "the call connected at the desk", |n, v| {
        n == "call" && v["call"]["session"] == id.as_str() && v["call"]["state"] == "connected"
    });
    wait_until(LIMIT, "the call connected at the ambulance", || {
        amb_api.call("GET", &format!("/api/sessions/{id}/calls"), Some(&sam), None).1[0]["state"] == "connected"
    });
    let mut crew_page = None;
    wait_until(LIMIT, "the ambulance's audio to take a page", || {
        let (status, stream) = audio_upgrade(amb_port, &id, &sam);
        crew_page = stream;
        status == 101
    });
    assert_eq!(audio_upgrade(amb_port, &id, &kim).0, 403, "the voice is the first asker's");
    drop(crew_page);
    // An integrating system does not hang up a person's call.
    let out =
        json(&ok(&["user", "add", "--dir", d(&desk), "--name", "EPR link", "--role", "system", "--token", "--json"]));
    let system = out["token"].as_str().unwrap().to_string();
    assert_eq!(api.call("POST", &format!("/api/sessions/{id}/hangup"), Some(&system), None).0, 403);
    // The call's voice is the answering consultant's, one page at a time: another consultant
    // of the same desk is refused, and so is a second page.
    let mut page = None;
    wait_until(LIMIT, "the desk's audio to take a page", || {
        let (status, stream) = audio_upgrade(port, &id, &ada);
        page = stream;
        status == 101
    });
    add_user(&desk, "Dr Ben Shah", "consultant", "GMC-7000001", "desk-pass-5512");
    let ben = api.login("Dr Ben Shah", "desk-pass-5512");
    assert_eq!(audio_upgrade(port, &id, &ben).0, 403);
    assert_eq!(
        api.call("POST", &format!("/api/sessions/{id}/hangup"), Some(&ben), None).0,
        403,
        "another consultant signed in here does not end Dr Okafor's call"
    );
    assert_eq!(amb_api.call("POST", &format!("/api/sessions/{id}/hangup"), Some(&kim), None).0, 403, "nor Kim Sam's");
    assert_eq!(audio_upgrade(port, &id, &ada).0, 409, "a second page");
    assert_eq!(audio_upgrade(port, &id, &system).0, 403, "an integrating system");
    drop(page);
    // The consultant hangs up from the app: the desk's stream and the ambulance both see it end.
    wait_until(LIMIT, "the desk's audio joined", || {
        api.call("POST", &format!("/api/sessions/{id}/hangup"), Some(&ada), None).0 == 202
    });
    let ended = expect_event(&events, "the call ended at the desk", |n, v| {
        n == "call" && v["call"]["session"] == id.as_str() && v["call"]["state"] == "ended"
    });
    assert_eq!(ended["call"]["desk"], "desk-cardio-1");
    wait_until(LIMIT, "the call ended at the ambulance", || {
        amb_api.call("GET", &format!("/api/sessions/{id}/calls"), Some(&sam), None).1[0]["state"] == "ended"
    });
    // Nothing is live any more: a second hang-up has nothing to end; and who hung up is chained.
    assert_eq!(api.call("POST", &format!("/api/sessions/{id}/hangup"), Some(&ada), None).0, 409);
    let audit = json(&ok(&["audit", "show", "--dir", d(&desk), "--limit", "1000", "--json"]));
    let hung = audit.as_array().unwrap().iter().find(|e| e["action"] == "call.hangup").cloned();
    assert_eq!(hung.map(|e| e["detail"]["by"]["name"].clone()), Some(json!("Dr Ada Okafor")), "{audit}");
    // Both parties' leg records, with their figures, are in the session.
    wait_until(LIMIT, "both legs recorded at the ambulance", || {
        let view = amb_api.call("GET", &format!("/api/sessions/{id}"), Some(&sam), None).1;
        view["calls"]
            .as_array()
            .is_some_and(|c| c.iter().filter(|e| e["kind"] == "leg" && e["end"].is_string()).count() == 2)
    });

    // A session on a line the ICB's directory does not list ends in a callback: the crew's
    // app lists it among the callbacks owed, with the number to ring, until it is settled.
    let new = json!({
        "service_line": "haematology", "care_setting": "ambulance_on_scene", "priority": "urgent",
        "summary": "Known sickle cell, chest pain", "callback": "07700 900123", "call_sign": "RRV-12",
        "client_key": "haem-1",
    });
    let (status, created) = amb_api.call("POST", "/api/sessions", Some(&sam), Some(new));
    assert_eq!(status, 201, "{created}");
    let haem = created["id"].as_str().unwrap().to_string();
    assert_eq!(amb_api.call("GET", "/api/callbacks", Some(&sam), None).1, json!([]));
    assert_eq!(amb_api.call("POST", &format!("/api/sessions/{haem}/escalate"), Some(&sam), None).0, 202);
    wait_until(LIMIT, "the callback arranged", || {
        amb_api.call("GET", &format!("/api/sessions/{haem}/calls"), Some(&sam), None).1[0]["state"] == "callback"
    });
    let owed = amb_api.call("GET", "/api/callbacks", Some(&sam), None).1;
    assert_eq!(owed.as_array().unwrap().len(), 1, "{owed}");
    assert_eq!(owed[0]["session"], haem.as_str());
    assert_eq!(owed[0]["callback_number"], "07700 900123");
    assert_eq!(owed[0]["call_sign"], "RRV-12");
    assert!(!owed[0]["reason"].as_str().unwrap().is_empty(), "{owed}");
    // The desk's list answers too (the cardiology desk holds no haematology session).
    assert_eq!(api.call("GET", "/api/callbacks", Some(&ada), None).1, json!([]));
    // The crew records its own outcome (conveyed): the consultant's call back is still owed,
    // and only the consultant's outcome settles it.
    let outcome = json!({ "side": "requester", "outcome": "conveyed_ed" });
    let (status, body) = amb_api.call("POST", &format!("/api/sessions/{haem}/outcome"), Some(&sam), Some(outcome));
    assert_eq!(status, 204, "{body}");
    let owed = amb_api.call("GET", "/api/callbacks", Some(&sam), None).1;
    assert_eq!(owed.as_array().map(|o| o.iter().map(|c| c["session"].clone()).collect()), Some(vec![json!(haem)]));
    // Closed, it is owed no more.
    ok(&["session", "set-status", "--dir", d(&amb), &haem, "closed"]);
    assert_eq!(amb_api.call("GET", "/api/callbacks", Some(&sam), None).1, json!([]));
}

#[test]
fn a_session_is_closed_cancelled_and_reopened_through_the_api_by_the_person_acting() {
    let tmp = tempfile::tempdir().unwrap();
    let (amb, _node, api) = ambulance_serving_its_api(tmp.path());
    let sam = api.login("Sam Patel", "amb-pin-4821");
    let new = json!({ "service_line": "cardiology", "care_setting": "ambulance_on_scene", "summary": "Palpitations" });
    let (status, body) = api.call("POST", "/api/sessions", Some(&sam), Some(new));
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let act =
        |what: &str| api.call("POST", &format!("/api/sessions/{id}/status"), Some(&sam), Some(json!({ "act": what })));
    let now = || api.call("GET", &format!("/api/sessions/{id}"), Some(&sam), None).1["status"].clone();
    // A call asked for and not yet put through (no hub in reach) is withdrawn as the session
    // closes: nothing rings for a case that is over, and no callback is owed for it.
    assert_eq!(api.call("POST", &format!("/api/sessions/{id}/escalate"), Some(&sam), None).0, 202);
    assert_eq!(act("close").0, 204);
    assert_eq!(now(), "closed");
    let calls = api.call("GET", &format!("/api/sessions/{id}/calls"), Some(&sam), None).1;
    assert_eq!(calls[0]["state"], "callback", "{calls}");
    assert!(calls[0]["callback_reason"].as_str().is_some_and(|r| r.contains("closed")), "{calls}");
    assert_eq!(api.call("GET", "/api/callbacks", Some(&sam), None).1, json!([]));
    assert_eq!(act("close").0, 204, "already closed: nothing to do");
    let message = json!({ "text": "One more thing" });
    let (status, body) = api.call("POST", &format!("/api/sessions/{id}/messages"), Some(&sam), Some(message));
    assert_eq!(status, 400, "a closed session takes no message: {body}");
    assert_eq!(act("reopen").0, 204);
    assert_eq!(now(), "awaiting_reply");
    let (status, body) = act("reopen");
    assert_eq!(status, 400, "an open session is not reopened: {body}");
    assert_eq!(act("cancel").0, 204);
    assert_eq!(now(), "cancelled");
    assert_eq!(act("close").0, 400, "a cancelled session is not closed");
    assert_eq!(act("archive").0, 422, "no such act");
    assert_eq!(api.call("POST", &format!("/api/sessions/{id}/status"), None, Some(json!({ "act": "reopen" }))).0, 401);
    // Each change names who made it in the audit chain.
    let audit = json(&ok(&["audit", "show", "--dir", d(&amb), "--limit", "100", "--json"]));
    let changes: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "status.set" || e["action"] == "status.reopen")
        .collect();
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert!(changes.iter().all(|e| e["detail"]["by"]["name"] == "Sam Patel"), "{changes:?}");
    // A reopen under a client key, sent again (its answer lost on the way back): it opens the
    // session once and is not refused; another key is a new reopen, refused as above.
    let reopen = |key: &str| {
        let body = json!({ "act": "reopen", "client_key": key });
        api.call("POST", &format!("/api/sessions/{id}/status"), Some(&sam), Some(body))
    };
    let steps = || {
        api.call("GET", &format!("/api/sessions/{id}"), Some(&sam), None).1["status_history"].as_array().unwrap().len()
    };
    let before = steps();
    assert_eq!(reopen("reopen-after-cancel").0, 204);
    let (status, body) = reopen("reopen-after-cancel");
    assert_eq!(status, 204, "the same reopen again: {body}");
    assert_eq!(now(), "awaiting_reply");
    assert_eq!(steps(), before + 1, "reopened once");
    assert_eq!(reopen("another-reopen").0, 400, "an open session is not reopened");
}

/// Every path and method with its parameters replaced by something real.
fn concrete(path: &str, id: &str) -> String {
    path.replace("{id}", id).replace("{hash}", &"0".repeat(64))
}

#[test]
fn the_served_api_document_is_the_checked_in_one_and_every_operation_in_it_is_guarded() {
    let served = outpost_node::net::openapi_json();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api.json");
    let checked_in = std::fs::read_to_string(&root).unwrap_or_default();
    assert!(
        served == checked_in,
        "docs/api.json differs from the API the code serves: run `cargo run --bin outpost -- openapi > docs/api.json` and review the change"
    );

    // An independent OpenAPI 3.1 reader takes it, and every reference in it resolves.
    let spec = oas3::from_json(&checked_in).unwrap();
    assert_eq!(spec.openapi, "3.1.0");
    let mut operations = 0;
    for (path, method, op) in spec.operations() {
        operations += 1;
        let what = format!("{method} {path}");
        op.parameters(&spec).unwrap_or_else(|e| panic!("{what}: parameters: {e}"));
        if let Some(body) = op.request_body(&spec).unwrap_or_else(|e| panic!("{what}: request body: {e}")) {
            for media in body.content.values() {
                media.schema(&spec).unwrap_or_else(|e| panic!("{what}: request schema: {e}"));
            }
        }
        let responses = op.responses(&spec);
        assert!(!responses.is_empty(), "{what} documents no response");
        for (status, resp) in responses {
            for media in resp.content.values() {
                media.schema(&spec).unwrap_or_else(|e| panic!("{what} {status}: schema: {e}"));
            }
        }
    }
    assert!(operations >= 20, "{operations} operations");

    // The running daemon serves the same document, and every operation it lists but signing in
    // and the document itself answers 401 without a token.
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let amb = fleet.node("amb-07", "edge", &[]);
    let port = tcp_port();
    let _node = daemon(&amb, &["--api", &format!("127.0.0.1:{port}")], &[]);
    let api = Api::new(port);
    api.wait_up();
    let mut resp = api.agent.get(&format!("{}/api/openapi.json", api.base)).call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.body_mut().read_to_string().unwrap(), checked_in);
    let id = "01JDZQ6G8M4N2B5V7C9X1Y3Z5A";
    for (path, method, _) in spec.operations() {
        let open = ["/api/login", "/api/openapi.json"].contains(&path.as_str());
        let (status, body) = api.call(method.as_str(), &concrete(&path, id), None, None);
        if open {
            assert_ne!(status, 401, "{method} {path} must not need a token: {body}");
        } else {
            assert_eq!(status, 401, "{method} {path} answered {status} without a token: {body}");
            assert!(body["error"].is_string(), "{method} {path}: {body}");
        }
    }
}

/// An ambulance tablet of a new fleet under `root`, with two paramedics who may sign in to
/// its API: Sam Patel (PIN amb-pin-4821) and Jo Reyes (jo-pin-7733).
fn ambulance_with_two_crew(root: &Path) -> std::path::PathBuf {
    let amb = Fleet::new(root).node("amb-07", "edge", &[]);
    add_user(&amb, "Sam Patel", "paramedic", "HCPC-PA123456", "amb-pin-4821");
    add_user(&amb, "Jo Reyes", "paramedic", "HCPC-PA654321", "jo-pin-7733");
    amb
}

/// The ambulance with two paramedics, its daemon serving the API on loopback, and that API up.
fn ambulance_serving_its_api(root: &Path) -> (std::path::PathBuf, common::fleet::Daemon, Api) {
    let amb = ambulance_with_two_crew(root);
    let port = tcp_port();
    let node = daemon(&amb, &["--api", &format!("127.0.0.1:{port}")], &[]);
    let api = Api::new(port);
    api.wait_up();
    (amb, node, api)
}

#[test]
fn the_api_refuses_what_it_must_and_ends_what_was_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let amb = ambulance_with_two_crew(tmp.path());
    let out =
        json(&ok(&["user", "add", "--dir", d(&amb), "--name", "ePR bridge", "--role", "system", "--token", "--json"]));
    let system = out["token"].as_str().unwrap().to_string();

    // Plain HTTP with bearer tokens is for loopback only.
    let out = common::run(&["run", "--dir", d(&amb), "--api", &format!("0.0.0.0:{}", tcp_port())]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback only"), "{out:?}");

    let port = tcp_port();
    let _node = daemon(&amb, &["--api", &format!("127.0.0.1:{port}")], &[]);
    let api = Api::new(port);
    api.wait_up();
    let sam = api.login("Sam Patel", "amb-pin-4821");

    // A page elsewhere that rebinds its own name to 127.0.0.1 is refused by name.
    let resp =
        api.agent.get(&format!("{}/api/me", api.base)).header("Host", format!("evil.example:{port}")).call().unwrap();
    assert_eq!(resp.status().as_u16(), 421);
    // The token in the query string is for the event stream alone.
    assert_eq!(api.call("GET", &format!("/api/me?token={sam}"), None, None).0, 401);
    // Malformed JSON gets the API's own error form.
    let mut resp = api
        .agent
        .post(&format!("{}/api/sessions", api.base))
        .header("Authorization", format!("Bearer {sam}"))
        .header("Content-Type", "application/json")
        .send("{\"service_line\": 7}")
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert!((400..500).contains(&status) && body["error"].is_string(), "{status} {body}");
    // So does a path segment that is not text once decoded (axum's own answer was plain text).
    let (status, body) = api.call("GET", "/api/sessions/%FF", Some(&sam), None);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");

    // An integrating system cannot say a person read something.
    let new = json!({ "service_line": "cardiology", "care_setting": "ambulance_on_scene", "summary": "Syncope" });
    let id = api.call("POST", "/api/sessions", Some(&system), Some(new.clone())).1["id"].as_str().unwrap().to_string();
    assert_eq!(api.call("POST", &format!("/api/sessions/{id}/read"), Some(&system), None).0, 403);
    // Asking twice for a call while the first is open makes one call.
    let first = api.call("POST", &format!("/api/sessions/{id}/escalate"), Some(&sam), None).1;
    let again = api.call("POST", &format!("/api/sessions/{id}/escalate"), Some(&sam), None).1;
    assert_eq!(first["call"], again["call"]);
    // One person's client key is not another's.
    let keyed = |token: &str| {
        let body = json!({ "text": "Obs stable", "client_key": "shared-key-1" });
        api.call("POST", &format!("/api/sessions/{id}/messages"), Some(token), Some(body)).1["message"].clone()
    };
    let jo = api.login("Jo Reyes", "jo-pin-7733");
    assert_ne!(keyed(&sam), keyed(&jo));

    // Signing out ends the event stream too, at the next change it would have told.
    let events = api.events(&sam);
    expect_event(&events, "hello", |n, _| n == "hello");
    assert_eq!(api.call("POST", "/api/logout", Some(&sam), None).0, 204);
    api.call("POST", "/api/sessions", Some(&jo), Some(new.clone()));
    let start = Instant::now();
    loop {
        match events.recv_timeout(LIMIT) {
            Ok((name, data)) => assert!(name != "session", "a signed-out stream still told: {data}"),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("the stream stayed open after sign-out"),
        }
        assert!(start.elapsed() < LIMIT);
    }
    // A system token has no session to end; disabling its user ends it.
    assert_eq!(api.call("POST", "/api/logout", Some(&system), None).0, 400);
    ok(&["user", "disable", "--dir", d(&amb), "--name", "ePR bridge"]);
    assert_eq!(api.call("GET", "/api/me", Some(&system), None).0, 401);

    // Guessing a PIN: after five wrong tries the name waits, even for the right PIN; guesses
    // sent all at once count from the moment each is let through, so a burst of thirty has five
    // judged and the rest told to wait.
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let guesses: Vec<_> = (0..30)
            .map(|i| {
                let api = &api;
                scope.spawn(move || {
                    let guess = json!({ "name": "Jo Reyes", "secret": format!("{i:06}") });
                    api.call("POST", "/api/login", None, Some(guess)).0
                })
            })
            .collect();
        guesses.into_iter().map(|g| g.join().unwrap()).collect()
    });
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 5, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 401 || *s == 429), "{statuses:?}");
    let (status, body) =
        api.call("POST", "/api/login", None, Some(json!({ "name": "Jo Reyes", "secret": "jo-pin-7733" })));
    assert_eq!(status, 429, "{body}");
}

/// The `session.list` entries of `dir`'s audit chain naming `person`: the sessions each named.
fn lists_shown_to(dir: &Path, person: &str) -> Vec<Vec<String>> {
    let entries = json(&ok(&["audit", "show", "--dir", d(dir), "--limit", "1000", "--json"]));
    let mut out = Vec::new();
    for e in entries.as_array().unwrap() {
        if e["action"] == "session.list" && e["detail"]["by"]["name"] == person {
            let ids = e["detail"]["sessions"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string());
            out.push(ids.collect());
        }
    }
    out
}

#[test]
fn the_patients_a_person_is_shown_in_a_list_or_an_event_stream_are_in_the_audit_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let (amb, _node, api) = ambulance_serving_its_api(tmp.path());
    let (sam, jo) = (api.login("Sam Patel", "amb-pin-4821"), api.login("Jo Reyes", "jo-pin-7733"));
    let new = json!({ "service_line": "cardiology", "care_setting": "ambulance_on_scene", "summary": "Syncope",
        "nhs_number": "943 476 5919", "nhs_verification": "01" });
    let create =
        || api.call("POST", "/api/sessions", Some(&sam), Some(new.clone())).1["id"].as_str().unwrap().to_string();
    let (a, b) = (create(), create());
    let list = |token: &str| {
        let (status, body) = api.call("GET", "/api/sessions", Some(token), None);
        assert_eq!(status, 200, "{body}");
        body.as_array().unwrap().len()
    };

    // The list shows two patients' NHS numbers: who saw them, and which, is recorded.
    assert_eq!(list(&sam), 2);
    let shown = lists_shown_to(&amb, "Sam Patel");
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert!(shown[0].contains(&a) && shown[0].contains(&b), "{shown:?}");
    // The app lists again at every screen: within the hour that adds nothing.
    assert_eq!(list(&sam), 2);
    assert_eq!(lists_shown_to(&amb, "Sam Patel").len(), 1);
    // Another person's look is theirs.
    assert_eq!(list(&jo), 2);
    assert_eq!(lists_shown_to(&amb, "Jo Reyes").len(), 1);

    // A card the event stream brings Jo is shown to Jo; the list then records only what is new.
    let events = api.events(&jo);
    expect_event(&events, "hello", |n, _| n == "hello");
    let c = create();
    expect_event(&events, "the new session's card", |n, e| n == "session" && e["card"]["id"] == c.as_str());
    wait_until(LIMIT, "Jo's stream card in the audit chain", || {
        lists_shown_to(&amb, "Jo Reyes").last().is_some_and(|ids| ids == std::slice::from_ref(&c))
    });
    assert_eq!(lists_shown_to(&amb, "Jo Reyes").len(), 2, "one entry for the list, one for the card");
    assert_eq!(list(&sam), 3);
    assert_eq!(lists_shown_to(&amb, "Sam Patel").last().unwrap(), std::slice::from_ref(&c));
    let verify = json(&ok(&["audit", "verify", "--dir", d(&amb), "--json"]));
    assert!(verify["broken_at"].is_null(), "{verify}");
}

/// A TLS client connection to 127.0.0.1:`port`, the server named `host`, trusting only the
/// certificate `trust` (DER); reads wait at most 20 s.
fn tls_client(
    port: u16,
    trust: &[u8],
    host: &str,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>, String> {
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(trust.to_vec())).map_err(|e| e.to_string())?;
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| e.to_string())?;
    let sock = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    Ok(rustls::StreamOwned::new(conn, sock))
}

/// One HTTP/1.1 request over TLS to 127.0.0.1:`port`, the server named `host`, trusting only
/// the certificate `trust` (DER). The status and the JSON body, or why it failed.
fn https(
    port: u16,
    trust: &[u8],
    host: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    use std::io::Read;
    let mut tls = tls_client(port, trust, host)?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            // A server that closes without close_notify: what arrived is the answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP answer: {text:?}"))?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("no status")?;
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

#[test]
fn a_surgery_box_serves_its_api_over_tls_with_the_deployers_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let gp = fleet.node("surgery-4", "edge", &[]);
    add_user(&gp, "Dr Lee Hart", "gp", "GMC-7654321", "gp-pass-2291");
    // The deployer's certificate, for the name the practice's desktops use.
    let issued = rcgen::generate_simple_self_signed(vec!["surgery-box.local".to_string()]).unwrap();
    let (cert, key) = (tmp.path().join("api.crt"), tmp.path().join("api.key"));
    std::fs::write(&cert, issued.cert.pem()).unwrap();
    std::fs::write(&key, issued.signing_key.serialize_pem()).unwrap();
    let trusted = issued.cert.der().to_vec();

    // A certificate without its key is refused before anything starts; so is a key given as
    // the certificate.
    let out = common::run(&["run", "--dir", d(&gp), "--api", "127.0.0.1:0", "--api-cert", d(&cert)]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out =
        common::run(&["run", "--dir", d(&gp), "--api", "127.0.0.1:0", "--api-cert", d(&key), "--api-key", d(&key)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--api-cert"), "{out:?}");

    let port = tcp_port();
    let _node =
        daemon(&gp, &["--api", &format!("127.0.0.1:{port}"), "--api-cert", d(&cert), "--api-key", d(&key)], &[]);
    let call = |method: &str, path: &str, token: Option<&str>, body: Option<Value>| {
        https(port, &trusted, "surgery-box.local", method, path, token, body)
    };
    wait_until(LIMIT, "the API over TLS", || call("GET", "/api/me", None, None).is_ok());
    // Over TLS the name is the certificate's, not loopback's.
    assert_eq!(call("GET", "/api/me", None, None).unwrap().0, 401);
    let (status, login) =
        call("POST", "/api/login", None, Some(json!({ "name": "Dr Lee Hart", "secret": "gp-pass-2291" }))).unwrap();
    assert_eq!(status, 200, "{login}");
    let token = login["token"].as_str().unwrap().to_string();
    let (status, me) = call("GET", "/api/me", Some(&token), None).unwrap();
    assert_eq!((status, me["name"].as_str()), (200, Some("Dr Lee Hart")));
    let new = json!({ "service_line": "dermatology", "care_setting": "gp_elective", "summary": "Changing naevus, left shoulder" });
    let (status, created) = call("POST", "/api/sessions", Some(&token), Some(new)).unwrap();
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["requester"]["registration"], "GMC-7654321");

    // A client that does not trust the certificate gets no answer; nor does plain HTTP.
    let stranger = rcgen::generate_simple_self_signed(vec!["surgery-box.local".to_string()]).unwrap();
    let refused = https(port, stranger.cert.der(), "surgery-box.local", "GET", "/api/me", None, None);
    assert!(refused.is_err(), "{refused:?}");
    assert!(Api::new(port).agent.get(&format!("http://127.0.0.1:{port}/api/me")).call().is_err());

    // A client sending a request's head a byte every few seconds (each byte would put off an
    // idle limit) is closed once the head has taken 20 s, well before the two minutes it kept
    // a slot before.
    {
        use std::io::Read;
        let mut slow = tls_client(port, &trusted, "surgery-box.local").unwrap();
        let started = Instant::now();
        let mut closed = None;
        for b in b"GET /api/me HTTP/1.1\r\nHost: surgery-box.local\r\nX-Slow: ".iter().cycle().take(30) {
            if slow.write_all(&[*b]).and_then(|_| slow.flush()).is_err() {
                closed = Some(started.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        let closed = closed.or_else(|| {
            // The last write may have gone into the socket's buffer: the close shows on reading.
            slow.sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 64];
            (!matches!(slow.read(&mut buf), Ok(n) if n > 0)).then(|| started.elapsed())
        });
        let closed = closed.expect("the slow client was answered");
        assert!(closed < Duration::from_secs(40), "closed after {closed:?}");
    }
    // One address holds at most 32 connections: its next is closed at once, and the address
    // is served again once it lets go.
    let held: Vec<_> = (0..32).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 8];
    let started = Instant::now();
    let read = std::io::Read::read(&mut extra, &mut buf);
    assert!(
        matches!(read, Ok(0) | Err(_)) && started.elapsed() < Duration::from_secs(4),
        "{read:?} after {:?}",
        started.elapsed()
    );
    drop(held);
    wait_until(LIMIT, "the address served again", || {
        call("GET", "/api/me", Some(&token), None).is_ok_and(|(s, _)| s == 200)
    });
}

/// The daemon's count of each person's records restarts with it unless read back from the
/// audit chain: an update or a crash would give a thief a fresh hour.
#[test]
fn a_restarted_daemon_gives_no_one_a_fresh_hour_of_records() {
    let tmp = tempfile::tempdir().unwrap();
    let amb = ambulance_with_two_crew(tmp.path());
    let port = tcp_port();
    let api_at = format!("127.0.0.1:{port}");
    let args = ["--api", api_at.as_str()];
    let env = [("OUTPOST_LIMITS_RECORDS_ALARM_PER_PERSON_HOUR", "3"), ("OUTPOST_LIMITS_RECORDS_PER_PERSON_HOUR", "5")];
    let node = daemon(&amb, &args, &env);
    let api = Api::new(port);
    api.wait_up();
    let (sam, jo) = (api.login("Sam Patel", "amb-pin-4821"), api.login("Jo Reyes", "jo-pin-7733"));
    let new = json!({ "service_line": "cardiology", "care_setting": "ambulance_on_scene", "summary": "Syncope",
        "nhs_number": "943 476 5919", "nhs_verification": "01" });
    let make = |token: &str| {
        let (status, body) = api.call("POST", "/api/sessions", Some(token), Some(new.clone()));
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_string()
    };
    let ids: Vec<String> = (0..7).map(|_| make(&sam)).collect();
    let open = |token: &str, id: &str| api.call("GET", &format!("/api/sessions/{id}"), Some(token), None).0;
    let entries = |action: &str| -> usize {
        let all = json(&ok(&["audit", "show", "--dir", d(&amb), "--limit", "1000", "--json"]));
        all.as_array().unwrap().iter().filter(|e| e["action"] == action).count()
    };
    for id in &ids[..5] {
        assert_eq!(open(&jo, id), 200);
    }
    let mine = make(&jo);
    assert_eq!(open(&jo, &ids[5]), 429);
    let recorded = (entries("access.unusual"), entries("access.refused"));
    assert_eq!(recorded, (1, 1));

    // The daemon restarts (an update, a crash): Jo's hour goes on where it was.
    drop(node);
    let _node = daemon(&amb, &args, &env);
    api.wait_up();
    let jo = api.login("Jo Reyes", "jo-pin-7733");
    assert_eq!(open(&jo, &ids[6]), 429, "a restart gives no one a fresh hour");
    assert_eq!(open(&jo, &ids[0]), 200, "what Jo had opened this hour still opens");
    assert_eq!(open(&jo, &mine), 200, "and what Jo made");
    assert_eq!(open(&sam, &ids[6]), 200, "Sam's own records still open to Sam");
    assert_eq!(
        (entries("access.unusual"), entries("access.refused")),
        recorded,
        "neither recorded again within the hour"
    );
}

/// A stolen shift token (or a curious colleague's) would otherwise read every record the node
/// holds as fast as the store answers, and nobody would hear of it until someone read the chain.
#[test]
fn a_person_opening_more_records_in_an_hour_than_anyone_at_work_is_flagged_then_refused_new_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let amb = ambulance_with_two_crew(tmp.path());
    let port = tcp_port();
    let metrics = format!("127.0.0.1:{}", free_port());
    let _node = daemon(
        &amb,
        &["--api", &format!("127.0.0.1:{port}"), "--metrics", &metrics],
        &[
            ("OUTPOST_LIMITS_RECORDS_ALARM_PER_PERSON_HOUR", "3"),
            ("OUTPOST_LIMITS_RECORDS_PER_PERSON_HOUR", "5"),
            ("OUTPOST_LIMITS_CARDS_ALARM_PER_PERSON_HOUR", "8"),
            ("OUTPOST_LIMITS_RECORDS_ALARM_PER_PERSON_DAY", "4"),
        ],
    );
    let gauge = |name: &str| -> Option<f64> {
        let text = ureq::get(&format!("http://{metrics}/metrics")).call().ok()?.body_mut().read_to_string().ok()?;
        text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.trim().parse().ok())
    };
    let api = Api::new(port);
    api.wait_up();
    let (sam, jo) = (api.login("Sam Patel", "amb-pin-4821"), api.login("Jo Reyes", "jo-pin-7733"));
    let new = json!({ "service_line": "cardiology", "care_setting": "ambulance_on_scene", "summary": "Syncope",
        "nhs_number": "943 476 5919", "nhs_verification": "01" });
    // Writing records is not reading other people's: seven sessions opened by the crew.
    let ids: Vec<String> = (0..7)
        .map(|_| {
            let (status, body) = api.call("POST", "/api/sessions", Some(&sam), Some(new.clone()));
            assert_eq!(status, 201, "{body}");
            body["id"].as_str().unwrap().to_string()
        })
        .collect();
    // A photo in the seventh, which Jo never opens.
    let photo = outpost_node::photo::synthetic_jpeg(64, 48, 1).unwrap().bytes;
    let (status, attached) = api.post_bytes(
        &format!("/api/sessions/{}/photos?view=close-up&body_site=left%20forearm&consent=verbal", ids[6]),
        &sam,
        &photo,
    );
    assert_eq!(status, 201, "{attached}");
    let hash = attached["hash"].as_str().unwrap().to_string();
    let open = |token: &str, id: &str| api.call("GET", &format!("/api/sessions/{id}"), Some(token), None);
    let entries = |action: &str| -> Vec<Value> {
        let all = json(&ok(&["audit", "show", "--dir", d(&amb), "--limit", "1000", "--json"]));
        all.as_array().unwrap().iter().filter(|e| e["action"] == action).cloned().collect()
    };

    for (n, id) in ids[..5].iter().enumerate() {
        let (status, body) = open(&jo, id);
        assert_eq!(status, 200, "record {n}: {body}");
    }
    // The third different record in the hour raised the alarm, once, naming who; the fourth in
    // the day the day's alarm (one reading a few an hour all day long is flagged too).
    let unusual = entries("access.unusual");
    assert_eq!(unusual.len(), 2, "{unusual:?}");
    assert!(unusual.iter().all(|e| e["detail"]["by"]["name"] == "Jo Reyes"), "{unusual:?}");
    assert_eq!(
        (unusual[0]["detail"]["records"].as_u64(), unusual[1]["detail"]["records_day"].as_u64()),
        (Some(3), Some(4))
    );

    // The sixth is refused, its export too, with what to do; nothing of it is shown.
    let (status, body) = open(&jo, &ids[5]);
    assert_eq!(status, 429, "{body}");
    let why = body["error"].as_str().unwrap();
    assert!(why.contains("5 different records in the last hour") && why.contains("deployer"), "{why}");
    assert!(!body.to_string().contains("Syncope"), "{body}");
    let (status, _) = api.call("GET", &format!("/api/sessions/{}/export?format=fhir", ids[5]), Some(&jo), None);
    assert_eq!(status, 429);
    // Counted by person, not by token: signing in again opens nothing new.
    let jo_again = api.login("Jo Reyes", "jo-pin-7733");
    assert_eq!(open(&jo_again, &ids[6]).0, 429);
    // Nor a photo of a record not opened this hour, whole or as a thumbnail, nor a "read"
    // receipt on one.
    for thumb in ["", "&thumbnail=true"] {
        let (status, bytes) = api.get_bytes(&format!("/api/photos/{hash}?session={}{thumb}", ids[6]), &jo);
        assert_eq!(status, 429, "photo{thumb}");
        assert!(!bytes.starts_with(&[0xFF, 0xD8]), "no image bytes");
    }
    assert_eq!(api.call("POST", &format!("/api/sessions/{}/read", ids[6]), Some(&jo), None).0, 429);
    assert_eq!(api.call("POST", &format!("/api/photos/{hash}/read"), Some(&jo), None).0, 429);
    // What Jo was refused left no entry of a look at it.
    let refused_ids = [ids[5].as_str(), ids[6].as_str()];
    let looks: Vec<Value> = ["session.view", "session.export", "photo.view"]
        .into_iter()
        .flat_map(&entries)
        .filter(|e| e["detail"]["by"]["name"] == "Jo Reyes" && refused_ids.iter().any(|id| e["session"] == *id))
        .collect();
    assert!(looks.is_empty(), "{looks:?}");
    // A record Jo makes is Jo's to open, past the limit.
    let (status, made) = api.call("POST", "/api/sessions", Some(&jo), Some(new.clone()));
    assert_eq!(status, 201, "{made}");
    assert_eq!(open(&jo, made["id"].as_str().unwrap()).0, 200);
    let refused = entries("access.refused");
    assert_eq!(refused.len(), 1, "recorded once an hour, not at every attempt: {refused:?}");
    assert_eq!(refused[0]["detail"]["by"]["name"], "Jo Reyes");
    assert_eq!(refused[0]["detail"]["limit"], 5);
    // Work under way goes on: a record already opened this hour still opens.
    assert_eq!(open(&jo, &ids[0]).0, 200);
    // And nobody else is held back.
    assert_eq!(open(&sam, &ids[5]).0, 200);
    // A list shows every card's patient at once: the different patients a person is shown on
    // cards in an hour have an alarm of their own (8 here; a list is never refused: it is the
    // worklist).
    let (status, cards) = api.call("GET", "/api/sessions?limit=10000", Some(&sam), None);
    assert_eq!((status, cards.as_array().map(Vec::len)), (200, Some(8)), "{cards}");
    let by_sam: Vec<Value> =
        entries("access.unusual").into_iter().filter(|e| e["detail"]["by"]["name"] == "Sam Patel").collect();
    assert_eq!(by_sam.len(), 1, "{by_sam:?}");
    assert_eq!((by_sam[0]["detail"]["cards"].as_u64(), by_sam[0]["detail"]["via"].as_str()), (Some(8), Some("api")));
    // Once an hour: a list with a new card (a ninth patient) raises it no more.
    assert_eq!(api.call("POST", "/api/sessions", Some(&sam), Some(new.clone())).0, 201);
    let (status, cards) = api.call("GET", "/api/sessions?limit=10000", Some(&sam), None);
    assert_eq!((status, cards.as_array().map(Vec::len)), (200, Some(9)), "{cards}");
    assert_eq!(entries("access.unusual").len(), 3, "once an hour");

    // The deployer hears of it without reading the chain: status (CLI, JSON) and metrics; a
    // colleague signed in (or Jo's token) does not.
    for token in [&sam, &jo] {
        let (status, st) = api.call("GET", "/api/status", Some(token), None);
        assert_eq!(status, 200, "{st}");
        assert_eq!(st["unusual_access"], json!([]), "{st}");
    }
    let st = json(&ok(&["status", "--dir", d(&amb), "--json"]));
    let flagged = st["unusual_access"].as_array().unwrap();
    assert_eq!(flagged.len(), 2, "{st}");
    let of = |name: &str| flagged.iter().find(|f| f["person"] == name).unwrap_or_else(|| panic!("{name}: {st}"));
    let jo = of("Jo Reyes");
    let jo_flag = (jo["refused"].as_bool(), jo["records"].as_u64(), jo["records_day"].as_u64());
    assert_eq!(jo_flag, (Some(true), Some(5), Some(4)));
    let sam_flag = (of("Sam Patel")["refused"].as_bool(), of("Sam Patel")["cards"].as_u64());
    assert_eq!(sam_flag, (Some(false), Some(8)));
    let text = ok(&["status", "--dir", d(&amb)]);
    assert!(text.contains("unusual access: Jo Reyes (paramedic) opened 5 different"), "{text}");
    assert!(text.contains("and opened 4 different patients' records within a day"), "{text}");
    assert!(text.contains("unusual access: Sam Patel (paramedic) was shown 8 different patients"), "{text}");
    wait_until(LIMIT, "the metrics to count the people flagged", || gauge("outpost_unusual_access") == Some(2.0));
    let verify = json(&ok(&["audit", "verify", "--dir", d(&amb), "--json"]));
    assert!(verify["broken_at"].is_null(), "{verify}");
}
