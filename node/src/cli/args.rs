//! The command line's grammar: every command, subcommand and option (clap).

use super::*;

/// outpost: an offline-first sync node for clinical advice sessions.
#[derive(Debug, Parser)]
#[command(name = "outpost", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Args)]
pub(crate) struct DirArg {
    /// The node's directory (or set OUTPOST_DIR).
    #[arg(long, env = "OUTPOST_DIR", value_name = "DIR")]
    pub(crate) dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct JsonArg {
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    Backup(BackupArgs),
    /// Restore a node from a backup: into a new directory (a replaced tablet), or into the
    /// node's own directory when its store is missing. Then run it: peers send back what the
    /// backup lacks.
    Restore(RestoreArgs),
    /// The node's data key (what seals its store at rest).
    #[command(subcommand)]
    Key(KeyCommand),
    /// This node's fleet certificate, the right way round: request (the key stays here),
    /// install what the CA signed.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Run the node: serve QUIC, dial peers, keep every replica in sync. Settings come from
    /// D/outpost.toml, then OUTPOST_* variables, then these flags (`outpost config show`).
    Run(RunArgs),
    /// How this node runs: the settings in effect and where each came from.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Reconcile once with a peer and report what it cost.
    Sync(SyncArgs),
    /// Relay UDP through an emulated link (delay, loss, bandwidth, blackouts), to try outpost
    /// over a bad link by hand. Type `down`, `up` or `down SECONDS` on its input.
    Linkem(LinkemArgs),
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
    Status(StatusArgs),
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
pub(crate) enum KeyCommand {
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
pub(crate) enum CertCommand {
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
pub(crate) enum ConfigCommand {
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
pub(crate) enum CaCommand {
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
pub(crate) enum SessionCommand {
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
    /// Export a session: raw Automerge bytes, its JSON view, a FHIR R4 bundle (UK Core) for the
    /// GP record or the ambulance ePR, or a letter of the advice for people.
    Export {
        #[command(flatten)]
        dir: DirArg,
        /// Session id (or a unique prefix of it).
        id: String,
        /// automerge (binary, for other Automerge implementations), json, fhir (a FHIR R4
        /// Bundle, docs/fhir.md) or letter (plain text).
        #[arg(long, value_parser = ["automerge", "json", "fhir", "letter"])]
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
pub(crate) struct NewSessionArgs {
    #[command(flatten)]
    pub(crate) dir: DirArg,
    /// Specialty: dermatology, cardiology, gastroenterology, emergency_medicine, paediatrics, haematology, gynaecology.
    #[arg(long, value_parser = ServiceLine::parse)]
    pub(crate) service_line: ServiceLine,
    /// routine, urgent or two-week-wait.
    #[arg(long, value_parser = Priority::parse, default_value = "routine")]
    pub(crate) priority: Priority,
    /// gp_elective, gp_urgent, ambulance_on_scene, 111 or care_home.
    #[arg(long, value_parser = CareSetting::parse)]
    pub(crate) care_setting: CareSetting,
    /// call, photo or message (default: photo for dermatology, message otherwise).
    #[arg(long, value_parser = Channel::parse)]
    pub(crate) channel: Option<Channel>,
    /// The patient's NHS number (checked with modulus 11).
    #[arg(long, value_parser = NhsNumber::parse)]
    pub(crate) nhs_number: Option<NhsNumber>,
    /// Trace status of the NHS number, 01 to 08 (default 02, not traced; 07 without a number).
    #[arg(long, value_parser = NhsVerification::parse)]
    pub(crate) nhs_verification: Option<NhsVerification>,
    /// Patient name, when there is no verified NHS number.
    #[arg(long)]
    pub(crate) patient_name: Option<String>,
    /// Patient date of birth (YYYY-MM-DD).
    #[arg(long)]
    pub(crate) birth_date: Option<String>,
    /// The question, in a few lines.
    #[arg(long)]
    pub(crate) summary: String,
    /// Requester's professional registration number (GMC, NMC or HCPC).
    #[arg(long)]
    pub(crate) registration: Option<String>,
    /// Requester's role (paramedic, GP, ...).
    #[arg(long)]
    pub(crate) requester_role: Option<String>,
    /// Vehicle call-sign.
    #[arg(long)]
    pub(crate) call_sign: Option<String>,
    /// Incident number.
    #[arg(long)]
    pub(crate) incident: Option<String>,
    /// Number to call back.
    #[arg(long)]
    pub(crate) callback: Option<String>,
    /// Keep as a draft instead of queueing it.
    #[arg(long)]
    pub(crate) draft: bool,
    /// A key of the caller's for this request (a UUID will do): sent again with the same
    /// request, it returns the first session and creates nothing.
    #[arg(long)]
    pub(crate) client_key: Option<String>,
    #[command(flatten)]
    pub(crate) json: JsonArg,
}

#[derive(Debug, Subcommand)]
pub(crate) enum MessageCommand {
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
pub(crate) enum PhotoCommand {
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
    /// The patient withdraws consent for a photo: every photo taken under the same consent
    /// leaves FHIR exports and letters from now on, on every node.
    WithdrawConsent {
        #[command(flatten)]
        dir: DirArg,
        /// Session id (or a unique prefix of it).
        id: String,
        /// The photo's BLAKE3 hash (or a unique prefix of it), as `session show` lists it.
        photo: String,
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
pub(crate) enum CallCommand {
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
pub(crate) enum RotaCommand {
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
pub(crate) enum UserCommand {
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
    /// Set a person's new PIN or passphrase, read from the first line of standard input (a
    /// forgotten one, or one refused as changed outside outpost): their API sessions end.
    SetPin {
        #[command(flatten)]
        dir: DirArg,
        /// The person's name.
        #[arg(long)]
        name: String,
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
pub(crate) enum OutcomeCommand {
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
pub(crate) enum AuditCommand {
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
pub(crate) enum DebugCommand {
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

/// The arguments of `outpost backup`.
#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    #[command(flatten)]
    pub(crate) dir: DirArg,
    /// The backup file to write (must not exist).
    #[arg(long)]
    pub(crate) out: PathBuf,
    #[command(flatten)]
    pub(crate) json: JsonArg,
}

/// The arguments of `outpost restore`.
#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The backup file.
    #[arg(long)]
    pub(crate) from: PathBuf,
    #[command(flatten)]
    pub(crate) dir: DirArg,
    /// The node's data key (a copy of its node.key; or set OUTPOST_NODE_KEY). Not needed
    /// when restoring into the node's own directory.
    #[arg(long)]
    pub(crate) key_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) json: JsonArg,
}

/// The arguments of `outpost run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) dir: DirArg,
    /// Address to listen on (for example 0.0.0.0:4433); hubs listen, edges usually do not.
    /// [setting listen]
    #[arg(long)]
    pub(crate) listen: Option<String>,
    /// A peer to dial and keep dialling, host:port (repeat for several); a name is
    /// resolved again at every dial. [setting peers]
    #[arg(long = "peer")]
    pub(crate) peers: Vec<String>,
    /// QUIC congestion control: radio (the default: loss-tolerant, for radio links), cubic
    /// or bbr. [setting congestion]
    #[arg(long)]
    pub(crate) congestion: Option<String>,
    /// On a desk: answer every call that rings here (for unattended test and demo desks).
    #[arg(long)]
    pub(crate) auto_answer: bool,
    /// On a desk: a WAV file to play into every call it takes (default: silence).
    #[arg(long)]
    pub(crate) play: Option<String>,
    /// On a desk: record every call it takes into this WAV file (8 kHz mono).
    #[arg(long)]
    pub(crate) record: Option<String>,
    /// Serve the local HTTP API for the clinicians' apps on this address (for example
    /// 127.0.0.1:8080). Users come from `outpost user add`. Beyond loopback (a surgery box
    /// serving its LAN) it needs --api-cert and --api-key, and serves HTTPS. [setting api.listen]
    #[arg(long)]
    pub(crate) api: Option<String>,
    /// Serve the API over TLS with this certificate (PEM; the certificate, then any
    /// intermediates), from a PKI the clients trust. [setting api.cert]
    #[arg(long)]
    pub(crate) api_cert: Option<String>,
    /// The private key of --api-cert (PEM). [setting api.key]
    #[arg(long)]
    pub(crate) api_key: Option<String>,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address, no token (keep it on
    /// loopback or the management network). [setting metrics.listen]
    #[arg(long)]
    pub(crate) metrics: Option<String>,
    /// Log lines as text (for people) or json (for a log collector). [setting log.format]
    #[arg(long)]
    pub(crate) log_format: Option<String>,
    /// error, warn, info, debug or trace (or a tracing filter). [setting log.level]
    #[arg(long)]
    pub(crate) log_level: Option<String>,
}

/// The arguments of `outpost sync`.
#[derive(Debug, Args)]
pub(crate) struct SyncArgs {
    #[command(flatten)]
    pub(crate) dir: DirArg,
    /// The peer's address, host:port (a name, an IPv4 address or a bracketed IPv6 one).
    #[arg(long)]
    pub(crate) peer: crate::net::PeerAddr,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub(crate) timeout: u64,
    #[command(flatten)]
    pub(crate) json: JsonArg,
}

/// The arguments of `outpost linkem`.
#[derive(Debug, Args)]
pub(crate) struct LinkemArgs {
    /// Address to listen on (what the client dials).
    #[arg(long)]
    pub(crate) listen: std::net::SocketAddr,
    /// Where to relay to (the real peer), host:port.
    #[arg(long)]
    pub(crate) to: crate::net::PeerAddr,
    /// urban-4g, rural-a-road, cell-edge, 3g-fallback, remote-moor, rural-surgery or satellite.
    #[arg(long, default_value = "rural-a-road")]
    pub(crate) profile: String,
    /// Also black out at random, following the profile's availability.
    #[arg(long)]
    pub(crate) outages: bool,
    /// Seed of the random generator (0: random).
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// The bottleneck's queue: `droptail` (a full buffer drops), `codel` (RFC 8289: marks
    /// ECN-capable datagrams, drops others) or `step:<ms>` (marks past that much queue).
    #[arg(long, default_value = "droptail")]
    pub(crate) aqm: String,
}

/// The arguments of `outpost status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) dir: DirArg,
    #[command(flatten)]
    pub(crate) json: JsonArg,
}
