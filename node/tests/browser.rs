//! The clinician's web app in a real browser: Debian's Chromium, headless, driven over
//! WebDriver (chromedriver, with `fantoccini`), against real `outpost run` daemons (a hub, an
//! ambulance tablet and a consultant's desk, each serving its own app).
//!
//! Chromium and chromedriver come from Debian's packages. When they are missing, the first test
//! installs them (`apt-get install chromium chromium-driver`, as root) or fails saying how: these
//! tests never skip. Screenshots of each screen go to `target/browser/`.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::fleet::{Fleet, add_user, daemon, free_port};
use common::ok;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(45);

/// One browser test at a time: two Chromiums and three daemons already fill this 2-core
/// machine, and a starved AudioWorklet would garble the voice these tests listen to.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn d(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Chromium and chromedriver from Debian's packages, installed once if missing.
fn ensure_chromium() {
    static READY: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut ready = READY.lock().unwrap_or_else(|p| p.into_inner());
    if *ready {
        return;
    }
    let have = |p: &str| Path::new(p).exists();
    if !(have("/usr/bin/chromium") && have("/usr/bin/chromedriver") && have("/usr/bin/espeak-ng")) {
        let uid = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        assert_eq!(
            uid.as_deref().unwrap_or(""),
            "0",
            "the browser tests need Debian's chromium, chromium-driver and espeak-ng: run `apt-get install -y \
             chromium chromium-driver espeak-ng` as root (these tests install them themselves when run as root)"
        );
        eprintln!("installing chromium, chromium-driver and espeak-ng (apt-get)...");
        for args in [
            &["update", "-qq"][..],
            &["install", "-y", "-qq", "--no-install-recommends", "chromium", "chromium-driver", "espeak-ng"][..],
        ] {
            let out = Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").output().unwrap();
            assert!(out.status.success(), "apt-get {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        assert!(have("/usr/bin/chromium") && have("/usr/bin/chromedriver"), "apt-get installed no chromium");
        assert!(have("/usr/bin/espeak-ng"), "apt-get installed no espeak-ng");
    }
    *ready = true;
}

/// A sentence spoken by espeak-ng into a WAV file (22.05 kHz mono), a fake microphone's input.
fn speak(path: &Path, words: &str) {
    ensure_chromium();
    let out = Command::new("/usr/bin/espeak-ng").args(["-s", "150", "-w", d(path), words]).output().unwrap();
    assert!(out.status.success(), "espeak-ng: {}", String::from_utf8_lossy(&out.stderr));
}

/// Loudness of each 20 ms of 8 kHz audio.
fn envelope(samples: &[i16]) -> Vec<f64> {
    samples
        .chunks(160)
        .map(|c| (c.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / c.len() as f64).sqrt())
        .collect()
}

/// How well what was heard follows what was said: the best Pearson correlation of their
/// loudness envelopes over every offset into the source (which the fake microphone loops).
fn correlation(heard: &[i16], said: &[i16]) -> f64 {
    let h = envelope(heard);
    let s = envelope(said);
    // Start where the voice starts (the other side's page may attach a moment after the call
    // connects; until then the call carries silence), and take up to 4 s.
    let loudest = h.iter().copied().fold(0.0, f64::max);
    let first = h.iter().position(|x| *x > loudest * 0.05).unwrap_or(0);
    let h: Vec<f64> = h.iter().skip(first).take(300).copied().collect();
    assert!(h.len() >= 100, "too little audio heard: {} frames", h.len());
    let n = h.len();
    let norm = |v: &[f64]| {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let centred: Vec<f64> = v.iter().map(|x| x - mean).collect();
        let len = centred.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-9);
        centred.into_iter().map(|x| x / len).collect::<Vec<f64>>()
    };
    let hn = norm(&h);
    (0..s.len())
        .map(|lag| {
            let window: Vec<f64> = (0..n).map(|i| s[(lag + i) % s.len()]).collect();
            norm(&window).iter().zip(&hn).map(|(a, b)| a * b).sum::<f64>()
        })
        .fold(f64::MIN, f64::max)
}

fn screens_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One headless Chromium with its own chromedriver, profile and fake microphone.
struct Browser {
    client: Client,
    driver: Child,
    name: &'static str,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start(name: &'static str, width: u32, height: u32, microphone: Option<&Path>) -> Browser {
        ensure_chromium();
        let port = tcp_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < LIMIT, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-quic".into(),
            "--autoplay-policy=no-user-gesture-required".into(),
            "--use-fake-ui-for-media-stream".into(),
            "--use-fake-device-for-media-stream".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        if let Some(mic) = microphone {
            args.push(format!("--use-file-for-fake-audio-capture={}", mic.display()));
        }
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert("goog:chromeOptions".into(), json!({ "binary": "/usr/bin/chromium", "args": args }));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("{name}: cannot start Chromium over WebDriver: {e}"));
        Browser { client, driver, name, _profile: profile }
    }

    /// A screenshot of the page from its top (`at`: scrolled to that element instead).
    async fn screenshot_at(&self, file: &str, at: Option<&str>) {
        let script = match at {
            Some(css) => format!("document.querySelector({css:?})?.scrollIntoView({{block: 'center'}}); return true;"),
            None => "window.scrollTo(0, 0); return true;".to_string(),
        };
        self.eval(&script).await;
        let png = self.client.screenshot().await.unwrap();
        let path = screens_dir().join(format!("{file}.png"));
        std::fs::write(&path, png).unwrap();
        eprintln!("{}: screenshot {}", self.name, path.display());
    }

    async fn screenshot(&self, file: &str) {
        self.screenshot_at(file, None).await;
    }

    async fn sign_in(&self, base: &str, name: &str, secret: &str) {
        self.client.goto(&format!("{base}/app/")).await.unwrap();
        self.type_into("#login input[name=name]", name).await;
        self.type_into("#login input[name=secret]", secret).await;
        self.click("#login button[type=submit]").await;
        self.wait_for("header#bar:not([hidden]) #who", name).await;
    }

    async fn element(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(LIMIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{}: no {css}: {e}", self.name))
    }

    /// Types into `css`, finding it again if a live update replaced it before the typing began.
    async fn type_into(&self, css: &str, text: &str) {
        let mut tries = 0;
        loop {
            let el = self.element(css).await;
            let typed = match el.clear().await {
                Ok(()) => el.send_keys(text).await,
                Err(e) => Err(e),
            };
            match typed {
                Ok(()) => break,
                Err(e) if tries < 20 && e.to_string().contains("stale element") => tries += 1,
                Err(e) => panic!("{}: type into {css}: {e}", self.name),
            }
        }
    }

    async fn choose(&self, css: &str, value: &str) {
        self.element(css).await.select_by_value(value).await.unwrap();
    }

    /// Clicks `css`, finding it again if a live update replaced it in the meantime.
    async fn click(&self, css: &str) {
        let mut tries = 0;
        loop {
            match self.element(css).await.click().await {
                Ok(()) => return,
                Err(e) if tries < 20 && e.to_string().contains("stale element") => tries += 1,
                Err(e) => panic!("{}: click {css}: {e}", self.name),
            }
        }
    }

    /// Text of every element matching `css`.
    async fn texts(&self, css: &str) -> Vec<String> {
        let mut out = Vec::new();
        for el in self.client.find_all(Locator::Css(css)).await.unwrap_or_default() {
            if let Ok(t) = el.text().await {
                out.push(t);
            }
        }
        out
    }

    /// Waits until an element matching `css` shows `text`; returns its text.
    async fn wait_for(&self, css: &str, text: &str) -> String {
        let started = Instant::now();
        loop {
            if let Some(t) = self.texts(css).await.into_iter().find(|t| t.contains(text)) {
                return t;
            }
            if started.elapsed() > LIMIT {
                let shot = format!("failed-{}", self.name);
                self.screenshot(&shot).await;
                panic!("{}: {css} never showed {text:?}; it shows {:?}", self.name, self.texts(css).await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap_or_else(|e| panic!("{}: script failed: {e}", self.name))
    }

    /// The accessibility basics of the screen shown: every control has a name, no positive
    /// tabindex reorders focus, and text contrast meets WCAG 2 AA. Returns what fails.
    async fn accessibility_problems(&self) -> Vec<String> {
        let v = self.eval(A11Y_CHECK).await;
        v.as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
    }

    async fn assert_accessible(&self, screen: &str) {
        let problems = self.accessibility_problems().await;
        assert!(problems.is_empty(), "{}: {screen}: {problems:#?}", self.name);
    }

    async fn close(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Checks, in the page, what a screen reader and a low-vision reader need at least.
const A11Y_CHECK: &str = r#"
const problems = [];
const visible = (el) => !el.closest('[hidden]') && el.getClientRects().length > 0;
for (const el of document.querySelectorAll('input, select, textarea, button, a[href]')) {
  if (!visible(el)) continue;
  const labelled = (el.labels && [...el.labels].map((l) => l.textContent).join(' ')) || el.getAttribute('aria-label')
    || (el.getAttribute('aria-labelledby') && document.getElementById(el.getAttribute('aria-labelledby'))?.textContent)
    || (el.tagName === 'BUTTON' || el.tagName === 'A' ? el.textContent : '');
  if (!labelled || !labelled.trim()) problems.push(`no accessible name: ${el.outerHTML.slice(0, 100)}`);
  if (el.tabIndex > 0) problems.push(`tabindex > 0 reorders focus: ${el.outerHTML.slice(0, 100)}`);
  const box = el.getBoundingClientRect();
  if (el.tagName !== 'A' && (box.height < 44 || box.width < 44)) problems.push(`target smaller than 44 px (gloves): ${el.outerHTML.slice(0, 100)}`);
}
const rgb = (s) => (s.match(/[\d.]+/g) || []).map(Number);
const lum = (c) => {
  const [r, g, b] = c.slice(0, 3).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
};
const background = (el) => {
  for (let e = el; e; e = e.parentElement) {
    const c = rgb(getComputedStyle(e).backgroundColor);
    if (c.length === 3 || (c.length === 4 && c[3] > 0.5)) return c;
  }
  return [255, 255, 255];
};
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
const seen = new Set();
while (walker.nextNode()) {
  const el = walker.currentNode.parentElement;
  if (!walker.currentNode.textContent.trim() || !el || seen.has(el) || !visible(el) || el.closest(':disabled')) continue;
  seen.add(el);
  const st = getComputedStyle(el);
  const fg = lum(rgb(st.color));
  const bg = lum(background(el));
  const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
  const px = parseFloat(st.fontSize);
  const large = px >= 24 || (px >= 18.66 && Number(st.fontWeight) >= 700);
  if (ratio < (large ? 3 : 4.5)) problems.push(`contrast ${ratio.toFixed(2)} for "${el.textContent.trim().slice(0, 40)}"`);
}
return problems;
"#;

/// A hub, an ambulance tablet (paramedic) and a dermatology desk (consultant), each with its
/// daemon and, for the two people, its app.
struct Fleetwide {
    _tmp: tempfile::TempDir,
    hub_quic: String,
    amb: PathBuf,
    amb_api: String,
    desk_api: String,
    _daemons: Vec<common::fleet::Daemon>,
    hub: PathBuf,
}

fn fleetwide(start_hub: bool, desk_record: Option<&Path>, ring_secs: &str) -> Fleetwide {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let (hub, amb, desk) = fleet.hub_amb_derm_desk();
    ok(&["rota", "set", "--dir", d(&hub), "--line", "dermatology", "--desk", "desk-derm-1", "--ring-secs", ring_secs]);
    add_user(&amb, "Sam Patel", "paramedic", "HCPC-PA123456", "482193");
    add_user(&desk, "Dr Ada Okafor", "consultant", "GMC-7012345", "447126");
    add_user(&desk, "Dr Ben Hale", "consultant", "GMC-7054321", "903184");
    let quic = format!("127.0.0.1:{}", free_port());
    let (amb_port, desk_port) = (tcp_port(), tcp_port());
    let mut daemons = Vec::new();
    if start_hub {
        daemons.push(daemon(&hub, &["--listen", &quic], &[]));
    }
    daemons.push(daemon(&amb, &["--peer", &quic, "--api", &format!("127.0.0.1:{amb_port}")], &[]));
    let desk_api_addr = format!("127.0.0.1:{desk_port}");
    let mut desk_args = vec!["--peer", &quic, "--api", &desk_api_addr];
    if let Some(rec) = desk_record {
        desk_args.extend(["--record", d(rec)]);
    }
    daemons.push(daemon(&desk, &desk_args, &[]));
    for port in [amb_port, desk_port] {
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < LIMIT, "the API on {port} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Fleetwide {
        _tmp: tmp,
        hub_quic: quic,
        amb,
        amb_api: format!("http://127.0.0.1:{amb_port}"),
        desk_api: format!("http://127.0.0.1:{desk_port}"),
        _daemons: daemons,
        hub,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paramedic_and_a_consultant_work_a_case_through_their_browsers() {
    let _one_at_a_time = SERIAL.lock().await;
    // What each person says into their page's (fake) microphone.
    let voices = tempfile::tempdir().unwrap();
    let crew_says = voices.path().join("crew.wav");
    let consultant_says = voices.path().join("consultant.wav");
    speak(
        &crew_says,
        "Forty two year old man. Spreading target rash on the left forearm, three days after starting amoxicillin. No mouth ulcers. Observations normal.",
    );
    speak(
        &consultant_says,
        "Thank you. This sounds like erythema multiforme. Stop the amoxicillin today, give an antihistamine, and ask the GP to review him in two days.",
    );
    let desk_heard = voices.path().join("desk-heard.wav");
    let f = fleetwide(true, Some(&desk_heard), "60");
    let tablet = Browser::start("tablet", 1280, 800, Some(&crew_says)).await;
    let desk = Browser::start("desk", 1600, 1000, Some(&consultant_says)).await;

    tablet.sign_in(&f.amb_api, "Sam Patel", "482193").await;
    tablet.wait_for("main h1", "Advice sessions").await;
    tablet.assert_accessible("session list").await;
    tablet.screenshot("01-tablet-sessions").await;

    // A new session, the NHS number checked as it is typed.
    tablet.click("a[href='#/new']").await;
    tablet.choose("#new-session select[name=service_line]", "dermatology").await;
    tablet.type_into("#new-session input[name=nhs_number]", "943 476 5910").await;
    tablet.wait_for("#nhs-check", "Not a valid NHS number").await;
    tablet.type_into("#new-session input[name=nhs_number]", "943 476 5919").await;
    tablet.wait_for("#nhs-check", "Valid NHS number").await;
    let summary = "Spreading rash left forearm after antibiotics";
    tablet.type_into("#new-session input[name=summary]", summary).await;
    tablet
        .type_into(
            "#new-session textarea[name=details]",
            "Started amoxicillin 3 days ago; target lesions, no mucosal involvement",
        )
        .await;
    tablet.type_into("#new-session input[name=call_sign]", "Alpha 7").await;
    tablet.type_into("#new-session input[name=callback]", "07700 900123").await;
    tablet.assert_accessible("new session").await;
    tablet.screenshot("02-tablet-new-session").await;
    tablet.click("#new-session button[type=submit]").await;
    tablet.wait_for("main h1", summary).await;

    // A photo from the camera input, with its view, body site and consent.
    let photo = outpost_node::photo::synthetic_jpeg(1600, 1200, 11).unwrap();
    let photo_path = f._tmp.path().join("forearm.jpg");
    std::fs::write(&photo_path, &photo.bytes).unwrap();
    tablet.element("#photo-form input[type=file]").await.send_keys(d(&photo_path)).await.unwrap();
    tablet.choose("#photo-form select[name=view]", "close_up").await;
    tablet.type_into("#photo-form input[name=body_site]", "left forearm").await;
    tablet.choose("#photo-form select[name=consent]", "verbal").await;
    tablet.click("#photo-form button[type=submit]").await;
    tablet.wait_for(".photos figcaption", "left forearm").await;
    tablet.wait_for("#photo-state", "Saved on this device").await;
    // The hub takes the message and the photo; the desk gets the case.
    tablet.wait_for("#messages li", "At consultant").await;
    tablet.assert_accessible("session").await;
    tablet.screenshot_at("03-tablet-session-with-photo", Some(".photos")).await;

    desk.sign_in(&f.desk_api, "Dr Ada Okafor", "447126").await;
    desk.wait_for("ul.cards a", summary).await;
    desk.assert_accessible("queue").await;
    desk.screenshot("04-desk-queue").await;

    // The crew asks for a call: the desk rings with the case on screen.
    tablet.click("#escalate").await;
    desk.wait_for("#ring h2", summary).await;
    desk.wait_for("main h1", summary).await;
    // The keyboard's focus is on the ring's Answer button (Enter answers).
    let focused = "return document.activeElement && document.activeElement.id;";
    let started = Instant::now();
    while desk.eval(focused).await != json!("answer") {
        assert!(started.elapsed() < LIMIT, "the ring does not take the focus: {}", desk.eval(focused).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    desk.assert_accessible("ringing").await;
    desk.screenshot("05-desk-ringing").await;
    desk.click("#ring #answer").await;
    desk.wait_for("#call-state", "Connected to desk-derm-1").await;
    tablet.wait_for("#call-state", "Connected to desk-derm-1").await;
    tablet.wait_for("ol.story li", "Rang desk-derm-1").await;
    tablet.wait_for("#voice", "Microphone and speaker on").await;
    desk.wait_for("#voice", "Microphone and speaker on").await;
    tablet.screenshot("06-tablet-call-connected").await;
    // Five seconds of speech each way, then the crew hangs up from the page.
    let played = "return window.outpostVoice ? window.outpostVoice.played : 0;";
    let started = Instant::now();
    while tablet.eval(played).await.as_u64().unwrap_or(0) < 500 || desk.eval(played).await.as_u64().unwrap_or(0) < 500 {
        assert!(
            started.elapsed() < LIMIT,
            "the call's audio did not flow: tablet {} desk {}",
            tablet.eval(played).await,
            desk.eval(played).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let heard_js = "return window.outpostVoice.heard.flatMap((f) => Array.from(f));";
    let tablet_heard: Vec<i16> = serde_json::from_value(tablet.eval(heard_js).await).unwrap();
    // The tablet's page is reloaded mid-call (a browser short of memory does it unasked): the
    // call is still the crew's, and a tap takes its voice up again (a browser opens the speaker
    // only after a tap on the page).
    let audio_back = |what: &'static str| {
        let tablet = &tablet;
        async move {
            let started = Instant::now();
            while tablet.eval(played).await.as_u64().unwrap_or(0) < 100 {
                assert!(started.elapsed() < LIMIT, "no audio after {what}: {}", tablet.eval(played).await);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    tablet.client.refresh().await.unwrap();
    tablet.wait_for("#call-state", "Connected to desk-derm-1").await;
    tablet.wait_for("#voice", "this page was reloaded").await;
    tablet.click("#voice-on").await;
    tablet.wait_for("#voice", "Microphone and speaker on").await;
    audio_back("the reload on the session").await;
    // Reloaded on the list of sessions, the menu leads back to the silent call, and the tap on
    // it turns the voice on.
    tablet.eval("location.hash = '#/'; return null;").await;
    tablet.client.refresh().await.unwrap();
    tablet.wait_for("#nav a", "Your call: no sound on this page").await;
    tablet.click("#nav a:first-child").await;
    tablet.wait_for("#call-state", "Connected to desk-derm-1").await;
    tablet.wait_for("#voice", "Microphone and speaker on").await;
    let menu = "return document.getElementById('nav').textContent.includes('no sound');";
    assert_eq!(tablet.eval(menu).await, json!(false), "the menu still says the call has no sound");
    audio_back("the reload on the list").await;
    tablet.click("#hangup").await;
    tablet.wait_for("#call-state", "Call ended").await;
    desk.wait_for("#call-state", "Call ended").await;

    // Each side heard the other's voice: the tablet's page played the consultant's words; the
    // desk (its node's recording of the call) heard the crew's.
    let crew = outpost_node::media::read_wav(&crew_says).unwrap();
    let consultant = outpost_node::media::read_wav(&consultant_says).unwrap();
    let started = Instant::now();
    while !desk_heard.exists() {
        assert!(started.elapsed() < LIMIT, "the desk wrote no recording of the call");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let desk_recording = outpost_node::media::read_wav(&desk_heard).unwrap();
    let (t_right, t_wrong) = (correlation(&tablet_heard, &consultant), correlation(&tablet_heard, &crew));
    let (d_right, d_wrong) = (correlation(&desk_recording, &crew), correlation(&desk_recording, &consultant));
    eprintln!(
        "voice: the tablet's page heard the consultant r = {t_right:.2} (the crew's own words: {t_wrong:.2}); \
         the desk heard the crew r = {d_right:.2} (the consultant's own words: {d_wrong:.2})"
    );
    assert!(
        t_right > 0.6 && t_right > t_wrong + 0.1,
        "the tablet did not hear the consultant: {t_right:.2} vs {t_wrong:.2}"
    );
    assert!(d_right > 0.6 && d_right > d_wrong + 0.1, "the desk did not hear the crew: {d_right:.2} vs {d_wrong:.2}");

    // The consultant replies; the reply reaches the tablet, whose page (the session on screen)
    // marks it read, and the desk sees that.
    let advice = "Likely erythema multiforme. Stop amoxicillin, no conveyance needed; GP review in 48 h.";
    desk.type_into("#reply", advice).await;
    desk.click("#message-form button[type=submit]").await;
    tablet.wait_for("#messages li.theirs", "Reply").await;
    tablet.wait_for("#messages li.theirs", advice).await;
    desk.wait_for("#messages li.mine", "Read by requester").await;
    tablet.screenshot_at("07-tablet-reply-received", Some("#messages")).await;
    desk.screenshot_at("08-desk-reply-read", Some("#messages")).await;

    // Outcomes from both sides. The crew records its own first: the consultant's queue still
    // has the case open (the consultant owes theirs).
    tablet.choose("#outcome-form select[name=outcome]", "conveyance_avoided").await;
    tablet.click("#outcome-form button[type=submit]").await;
    desk.wait_for("#h-outcome + ul li", "Requester: Conveyance avoided").await;
    // The cards above the "Finished" heading, and those under it.
    let lists = "const fin = [...document.querySelectorAll('main h2')].find((e) => e.textContent === 'Finished'); \
                 const above = (u) => !fin || (u.compareDocumentPosition(fin) & Node.DOCUMENT_POSITION_FOLLOWING); \
                 const all = [...document.querySelectorAll('main ul.cards')]; \
                 return { open: all.filter(above).map((u) => u.textContent).join(' | '), \
                          finished: all.filter((u) => !above(u)).map((u) => u.textContent).join(' | ') };";
    desk.eval("location.hash = '#/'; return null;").await;
    desk.wait_for("main ul.cards a", summary).await;
    let shown = desk.eval(lists).await;
    assert!(shown["open"].as_str().is_some_and(|open| open.contains(summary)), "not among the open cases: {shown}");
    assert!(!shown["finished"].as_str().unwrap_or_default().contains(summary), "among the finished: {shown}");
    desk.click("main ul.cards a").await;
    desk.wait_for("main h1", summary).await;
    // The consultant has picked theirs, not yet saved, when a message from the crew arrives and
    // the page redraws: what was picked stays picked.
    desk.choose("#outcome-form select[name=outcome]", "advice_only").await;
    tablet.type_into("#reply", "Thank you, patient left at home with the leaflet").await;
    tablet.click("#message-form button[type=submit]").await;
    desk.wait_for("#messages li.theirs", "left at home").await;
    let picked = desk.eval("return document.querySelector('#outcome-form select[name=outcome]').value;").await;
    assert_eq!(picked, "advice_only", "a live update wiped the outcome being chosen");
    desk.click("#outcome-form button[type=submit]").await;
    tablet.wait_for("#h-outcome + ul li", "Consultant: Advice only").await;

    // For the record: the consultant's page shows the letter of the advice; the crew's page
    // saves the FHIR bundle; the patient withdraws consent for the photo on the tablet (a
    // second tap confirms) and the consultant's page says so.
    desk.click("#export-letter").await;
    desk.wait_for("#letter", "ADVICE GIVEN").await;
    desk.wait_for("#letter", "erythema").await;
    desk.screenshot_at("13-desk-letter", Some("#letter")).await;
    tablet.click("#export-fhir").await;
    tablet.wait_for("#export-state", "FHIR R4 bundle of").await;
    tablet.click("[data-withdraw]").await;
    tablet.wait_for("[data-withdraw]", "Tap again").await;
    tablet.click("[data-withdraw]").await;
    tablet.wait_for(".photos figcaption", "consent withdrawn").await;
    desk.wait_for(".photos figcaption", "consent withdrawn").await;
    // Nor is the copy the consultant's page had already fetched shown any more.
    desk.wait_for(".photos figure p", "Consent withdrawn: not shown").await;
    let visible =
        desk.eval("return [...document.querySelectorAll('.photos img')].filter((i) => !i.hidden).length;").await;
    assert_eq!(visible, 0, "a photo whose consent was withdrawn is still shown");
    tablet.assert_accessible("session with export").await;

    // Page weight and first render of the tablet's app (figures printed, weight bounded).
    let perf = tablet
        .eval(
            "const n = performance.getEntriesByType('navigation')[0]; \
             const r = performance.getEntriesByType('resource').filter((e) => e.name.includes('/app/')); \
             const p = performance.getEntriesByType('paint').find((e) => e.name === 'first-contentful-paint'); \
             return { bytes: n.encodedBodySize + r.reduce((s, e) => s + e.encodedBodySize, 0), fcp: p ? p.startTime : null };",
        )
        .await;
    eprintln!("tablet app: {} bytes, first contentful paint {} ms", perf["bytes"], perf["fcp"]);
    assert!(perf["bytes"].as_u64().unwrap() < 300 * 1024, "page weight {perf}");
    tablet.close().await;
    desk.close().await;
}

/// The tablet with its links cut: a session made offline says so, then climbs the ladder live
/// when the hub appears, without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tablet_page_keeps_working_offline_and_moves_up_the_ladder_live_when_the_link_returns() {
    let _one_at_a_time = SERIAL.lock().await;
    let mut f = fleetwide(false, None, "60");
    let tablet = Browser::start("tablet-offline", 1280, 800, None).await;
    tablet.sign_in(&f.amb_api, "Sam Patel", "482193").await;
    tablet.wait_for("#link", "No connection").await;
    tablet.click("a[href='#/new']").await;
    let summary = "Chest pain settled, ECG attached to follow";
    tablet.choose("#new-session select[name=service_line]", "cardiology").await;
    tablet.type_into("#new-session input[name=summary]", summary).await;
    tablet.type_into("#new-session textarea[name=details]", "No network on the moor; crew waiting").await;
    // No NHS number to hand: the patient named, with a date of birth and the incident.
    tablet.type_into("#new-session input[name=patient_name]", "Ann Example").await;
    tablet
        .eval("document.querySelector('#new-session input[name=birth_date]').value = '1948-03-14'; return null;")
        .await;
    tablet.type_into("#new-session input[name=incident]", "INC-4471").await;
    // A callback number that no one could ring is refused before anything is written.
    tablet.type_into("#new-session input[name=callback]", "call me").await;
    tablet.click("#new-session button[type=submit]").await;
    tablet.wait_for("#new-session .error", "Give a callback number").await;
    tablet.eval("document.querySelector('#new-session input[name=callback]').value = ''; return null;").await;
    tablet.type_into("#new-session input[name=callback]", "01632 960 001").await;
    tablet.click("#new-session button[type=submit]").await;
    tablet.wait_for("#messages li", "On this device only").await;
    tablet.wait_for("#h-patient + p", "Ann Example · born 1948-03-14").await;
    tablet.wait_for("#h-patient ~ p", "Incident INC-4471").await;
    // The tablet's own node restarts (an update) while a message is being typed: the page says
    // it cannot reach it, then picks up again by itself, the message still there.
    tablet.type_into("#reply", "Pain 2/10 now").await;
    let amb_api_addr = f.amb_api.trim_start_matches("http://").to_string();
    drop(f._daemons.remove(0));
    tablet.wait_for("#link", "Can’t reach this device’s outpost node").await;
    f._daemons.insert(0, daemon(&f.amb, &["--peer", &f.hub_quic, "--api", &amb_api_addr], &[]));
    tablet.wait_for("#link", "No connection").await;
    assert_eq!(tablet.eval("return document.getElementById('reply').value;").await, json!("Pain 2/10 now"));
    tablet.click("a[href='#/']").await;
    tablet.wait_for("ul.cards a", "On this device only").await;
    tablet.screenshot("09-tablet-offline").await;
    // Mark the page: a reload would lose it.
    tablet.eval("window.stillTheSamePage = true; return true;").await;

    let _hub = daemon(&f.hub, &["--listen", &f.hub_quic], &[]);
    tablet.wait_for("#link", "Connected").await;
    tablet.wait_for("ul.cards a", "At hub").await;
    assert_eq!(tablet.eval("return window.stillTheSamePage === true;").await, json!(true), "no reload");
    tablet.screenshot("10-tablet-back-online").await;
    let _ = &f.amb;
    tablet.close().await;
}

/// A call the desk does not answer: the hub arranges a callback, and says why, on the crew's
/// page; the consultant's page lists the callback owed with the number to ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_no_one_answers_becomes_a_callback_that_both_pages_show_with_its_reason() {
    let _one_at_a_time = SERIAL.lock().await;
    let f = fleetwide(true, None, "3");
    let tablet = Browser::start("tablet-callback", 1280, 800, None).await;
    let desk = Browser::start("desk-callback", 1600, 1000, None).await;
    tablet.sign_in(&f.amb_api, "Sam Patel", "482193").await;
    desk.sign_in(&f.desk_api, "Dr Ada Okafor", "447126").await;
    tablet.click("a[href='#/new']").await;
    let summary = "Blistering rash both shins, febrile";
    tablet.choose("#new-session select[name=service_line]", "dermatology").await;
    tablet.type_into("#new-session input[name=summary]", summary).await;
    tablet
        .type_into("#new-session textarea[name=details]", "Temp 38.4, HR 104; blisters tense, Nikolsky negative")
        .await;
    tablet.type_into("#new-session input[name=callback]", "07700 900456").await;
    tablet.click("#new-session button[type=submit]").await;
    tablet.wait_for("#messages li", "At consultant").await;
    // The desk's page rings; nobody answers it.
    tablet.click("#escalate").await;
    desk.wait_for("#ring h2", summary).await;
    tablet.wait_for("#call-state", "Callback arranged").await;
    let story = tablet.texts("ol.story li").await.join("\n");
    assert!(story.contains("did not answer"), "{story}");
    tablet.screenshot("11-tablet-callback-arranged").await;
    assert!(desk.eval("return document.getElementById('ring').hidden;").await == json!(true), "the ringing stopped");
    // The menu counts it at once, wherever the consultant is in the app.
    desk.wait_for("#nav a[href='#/callbacks']", "Callbacks owed (1)").await;
    tablet.wait_for("#nav a[href='#/callbacks']", "Awaiting callback (1)").await;
    desk.click("a[href='#/callbacks']").await;
    desk.wait_for("ul.cards a", summary).await;
    desk.wait_for("ul.cards a", "ring 07700 900456").await;
    desk.assert_accessible("callbacks owed").await;
    desk.screenshot("12-desk-callbacks-owed").await;
    // The crew closes the session from its page: nothing more can be written to it (no message
    // form, no call to ask for) until it is reopened. The consultant's outcome is not in: a
    // second tap confirms.
    tablet.click("#close-session").await;
    tablet.wait_for("#close-session", "Tap again").await;
    tablet.click("#close-session").await;
    tablet.wait_for("#h-status + p", "This session is closed").await;
    // Closing settles the callback: the consultant's screen says so as it happens.
    desk.wait_for("main p", "None owed").await;
    let menu = "return document.querySelector(\"#nav a[href='#/callbacks']\").textContent;";
    assert_eq!(desk.eval(menu).await, json!("Callbacks owed"), "the count stays after the close");
    let gone =
        "return document.getElementById('message-form') === null && document.getElementById('escalate') === null;";
    assert_eq!(tablet.eval(gone).await, json!(true), "forms shown on a closed session");
    tablet.click("#reopen").await;
    tablet.wait_for("#message-form button", "Send message").await;
    // The consultant is typing advice when the crew closes the session again: the words are
    // not lost with the form, and are back in the box when the session is reopened.
    let words = "Ringing you on 07700 900456 now";
    let page = tablet.eval("return location.hash;").await;
    desk.eval(&format!("location.hash = {page}; return null;")).await;
    desk.wait_for("main h1", summary).await;
    desk.type_into("#reply", words).await;
    tablet.click("#close-session").await;
    tablet.wait_for("#close-session", "Tap again").await;
    tablet.click("#close-session").await;
    tablet.wait_for("#h-status + p", "This session is closed").await;
    desk.wait_for("#unsent p", "Not sent: this session was closed while you were typing").await;
    desk.wait_for("#unsent blockquote", words).await;
    tablet.click("#reopen").await;
    desk.wait_for("#message-form button", "Send reply").await;
    assert_eq!(desk.eval("return document.getElementById('reply').value;").await, json!(words));
    // The consultant signs out and a colleague signs in on the same page: nothing of the first
    // one's work is shown to them (the words kept, the count asked for the first).
    desk.click("#signout").await;
    desk.type_into("#login input[name=name]", "Dr Ben Hale").await;
    desk.type_into("#login input[name=secret]", "903184").await;
    desk.click("#login button[type=submit]").await;
    desk.wait_for("header#bar:not([hidden]) #who", "Dr Ben Hale").await;
    desk.eval(&format!("location.hash = {page}; return null;")).await;
    desk.wait_for("#message-form button", "Send reply").await;
    let left = "return [document.getElementById('reply').value, document.getElementById('unsent') === null];";
    assert_eq!(desk.eval(left).await, json!(["", true]), "the last consultant's words shown to the next");
    tablet.close().await;
    desk.close().await;
}
