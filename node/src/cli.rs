//! The `outpost` command line: argument parsing, output (text or `--json`) and exit codes.
//!
//! Exit codes (also in `docs/cli.md`):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | an unexpected failure (storage damaged, I/O error) |
//! | 2 | bad input: an invalid argument or value; nothing was written |
//! | 3 | the directory is not a usable node (not initialised, wrong or exposed key) |
//! | 4 | no such session or photo on this node |
//! | 5 | the disk is full; nothing was written |
//! | 6 | the peer could not be reached, refused us, or the sync failed |

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use sync_protocol::NhsNumber;
use sync_protocol::call::{RotaDesk, calls_in};
use sync_protocol::directory::{DirectoryError, DirectoryView, Hours, LineEntry, LineJson};
use sync_protocol::session::{LogValue, Patient, Requester, Service, SessionView};
use sync_protocol::vocab::{
    CareSetting, Channel, ConsentKind, ConsentScope, NhsVerification, Outcome, PhotoView, Priority, Role, ServiceLine,
    Side, Status,
};

use crate::config::{ConfigError, NodeDir};
use crate::crypto::CryptoError;
use crate::node::{InitParams, Node, NodeError, PhotoRequest, SessionRequest, now_ms};
use crate::photo;
use crate::store::people::{Credential, NewPerson, PersonRole};
use crate::store::{ListFilter, SessionCard, StoreError};

/// outpost: an offline-first sync node for clinical advice sessions.
#[derive(Debug, Parser)]
#[command(name = "outpost", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct DirArg {
    /// The node's directory (or set OUTPOST_DIR).
    #[arg(long, env = "OUTPOST_DIR", value_name = "DIR")]
    dir: PathBuf,
}

