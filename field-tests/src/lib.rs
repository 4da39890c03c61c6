//! # field-tests
//!
//! Tests of what the `outpost` binary does in the field: real `outpost` processes, each with
//! its own SQLite directory, talking QUIC with mutual TLS through the user-space link emulator
//! (`outpost_node::linkem`) with the named profiles of `sync_protocol::links`, the same the
//! simulator uses. This library is the harness; the tests are in `tests/`:
//!
//! - `ladder.rs`: an ambulance's session with a message and three 2 MB photos over each rung
//!   of a degradation ladder (urban 4G to satellite), delivery times and wire bytes logged;
//! - `crash.rs`: SIGKILL of the hub and the edges at random moments during sync, restarts,
//!   nothing acknowledged lost, every replica converges;
//! - `identity.rs`: foreign, expired and revoked certificates refused, learning nothing; scope;
//! - `herd.rs`: many edges reconnecting to one hub at once after an outage.
//!
//! Two tiers. The fast tier runs with `cargo test --workspace` (and in CI). The full tier (the
//! whole ladder, the long crash loop, the 200-edge herd) is marked `#[ignore]` and runs with
//! `cargo test --release -p field-tests -- --include-ignored`. Every run keeps its JSON summary
//! in `target/field-results/NAME.json`; a failed run keeps its node directories and daemon logs
//! in `target/field-runs/NAME-failed-SEED/` (where a rerun does not clear them) and says so,
//! with its seed (`FIELD_SEED` reruns it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use outpost_node::linkem::{EmulatorOptions, LinkEmulator, LinkStats};
use serde_json::Value;

/// One field run: its directory, its seed and the binary under test.
#[derive(Debug)]
pub struct Field {
    /// Name of the run (the test).
    pub name: String,
    /// Where its nodes live: `target/field-runs/NAME`.
    pub dir: PathBuf,
    /// The `outpost` binary.
    pub bin: PathBuf,
    /// The seed of everything random the test decides (`FIELD_SEED` to rerun).
    pub seed: u64,
    target: PathBuf,
    ca: Option<PathBuf>,
}

impl Drop for Field {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Moved aside, so that a rerun (which starts by clearing `field-runs/NAME`) does not
            // take the only record of the failure with it. Daemons still running keep writing
            // to their open logs there.
            let kept = self.dir.with_file_name(format!("{}-failed-{}", self.name, self.seed));
            let _ = std::fs::remove_dir_all(&kept);
            let kept = if std::fs::rename(&self.dir, &kept).is_ok() { kept } else { self.dir.clone() };
            eprintln!(
                "field test {} FAILED (seed {}; rerun with FIELD_SEED={}): node directories and daemon logs kept in {}",
                self.name,
                self.seed,
                self.seed,
                kept.display()
            );
        } else if std::env::var_os("FIELD_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Field {
    /// Starts a run named `name` of the binary `bin` (pass `env!("CARGO_BIN_EXE_outpost-field-node")`).
    pub fn new(bin: &str, name: &str) -> Field {
        let bin = PathBuf::from(bin);
        let target = bin.parent().and_then(Path::parent).map_or_else(std::env::temp_dir, Path::to_path_buf);
        let dir = target.join("field-runs").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let seed = std::env::var("FIELD_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64 % 1_000_000_007)
        });
        eprintln!("field test {name}: seed {seed}, nodes in {}", dir.display());
        Field { name: name.to_string(), dir, bin, seed, target, ca: None }
    }

    /// Panics with the run's seed and where its logs are.
    pub fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!("{what}\n(field test {}, seed {}, logs in {})", self.name, self.seed, self.dir.display())
    }

    /// Runs `outpost ARGS`.
    pub fn outpost(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .env_remove("OUTPOST_NODE_KEY")
            .env_remove("OUTPOST_DIR")
            .output()
            .unwrap_or_else(|e| self.fail(format!("cannot run {}: {e}", self.bin.display())))
    }

    /// Runs `outpost ARGS` with extra environment variables.
    pub fn outpost_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .env_remove("OUTPOST_NODE_KEY")
            .env_remove("OUTPOST_DIR")
            .envs(env.iter().copied())
            .output()
            .unwrap_or_else(|e| self.fail(format!("cannot run {}: {e}", self.bin.display())))
    }

    /// Runs `outpost ARGS`, which must succeed; returns its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.outpost(args);
        if !out.status.success() {
            self.fail(format!(
                "outpost {args:?} exited {:?}\nstdout: {}\nstderr: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `outpost ARGS`, which must exit with `code`; returns standard error.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.outpost(args);
        if out.status.code() != Some(code) {
            self.fail(format!(
                "outpost {args:?}: expected exit {code}, got {:?}\nstdout: {}\nstderr: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The fleet CA of this run (made on first use).
    pub fn ca(&mut self) -> PathBuf {
        if let Some(ca) = &self.ca {
            return ca.clone();
        }
        let ca = self.dir.join("ca");
        self.ok(&["ca", "init", "--dir", s(&ca), "--fleet", "field"]);
        self.ca = Some(ca.clone());
        ca
    }

    /// Initialises a node of ICB QHM with a certificate of the run's CA. `extra` goes to `init`.
    pub fn node(&mut self, name: &str, role: &str, extra: &[&str]) -> PathBuf {
        self.node_in(name, role, "QHM", extra)
    }

    /// Initialises a node of ICB `icb` (same fleet CA) and issues its certificate.
    pub fn node_in(&mut self, name: &str, role: &str, icb: &str, extra: &[&str]) -> PathBuf {
        let ca = self.ca();
        let dir = self.dir.join(name);
        let mut args = vec!["init", "--dir", s(&dir), "--name", name, "--role", role, "--icb", icb];
        args.extend_from_slice(extra);
        self.ok(&args);
        self.ok(&["ca", "issue", "--ca", s(&ca), "--node", s(&dir)]);
        dir
    }

    /// Starts `outpost run --dir DIR ARGS`; its log goes to `DIR/daemon.log`.
    pub fn daemon(&self, dir: &Path, args: &[&str]) -> Daemon {
        self.daemon_env(dir, args, &[])
    }

    /// Starts `outpost run` with extra environment variables.
    pub fn daemon_env(&self, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut d = Daemon {
            bin: self.bin.clone(),
            dir: dir.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            child: None,
            starts: 0,
        };
        d.start();
        d
    }

    /// Creates a session on an edge; returns its id once it is on disk.
    pub fn new_session(&self, dir: &Path, line: &str, care_setting: &str, summary: &str) -> String {
        self.ok(&[
            "session",
            "new",
            "--dir",
            s(dir),
            "--service-line",
            line,
            "--priority",
            "urgent",
            "--care-setting",
            care_setting,
            "--nhs-number",
            "9434765919",
            "--summary",
            summary,
        ])
        .trim()
        .to_string()
    }

    /// Sends a message; returns its id once it is on disk.
    pub fn message(&self, dir: &Path, id: &str, text: &str) -> String {
        let out = self.ok(&["message", "send", "--dir", s(dir), id, text, "--json"]);
        json(&out)["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| self.fail(format!("no message id in {out}")))
    }

    /// Attaches a photo; returns its hash once it is on disk.
    pub fn photo(&self, dir: &Path, id: &str, file: &Path, view: &str) -> String {
        let out = self.ok(&[
            "photo",
            "attach",
            "--dir",
            s(dir),
            id,
            s(file),
            "--view",
            view,
            "--body-site",
            "left forearm",
            "--consent",
            "verbal",
            "--json",
        ]);
        json(&out)["hash"].as_str().map(str::to_string).unwrap_or_else(|| self.fail(format!("no photo hash in {out}")))
    }

    /// The session as the node holds it (the JSON view), or none.
    pub fn export(&self, dir: &Path, id: &str) -> Option<Value> {
        let out = self.outpost(&["session", "export", "--dir", s(dir), id, "--format", "json"]);
        out.status.success().then(|| json(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Ids of every session the node holds.
    pub fn session_ids(&self, dir: &Path) -> Vec<String> {
        let out = self.ok(&["session", "list", "--dir", s(dir), "--json", "--limit", "1000000"]);
        json(&out)
            .as_array()
            .map(|a| a.iter().filter_map(|v| v["id"].as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }

    /// Polls `check` every `every` until it holds; panics after `limit`. Returns the time it took.
    pub fn wait(&self, limit: Duration, every: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        loop {
            if check() {
                return start.elapsed();
            }
            if start.elapsed() > limit {
                self.fail(format!("waited {limit:?} for {what}"));
            }
            std::thread::sleep(every);
        }
    }

    /// Writes the run's JSON summary to `target/field-results/NAME.json` and returns the path.
    pub fn record(&self, summary: &Value) -> PathBuf {
        let dir = self.target.join("field-results");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{}.json", self.name));
        let text = serde_json::to_string_pretty(summary).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("cannot write {}: {e}", path.display());
        }
        eprintln!("field test {}: summary in {}", self.name, path.display());
        path
    }
}

/// A path as `&str` (the test directories are always UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// Parses JSON output.
pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// Whether an item (message or photo of the JSON view) carries a receipt of `level` from `node`.
pub fn has_receipt(item: &Value, level: &str, node: &str) -> bool {
    item["receipts"]
        .as_array()
        .is_some_and(|rs| rs.iter().any(|r| r["level"].as_str() == Some(level) && r["node"].as_str() == Some(node)))
}

/// One scrape of a daemon's `/metrics` (served at `addr`), as text; `None` while it does not
/// answer.
pub fn scrape(addr: &str) -> Option<String> {
    let mut resp = ureq::get(&format!("http://{addr}/metrics")).call().ok()?;
    resp.body_mut().read_to_string().ok()
}

/// The value of the sample `name` (with its labels as written, if any) in a scrape.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name).then(|| v.parse().ok()).flatten()
    })
}

/// A UDP port free on loopback now.
pub fn free_addr() -> String {
    let port =
        std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).unwrap_or(45_000);
    format!("127.0.0.1:{port}")
}

/// A synthetic JPEG photograph of about `target_bytes`, written to `path`; returns its size.
pub fn photo_file(path: &Path, seed: u64, target_bytes: usize) -> u64 {
    // 1920x1440 at quality 90 is about 2.7 MB; scale the area to the size wanted.
    let scale = (target_bytes as f64 / 2_700_000.0).sqrt();
    let (w, h) = (((1920.0 * scale) as u32).max(64), ((1440.0 * scale) as u32).max(48));
    let photo = outpost_node::photo::synthetic_jpeg(w, h, seed).unwrap_or_else(|e| panic!("synthetic photo: {e}"));
    std::fs::write(path, &photo.bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    photo.bytes.len() as u64
}

/// An `outpost run` process that can be killed without warning and started again.
#[derive(Debug)]
pub struct Daemon {
    bin: PathBuf,
    /// Its node directory.
    pub dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// How many times it was started.
    pub starts: u32,
}

impl Daemon {
    /// Starts it (again).
    pub fn start(&mut self) {
        if self.child.is_some() {
            return;
        }
        let log = self.dir.join("daemon.log");
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log);
        let stderr = file.map_or_else(|_| Stdio::null(), Stdio::from);
        let child = Command::new(&self.bin)
            .arg("run")
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .env_remove("OUTPOST_NODE_KEY")
            .env("OUTPOST_LOG", std::env::var("OUTPOST_LOG").unwrap_or_else(|_| "info".into()))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        self.starts += 1;
    }

    /// SIGKILL: no warning, no clean shutdown.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it is running.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Peak resident memory of the running process so far (`VmHWM`), KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Resident memory now (`VmRSS`), KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The link emulator in front of a peer, on its own runtime.
#[derive(Debug)]
pub struct Link {
    emu: Option<LinkEmulator>,
    rt: tokio::runtime::Runtime,
    /// The address to dial instead of the peer's.
    pub addr: String,
    /// The profile's name.
    pub profile: String,
}

impl Link {
    /// Relays to `target` through the named profile (no random outages: blackouts are commanded).
    pub fn start(profile: &str, target: &str, seed: u64) -> Link {
        let p = sync_protocol::links::profile(profile).unwrap_or_else(|| panic!("no link profile {profile}"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
        let target = target.parse().unwrap_or_else(|e| panic!("bad address {target}: {e}"));
        let opts = EmulatorOptions { seed: seed.max(1), ..EmulatorOptions::default() };
        let emu = rt
            .block_on(LinkEmulator::start(([127, 0, 0, 1], 0).into(), target, p, opts))
            .unwrap_or_else(|e| panic!("link emulator: {e}"));
        let addr = emu.local_addr.to_string();
        Link { emu: Some(emu), rt, addr, profile: profile.to_string() }
    }

    /// Brings the link down or up.
    pub fn set_up(&self, up: bool) {
        if let Some(e) = &self.emu {
            e.set_up(up);
        }
    }

    /// A NAT rebinding: the client's datagrams reach the peer from a new address from now on,
    /// and replies to the old one are dropped ([`LinkEmulator::rebind`]).
    pub fn rebind(&self) {
        if let Some(e) = &self.emu {
            e.rebind();
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> LinkStats {
        self.emu.as_ref().map(LinkEmulator::stats).unwrap_or_default()
    }

    /// Bytes both ways as the endpoints sent them (retransmissions included).
    pub fn wire_bytes(&self) -> u64 {
        let st = self.stats();
        st.up_bytes_in + st.down_bytes_in
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _guard = self.rt.enter();
        self.emu = None;
    }
}

/// A fleet member with a valid certificate that speaks the sync protocol by hand: the
/// adversarial tests' stolen tablet (or rogue desk). It sends whatever frames or bytes a test
/// scripts, and keeps every frame and byte the other side sends back.
pub struct Intruder {
    rt: tokio::runtime::Runtime,
    conn: quinn::Connection,
    sync: quinn::SendStream,
    _blob: quinn::SendStream,
    /// The lanes from the other side, when they are never read.
    _unread: Vec<quinn::RecvStream>,
    frames: std::sync::Arc<std::sync::Mutex<Vec<sync_protocol::wire::Frame>>>,
    raw: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    /// Frames sent so far (the other side's Marks count them).
    sent: u64,
    /// The intruder's own node (its store signs what it forges).
    pub node: outpost_node::node::Node,
}

/// Connections made with a fleet member's real certificate that complete their handshakes and
/// then say nothing, kept alive by QUIC pings: a tablet holding a node's connection slots.
pub struct Silent {
    _rt: tokio::runtime::Runtime,
    conns: Vec<quinn::Connection>,
}

impl std::fmt::Debug for Silent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Silent").field("connections", &self.conns.len()).finish_non_exhaustive()
    }
}

impl Silent {
    /// Makes `n` such connections as the node in `dir` to `addr`.
    pub fn connect(dir: &Path, addr: &str, n: usize) -> Silent {
        use outpost_node::{config::NodeDir, net, node::Node};
        let node = Node::open(&NodeDir::new(dir)).unwrap_or_else(|e| panic!("silent node: {e}"));
        let identity = net::load_identity(&node).unwrap_or_else(|e| panic!("silent identity: {e}"));
        let mut cfg = net::client_config(&identity, None).unwrap_or_else(|e| panic!("client config: {e}"));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_secs(1)));
        cfg.transport_config(std::sync::Arc::new(transport));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        let addr: std::net::SocketAddr = addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"));
        let conns = rt.block_on(async {
            let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")))
                .unwrap_or_else(|e| panic!("endpoint: {e}"));
            ep.set_default_client_config(cfg);
            let mut conns = Vec::new();
            for _ in 0..n {
                let c = ep.connect(addr, outpost_node::tls::SERVER_NAME).unwrap_or_else(|e| panic!("connect: {e}"));
                conns.push(c.await.unwrap_or_else(|e| panic!("handshake: {e}")));
            }
            conns
        });
        Silent { _rt: rt, conns }
    }

    /// How many of them the other side has closed.
    pub fn closed(&self) -> usize {
        self.conns.iter().filter(|c| c.close_reason().is_some()).count()
    }
}

impl std::fmt::Debug for Intruder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intruder").field("node", &self.node.config().name).finish_non_exhaustive()
    }
}

impl Intruder {
    /// Connects as the node in `dir` (its real certificate) to `addr`, opens both lanes and says
    /// Hello.
    pub fn connect(dir: &Path, addr: &str) -> Intruder {
        Intruder::connect_with(dir, addr, true)
    }

    /// [`Intruder::connect`], reading nothing the other side sends: its answers wait in its own
    /// memory, and then in the streams' windows.
    pub fn connect_deaf(dir: &Path, addr: &str) -> Intruder {
        Intruder::connect_with(dir, addr, false)
    }

    fn connect_with(dir: &Path, addr: &str, listen: bool) -> Intruder {
        use outpost_node::{config::NodeDir, net, node::Node};
        let node = Node::open(&NodeDir::new(dir)).unwrap_or_else(|e| panic!("intruder node: {e}"));
        let identity = net::load_identity(&node).unwrap_or_else(|e| panic!("intruder identity: {e}"));
        let crl = node.revocations().ok().flatten().map(|(_, der)| der);
        let cfg = net::client_config(&identity, crl.as_deref()).unwrap_or_else(|e| panic!("client config: {e}"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        let frames = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let raw = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let addr: std::net::SocketAddr = addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"));
        let (conn, sync, blob, unread) = rt.block_on(async {
            let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")))
                .unwrap_or_else(|e| panic!("endpoint: {e}"));
            ep.set_default_client_config(cfg);
            let conn = ep
                .connect(addr, outpost_node::tls::SERVER_NAME)
                .unwrap_or_else(|e| panic!("connect: {e}"))
                .await
                .unwrap_or_else(|e| panic!("handshake: {e}"));
            let (mut lanes, mut unread) = (Vec::new(), Vec::new());
            for lane in [1u8, 2u8] {
                let (mut send, recv) = conn.open_bi().await.unwrap_or_else(|e| panic!("open lane: {e}"));
                send.write_all(&[lane]).await.unwrap_or_else(|e| panic!("lane tag: {e}"));
                lanes.push(send);
                if !listen {
                    unread.push(recv);
                    continue;
                }
                let (frames, raw) = (frames.clone(), raw.clone());
                tokio::spawn(async move {
                    let mut recv = recv;
                    let mut dec = sync_protocol::wire::FrameDecoder::new();
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(Some(n)) = recv.read(&mut buf).await {
                        if let Ok(mut r) = raw.lock() {
                            r.extend_from_slice(&buf[..n]);
                        }
                        dec.feed(&buf[..n]);
                        while let Ok(Some(f)) = dec.next_frame() {
                            if let Ok(mut v) = frames.lock() {
                                v.push(f);
                            }
                        }
                    }
                });
            }
            let blob = lanes.pop().unwrap_or_else(|| panic!("no blob lane"));
            let sync = lanes.pop().unwrap_or_else(|| panic!("no sync lane"));
            (conn, sync, blob, unread)
        });
        let mut me = Intruder { rt, conn, sync, _blob: blob, _unread: unread, frames, raw, sent: 0, node };
        let hello = sync_protocol::wire::Frame::Hello(sync_protocol::wire::Hello {
            min_version: sync_protocol::wire::MIN_VERSION,
            max_version: sync_protocol::wire::MAX_VERSION,
            node: me.node.config().name.clone(),
            crl_number: 0,
        });
        me.send(&[hello]);
        me
    }

    /// Sends frames on the sync lane.
    pub fn send(&mut self, frames: &[sync_protocol::wire::Frame]) {
        self.sent += frames.len() as u64;
        let mut bytes = Vec::new();
        for f in frames {
            f.encode(&mut bytes);
        }
        self.send_raw(&bytes);
    }

    /// Sends frames on the sync lane unless the other side takes none of them within `limit`
    /// (its stream's window full); whether they were all taken.
    pub fn try_send(&mut self, frames: &[sync_protocol::wire::Frame], limit: Duration) -> bool {
        let mut bytes = Vec::new();
        for f in frames {
            f.encode(&mut bytes);
        }
        let sync = &mut self.sync;
        let write = async { tokio::time::timeout(limit, sync.write_all(&bytes)).await };
        let taken = matches!(self.rt.block_on(write), Ok(Ok(())));
        if taken {
            self.sent += frames.len() as u64;
        }
        taken
    }

    /// Sends raw bytes on the sync lane (garbage, oversized headers).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let sync = &mut self.sync;
        // A send into a connection the other side closed fails: that is an outcome, not an error.
        let _ = self.rt.block_on(sync.write_all(bytes));
    }

    /// Sends one QUIC datagram (a call's voice or hang-up, a probe); false if the connection
    /// cannot carry it.
    pub fn send_datagram(&self, bytes: &[u8]) -> bool {
        self.conn.send_datagram(bytes.to_vec().into()).is_ok()
    }

    /// Waits `d`, then returns every frame received so far.
    pub fn settle(&self, d: Duration) -> Vec<sync_protocol::wire::Frame> {
        std::thread::sleep(d);
        self.frames.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Sends frames and waits (at most `limit`) until the other side's Mark says it has
    /// processed every frame sent so far; returns the frames received meanwhile.
    pub fn exchange(
        &mut self,
        frames: &[sync_protocol::wire::Frame],
        limit: Duration,
    ) -> Vec<sync_protocol::wire::Frame> {
        let start = self.settle(Duration::ZERO).len();
        self.send(frames);
        let want = self.sent;
        let deadline = std::time::Instant::now() + limit;
        loop {
            let got = self.settle(Duration::from_millis(50)).split_off(start);
            let done =
                got.iter().any(|f| matches!(f, sync_protocol::wire::Frame::Mark { received, .. } if *received >= want));
            if done || std::time::Instant::now() > deadline {
                return got;
            }
        }
    }

    /// Waits (at most `limit`) until a received frame satisfies `pred`; returns every frame.
    pub fn wait_for(
        &self,
        limit: Duration,
        pred: impl Fn(&sync_protocol::wire::Frame) -> bool,
    ) -> Vec<sync_protocol::wire::Frame> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let got = self.settle(Duration::from_millis(50));
            if got.iter().any(&pred) || std::time::Instant::now() > deadline {
                return got;
            }
        }
    }

    /// Every byte received so far, on both lanes.
    pub fn received(&self) -> Vec<u8> {
        self.raw.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Why the connection closed, if it has.
    pub fn closed(&self) -> Option<String> {
        self.conn.close_reason().map(|r| r.to_string())
    }

    /// The changes of `doc` since `before`, with this node's signatures (as a stolen tablet
    /// would sign what it forges).
    pub fn signed(
        &self,
        doc: &mut sync_protocol::SessionDoc,
        before: &[automerge::ChangeHash],
    ) -> (Vec<u8>, Vec<[u8; 64]>) {
        let changes = doc.automerge().get_changes(before);
        let bytes = changes.iter().flat_map(|c| c.raw_bytes().to_vec()).collect();
        let sigs = changes.iter().map(|c| self.node.raw_store_ref().identity().sign(&c.hash())).collect();
        (bytes, sigs)
    }
}