#[derive(Debug, Args)]
struct JsonArg {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a node directory: configuration, private key, empty encrypted store.
    Init {
        #[command(flatten)]
        dir: DirArg,
        /// Node name, unique in the fleet (a-z, 0-9, '-', '.').
        #[arg(long)]
        name: String,
        /// edge (ambulance, surgery), hub (one per ICB) or desk (consultant).
        #[arg(long, value_parser = Role::parse)]
        role: Role,
        /// ODS code of the organisation running the node.
        #[arg(long)]
        org: Option<String>,
        /// ICB code.
        #[arg(long)]
        icb: Option<String>,
        /// For a desk: a service line it answers (repeat for several).
        #[arg(long = "service-line", value_parser = ServiceLine::parse)]
        lines: Vec<ServiceLine>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// The fleet certificate authority: create it, issue node certificates, revoke them.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Copy the node's store, still sealed, into one file, while the daemon runs.
    Backup {
        #[command(flatten)]
        dir: DirArg,
        /// The backup file to write (must not exist).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Restore a node from a backup: into a new directory (a replaced tablet), or into the
    /// node's own directory when its store is missing. Then run it: peers send back what the
    /// backup lacks.
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        #[command(flatten)]
        dir: DirArg,
        /// The node's data key (a copy of its node.key; or set OUTPOST_NODE_KEY). Not needed
        /// when restoring into the node's own directory.
        #[arg(long)]
        key_file: Option<PathBuf>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// The node's data key (what seals its store at rest).
    #[command(subcommand)]
    Key(KeyCommand),
    /// This node's fleet certificate, the right way round: request (the key stays here),
    /// install what the CA signed.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Run the node: serve QUIC, dial peers, keep every replica in sync. Settings come from
    /// D/outpost.toml, then OUTPOST_* variables, then these flags (`outpost config show`).
    Run {
        #[command(flatten)]
        dir: DirArg,
        /// Address to listen on (for example 0.0.0.0:4433); hubs listen, edges usually do not.
        /// [setting listen]
        #[arg(long)]
        listen: Option<String>,
        /// A peer to dial and keep dialling, host:port (repeat for several); a name is
        /// resolved again at every dial. [setting peers]
        #[arg(long = "peer")]
        peers: Vec<String>,
        /// On a desk: answer every call that rings here (for unattended test and demo desks).
        #[arg(long)]
        auto_answer: bool,
        /// On a desk: a WAV file to play into every call it takes (default: silence).
        #[arg(long)]
        play: Option<String>,
        /// On a desk: record every call it takes into this WAV file (8 kHz mono).
        #[arg(long)]
        record: Option<String>,
        /// Serve the local HTTP API for the clinicians' apps on this address (for example
        /// 127.0.0.1:8080). Users come from `outpost user add`. Beyond loopback (a surgery box
        /// serving its LAN) it needs --api-cert and --api-key, and serves HTTPS. [setting api.listen]
        #[arg(long)]
        api: Option<String>,
        /// Serve the API over TLS with this certificate (PEM; the certificate, then any
        /// intermediates), from a PKI the clients trust. [setting api.cert]
        #[arg(long)]
        api_cert: Option<String>,
        /// The private key of --api-cert (PEM). [setting api.key]
        #[arg(long)]
        api_key: Option<String>,
        /// Serve Prometheus /metrics, /healthz and /readyz on this address, no token (keep it on
        /// loopback or the management network). [setting metrics.listen]
        #[arg(long)]
        metrics: Option<String>,
        /// Log lines as text (for people) or json (for a log collector). [setting log.format]
        #[arg(long)]
        log_format: Option<String>,
        /// error, warn, info, debug or trace (or a tracing filter). [setting log.level]
        #[arg(long)]
        log_level: Option<String>,
    },
    /// How this node runs: the settings in effect and where each came from.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Reconcile once with a peer and report what it cost.
    Sync {
        #[command(flatten)]
        dir: DirArg,
        /// The peer's address, host:port (a name, an IPv4 address or a bracketed IPv6 one).
        #[arg(long)]
        peer: crate::net::PeerAddr,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Relay UDP through an emulated link (delay, loss, bandwidth, blackouts), to try outpost
    /// over a bad link by hand. Type `down`, `up` or `down SECONDS` on its input.
    Linkem {
        /// Address to listen on (what the client dials).
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Where to relay to (the real peer), host:port.
        #[arg(long)]
        to: crate::net::PeerAddr,
        /// urban-4g, rural-a-road, cell-edge, 3g-fallback, remote-moor, rural-surgery or satellite.
        #[arg(long, default_value = "rural-a-road")]
        profile: String,
        /// Also black out at random, following the profile's availability.
        #[arg(long)]
        outages: bool,
        /// Seed of the random generator (0: random).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Create, list, show, export and move sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Messages in a session.
    #[command(subcommand)]
    Message(MessageCommand),
    /// Photos in a session.
    #[command(subcommand)]
    Photo(PhotoCommand),
    /// Outcomes of a session.
    #[command(subcommand)]
    Outcome(OutcomeCommand),
    /// Escalate a session to a live call, answer one, see how a call went.
    #[command(subcommand)]
    Call(CallCommand),
    /// The ICB's directory: service lines, their hours and channels, and each line's rota.
    #[command(subcommand)]
    Rota(RotaCommand),
    /// The people who use this node through its local API (`outpost run --api`).
    #[command(subcommand)]
    User(UserCommand),
    /// What the node holds: sessions, sizes, audit chain.
    Status {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// The audit chain: who did what, when, from which device.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Show a day's offline work on one edge node, in a temporary directory.
    Demo {
        /// Keep the node directory here instead of a temporary one.
        #[arg(long)]
        keep: Option<PathBuf>,
        /// At the end, keep the fleet running and the apps' addresses open until Ctrl-C.
        #[arg(long)]
        serve: bool,
    },
    /// Print the local API's OpenAPI document (what `run --api` serves at /api/openapi.json;
    /// checked in as docs/api.json).
    Openapi,
    /// Tools for tests (not for clinical use).
    #[command(subcommand, hide = true)]
    Debug(DebugCommand),
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Re-seal the whole store under a new data key, then retire the old key. Stop the daemon
    /// first. Killed at any moment, the next command finishes or rolls it back: no value is
    /// ever left under a key the node does not have.
    Rotate {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        json: JsonArg,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Make a new key for this node (kept, sealed, in its store) and a certificate request
    /// for the fleet CA. The current certificate, if any, stays in use until the new one is
    /// installed (renewal).
    Request {
        #[command(flatten)]
        dir: DirArg,
        /// Where to write the request (PEM); default D/NAME.csr.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Install the certificate the CA signed for this node's request (the file `outpost ca
    /// sign` wrote: the node's certificate, then the CA's).
    Install {
        #[command(flatten)]
        dir: DirArg,
        /// The signed certificate file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print every setting of `outpost run` in effect for this directory and where it came from
    /// (default, D/outpost.toml, an OUTPOST_* variable). Exit 2 if a setting is invalid.
    Show {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        json: JsonArg,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create a fleet certificate authority in a new directory.
    Init {
        /// The CA's directory.
        #[arg(long)]
        dir: PathBuf,
        /// The fleet's name.
        #[arg(long, default_value = "outpost")]
        fleet: String,
    },
    /// Issue a node its certificate (naming its name, role, organisation, ICB and lines).
    Issue {
        /// The CA's directory.
        #[arg(long)]
        ca: PathBuf,
        /// The node's directory.
        #[arg(long)]
        node: PathBuf,
        /// Days of validity.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Issue a certificate that has already expired (to test refusal).
        #[arg(long, hide = true)]
        expired: bool,
    },
    /// Sign a node's certificate request (`outpost cert request`) on the CA's machine, which
    /// never sees the node's key. Prints the identity it certifies; check it before carrying
    /// the certificate back.
    Sign {
        /// The CA's directory.
        #[arg(long)]
        ca: PathBuf,
        /// The request file (PEM).
        request: PathBuf,
        /// Days of validity.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Where to write the certificate chain; default NAME.pem beside the request.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke every certificate of a node and sign a new revocation list.
    Revoke {
        /// The CA's directory.
        #[arg(long)]
        ca: PathBuf,
        /// The node's name.
        name: String,
        /// Install the new list in these node directories too (it then spreads by sync).
        #[arg(long = "publish")]
        publish: Vec<PathBuf>,
    },
    /// Install the CA's current revocation list in a node (it then spreads by sync).
    Publish {
        /// The CA's directory.
        #[arg(long)]
        ca: PathBuf,
        /// The node's directory.
        #[arg(long)]
        node: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum SessionCommand {
    /// Create a session; prints its id.
    New(Box<NewSessionArgs>),
    /// List sessions, newest first.
    List {
        #[command(flatten)]
        dir: DirArg,
        /// Only sessions with this status.
        #[arg(long, value_parser = Status::parse)]
        status: Option<Status>,
        /// Only sessions of this service line.
        #[arg(long, value_parser = ServiceLine::parse)]
        service_line: Option<ServiceLine>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Show one session with its messages, photos and receipts. Writes no receipt unless
    /// `--read` says a person has read it.
    Show {
        #[command(flatten)]
        dir: DirArg,
        /// Session id (or a unique prefix of it).
        id: String,
        /// A person has now read it: record this node's "read" receipt on every message
        /// written elsewhere (the sender sees it once the receipt reaches them).
        #[arg(long)]
        read: bool,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Export a session as raw Automerge bytes or as its JSON view.
    Export {
        #[command(flatten)]
        dir: DirArg,
        /// Session id (or a unique prefix of it).
        id: String,
        /// automerge (binary, for other Automerge implementations) or json.
        #[arg(long, value_parser = ["automerge", "json"])]
        format: String,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Submit a draft, or mark a session closed or cancelled.
    SetStatus {
        #[command(flatten)]
        dir: DirArg,
        /// Session id (or a unique prefix of it).
        id: String,
        /// queued, closed, cancelled, ...
        #[arg(value_parser = Status::parse)]
        status: Status,
    },
    /// Reopen a closed or cancelled session.
    Reopen {
        #[command(flatten)]
        dir: DirArg,
        /// Session id (or a unique prefix of it).
        id: String,
    },
    /// Share a session with a node outside its default scope (another surgery, a named desk).
    Share {
        #[command(flatten)]
        dir: DirArg,
        /// Session id (or a unique prefix of it).
        id: String,
        /// The node's name.
        node: String,
    },
}

#[derive(Debug, Args)]
struct NewSessionArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Specialty: dermatology, cardiology, gastroenterology, emergency_medicine, paediatrics, haematology, gynaecology.
    #[arg(long, value_parser = ServiceLine::parse)]
    service_line: ServiceLine,
    /// routine, urgent or two-week-wait.
    #[arg(long, value_parser = Priority::parse, default_value = "routine")]
    priority: Priority,
    /// gp_elective, gp_urgent, ambulance_on_scene, 111 or care_home.
    #[arg(long, value_parser = CareSetting::parse)]
    care_setting: CareSetting,
    /// call, photo or message (default: photo for dermatology, message otherwise).
    #[arg(long, value_parser = Channel::parse)]
    channel: Option<Channel>,
    /// The patient's NHS number (checked with modulus 11).
    #[arg(long, value_parser = NhsNumber::parse)]
    nhs_number: Option<NhsNumber>,
    /// Trace status of the NHS number, 01 to 08 (default 02, not traced; 07 without a number).
    #[arg(long, value_parser = NhsVerification::parse)]
    nhs_verification: Option<NhsVerification>,
    /// Patient name, when there is no verified NHS number.
    #[arg(long)]
    patient_name: Option<String>,
    /// Patient date of birth (YYYY-MM-DD).
    #[arg(long)]
    birth_date: Option<String>,
    /// The question, in a few lines.
    #[arg(long)]
    summary: String,
    /// Requester's professional registration number (GMC, NMC or HCPC).
    #[arg(long)]
    registration: Option<String>,
    /// Requester's role (paramedic, GP, ...).
    #[arg(long)]
    requester_role: Option<String>,
    /// Vehicle call-sign.
    #[arg(long)]
    call_sign: Option<String>,
    /// Incident number.
    #[arg(long)]
    incident: Option<String>,
    /// Number to call back.
    #[arg(long)]
    callback: Option<String>,
    /// Keep as a draft instead of queueing it.
    #[arg(long)]
    draft: bool,
    /// A key of the caller's for this request (a UUID will do): sent again with the same
    /// request, it returns the first session and creates nothing.
    #[arg(long)]
    client_key: Option<String>,
    #[command(flatten)]
    json: JsonArg,
}

#[derive(Debug, Subcommand)]
enum MessageCommand {
    /// Send a message; prints its id once it is stored durably on this device.
    Send {
        #[command(flatten)]
        dir: DirArg,
        /// Session id (or a unique prefix of it).
        id: String,
        /// The message.
        text: String,
        /// Id of the message this answers.
        #[arg(long)]
        reply_to: Option<String>,
        /// A key of the caller's for this message: sent again with the same message, it
        /// returns the first message's id and sends nothing.
        #[arg(long)]
        client_key: Option<String>,
        #[command(flatten)]
        json: JsonArg,
    },
}

#[derive(Debug, Subcommand)]
enum PhotoCommand {
    /// Attach a JPEG or PNG photo (checked, sealed and stored in chunks).
    Attach {
        #[command(flatten)]
        dir: DirArg,
        /// Session id (or a unique prefix of it).
        id: String,
        /// The photo file.
        file: PathBuf,
        /// site, close-up or dermoscopic.
        #[arg(long, value_parser = PhotoView::parse)]
        view: PhotoView,
        /// Where on the body.
        #[arg(long)]
        body_site: String,
        /// How consent was given: verbal, implied or written.
        #[arg(long, value_parser = ConsentKind::parse)]
        consent: ConsentKind,
        /// What the consent covers: record-only or teaching.
        #[arg(long, value_parser = ConsentScope::parse, default_value = "record_only")]
        consent_scope: ConsentScope,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Write a stored photo's bytes to a file (checked against its hash).
    Get {
        #[command(flatten)]
        dir: DirArg,
        /// The photo's BLAKE3 hash.
        hash: String,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
        /// Write the small preview kept on the device instead (after the photo went to the hub).
        #[arg(long)]
        thumbnail: bool,
        /// A person is opening it: record this node's "read" receipt on the photo.
        #[arg(long, conflicts_with = "thumbnail")]
        read: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CallCommand {
    /// Ask for a live call with a consultant about a session (on the requester's edge). The
    /// hub rings a desk of the line's rota once that desk holds the whole case, or arranges a
    /// callback when the link cannot carry a call or no one answers.
    Escalate {
        #[command(flatten)]
        dir: DirArg,
        /// Session id (or a unique prefix of it).
        id: String,
        /// Wait up to this many seconds for the outcome (connected or callback), printing each
        /// step as it reaches this device; with --play, until the call has ended.
        #[arg(long)]
        wait: Option<u64>,
        /// A WAV file to speak into the call (the node's daemon sends it; the call ends with it).
        #[arg(long)]
        play: Option<PathBuf>,
        /// Record what the consultant says into this WAV file (8 kHz mono).
        #[arg(long)]
        record: Option<PathBuf>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Answer the call ringing at this desk in a session.
    Answer {
        #[command(flatten)]
        dir: DirArg,
        /// Session id (or a unique prefix of it).
        id: String,
    },
    /// The escalations of a session, step by step.
    Status {
        #[command(flatten)]
        dir: DirArg,
        /// Session id (or a unique prefix of it).
        id: String,
        #[command(flatten)]
        json: JsonArg,
    },
}

#[derive(Debug, Subcommand)]
enum RotaCommand {
    /// On a hub: set a service line of the ICB's directory: its rota (desks in ringing order),
    /// hours and channels. What is not given keeps its current value. Edges and desks receive
    /// the directory at their next sync.
    Set {
        #[command(flatten)]
        dir: DirArg,
        /// The service line.
        #[arg(long, value_parser = ServiceLine::parse)]
        line: ServiceLine,
        /// A desk's node name, optionally with its own ring time (`desk-a:30`); repeat, in
        /// ringing order. Given at all, the list replaces the line's rota.
        #[arg(long = "desk")]
        desks: Vec<String>,
        /// Ring time of the desks given without one, seconds.
        #[arg(long, default_value_t = sync_protocol::call::DEFAULT_RING_S)]
        ring_secs: u32,
        /// Opening hours, UK time: `24/7` or windows like `mon-fri 08:00-18:30; sat 09:00-12:00`
        /// (default for a new line: 24/7).
        #[arg(long)]
        hours: Option<String>,
        /// Channels the line takes, comma-separated: call, photo, message (default for a new
        /// line: all three).
        #[arg(long, value_delimiter = ',', value_parser = Channel::parse)]
        channels: Option<Vec<Channel>>,
        /// Another ICB's hub whose same line takes the call when no desk of this rota answers
        /// (out-of-area fallback; this hub must be able to reach it: `outpost run --peer`).
        /// `none` removes it.
        #[arg(long)]
        fallback_hub: Option<String>,
        /// Remove the line from the directory instead.
        #[arg(long, conflicts_with_all = ["desks", "hours", "channels", "fallback_hub"])]
        remove: bool,
    },
    /// Show the ICB's directory as this node holds it (at an edge or desk: the copy last
    /// received from the hub, which informs but never decides who is rung).
    Show {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        json: JsonArg,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user. A person signs in with a PIN or passphrase, read from the first line of
    /// standard input (so it appears in no process list or shell history); an integrating
    /// system gets a token instead (`--token`), printed once.
    Add {
        #[command(flatten)]
        dir: DirArg,
        /// Name as others see it (unique on this node).
        #[arg(long)]
        name: String,
        /// paramedic, gp, nurse, consultant or system.
        #[arg(long, value_parser = PersonRole::parse)]
        role: PersonRole,
        /// Professional registration (for example HCPC-PA123456, GMC-7012345).
        #[arg(long)]
        registration: Option<String>,
        /// Make a token for an integrating system instead of reading a secret.
        #[arg(long)]
        token: bool,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Disable a user: their token and every API session end at once (a lost tablet PIN, a
    /// leaked integration token, someone who left).
    Disable {
        #[command(flatten)]
        dir: DirArg,
        /// The user's name.
        #[arg(long)]
        name: String,
    },
    /// List the users.
    List {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        json: JsonArg,
    },
}

#[derive(Debug, Subcommand)]
enum OutcomeCommand {
    /// Record the requester's or the responder's outcome.
    Set {
        #[command(flatten)]
        dir: DirArg,
        /// Session id (or a unique prefix of it).
        id: String,
        /// requester (edge) or responder (desk).
        #[arg(long, value_parser = Side::parse)]
        side: Side,
        /// referral_avoided, referral_made, conveyance_avoided, conveyed_ed, conveyed_sdec,
        /// admission_avoided, ambulatory, admitted, advice_only or not_reported.
        #[arg(value_parser = Outcome::parse)]
        outcome: Outcome,
        /// A key of the caller's for this act: sent again, it records nothing (even if another
        /// outcome was recorded meanwhile).
        #[arg(long)]
        client_key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain from its first entry to its last.
    Verify {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// The latest entries.
    Show {
        #[command(flatten)]
        dir: DirArg,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        json: JsonArg,
    },
}

#[derive(Debug, Subcommand)]
enum DebugCommand {
    /// Write messages (and every fifth time a photo) in a loop, printing `ack <id>` after each
    /// durable write. Used by the crash test.
    WriteLoop {
        #[command(flatten)]
        dir: DirArg,
        /// Session id.
        id: String,
        /// Stop after this many writes (default: never).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Cap the database size in pages, to make the disk "full" for a test.
    LimitPages {
        #[command(flatten)]
        dir: DirArg,
        /// Pages of 4 KiB.
        pages: u64,
        /// Then send this message in the session given.
        #[arg(long, num_args = 2, value_names = ["ID", "TEXT"])]
        send: Vec<String>,
    },
}

/// Runs the command line and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// How long before its certificate expires a node says to renew it (30 days).
pub const RENEW_AHEAD_MS: i64 = 30 * 86_400_000;

/// The environment variable naming a file where the process writes its peak resident memory
/// (VmHWM, in KiB) as it exits: how the benchmarks measure a real `outpost` process.
pub const PEAK_MEMORY_ENV: &str = "OUTPOST_PEAK_MEMORY_FILE";

/// Writes this process's peak resident memory to the file named by [`PEAK_MEMORY_ENV`], if set.
pub fn report_peak_memory() {
    let Some(path) = std::env::var_os(PEAK_MEMORY_ENV) else { return };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    if let Some(kib) = kib
        && let Err(e) = std::fs::write(&path, format!("{kib}\n"))
    {
        eprintln!("warning: cannot write peak memory to {}: {e}", std::path::Path::new(&path).display());
    }
}

/// The documented exit code for an error.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<NodeError>() {
            return match e {
                NodeError::Config(
                    ConfigError::NotANode { .. } | ConfigError::Invalid { .. } | ConfigError::StoreMissing { .. },
                ) => 3,
                NodeError::Config(ConfigError::Io { .. }) => 1,
                NodeError::Config(_) => 2,
                NodeError::Crypto(CryptoError::Random(_)) => 1,
                NodeError::Crypto(CryptoError::Open { .. }) => 3,
                NodeError::Crypto(_) => 3,
                NodeError::Store(s) => store_code(s),
                NodeError::Photo(_) | NodeError::Role { .. } | NodeError::Invalid(_) => 2,
                NodeError::Tls(crate::tls::TlsError::Invalid { what: "signed certificate", .. }) => 2,
                NodeError::Tls(_) => 3,
            };
        }
        if let Some(s) = cause.downcast_ref::<StoreError>() {
            return store_code(s);
        }
        if cause.downcast_ref::<InputError>().is_some() {
            return 2;
        }
        if let Some(e) = cause.downcast_ref::<crate::media::MediaError>() {
            return match e {
                crate::media::MediaError::Read { .. } => 2,
                crate::media::MediaError::Write { .. } => 1,
            };
        }
        if let Some(e) = cause.downcast_ref::<crate::net::NetError>() {
            return match e {
                crate::net::NetError::Store(s) => store_code(s),
                crate::net::NetError::Tls(crate::tls::TlsError::NoCertificate(_)) => 3,
                crate::net::NetError::Tls(_) => 3,
                _ => 6,
            };
        }
        if let Some(e) = cause.downcast_ref::<crate::settings::SettingsError>() {
            return match e {
                crate::settings::SettingsError::Io { .. } => 1,
                _ => 2,
            };
        }
        if let Some(e) = cause.downcast_ref::<crate::service::ServiceError>() {
            return match e {
                crate::service::ServiceError::AlreadyRunning { .. } => 7,
                _ => 1,
            };
        }
        if let Some(e) = cause.downcast_ref::<crate::tls::TlsError>() {
            return match e {
                crate::tls::TlsError::NotACa(_) | crate::tls::TlsError::AlreadyACa(_) => 3,
                crate::tls::TlsError::UnknownNode(_) => 4,
                crate::tls::TlsError::Invalid { what: "certificate request", .. } => 2,
                _ => 1,
            };
        }
    }
    1
}

fn store_code(e: &StoreError) -> u8 {
    match e {
        StoreError::NoSuchSession(_)
        | StoreError::NoSuchUser(_)
        | StoreError::Ambiguous(_)
        | StoreError::NoSuchBlob(_)
        | StoreError::BlobOffloaded(_)
        | StoreError::BlobIncomplete { .. } => 4,
        StoreError::DiskFull { .. } => 5,
        StoreError::Model { .. }
        | StoreError::Directory(DirectoryError::Invalid(_))
        | StoreError::ClientKeyReused { .. }
        | StoreError::Duplicate(_) => 2,
        StoreError::Crypto(_) => 3,
        _ => 1,
    }
}

/// Bad input found by the CLI itself.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

fn open(dir: &DirArg) -> Result<Node, NodeError> {
    Node::open(&NodeDir::new(&dir.dir))
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init { dir, name, role, org, icb, lines, json } => {
            if role != Role::Desk && !lines.is_empty() {
                return Err(InputError("--service-line is for desk nodes".into()).into());
            }
            let params = InitParams { name, role, org, icb, lines };
            let cfg = Node::init(&NodeDir::new(&dir.dir), &params, now_ms())?;
            if json.json {
                print_json(&cfg)?;
            } else {
                println!(
                    "initialised {} node {} in {} (key {} from {})",
                    cfg.role,
                    cfg.name,
                    dir.dir.display(),
                    cfg.key_id,
                    if cfg.key_source == "env" { crate::crypto::KEY_ENV } else { "node.key, mode 600" }
                );
            }
        }
        Command::Session(cmd) => session(cmd)?,
        Command::Message(MessageCommand::Send { dir, id, text, reply_to, client_key, json }) => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            let msg = node.send_message_once(sid, &text, reply_to, client_key.as_deref(), now_ms())?;
            if json.json {
                // A repeat answers with the first message, which may have travelled since.
                let receipt = node.message_receipt(sid, &msg)?;
                print_json(&serde_json::json!({ "session": sid, "message": msg, "receipt": receipt }))?;
            } else {
                println!("{msg}");
            }
        }
        Command::Photo(PhotoCommand::Attach { dir, id, file, view, body_site, consent, consent_scope, json }) => {
            // Check the photo before opening the node, so a bad file writes nothing.
            let photo = photo::load_photo(&file).map_err(NodeError::from)?;
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            let req = PhotoRequest { view, body_site, consent, scope: consent_scope };
            let info = node.attach_photo(sid, &photo, &req, now_ms())?;
            if json.json {
                print_json(&serde_json::json!({
                    "session": sid, "hash": info.hash, "size": info.size, "mime": info.mime,
                    "chunks": info.chunks, "width": photo.dimensions.0, "height": photo.dimensions.1,
                }))?;
            } else {
                println!("{}", info.hash);
            }
        }
        Command::Photo(PhotoCommand::Get { dir, hash, out, thumbnail, read }) => {
            let mut node = open(&dir)?;
            let bytes = if thumbnail { node.thumbnail(&hash)? } else { node.open_photo(&hash, read, now_ms())? };
            write_file(&out, &bytes)?;
        }
        Command::Outcome(OutcomeCommand::Set { dir, id, side, outcome, client_key }) => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            node.set_outcome_once(sid, side, outcome, client_key.as_deref(), now_ms())?;
            println!("{side} outcome of {sid}: {outcome}");
        }
        Command::Status { dir, json } => {
            let node = open(&dir)?;
            let st = node.status()?;
            let (stats, audit, photos, backlog, peers, cert_until) = (
                &st.store,
                &st.audit,
                &st.photos,
                &st.not_yet_left_this_device,
                &st.peers,
                st.certificate_valid_until_ms,
            );
            let now = now_ms();
            if json.json {
                print_json(&st)?;
            } else {
                let c = &node.config;
                println!(
                    "{} ({} node{}{})",
                    c.name,
                    c.role,
                    c.org.as_deref().map(|o| format!(", organisation {o}")).unwrap_or_default(),
                    c.icb.as_deref().map(|i| format!(", ICB {i}")).unwrap_or_default()
                );
                print!("sessions: {}", stats.sessions);
                for (status, n) in &stats.by_status {
                    print!("  {status} {n}");
                }
                println!();
                println!(
                    "documents: {} snapshots ({}), {} logged changes ({})",
                    stats.snapshots,
                    bytes(stats.snapshot_bytes),
                    stats.log_changes,
                    bytes(stats.log_bytes)
                );
                println!(
                    "photos: {} held here ({}), {} handed to the hub (thumbnail kept, {}), {} being received",
                    photos.held.0,
                    bytes(photos.held.1),
                    photos.offloaded.0,
                    bytes(photos.offloaded.1),
                    photos.partial.0
                );
                if node.config.role == Role::Edge {
                    println!(
                        "not yet left this device: {} messages and photos in {} sessions, {} of photos",
                        backlog.items,
                        backlog.sessions,
                        bytes(backlog.photo_bytes)
                    );
                }
                if peers.is_empty() {
                    println!("peers: never synced");
                }
                for p in peers {
                    let ok =
                        p.last_ok_ms.map_or("never".to_string(), |t| format!("{} ({} ago)", time(t), ago(now - t)));
                    print!("peer {}: last complete sync {ok}", p.peer);
                    match &p.last_error {
                        Some((t, why)) if p.last_ok_ms.is_none_or(|ok| *t > ok) => {
                            println!("; since then failed {} ago: {why}", ago(now - t))
                        }
                        _ => println!(),
                    }
                }
                match cert_until {
                    Some(t) if t <= now => {
                        println!("certificate: EXPIRED at {}; ask for a new one (`outpost cert request`)", time(t))
                    }
                    Some(t) if t - now < RENEW_AHEAD_MS => println!(
                        "certificate: RENEW SOON: valid until {} (only {} left); run `outpost cert request --dir {}` and take the request to the fleet CA",
                        time(t),
                        ago(t - now),
                        dir.dir.display()
                    ),
                    Some(t) => println!("certificate: valid until {} ({} left)", time(t), ago(t - now)),
                    None => println!("certificate: none; this node cannot sync (`outpost cert request`)"),
                }
                println!(
                    "files: database {}, write-ahead log {}",
                    bytes(stats.db_file_bytes),
                    bytes(stats.wal_file_bytes)
                );
                match audit.broken_at {
                    None => println!("audit chain: {} entries, intact", audit.entries),
                    Some(seq) => println!("audit chain: BROKEN at entry {seq} of {}", audit.entries),
                }
            }
            // The whole file, page by page: a damaged store is said, and the exit is non-zero.
            match node.store.integrity_check() {
                Ok(()) if !json.json => println!("store: SQLite integrity check passed"),
                Ok(()) => {}
                Err(e) => {
                    if !json.json {
                        println!("store: DAMAGED");
                    }
                    return Err(e.into());
                }
            }
        }
        Command::Audit(AuditCommand::Verify { dir, json }) => {
            let node = open(&dir)?;
            node.store.integrity_check()?;
            let check = node.verify_audit()?;
            if json.json {
                print_json(&check)?;
            } else {
                match check.broken_at {
                    None => println!("audit chain intact: {} entries", check.entries),
                    Some(seq) => println!("audit chain broken at entry {seq}"),
                }
            }
            if let Some(seq) = check.broken_at {
                return Err(StoreError::Damaged(format!("the audit chain is broken at entry {seq}")).into());
            }
        }
        Command::Audit(AuditCommand::Show { dir, limit, json }) => {
            let node = open(&dir)?;
            let entries = node.audit_tail(limit)?;
            if json.json {
                print_json(&entries)?;
            } else {
                for e in entries {
                    println!(
                        "{:>6}  {}  {:<14} {:<16} {}",
                        e.seq,
                        time(e.at_ms),
                        e.node,
                        e.action,
                        e.session.unwrap_or_default()
                    );
                }
            }
        }
        Command::Demo { keep, serve } => crate::demo::run(keep.as_deref(), serve)?,
        Command::Openapi => print!("{}", crate::net::openapi_json()),
        Command::Ca(cmd) => ca(cmd)?,
        Command::Backup { dir, out, json } => {
            let report = crate::backup::backup(&NodeDir::new(&dir.dir), &out, now_ms())?;
            if json.json {
                print_json(&report)?;
            } else {
                println!(
                    "backup of {} written to {} ({}, {} sessions), sealed under key {}: keep the key apart from it",
                    report.node,
                    report.file.display(),
                    bytes(report.bytes),
                    report.sessions,
                    report.key_id
                );
            }
        }
        Command::Restore { from, dir, key_file, json } => {
            let _lock = if dir.dir.exists() { Some(crate::service::DaemonLock::acquire(&dir.dir)?) } else { None };
            let report = crate::backup::restore(&from, &NodeDir::new(&dir.dir), key_file.as_deref())?;
            if json.json {
                print_json(&report)?;
            } else {
                println!(
                    "{} restored into {}: {} sessions as of {}. Run it (outpost run): its peers send back what \
                     the backup lacks.",
                    report.node,
                    report.dir.display(),
                    report.sessions,
                    time(report.taken_ms)
                );
            }
        }
        Command::Key(KeyCommand::Rotate { dir, json }) => {
            let nd = NodeDir::new(&dir.dir);
            nd.read_config().map_err(NodeError::from)?;
            let _lock = crate::service::DaemonLock::acquire(&dir.dir)?;
            let (done, old, new) = Node::rotate_key(&nd, now_ms())?;
            if json.json {
                print_json(&serde_json::json!({ "old_key_id": old, "new_key_id": new, "resealed": done }))?;
            } else {
                println!(
                    "data key rotated: {} values ({}) re-sealed under key {new} (was {old}); audit chain re-hashed \
                     over {} entries, the rotation recorded in it. Back up the new {} now: old backups need the old key.",
                    done.values,
                    bytes(done.bytes),
                    done.audit_entries,
                    nd.key_path().display()
                );
            }
        }
        Command::Cert(CertCommand::Request { dir, out }) => {
            let mut node = open(&dir)?;
            let (csr, fingerprint) = node.request_certificate()?;
            let out = out.unwrap_or_else(|| dir.dir.join(format!("{}.csr", node.config.name)));
            write_file(&out, csr.as_bytes())?;
            println!(
                "certificate request for {} written to {}; its key stays in this node's store.\n\
                 key fingerprint {fingerprint}, author key {}: the CA must print the same before you \
                 install what it signs.\n\
                 On the CA's machine: outpost ca sign --ca CA_DIR {}\n\
                 Then here: outpost cert install --dir {} SIGNED.pem",
                node.config.name,
                out.display(),
                hex::encode(node.author_public()),
                out.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
                dir.dir.display()
            );
        }
        Command::Cert(CertCommand::Install { dir, file }) => {
            let mut node = open(&dir)?;
            let chain = std::fs::read_to_string(&file)
                .map_err(|e| InputError(format!("cannot read the signed certificate {}: {e}", file.display())))?;
            let until = node.install_signed(&chain)?;
            if let Some((cert, _, ca)) = node.store.tls_identity()? {
                let tls_dir = dir.dir.join("tls");
                std::fs::create_dir_all(&tls_dir)?;
                std::fs::write(tls_dir.join("node.crt"), cert)?;
                std::fs::write(tls_dir.join("ca.crt"), ca)?;
            }
            println!(
                "certificate installed for {}: valid until {} (restart a running daemon to use it)",
                node.config.name,
                time(until)
            );
        }
        Command::Linkem { listen, to, profile, outages, seed } => {
            init_logging("info");
            let p = sync_protocol::links::profile(&profile).ok_or_else(|| {
                InputError(format!(
                    "unknown link profile {profile:?}; expected one of: {}",
                    sync_protocol::links::PROFILE_NAMES.join(", ")
                ))
            })?;
            let rt = runtime()?;
            rt.block_on(async move {
                let opts = crate::linkem::EmulatorOptions { outages, seed, ..Default::default() };
                let to = to.resolve().await?;
                let em = crate::linkem::LinkEmulator::start(listen, to, p.clone(), opts).await?;
                println!(
                    "relaying {} -> {to} as {} ({} kbit/s up, {:.0}-{:.0} ms RTT, {:.1}% loss{})",
                    em.local_addr,
                    p.name,
                    p.uplink_bps / 1000,
                    p.rtt_ms.0,
                    p.rtt_ms.1,
                    p.loss.mean_loss() * 100.0,
                    if outages { ", random outages" } else { "" }
                );
                let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
                loop {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => break,
                        line = lines.next_line() => match line {
                            Ok(Some(l)) => {
                                let mut words = l.split_whitespace();
                                match (words.next(), words.next().and_then(|s| s.parse::<f64>().ok())) {
                                    (Some("down"), secs) => {
                                        em.set_up(false);
                                        println!("link down");
                                        if let Some(s) = secs {
                                            tokio::time::sleep(std::time::Duration::from_secs_f64(s)).await;
                                            em.set_up(true);
                                            println!("link up");
                                        }
                                    }
                                    (Some("up"), _) => {
                                        em.set_up(true);
                                        println!("link up");
                                    }
                                    (Some("stats"), _) => println!("{}", serde_json::to_string(&em.stats())?),
                                    _ => println!("commands: down [SECONDS] | up | stats"),
                                }
                            }
                            // Input closed: keep relaying until interrupted.
                            _ => { tokio::signal::ctrl_c().await?; break; }
                        }
                    }
                }
                anyhow::Ok(())
            })?;
        }
        Command::Call(cmd) => run_call(cmd)?,
        Command::Rota(cmd) => run_rota(cmd)?,
        Command::User(cmd) => run_user(cmd)?,
        Command::Run {
            dir,
            listen,
            peers,
            auto_answer,
            play,
            record,
            api,
            api_cert,
            api_key,
            metrics,
            log_format,
            log_level,
        } => {
            let mut flags = crate::settings::Flags::default();
            let one = |v: Option<String>| v.into_iter().collect::<Vec<_>>();
            flags.set("listen", one(listen));
            flags.set("peers", peers);
            flags.set("desk.auto_answer", if auto_answer { vec!["true".into()] } else { vec![] });
            flags.set("desk.play", one(play));
            flags.set("desk.record", one(record));
            flags.set("api.listen", one(api));
            flags.set("api.cert", one(api_cert));
            flags.set("api.key", one(api_key));
            flags.set("metrics.listen", one(metrics));
            flags.set("log.format", one(log_format));
            flags.set("log.level", one(log_level));
            let settings = crate::settings::Settings::load(&dir.dir, &flags)?;
            init_daemon_logging(&settings);
            let node = open(&dir)?;
            if let Some((cert, _, _)) = node.store.tls_identity()? {
                let left = crate::tls::not_after_ms(&cert)? - now_ms();
                if left < RENEW_AHEAD_MS {
                    tracing::warn!(
                        days_left = left / 86_400_000,
                        "this node's certificate expires in {} days: renew it (`outpost cert request`, then `outpost cert install`)",
                        left / 86_400_000
                    );
                }
            }
            // One directory, one daemon (held until the process ends, however it ends).
            let _lock = crate::service::DaemonLock::acquire(&dir.dir)?;
            let rt = runtime()?;
            rt.block_on(async move {
                if let Some(p) = &settings.play {
                    crate::media::read_wav(p)?;
                }
                let api_tls = match (settings.api_cert.clone(), settings.api_key.clone()) {
                    (Some(cert), Some(key)) => Some(crate::net::ApiTls { cert, key }),
                    _ => None,
                };
                let scheme = if api_tls.is_some() { "https" } else { "http" };
                let opts = crate::net::RunOptions {
                    listen: settings.listen,
                    peers: settings.peers.clone(),
                    auto_answer: settings.auto_answer,
                    play: settings.play.clone(),
                    record: settings.record.clone(),
                    api: settings.api,
                    api_tls,
                    metrics: settings.metrics,
                    limits: settings.limits,
                };
                let daemon = crate::net::Daemon::start(node, opts).await?;
                if let Some(addr) = daemon.local_addr {
                    println!("listening on {addr}");
                }
                if let Some(addr) = daemon.api_addr {
                    println!("local API on {scheme}://{addr}/api");
                }
                if let Some(addr) = daemon.metrics_addr {
                    println!("metrics on http://{addr}/metrics");
                }
                let why = crate::service::stop_signal().await?;
                tracing::info!(
                    "{why}: stopping: no new connections, closing each with its reason, finishing the store's work"
                );
                daemon.stop().await;
                tracing::info!("stopped cleanly");
                anyhow::Ok(())
            })?;
        }
        Command::Config(ConfigCommand::Show { dir, json }) => {
            NodeDir::new(&dir.dir).read_config().map_err(NodeError::from)?;
            let settings = crate::settings::Settings::load(&dir.dir, &crate::settings::Flags::default())?;
            if json.json {
                print_json(&settings.origins)?;
            } else {
                let width = settings.origins.iter().map(|o| o.key.len()).max().unwrap_or(0);
                for o in &settings.origins {
                    let value = if o.value.is_empty() { "(unset)" } else { &o.value };
                    println!("{:<width$}  {:<28}  {}", o.key, value, o.source);
                }
            }
        }
        Command::Sync { dir, peer, timeout, json } => {
            init_logging("warn");
            let node = open(&dir)?;
            let rt = runtime()?;
            let report = rt.block_on(async {
                let addr = peer.resolve().await?;
                crate::net::sync_once(node, addr, std::time::Duration::from_secs(timeout)).await
            })?;
            if json.json {
                print_json(&report)?;
            } else {
                let s = &report.stats;
                println!(
                    "synced with {} ({}): {} round trip(s), {} sent, {} received ({} / {} on the wire), {} documents sent, {} received, {} photos received, {:.0} ms after a {:.0} ms handshake",
                    report.peer,
                    report.peer_role,
                    s.round_trips,
                    bytes(s.bytes_sent),
                    bytes(s.bytes_received),
                    bytes(report.udp_bytes_sent),
                    bytes(report.udp_bytes_received),
                    s.docs_sent,
                    s.docs_received,
                    s.blobs_received,
                    report.sync_ms,
                    report.handshake_ms
                );
            }
        }
        Command::Debug(cmd) => debug(cmd)?,
    }
    Ok(())
}

fn session(cmd: SessionCommand) -> anyhow::Result<()> {
    match cmd {
        SessionCommand::New(args) => {
            let a = *args;
            let verification = SessionRequest::verification(a.nhs_number.is_some(), a.nhs_verification)
                .map_err(|e| InputError(format!("--nhs-verification: {e} (--nhs-number)")))?;
            let req = SessionRequest {
                care_setting: a.care_setting,
                requester: Requester {
                    registration: a.registration,
                    role: a.requester_role,
                    org_ods: None,
                    call_sign: a.call_sign,
                    incident: a.incident,
                    callback: a.callback,
                },
                patient: Patient {
                    nhs_number: a.nhs_number,
                    verification,
                    name: a.patient_name,
                    birth_date: a.birth_date,
                    sex: None,
                    postcode: None,
                },
                service: Service {
                    line: a.service_line,
                    channel: a.channel.unwrap_or(SessionRequest::default_channel(a.service_line)),
                    priority: a.priority,
                },
                summary: a.summary,
                draft: a.draft,
            };
            let mut node = open(&a.dir)?;
            let view = node.new_session_once(req, a.client_key.as_deref(), now_ms())?;
            if a.json.json {
                print_json(&serde_json::json!({ "id": view.id, "status": view.status }))?;
            } else {
                println!("{}", view.id);
            }
        }
        SessionCommand::List { dir, status, service_line, limit, json } => {
            let node = open(&dir)?;
            let cards = node.list(&ListFilter { status, service_line, limit })?;
            if json.json {
                print_json(&cards)?;
            } else {
                print_cards(&cards)?;
            }
        }
        SessionCommand::Show { dir, id, read, json } => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            if read {
                node.mark_read(sid, now_ms())?;
            }
            let view = node.show(sid, now_ms())?;
            if json.json {
                print_json(&view)?;
            } else {
                print!("{}", render_session(&view, &node.config.name));
            }
        }
        SessionCommand::Export { dir, id, format, out } => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            let as_format = if format == "automerge" {
                crate::node::ExportFormat::Automerge
            } else {
                crate::node::ExportFormat::Json
            };
            let bytes = node.export(sid, as_format, now_ms())?;
            match out {
                Some(path) => write_file(&path, &bytes)?,
                None => {
                    use std::io::IsTerminal;
                    if format == "automerge" && std::io::stdout().is_terminal() {
                        return Err(InputError(
                            "refusing to write binary Automerge bytes to a terminal; use --out FILE or a pipe".into(),
                        )
                        .into());
                    }
                    std::io::stdout().lock().write_all(&bytes)?;
                }
            }
        }
        SessionCommand::SetStatus { dir, id, status } => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            let changed = node.set_status(sid, status, now_ms())?;
            println!("{sid}: {}", if changed { format!("now {status}") } else { format!("already {status}") });
        }
        SessionCommand::Share { dir, id, node: target } => {
            crate::config::check_name(&target).map_err(NodeError::from)?;
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            node.share(sid, &target, now_ms())?;
            println!("{sid}: shared with {target}");
        }
        SessionCommand::Reopen { dir, id } => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            let epoch = node.reopen(sid, now_ms())?;
            println!("{sid}: reopened (time {epoch}), awaiting reply");
        }
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    install_logging(filter, crate::settings::LogFormat::Text);
}

/// Logging for `outpost run`: the format and level from its settings (`OUTPOST_LOG`, the older
/// name, still sets the filter when `log.level` is left at its default).
fn init_daemon_logging(settings: &crate::settings::Settings) {
    let level_set =
        settings.origins.iter().any(|o| o.key == "log.level" && o.source != crate::settings::Source::Default);
    let filter = match std::env::var("OUTPOST_LOG") {
        Ok(v) if !level_set && !v.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(v),
        _ => tracing_subscriber::EnvFilter::try_new(&settings.log_level),
    }
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    install_logging(filter, settings.log_format);
}

/// Log lines to standard error: for people (coloured on a terminal), or one JSON object each.
fn install_logging(filter: tracing_subscriber::EnvFilter, format: crate::settings::LogFormat) {
    use std::io::IsTerminal;
    let _ = match format {
        crate::settings::LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
        crate::settings::LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

fn ca(cmd: CaCommand) -> anyhow::Result<()> {
    use crate::tls::CaDir;
    match cmd {
        CaCommand::Init { dir, fleet } => {
            CaDir::new(&dir).init(&fleet)?;
            println!("fleet CA {fleet} created in {} (keep ca.key offline)", dir.display());
        }
        CaCommand::Sign { ca, request, days, out } => {
            let csr = std::fs::read_to_string(&request)
                .map_err(|e| InputError(format!("cannot read the request {}: {e}", request.display())))?;
            let signed = CaDir::new(&ca).sign_request(&csr, days)?;
            let info = &signed.info;
            let out = out.unwrap_or_else(|| request.with_file_name(format!("{}.pem", info.name)));
            write_file(&out, signed.chain_pem.as_bytes())?;
            let lines: Vec<&str> = info.lines.iter().map(|l| l.as_str()).collect();
            println!(
                "signed for {} ({}, organisation {}, ICB {}{}) for {days} days: {}\n\
                 key fingerprint {}, author key {}: check both against what `outpost cert request` printed on \
                 the node; if they differ, do not carry the certificate back (`outpost ca revoke`)",
                info.name,
                info.role,
                info.org.as_deref().unwrap_or("none"),
                info.icb.as_deref().unwrap_or("none"),
                if lines.is_empty() { String::new() } else { format!(", lines {}", lines.join(", ")) },
                out.display(),
                signed.key_fingerprint,
                signed.author
            );
        }
        CaCommand::Issue { ca, node, days, expired } => {
            let mut n = Node::open(&NodeDir::new(&node))?;
            let info = n.config.peer_info();
            let issued = CaDir::new(&ca).issue(&info, &n.author_public(), days, expired)?;
            n.install_certificate(&issued.cert_pem, &issued.key_pem, &issued.ca_pem)?;
            let tls_dir = node.join("tls");
            std::fs::create_dir_all(&tls_dir)?;
            std::fs::write(tls_dir.join("node.crt"), &issued.cert_pem)?;
            std::fs::write(tls_dir.join("ca.crt"), &issued.ca_pem)?;
            // A node always starts with the fleet's current revocation list.
            let (number, der) = CaDir::new(&ca).crl()?;
            n.install_revocations(number, &der)?;
            println!(
                "issued {} ({} {}) a certificate valid {}; private key sealed in its store",
                info.name,
                info.role,
                crate::tls::identity_urn(&info),
                if expired { "never (expired)".to_string() } else { format!("{days} days") }
            );
        }
        CaCommand::Revoke { ca, name, publish } => {
            let (number, der) = CaDir::new(&ca).revoke(&name)?;
            println!("revoked {name}: revocation list {number}");
            for node in publish {
                install_crl(&ca, &node, number, &der)?;
            }
        }
        CaCommand::Publish { ca, node } => {
            let (number, der) = CaDir::new(&ca).crl()?;
            install_crl(&ca, &node, number, &der)?;
        }
    }
    Ok(())
}

fn install_crl(ca: &Path, node: &Path, number: u64, der: &[u8]) -> anyhow::Result<()> {
    let n = Node::open(&NodeDir::new(node))?;
    crate::tls::verify_crl(&crate::tls::CaDir::new(ca).cert()?, der)?;
    n.install_revocations(number, der)?;
    println!("installed revocation list {number} in {}", n.config.name);
    Ok(())
}

fn debug(cmd: DebugCommand) -> anyhow::Result<()> {
    match cmd {
        DebugCommand::WriteLoop { dir, id, count } => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            let mut out = std::io::stdout().lock();
            let mut n = 0u64;
            while count.is_none_or(|c| n < c) {
                let now = now_ms();
                let acked = if n % 5 == 4 {
                    let photo = photo::synthetic_png(n as u32 % 64 + 16, 24, n).map_err(NodeError::from)?;
                    let req = PhotoRequest {
                        view: PhotoView::Site,
                        body_site: "test".into(),
                        consent: ConsentKind::Verbal,
                        scope: ConsentScope::RecordOnly,
                    };
                    node.attach_photo(sid, &photo, &req, now)?.hash
                } else {
                    node.send_message(sid, &format!("crash-test write {n}"), None, now)?
                };
                writeln!(out, "ack {acked}")?;
                out.flush()?;
                n += 1;
            }
        }
        DebugCommand::LimitPages { dir, pages, send } => {
            let mut node = open(&dir)?;
            node.debug_limit_pages(pages)?;
            if let [id, text] = send.as_slice() {
                let sid = node.resolve(id)?;
                let msg = node.send_message(sid, text, None, now_ms())?;
                println!("{msg}");
            }
        }
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f =
        std::fs::File::create(path).map_err(|e| InputError(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// A byte count for people.
pub fn bytes(n: u64) -> String {
    const K: f64 = 1024.0;
    let f = n as f64;
    if f < K {
        format!("{n} B")
    } else if f < K * K {
        format!("{:.1} KiB", f / K)
    } else if f < K * K * K {
        format!("{:.1} MiB", f / K / K)
    } else {
        format!("{:.2} GiB", f / K / K / K)
    }
}

fn run_user(cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add { dir, name, role, registration, token, json } => {
            let mut node = open(&dir)?;
            if !role.works_on(node.config.role) {
                return Err(InputError(format!(
                    "a {role} does not work on a {} node; people on this node are {}",
                    node.config.role,
                    crate::store::people::PersonRole::NAMES
                        .iter()
                        .filter(|r| PersonRole::parse(r).is_ok_and(|r| r.works_on(node.config.role)))
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .into());
            }
            if name.trim().is_empty() || name.len() > 100 {
                return Err(InputError("--name: 1 to 100 characters".into()).into());
            }
            let cred = if token {
                Credential::Token
            } else {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                let secret = line.trim_end_matches(['\r', '\n']).to_string();
                if secret.chars().count() < crate::store::people::MIN_SECRET {
                    return Err(InputError(format!(
                        "the PIN or passphrase (first line of standard input) needs at least {} characters; nothing was written",
                        crate::store::people::MIN_SECRET
                    ))
                    .into());
                }
                Credential::Secret(secret)
            };
            let new = NewPerson { name, role, registration };
            let (person, token) = node.add_person(&new, &cred, now_ms())?;
            if json.json {
                print_json(&serde_json::json!({ "user": person, "token": token }))?;
            } else {
                println!("added {} ({})", person.name, person.role);
                if let Some(t) = token {
                    println!("token (shown once; keep it in the integrating system's secret store): {t}");
                }
            }
        }
        UserCommand::Disable { dir, name } => {
            let mut node = open(&dir)?;
            node.disable_person(&name, now_ms())?;
            println!("disabled {name}: their token and sessions no longer work");
        }
        UserCommand::List { dir, json } => {
            let node = open(&dir)?;
            let people = node.people()?;
            if json.json {
                print_json(&people)?;
            } else if people.is_empty() {
                println!("no users");
            } else {
                for p in people {
                    println!("{:<30} {:<11} {}", p.name, p.role.as_str(), p.registration.as_deref().unwrap_or("-"));
                }
            }
        }
    }
    Ok(())
}

/// A duration for people, to the largest whole unit: `40 s`, `12 min`, `5 h`, `29 days`.
fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// A time for people: `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string().replace('T', " ").trim_end_matches('Z').to_string()
}

fn print_cards(cards: &[SessionCard]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if cards.is_empty() {
        writeln!(out, "no sessions")?;
    }
    for c in cards {
        let pending =
            if c.on_device_only > 0 { format!(", {} on this device only", c.on_device_only) } else { String::new() };
        writeln!(
            out,
            "{}  {}  {:<16} {:<13} {:<15} {} msg, {} photo{}  {}",
            c.id,
            time(c.updated_ms),
            c.status.as_str(),
            c.priority.as_str(),
            c.service_line.as_str(),
            c.messages,
            c.photos,
            pending,
            ellipsis(&c.summary, 48)
        )?;
    }
    Ok(())
}

fn ellipsis(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() <= max {
        line.to_string()
    } else {
        format!("{}…", line.chars().take(max - 1).collect::<String>())
    }
}

/// The text form of `outpost session show`.
pub fn render_session(v: &SessionView, this_node: &str) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "session {}  [{}]", v.id, v.status);
    let _ = writeln!(
        s,
        "  {} ({}), {}, {} · created {} by {} ({}), ICB {}",
        v.service.line,
        v.service.snomed,
        v.service.priority,
        v.service.channel,
        time(v.identity.created_ms),
        v.identity.origin,
        v.identity.care_setting,
        v.identity.icb
    );
    let patient = match &v.patient.nhs_number {
        Some(n) => {
            let grouped = NhsNumber::parse(n).map(|n| n.grouped()).unwrap_or_else(|_| n.clone());
            format!("NHS {grouped} (verification {}: {})", v.patient.verification, v.patient.verification.describe())
        }
        None => format!("no NHS number ({})", v.patient.verification.describe()),
    };
    let _ =
        writeln!(s, "  patient: {patient}{}", v.patient.name.as_deref().map(|n| format!(", {n}")).unwrap_or_default());
    let r = &v.requester;
    let who: Vec<String> = [
        r.role.clone(),
        r.registration.clone().map(|x| format!("reg {x}")),
        r.org_ods.clone().map(|x| format!("org {x}")),
        r.call_sign.clone().map(|x| format!("call-sign {x}")),
        r.incident.clone().map(|x| format!("incident {x}")),
        r.callback.clone().map(|x| format!("callback {x}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !who.is_empty() {
        let _ = writeln!(s, "  requester: {}", who.join(", "));
    }
    let _ = writeln!(s, "  summary: {}", v.summary);
    if v.reopened > 0 {
        let _ = writeln!(s, "  reopened {} time(s)", v.reopened);
    }
    let _ = writeln!(s, "  messages ({}):", v.messages.len());
    for m in &v.messages {
        let receipt = if m.author == this_node { m.receipt.describe() } else { "received" };
        let _ = writeln!(s, "    {}  {} ({}): {}", time(m.at_ms), m.author, m.side, m.text);
        let _ = writeln!(s, "        {}  [{}]", m.id, receipt);
    }
    let _ = writeln!(s, "  photos ({}):", v.media.len());
    for m in &v.media {
        let consent = v.consents.iter().find(|c| c.id == m.consent);
        let consent = match consent {
            Some(c) if c.withdrawn.is_some() => format!("consent {} WITHDRAWN", c.kind),
            Some(c) => format!("consent {} ({})", c.kind, c.scope),
            None => "consent unknown".to_string(),
        };
        let dims = match (m.width, m.height) {
            (Some(w), Some(h)) => format!(", {w}x{h}"),
            _ => String::new(),
        };
        let receipt = if m.added_by == this_node { m.receipt.describe() } else { "received" };
        let _ =
            writeln!(s, "    {}  {}, {}: {}{}, {}", time(m.at_ms), m.view, m.body_site, bytes(m.size), dims, consent);
        let _ = writeln!(s, "        {}  [{}]", m.hash, receipt);
    }
    let side = |o: &Option<sync_protocol::session::OutcomeView>| match o {
        Some(o) => format!("{} (by {} at {})", o.value, o.by, time(o.at_ms)),
        None => "not recorded".to_string(),
    };
    let _ =
        writeln!(s, "  outcome: requester {}; responder {}", side(&v.outcome.requester), side(&v.outcome.responder));
    s
}

fn run_call(cmd: CallCommand) -> anyhow::Result<()> {
    match cmd {
        CallCommand::Escalate { dir, id, wait, play, record, json } => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            if let Some(p) = &play {
                crate::media::read_wav(p)?;
            }
            let with_audio = play.is_some() || record.is_some();
            let call = node.escalate(sid, now_ms())?;
            if let Some(note) = line_note(&mut node, sid, now_ms())? {
                eprintln!("{note}");
            }
            if with_audio {
                node.set_media_plan(&call, &crate::media::MediaPlan { play, record })?;
            }
            let Some(limit) = wait else {
                if json.json {
                    print_json(&serde_json::json!({ "session": sid, "call": call, "state": "asked" }))?;
                } else {
                    println!("{call}");
                    eprintln!("escalation recorded; the hub rings a consultant once their desk holds the whole case");
                }
                return Ok(());
            };
            // Follow the routing log as it reaches this device: never more than it says.
            let start = std::time::Instant::now();
            let mut shown = 0usize;
            loop {
                let (routing, legs) = node.call_logs(sid)?;
                let steps: Vec<_> = routing
                    .iter()
                    .filter(|e| matches!(e.get("call"), Some(LogValue::Str(c)) if *c == call))
                    .cloned()
                    .collect();
                if !json.json {
                    for e in steps.iter().skip(shown) {
                        println!("{}", describe_step(e));
                    }
                }
                shown = steps.len();
                let state = calls_in(&routing).into_iter().find(|c| c.call == call);
                // With audio, the call is over once this device has recorded its leg.
                let leg = legs
                    .iter()
                    .find(|e| {
                        matches!(e.get("call"), Some(LogValue::Str(c)) if *c == call)
                            && matches!(e.get("node"), Some(LogValue::Str(n)) if *n == node.config.name)
                    })
                    .cloned();
                if let Some(c) =
                    state.filter(|c| !c.is_open() && (!with_audio || c.callback.is_some() || leg.is_some()))
                {
                    if json.json {
                        print_json(&serde_json::json!({
                            "session": sid, "call": call,
                            "state": if c.connected.is_some() { "connected" } else { "callback" },
                            "desk": c.connected.as_ref().map(|d| d.0.clone()),
                            "reason": c.callback.as_ref().map(|r| r.0.clone()),
                            "steps": steps,
                            "leg": leg,
                        }))?;
                    } else if let Some(l) = &leg {
                        println!("{}", describe_leg(l));
                        println!(
                            "record the outcome: outpost outcome set --dir {} {sid} --side requester OUTCOME",
                            dir.dir.display()
                        );
                    }
                    return Ok(());
                }
                if start.elapsed().as_secs() >= limit {
                    return Err(anyhow::Error::new(crate::net::NetError::Connection {
                        peer: "hub".into(),
                        detail: format!(
                            "no answer or callback reached this device within {limit} s; the escalation stands, \
                             and `outpost call status` shows it as it moves"
                        ),
                    }));
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
        CallCommand::Answer { dir, id } => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            match node.answer_call(sid, now_ms())? {
                Some((call, attempt)) => println!("answered call {call} (attempt {attempt})"),
                None => return Err(InputError(format!("no call is ringing at this desk in session {sid}")).into()),
            }
        }
        CallCommand::Status { dir, id, json } => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            let (routing, calls) = node.call_logs(sid)?;
            if json.json {
                print_json(&serde_json::json!({ "routing": routing, "calls": calls }))?;
            } else if routing.is_empty() {
                println!("no escalation in session {sid}");
            } else {
                for e in &routing {
                    println!("{}", describe_step(e));
                }
                for e in &calls {
                    println!(
                        "{}: {}",
                        match e.get("node") {
                            Some(LogValue::Str(n)) => n.as_str(),
                            _ => "?",
                        },
                        describe_leg(e)
                    );
                }
            }
        }
    }
    Ok(())
}

/// A call leg's record as a line.
fn describe_leg(e: &std::collections::BTreeMap<String, LogValue>) -> String {
    let s = |k: &str| match e.get(k) {
        Some(LogValue::Str(v)) => v.clone(),
        Some(LogValue::Int(i)) => i.to_string(),
        Some(LogValue::Float(f)) => format!("{f:.3}"),
        None => String::new(),
    };
    format!(
        "call ended ({}): {} ms; frames sent {}, received {}, concealed {}; loss {}, jitter {} ms, round trip {} ms; estimated MOS {}",
        s("end"),
        s("duration_ms"),
        s("frames_sent"),
        s("frames_received"),
        s("frames_concealed"),
        s("loss"),
        s("jitter_ms"),
        s("rtt_ms"),
        s("mos")
    )
}

/// One routing-log entry as a line for a clinician.
fn describe_step(e: &std::collections::BTreeMap<String, LogValue>) -> String {
    let s = |k: &str| match e.get(k) {
        Some(LogValue::Str(v)) => v.clone(),
        Some(LogValue::Int(i)) => i.to_string(),
        Some(LogValue::Float(f)) => format!("{f:.2}"),
        None => String::new(),
    };
    let at = match e.get("at_ms") {
        Some(LogValue::Int(t)) => time(*t),
        _ => String::new(),
    };
    let what = match s("kind").as_str() {
        "escalate" => format!("{} asked for a call", s("by")),
        "gate" if s("verdict") == "call" => format!(
            "link checked: estimated MOS {} (round trip {} ms, jitter {} ms, loss {}): a call is possible",
            s("mos"),
            s("rtt_ms"),
            s("jitter_ms"),
            s("loss")
        ),
        "gate" => format!("link checked: {}", s("reason")),
        "ring" => format!("ringing {} (attempt {}, {} s)", s("desk"), s("attempt"), s("ring_s")),
        "answer" => format!("{} answered", s("desk")),
        "no_answer" => format!("{} did not answer", s("desk")),
        "connected" if e.contains_key("ms_from_handover") => {
            format!("connected to {} ({} ms after the hand-over reached its hub)", s("desk"), s("ms_from_handover"))
        }
        "connected" => {
            format!("connected to {} ({} ms after the request reached the hub)", s("desk"), s("ms_from_escalate"))
        }
        "callback" => format!("callback arranged: {}", s("reason")),
        "federate" => format!("no answer in area: handed to {}'s line (out of area)", s("hub")),
        other => other.to_string(),
    };
    format!("{at}  {what}")
}

/// What this device's copy of the directory says of a session's line, for the clinician
/// (the hub decides; this only prepares them for a callback).
fn line_note(node: &mut Node, sid: sync_protocol::SessionId, now: i64) -> anyhow::Result<Option<String>> {
    let line = node.service_line_of(sid)?;
    let Some(dir) = node.directory()? else { return Ok(None) };
    let as_of = time(dir.updated_ms);
    Ok(Some(match dir.lines.get(&line) {
        None => format!("this device's directory (as of {as_of}) lists no {line} line: expect a callback"),
        Some(e) => match (e.call_refusal(now), &e.fallback_hub) {
            (Some(why), Some(hub)) => format!(
                "this device's directory (as of {as_of}) says {why}: the hub may hand the call to {hub}'s line, or arrange a callback"
            ),
            (Some(why), None) => format!("this device's directory (as of {as_of}) says {why}: expect a callback"),
            (None, _) => format!(
                "this device's directory (as of {as_of}): the {line} line is open, {} desk(s) on its rota",
                e.rota.len()
            ),
        },
    }))
}

fn parse_desk(text: &str, default_ring_s: u32) -> Result<RotaDesk, NodeError> {
    match text.rsplit_once(':') {
        Some((desk, secs)) => {
            let ring_s = secs.parse().map_err(|_| {
                NodeError::Invalid(format!(
                    "--desk {text:?}: the ring time after ':' must be whole seconds, like desk-a:30"
                ))
            })?;
            Ok(RotaDesk { desk: desk.to_string(), ring_s })
        }
        None => Ok(RotaDesk { desk: text.to_string(), ring_s: default_ring_s }),
    }
}

fn run_rota(cmd: RotaCommand) -> anyhow::Result<()> {
    match cmd {
        RotaCommand::Set { dir, line, remove: true, .. } => {
            let mut node = open(&dir)?;
            let (was, view) = node.remove_line(line, now_ms())?;
            if !was {
                eprintln!("the directory had no {line} line");
            }
            print_directory(&view, true, now_ms());
        }
        RotaCommand::Set { dir, line, desks, ring_secs, hours, channels, fallback_hub, remove: false } => {
            let mut node = open(&dir)?;
            let current = node.directory()?.and_then(|d| d.lines.get(&line).cloned());
            let rota = if desks.is_empty() {
                current.as_ref().map(|c| c.rota.clone()).unwrap_or_default()
            } else {
                desks.iter().map(|d| parse_desk(d, ring_secs)).collect::<Result<_, _>>()?
            };
            let hours = match hours {
                Some(h) => Hours::parse(&h).map_err(|e| NodeError::Invalid(format!("--hours: {e}")))?,
                None => current.as_ref().map_or(Hours::Always, |c| c.hours.clone()),
            };
            let channels = channels
                .or_else(|| current.as_ref().map(|c| c.channels.clone()))
                .unwrap_or_else(|| vec![Channel::Call, Channel::Photo, Channel::Message]);
            let fallback_hub = match fallback_hub.as_deref() {
                Some("none") => None,
                Some(hub) => Some(hub.to_string()),
                None => current.as_ref().and_then(|c| c.fallback_hub.clone()),
            };
            let now = now_ms();
            let entry = LineEntry { line, hours, channels, rota, fallback_hub, updated_ms: now };
            let view = node.set_line(entry, now)?;
            print_directory(&view, true, now);
        }
        RotaCommand::Show { dir, json } => {
            let node = open(&dir)?;
            let own = node.config.role == Role::Hub;
            match node.directory()? {
                None if json.json => print_json(&serde_json::Value::Null)?,
                None if own => println!(
                    "no directory yet: `outpost rota set` adds a line; until then every escalation ends in a callback"
                ),
                None => println!("no directory from the hub yet: it arrives at the next sync with the hub"),
                Some(view) if json.json => print_json(&DirectoryJson::of(&view, own))?,
                Some(view) => print_directory(&view, own, now_ms()),
            }
        }
    }
    Ok(())
}

/// A directory as JSON (`rota show --json`, `GET /api/directory`).
/// An ICB's directory as `rota show --json` and `GET /api/directory` give it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DirectoryJson {
    /// The ICB.
    pub icb: String,
    /// The last edit (ms since the epoch).
    pub updated_ms: i64,
    /// `own` on the hub that keeps it; `hub` for a copy received from the hub.
    pub source: &'static str,
    /// The service lines.
    pub lines: Vec<LineJson>,
}

impl DirectoryJson {
    /// The directory as shown.
    pub fn of(view: &DirectoryView, own: bool) -> Self {
        DirectoryJson {
            icb: view.icb.clone(),
            updated_ms: view.updated_ms,
            source: if own { "own" } else { "hub" },
            lines: view.lines.values().map(LineJson::from).collect(),
        }
    }
}

fn print_directory(view: &DirectoryView, own: bool, now: i64) {
    let whose = if own { "kept here" } else { "copy received from the hub" };
    println!("directory of ICB {} ({whose}; last set {})", view.icb, time(view.updated_ms));
    if view.lines.is_empty() {
        println!("no service lines: escalations end in a callback");
    }
    for e in view.lines.values() {
        let channels: Vec<&str> = e.channels.iter().map(|c| c.as_str()).collect();
        let state = match e.call_refusal(now) {
            None => "calls now".to_string(),
            Some(_) if !e.channels.contains(&Channel::Call) => "no calls".to_string(),
            Some(_) => "closed now".to_string(),
        };
        println!(
            "{:<20} SNOMED CT {:<10} hours {}  channels {}  ({state})",
            e.line.as_str(),
            e.line.snomed(),
            e.hours,
            channels.join(",")
        );
        let mut list: Vec<String> = e.rota.iter().map(|d| format!("{} ({} s)", d.desk, d.ring_s)).collect();
        if let Some(hub) = &e.fallback_hub {
            list.push(format!("out of area: {hub}"));
        }
        if list.is_empty() {
            list.push("none".into());
        }
        println!("{:<20} rota: {}", "", list.join(" -> "));
    }
}
