//! The sync engine: one peer-to-peer conversation as a sans-IO state machine.
//!
//! The caller owns the connection and the storage. It feeds received frames in with
//! [`Engine::handle`], pulls frames out with [`Engine::poll_frame`] (each tagged with its lane:
//! document traffic before blob traffic), tells the engine about local writes with
//! [`Engine::notify`], and gives it access to the replica through the [`Replica`] trait. Time is
//! an argument. The same engine runs between real processes over QUIC (`outpost-node`) and
//! between simulated nodes on virtual links (`outpost-sim`).
//!
//! ## How two peers converge
//!
//! 1. **Hello**, both ways: the protocol version range (the highest common version is used) and
//!    the number of the newest revocation list each holds (the older side is sent the newer list).
//! 2. **Summary** (initiator): the fingerprint of every document the peer may see, and the
//!    *delta*: the documents whose heads differ from what the peer last confirmed holding
//!    (per-peer knowledge persisted by the replica). In the same flight the initiator pushes the
//!    new changes of those documents, computed from the heads both sides are known to share.
//! 3. **SummaryReply** (responder): its own delta, and whether the two deltas explain every
//!    difference between the two sets. The check is exact: the responder subtracts the deltas
//!    from both fingerprints, using its knowledge of the initiator for documents only it listed.
//!    It pushes its own new changes in the same flight.
//! 4. When either side has no knowledge of the other, or the check fails, **range-based
//!    reconciliation** ([`crate::recon`]) finds exactly the documents that differ.
//! 5. Per document, **Changes** carry exactly the changes the other side lacks when its heads
//!    are known, and **Ack** confirms what the receiver now holds durably (and is the knowledge
//!    persisted for the next reconnect). A receiver that cannot integrate changes (missing
//!    dependencies) sends **Need** and is sent every change of that document. Every change
//!    travels with its author's signature, and a **Member** frame carries the certificate of an
//!    author the receiver may not know; the receiver checks both, and the write rules
//!    ([`crate::rules`]), before it stores anything.
//! 6. **Blobs** are pulled by the receiver, a few chunks at a time, each verified against the
//!    blob's hash before it is stored, on the low-priority lane.
//!
//! When nothing changed, the conversation is one round trip of a few hundred bytes whatever the
//! number of documents. When k documents changed, it costs their new changes plus about 100
//! bytes each.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use crate::TimeMs;
use crate::authorship::ActorPrefix;
use crate::blob::{self, BlobError};
use crate::recon::{self, Fingerprint, Item, RangeRecon};
use crate::scope::PeerInfo;
use crate::wire::{
    BlobManifest, Changes, CloseCode, DocId, Frame, Hash, Hello, Lane, MAX_VERSION, MIN_VERSION, Range, RangeMode,
    Summary, SummaryReply,
};

/// What the peer is known to hold of one document.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Knowledge {
    /// The peer's heads when it last told us.
    pub heads: Vec<Hash>,
    /// Heads both sides are known to hold: the base for computing what to send.
    pub shared: Vec<Hash>,
}

/// The result of integrating received bytes into one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Stored durably; these are the document's heads now.
    Stored {
        /// Heads after the change.
        heads: Vec<Hash>,
    },
    /// The bytes depend on changes this replica lacks; nothing was stored.
    MissingDeps,
    /// The document may not come from this peer or be held here, or is not a valid session.
    Refused {
        /// Why, for the log.
        reason: String,
    },
}

/// Changes of one document to send, with what the receiver needs to check them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outgoing {
    /// Change chunks, uncompressed, in causal order.
    pub bytes: Vec<u8>,
    /// One signature per change.
    pub sigs: Vec<[u8; 64]>,
    /// The authors of those changes (by actor prefix), whose credentials the peer may need.
    pub authors: Vec<ActorPrefix>,
}

/// Received changes of one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The document.
    pub doc: DocId,
    /// Change chunks.
    pub bytes: Vec<u8>,
    /// Their signatures.
    pub sigs: Vec<[u8; 64]>,
}

/// A blob this replica should fetch from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobNeed {
    /// The blob's hash.
    pub hash: Hash,
    /// Its size, from the session document.
    pub size: u64,
    /// The manifest, if already received.
    pub manifest: Option<BlobManifest>,
    /// Chunk indices not yet held.
    pub missing: Vec<u32>,
}

pub use crate::wire::AuditHeads;

/// Storage as the engine sees it. Every method that writes must be durable when it returns.
pub trait Replica {
    /// The replica's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// This node.
    fn me(&self) -> &PeerInfo;
    /// Every document the peer may see, with the digest of our heads, sorted by id.
    fn items(&mut self, peer: &PeerInfo) -> Result<Vec<Item>, Self::Error>;
    /// How many documents the peer may see and the fingerprint of their items (what `items`
    /// would give, summed). A replica that keeps the sums up to date answers without reading
    /// every document.
    fn summary(&mut self, peer: &PeerInfo) -> Result<(u64, Fingerprint), Self::Error> {
        let items = self.items(peer)?;
        Ok((items.len() as u64, Fingerprint::of_all(&items)))
    }
    /// Documents the peer may see whose heads differ from what it last confirmed, with our heads.
    fn delta(&mut self, peer: &PeerInfo) -> Result<Vec<(DocId, Vec<Hash>)>, Self::Error>;
    /// Whether anything is known of this peer (it has confirmed at least one document).
    fn knows_peer(&mut self, peer: &PeerInfo) -> Result<bool, Self::Error>;
    /// Our heads of a document, if we hold it and the peer may see it.
    fn heads_for(&mut self, peer: &PeerInfo, id: &DocId) -> Result<Option<Vec<Hash>>, Self::Error>;
    /// Which of `hashes` are changes we hold of a document the peer may see.
    fn known_hashes(&mut self, peer: &PeerInfo, id: &DocId, hashes: &[Hash]) -> Result<Vec<Hash>, Self::Error>;
    /// What the peer is known to hold of a document.
    fn knowledge(&mut self, peer: &PeerInfo, id: &DocId) -> Result<Option<Knowledge>, Self::Error>;
    /// Records what the peer holds (durably, so that a reconnect resumes).
    fn set_knowledge(&mut self, peer: &PeerInfo, updates: &[(DocId, Knowledge)]) -> Result<(), Self::Error>;
    /// Our changes that are not ancestors of `base` (every change if `base` is empty), with
    /// their signatures; `None` if we do not hold the document or the peer may not see it.
    fn changes_since(&mut self, peer: &PeerInfo, id: &DocId, base: &[Hash]) -> Result<Option<Outgoing>, Self::Error>;
    /// Checks received changes (bounds, signatures, write rules, scope) and stores those that
    /// pass, all in one durable transaction.
    fn apply(&mut self, peer: &PeerInfo, batch: &[Incoming], now: TimeMs) -> Result<Vec<Applied>, Self::Error>;
    /// The credential (certificate) of a fleet member the peer may not know, by the actor prefix
    /// of its changes: `None` for the peer itself and for this node, whose certificates the two
    /// exchanged in the handshake.
    fn credential(&mut self, peer: &PeerInfo, author: &ActorPrefix) -> Result<Option<Vec<u8>>, Self::Error>;
    /// Offers a member's credential received from the peer; returns whether it is valid
    /// (issued by this fleet's CA, not revoked), known before or not.
    fn offer_credential(&mut self, credential: &[u8]) -> Result<bool, Self::Error>;
    /// Blobs of documents shared with this peer that we should fetch from it.
    fn blobs_wanted(&mut self, peer: &PeerInfo) -> Result<Vec<BlobNeed>, Self::Error>;
    /// The manifest of a blob we hold whole, if the peer may have it.
    fn blob_manifest(&mut self, peer: &PeerInfo, hash: &Hash) -> Result<Option<BlobManifest>, Self::Error>;
    /// One chunk of a blob we hold.
    fn blob_chunk(&mut self, hash: &Hash, index: u32) -> Result<Option<Vec<u8>>, Self::Error>;
    /// Stores a verified manifest.
    fn store_manifest(&mut self, manifest: &BlobManifest, now: TimeMs) -> Result<(), Self::Error>;
    /// Stores verified chunks (`(blob, index, bytes)`, those of one received batch from the peer
    /// `from`, which thereby had those bytes) durably, in one write. For the blobs that became whole, returns the documents the replica changed
    /// in consequence (receipts), so that they can be pushed.
    fn store_chunks(
        &mut self,
        from: &PeerInfo,
        chunks: &[(Hash, u32, Vec<u8>)],
        now: TimeMs,
    ) -> Result<Vec<DocId>, Self::Error>;
    /// The newest revocation list held: its number and DER bytes.
    fn revocations(&mut self) -> Result<Option<(u64, Vec<u8>)>, Self::Error>;
    /// Offers a revocation list received from a peer; returns whether it was newer and valid.
    fn offer_revocations(&mut self, der: &[u8]) -> Result<bool, Self::Error>;
    /// What to tell the peer in [`Frame::AuditHead`]: this node's chain and where it ends, the
    /// peer's chain and the furthest end of it we were told of, and our anchor of the entry
    /// `proof_at` (the end of our chain the peer has just said it had seen; `None`: the one it
    /// said last time); `None` to send nothing (a replica that keeps no audit chain, or a peer
    /// it does not tell).
    fn audit_heads(&mut self, _peer: &PeerInfo, _proof_at: Option<u64>) -> Result<Option<AuditHeads>, Self::Error> {
        Ok(None)
    }
    /// The peer's [`Frame::AuditHead`].
    fn offer_audit_head(&mut self, _peer: &PeerInfo, _heads: AuditHeads, _now: TimeMs) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// How a peer broke the protocol (the conversation is closed with it as the reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The two sides share no protocol version.
    #[error("no protocol version in common: we speak {MIN_VERSION}..={MAX_VERSION}, {peer} speaks {min}..={max}")]
    NoCommonVersion {
        /// The peer.
        peer: String,
        /// Its lowest version.
        min: u16,
        /// Its highest version.
        max: u16,
    },
    /// A frame other than Hello came first.
    #[error("{frame} before hello")]
    BeforeHello {
        /// The frame's name.
        frame: &'static str,
    },
    /// A reconciliation round that cannot be processed.
    #[error(transparent)]
    Reconciliation(#[from] crate::recon::ReconError),
    /// The responder sent the initiator a summary (only the initiator sends one).
    #[error("a summary sent to the initiator")]
    SummaryToInitiator,
    /// A chunk asked for beyond the blob's end.
    #[error("chunk {index} requested of a blob of {count} chunks")]
    ChunkOutOfRange {
        /// The chunk asked for.
        index: u64,
        /// The blob's chunks.
        count: u64,
    },
    /// A blob chunk arrived before the blob's manifest.
    #[error("a blob chunk before its manifest")]
    ChunkBeforeManifest,
    /// Photo chunks asked for beyond any receiver's window: a chunk listed twice in one
    /// request, more chunks in one request or one step than a window holds.
    #[error("{asked} photo chunks asked for at once (a window holds at most {window}, each once)")]
    TooManyChunks {
        /// The chunks asked for.
        asked: usize,
        /// The most a receiver's window holds.
        window: usize,
    },
    /// A frame of a later protocol version than the one agreed, or sent more often than once.
    #[error("{frame} not expected here (version {version}, or a second one)")]
    Unexpected {
        /// The frame's name.
        frame: &'static str,
        /// The version agreed.
        version: u16,
    },
    /// A version of a document with more heads than any session has.
    #[error("a version of {heads} heads")]
    TooManyHeads {
        /// How many.
        heads: usize,
    },
    /// More summaries or reconciliation rounds at once than a peer waiting for answers sends.
    #[error("{frames} summaries or reconciliation rounds at once")]
    TooManyRounds {
        /// How many arrived in one step.
        frames: usize,
    },
    /// Frames of the photo lane that overtook the Hello, past what one window of them is.
    #[error("{bytes} bytes of photo frames before hello")]
    EarlyBytes {
        /// Their bytes.
        bytes: usize,
    },
}

/// How a conversation ended badly.
#[derive(Debug, thiserror::Error)]
pub enum EngineError<E: std::error::Error + 'static> {
    /// The replica failed.
    #[error("replica: {0}")]
    Replica(#[source] E),
    /// The peer broke the protocol.
    #[error("protocol error from {peer}: {detail}")]
    Protocol {
        /// The peer.
        peer: String,
        /// What it did.
        detail: Violation,
    },
    /// The peer closed the conversation with an error.
    #[error("{peer} closed the conversation: {reason} (code {code})")]
    Closed {
        /// The peer.
        peer: String,
        /// Its code.
        code: u16,
        /// Its reason.
        reason: String,
    },
}

/// Tunables.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Whether this side opens the conversation.
    pub initiator: bool,
    /// Chunks requested at once per connection: bounds what a dropped link makes us fetch twice.
    pub blob_window: usize,
    /// Range reconciliation parameters.
    pub recon: RangeRecon,
    /// Milliseconds between periodic nudges ([`Engine::handle_timeout`]): photos the peer did
    /// not hold are asked for again, refused documents offered again.
    pub nudge_ms: u64,
    /// Milliseconds without any photo chunk arriving after which a transfer's outstanding
    /// requests are taken for lost (a request or an answer damaged on the way and refused) and
    /// made again.
    pub stall_ms: u64,
}

/// The default nudge period.
pub const NUDGE_MS: u64 = 5_000;
/// The default stall limit: two nudges without progress.
pub const STALL_MS: u64 = 10_000;

impl EngineConfig {
    /// Defaults for one side.
    pub fn new(initiator: bool) -> Self {
        EngineConfig { initiator, blob_window: 3, recon: RangeRecon::default(), nudge_ms: NUDGE_MS, stall_ms: STALL_MS }
    }
}

/// What a conversation cost and carried.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Flights the initiator sent (a flight follows the receipt of the peer's previous one).
    pub round_trips: u64,
    /// Frame bytes sent.
    pub bytes_sent: u64,
    /// Frame bytes received.
    pub bytes_received: u64,
    /// Frames sent.
    pub frames_sent: u64,
    /// Frames received.
    pub frames_received: u64,
    /// Documents whose changes were sent.
    pub docs_sent: u64,
    /// Documents whose received changes were stored.
    pub docs_received: u64,
    /// Bytes of Automerge changes sent.
    pub change_bytes_sent: u64,
    /// Bytes of Automerge changes received.
    pub change_bytes_received: u64,
    /// Blobs received whole.
    pub blobs_received: u64,
    /// Blob chunks sent.
    pub chunks_sent: u64,
    /// Blob chunks received and stored.
    pub chunks_received: u64,
    /// Chunks received that were already held (sent twice).
    pub chunks_duplicate: u64,
    /// Documents found by range reconciliation.
    pub range_differences: u64,
    /// Documents sent whole because the peer lacked dependencies of what it was sent.
    pub full_resends: u64,
    /// Member credentials sent.
    pub credentials_sent: u64,
    /// Documents or blobs refused (scope, validity).
    pub refused: u64,
}

#[derive(Debug, Default)]
struct DocConn {
    /// The peer's heads, as learnt in this conversation.
    theirs: Option<Vec<Hash>>,
    /// Our heads when we last pushed changes.
    pushed: Option<Vec<Hash>>,
    /// Our heads when we last announced them.
    announced: Option<Vec<Hash>>,
    /// Waiting for an Ack of pushed changes.
    awaiting_ack: bool,
    /// Our heads at each push not yet answered, oldest first. The peer answers pushes of a
    /// document in order (an Ack, changes marked as the ack, Refused or Need), so an Ack without
    /// heads ("I now hold what you sent") acknowledges the oldest: never a later push that is
    /// still on its way, which the peer may yet fail to store.
    in_flight: VecDeque<Vec<Hash>>,
    /// The peer refused this document: nothing more is pushed until the next periodic nudge.
    refused: bool,
    /// How many times the peer refused it in this conversation: after [`MAX_RETRIES`] it is
    /// not offered again until the next conversation.
    refusals: u8,
    /// Range reconciliation found that the peer holds a version other than the one we remember
    /// (one side was restored from an older copy, or forgot): until its heads are known, we
    /// announce ours, so that whichever side holds more pushes what the other lacks.
    stale: bool,
}

impl Engine {
    /// The items range reconciliation compares now, each document's digest noted (see
    /// `recon_seen`).
    fn recon_items<R: Replica>(&mut self, replica: &mut R) -> Res<Vec<crate::recon::Item>, R> {
        let items = replica.items(&self.peer).map_err(EngineError::Replica)?;
        for it in &items {
            self.recon_seen
                .entry(it.id)
                .and_modify(|d| {
                    if *d != Some(it.digest) {
                        *d = None;
                    }
                })
                .or_insert(Some(it.digest));
        }
        Ok(items)
    }
}

impl DocConn {
    /// The peer answered our oldest push in flight: returns its heads.
    fn answered(&mut self) -> Option<Vec<Hash>> {
        let oldest = self.in_flight.pop_front();
        self.awaiting_ack = !self.in_flight.is_empty();
        oldest
    }
}

#[derive(Debug)]
struct Transfer {
    size: u64,
    manifest: Option<BlobManifest>,
    missing: VecDeque<u32>,
    requested: BTreeSet<u32>,
    manifest_requested: bool,
    /// When a chunk or the manifest of this blob last arrived (or it was last asked for
    /// again).
    last_progress: TimeMs,
}

/// One side of one conversation.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    peer: PeerInfo,
    version: Option<u16>,
    out: VecDeque<Frame>,
    docs: HashMap<DocId, DocConn>,
    summary_pending: bool,
    /// A summary waiting for the changes that complete its delta.
    summary_waiting: Option<(Summary, u32)>,
    /// Whether a SummaryReply queued in this call still lists documents we then pushed.
    reply_queued: bool,
    /// Documents whose changes were queued during the current call.
    pushed_now: HashSet<DocId>,
    /// Photo chunks served during the current call.
    served_now: usize,
    /// Summaries and reconciliation rounds received during the current call.
    recon_now: usize,
    /// Bytes of the frames in `early`.
    early_bytes: usize,
    /// Whether the peer's audit head has come (one per conversation).
    audit_head_received: bool,
    /// Stored changes to acknowledge at the end of the current call: (doc, our heads, theirs).
    pending_acks: Vec<(DocId, Vec<Hash>, Vec<Hash>)>,
    recon_waiting: bool,
    transfers: BTreeMap<Hash, Transfer>,
    /// Verified chunks of the batch being handled, stored together at its end.
    chunks_in: Vec<(Hash, u32, Vec<u8>)>,
    missing_at_peer: HashSet<Hash>,
    /// Whether the blobs to fetch must be looked up again (documents arrived or changed).
    blobs_dirty: bool,
    /// Documents range reconciliation found to differ.
    range_diffs: HashSet<DocId>,
    /// The digest of each document as every round of range reconciliation saw it (`None` once
    /// two rounds saw different heads: written during the exchange). Only a document seen the
    /// same throughout may be recorded as held by the peer when the ranges all match.
    recon_seen: HashMap<DocId, Option<[u8; 16]>>,
    knowledge_updates: Vec<(DocId, Knowledge)>,
    /// Authors whose credentials were sent (or found unavailable) in this conversation.
    credentials_sent: HashSet<ActorPrefix>,
    /// The peer's latest mark: frames of ours it had processed, and whether it was idle.
    last_mark: Option<(u64, bool)>,
    idle_sent_at: Option<u64>,
    /// Causal depth of every frame we sent (initiator): how many round trips it waited on.
    sent_depths: Vec<u32>,
    /// Depth of the frames we send next.
    next_depth: u32,
    /// Frames sent in answer to peer frames whose mark had not arrived yet: their depth is
    /// settled when it does.
    unresolved: Vec<usize>,
    /// Whether `next_depth` awaits the peer's mark.
    next_depth_provisional: bool,
    /// Depth of the peer's latest mark.
    last_mark_depth: u32,
    closed: bool,
    stats: Stats,
    log: Vec<String>,
    /// Blob-lane frames that arrived before the peer's Hello.
    early: Vec<Frame>,
    /// The time given by the latest call (start, handle, notify, handle_timeout).
    now: TimeMs,
    /// When the next periodic nudge is due.
    next_nudge: Option<TimeMs>,
    /// When any photo chunk or manifest last arrived.
    last_blob_progress: TimeMs,
    /// Whether the driver asked that no document be pushed for now (the peer has much of our
    /// output still to read): what would be pushed waits in `deferred`.
    output_paused: bool,
    /// Documents to push once output is no longer paused.
    deferred: BTreeSet<DocId>,
}

/// Times a refused document is offered again in one conversation (a refusal caused by damage
/// on the way heals; one caused by the rules does not, and stops costing after this).
const MAX_RETRIES: u8 = 3;

/// Blob-lane frames held while waiting for the Hello on the other lane.
const MAX_EARLY: usize = 64;
/// ... and their bytes: a window of chunks (a receiver asks for no more before it has them).
const MAX_EARLY_BYTES: usize = crate::blob::MAX_CHUNKS * (crate::blob::CHUNK_SIZE as usize + 64);
/// Photo chunks served in one step: a peer keeps at most a window of them asked for (a chunk
/// asked for again after a stall is within twice that).
const MAX_SERVED_PER_STEP: usize = 2 * crate::blob::MAX_CHUNKS;
/// Heads one document's version may have in a frame: each is a change no other follows, and a
/// session merging a thousand concurrent writers is far beyond what one sees (what a peer says
/// it holds is kept, per document, for the next conversation).
const MAX_HEADS: usize = 1024;
/// Summaries and reconciliation rounds taken in one step. Each reads every document the peer
/// may see; a peer sends one and waits for the answer (its own opening round may cross ours).
const MAX_RECON_PER_STEP: usize = 4;

type Res<T, R> = Result<T, EngineError<<R as Replica>::Error>>;

fn sorted(mut heads: Vec<Hash>) -> Vec<Hash> {
    heads.sort();
    heads
}

impl Engine {
    /// A conversation with `peer` (whose identity comes from its certificate).
    pub fn new(peer: PeerInfo, cfg: EngineConfig) -> Self {
        Engine {
            cfg,
            peer,
            version: None,
            out: VecDeque::new(),
            docs: HashMap::new(),
            summary_pending: false,
            summary_waiting: None,
            reply_queued: false,
            pushed_now: HashSet::new(),
            served_now: 0,
            recon_now: 0,
            early_bytes: 0,
            audit_head_received: false,
            pending_acks: Vec::new(),
            recon_waiting: false,
            transfers: BTreeMap::new(),
            chunks_in: Vec::new(),
            missing_at_peer: HashSet::new(),
            blobs_dirty: true,
            range_diffs: HashSet::new(),
            recon_seen: HashMap::new(),
            knowledge_updates: Vec::new(),
            credentials_sent: HashSet::new(),
            last_mark: None,
            idle_sent_at: None,
            sent_depths: Vec::new(),
            next_depth: 1,
            unresolved: Vec::new(),
            next_depth_provisional: false,
            last_mark_depth: 0,
            closed: false,
            stats: Stats::default(),
            log: Vec::new(),
            early: Vec::new(),
            now: 0,
            next_nudge: None,
            last_blob_progress: 0,
            output_paused: false,
            deferred: BTreeSet::new(),
        }
    }

    /// Records the caller's time, and arms the nudge timer on the first call.
    fn clock(&mut self, now: TimeMs) {
        self.now = now;
        if self.next_nudge.is_none() {
            self.next_nudge = Some(now.saturating_add(self.cfg.nudge_ms as TimeMs));
            self.last_blob_progress = now;
        }
    }

    /// When [`Engine::handle_timeout`] next has work to do; none once the conversation is
    /// closed (or before it began). The driver calls `handle_timeout` at (or after) this time.
    pub fn poll_timeout(&self) -> Option<TimeMs> {
        if self.closed { None } else { self.next_nudge }
    }

    /// The periodic nudge, if due at `now`: photos the peer did not hold are asked for again,
    /// documents it refused are offered again (a few times), and a photo transfer that has
    /// seen nothing arrive for [`EngineConfig::stall_ms`] asks again for what it is owed.
    /// Nothing happens before [`Engine::poll_timeout`].
    pub fn handle_timeout<R: Replica>(&mut self, replica: &mut R, now: TimeMs) -> Res<(), R> {
        self.clock(now);
        if self.closed || self.next_nudge.is_some_and(|t| now < t) {
            return Ok(());
        }
        // The timer moves on even before the peer's Hello, so that a driver sleeping until
        // `poll_timeout` never finds it in the past (a peer that never says Hello must not make
        // this side spin).
        self.next_nudge = Some(now.saturating_add(self.cfg.nudge_ms as TimeMs));
        if self.version.is_none() {
            return Ok(());
        }
        self.pushed_now.clear();
        let out_before = self.out.len();
        if !self.missing_at_peer.is_empty() {
            self.missing_at_peer.clear();
            self.blobs_dirty = true;
        }
        // Documents the peer refused are offered again, a few times.
        let retry: Vec<DocId> = self
            .docs
            .iter_mut()
            .filter(|(_, c)| c.refused && c.refusals <= MAX_RETRIES)
            .map(|(id, c)| {
                c.refused = false;
                c.pushed = None;
                *id
            })
            .collect();
        for id in retry {
            self.poke(replica, &id)?;
        }
        // A transfer owed chunks asks again once nothing at all has arrived for the stall
        // limit: a request or an answer damaged on the way (and refused) must not hold a photo
        // back for the rest of the connection. While any transfer moves, none is stalled: the
        // chunks of one photo wait behind another's on the one blob lane, for long on a slow
        // link with a full window.
        let stall = self.cfg.stall_ms as TimeMs;
        if now.saturating_sub(self.last_blob_progress) >= stall {
            for t in self.transfers.values_mut() {
                if now.saturating_sub(t.last_progress) < stall {
                    continue;
                }
                t.last_progress = now;
                let owed: Vec<u32> = std::mem::take(&mut t.requested).into_iter().collect();
                for c in owed.into_iter().rev() {
                    t.missing.push_front(c);
                }
                if t.manifest.is_none() {
                    t.manifest_requested = false;
                }
            }
        }
        self.refresh_blobs(replica)?;
        self.flush_knowledge(replica)?;
        self.end_of_batch(out_before);
        Ok(())
    }

    /// Holds back (or lets go) pushes of documents: a driver whose peer has not yet read much
    /// of what it was sent pauses them, so that the changes the peer sends meanwhile are still
    /// taken and acknowledged with small frames, while what this side would push back waits.
    /// Two nodes that each owe the other more than they will hold unread, with changes to the
    /// same documents, would otherwise each answer the other's changes with more of their own
    /// and both stop reading. Documents held back are pushed by the next [`Engine::notify`]
    /// once output is no longer paused (with no documents, if the driver has none to tell).
    pub fn set_output_paused(&mut self, paused: bool) {
        self.output_paused = paused;
    }

    /// Whether documents wait to be pushed until output is no longer paused.
    pub fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// Pushes what was held back while output was paused, if it no longer is.
    fn flush_deferred<R: Replica>(&mut self, replica: &mut R) -> Res<(), R> {
        if self.output_paused || self.deferred.is_empty() {
            return Ok(());
        }
        for id in std::mem::take(&mut self.deferred) {
            self.poke(replica, &id)?;
        }
        Ok(())
    }

    /// The peer.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// Sets how many chunks this side keeps requested (at least one). The driver sizes it to
    /// the link (its rate times its round trip); a larger window takes effect at the next
    /// request, a smaller one as chunks arrive.
    pub fn set_blob_window(&mut self, chunks: usize) {
        self.cfg.blob_window = chunks.max(1);
    }

    /// How many documents this conversation keeps state for (what it pushed, what the peer
    /// said it holds): diagnostics, and the bound tests hold it to.
    pub fn docs_tracked(&self) -> usize {
        self.docs.len()
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The protocol version agreed, once both Hellos are in.
    pub fn version(&self) -> Option<u16> {
        self.version
    }

    /// Notable events since the last call (refusals, fallbacks), for the caller's log.
    pub fn take_log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.log)
    }

    /// Whether the conversation has ended (a Close was sent or received).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    fn send(&mut self, frame: Frame) {
        self.out.push_back(frame);
    }

    /// The next frame to send, with its lane. Document traffic always comes before blob traffic.
    pub fn poll_frame(&mut self) -> Option<(Lane, Frame)> {
        let pos = self.out.iter().position(|f| f.lane() == Lane::Sync).or(if self.out.is_empty() {
            None
        } else {
            Some(0)
        })?;
        let frame = self.out.remove(pos)?;
        let len = frame.encoded_len() as u64;
        self.stats.bytes_sent += len;
        // An audit head asks for nothing: left out of what marks count and of round trips.
        if matches!(frame, Frame::AuditHead(..)) {
            return Some((frame.lane(), frame));
        }
        self.stats.frames_sent += 1;
        match &frame {
            Frame::Changes(c) => {
                self.stats.docs_sent += 1;
                self.stats.change_bytes_sent += c.bytes.len() as u64;
            }
            Frame::BlobChunk { .. } => self.stats.chunks_sent += 1,
            _ => {}
        }
        if self.cfg.initiator {
            self.sent_depths.push(self.next_depth);
            if self.next_depth_provisional {
                self.unresolved.push(self.sent_depths.len() - 1);
            }
            if !matches!(frame, Frame::Mark { .. } | Frame::Close { .. }) {
                self.stats.round_trips = self.stats.round_trips.max(u64::from(self.next_depth));
            }
        }
        Some((frame.lane(), frame))
    }

    /// Whether frames are waiting to be sent.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Opens the conversation. The initiator sends its Hello, Summary and first pushes in one
    /// flight; the responder sends its Hello.
    pub fn start<R: Replica>(&mut self, replica: &mut R, now: TimeMs) -> Res<(), R> {
        self.clock(now);
        let crl_number = replica.revocations().map_err(EngineError::Replica)?.map_or(0, |(n, _)| n);
        self.send(Frame::Hello(Hello {
            min_version: MIN_VERSION,
            max_version: MAX_VERSION,
            node: replica.me().name.clone(),
            crl_number,
        }));
        if self.cfg.initiator {
            let (count, fingerprint) = replica.summary(&self.peer).map_err(EngineError::Replica)?;
            let delta = replica.knows_peer(&self.peer).map_err(EngineError::Replica)?;
            let delta_docs = if delta { replica.delta(&self.peer).map_err(EngineError::Replica)? } else { Vec::new() };
            // The pushes of the delta follow the Summary in the same flight; documents pushed are
            // not listed again (the Changes frames carry their heads).
            let mark = self.out.len();
            let mut entries = Vec::new();
            let mut pushed = 0u32;
            for (id, heads) in delta_docs {
                self.docs.entry(id).or_default().announced = Some(sorted(heads.clone()));
                if self.poke(replica, &id)? {
                    pushed += 1;
                } else {
                    entries.push((id, heads));
                }
            }
            let summary =
                Frame::Summary(Summary { delta, count, fingerprint: fingerprint.to_bytes(), entries, pushed });
            self.out.insert(mark, summary);
            self.summary_pending = true;
            if !delta {
                let items = self.recon_items(replica)?;
                self.send(Frame::Ranges(self.cfg.recon.initiate(&items)));
                self.recon_waiting = true;
            }
        }
        Ok(())
    }

    /// Local writes (or writes received from another peer) to these documents: push them to
    /// this peer if it may see them, and fetch any new blobs.
    pub fn notify<R: Replica>(&mut self, replica: &mut R, docs: &[DocId], now: TimeMs) -> Res<(), R> {
        self.clock(now);
        if self.version.is_none() || self.closed {
            return Ok(());
        }
        self.pushed_now.clear();
        self.flush_deferred(replica)?;
        let out_before = self.out.len();
        for id in docs {
            // Only documents the peer may see can bring new photos to fetch from it.
            if self.poke(replica, id)? || replica.heads_for(&self.peer, id).map_err(EngineError::Replica)?.is_some() {
                self.blobs_dirty = true;
            }
        }
        self.refresh_blobs(replica)?;
        self.flush_knowledge(replica)?;
        self.end_of_batch(out_before);
        Ok(())
    }

    /// Processes a batch of received frames. Changes in the batch are stored in one transaction
    /// before they are acknowledged.
    pub fn handle<R: Replica>(&mut self, replica: &mut R, frames: Vec<Frame>, now: TimeMs) -> Res<(), R> {
        self.clock(now);
        let mut incoming: Vec<(Incoming, Vec<Hash>)> = Vec::new();
        let mut touched: Vec<DocId> = Vec::new();
        // Documents the peer holds and we do not: asked for unless this batch brings them.
        let mut wanted: Vec<DocId> = Vec::new();
        self.pushed_now.clear();
        self.served_now = 0;
        self.recon_now = 0;
        self.reply_queued = false;
        let out_before = self.out.len();
        // Causal depth of the peer's frames in this batch, from its marks.
        let mut batch_depth: Option<u32> = None;
        let mut queue: VecDeque<Frame> = frames.into();
        while let Some(frame) = queue.pop_front() {
            // An audit head asks for nothing: left out of what marks count (as it is sent).
            if !matches!(frame, Frame::AuditHead(..)) {
                self.stats.frames_received += 1;
            }
            self.stats.bytes_received += frame.encoded_len() as u64;
            if self.closed {
                continue;
            }
            let most_heads = match &frame {
                Frame::Heads { heads, .. } | Frame::Ack { heads, .. } => heads.len(),
                Frame::Changes(c) => c.heads.len(),
                Frame::Summary(Summary { entries, .. }) | Frame::SummaryReply(SummaryReply { entries, .. }) => {
                    entries.iter().map(|(_, h)| h.len()).max().unwrap_or(0)
                }
                _ => 0,
            };
            if most_heads > MAX_HEADS {
                return Err(self.protocol(Violation::TooManyHeads { heads: most_heads }));
            }
            if self.version.is_none() && !matches!(frame, Frame::Hello(_) | Frame::Close { .. }) {
                // The two lanes are separate streams: a blob frame may overtake the Hello.
                if frame.lane() == Lane::Blob && self.early.len() < MAX_EARLY {
                    self.stats.frames_received -= 1;
                    self.stats.bytes_received -= frame.encoded_len() as u64;
                    self.early_bytes += frame.encoded_len();
                    if self.early_bytes > MAX_EARLY_BYTES {
                        return Err(self.protocol(Violation::EarlyBytes { bytes: self.early_bytes }));
                    }
                    self.early.push(frame);
                    continue;
                }
                return Err(self.protocol(Violation::BeforeHello { frame: frame.name() }));
            }
            match frame {
                Frame::Hello(h) => {
                    // One per conversation: a second (a duplicate, or a peer's repetition) would
                    // renegotiate the version and make this side send its audit head and
                    // revocation list again, once per Hello. It is let go, as a duplicate is.
                    if self.version.is_some() {
                        continue;
                    }
                    self.on_hello(replica, h)?;
                    // Frames that overtook the Hello on the other lane come next.
                    self.early_bytes = 0;
                    for f in std::mem::take(&mut self.early).into_iter().rev() {
                        queue.push_front(f);
                    }
                }
                Frame::Summary(s) => {
                    self.count_round()?;
                    if s.pushed > 0 {
                        let n = s.pushed;
                        self.summary_waiting = Some((s, n));
                    } else {
                        touched.extend(self.on_summary(replica, s)?);
                    }
                }
                Frame::SummaryReply(r) => {
                    self.summary_pending = false;
                    for (id, heads) in r.entries {
                        self.docs.entry(id).or_default().theirs = Some(sorted(heads));
                        touched.push(id);
                    }
                    // When `complete` is false the responder starts range reconciliation in the
                    // same flight; its Ranges frame follows.
                }
                Frame::Ranges(ranges) => {
                    self.count_round()?;
                    self.recon_waiting = false;
                    let items = self.recon_items(replica)?;
                    let (reply, diffs) =
                        self.cfg.recon.respond(&items, &ranges).map_err(|e| self.protocol(Violation::from(e)))?;
                    // Fingerprints and unanswered item lists call for an answer, even an empty
                    // one ("everything matched"); an answer calls for none.
                    let wants_answer = |rs: &[Range]| {
                        rs.iter().any(|r| {
                            matches!(r.mode, RangeMode::Fingerprint { .. } | RangeMode::Items { reply: false, .. })
                        })
                    };
                    let finished = !wants_answer(&reply);
                    if wants_answer(&ranges) || !reply.is_empty() {
                        self.recon_waiting = wants_answer(&reply);
                        self.send(Frame::Ranges(reply));
                    }
                    for d in &diffs {
                        self.range_diffs.insert(d.id);
                    }
                    if finished {
                        // Every document the exchange did not single out is the same on both
                        // sides: remember that, so that the next conversation starts from it.
                        // Not a document written while the ranges were compared: the peer's
                        // match was with the heads it had before.
                        let seen = std::mem::take(&mut self.recon_seen);
                        for (id, heads) in replica.delta(&self.peer).map_err(EngineError::Replica)? {
                            let unchanged = seen.get(&id) == Some(&Some(crate::recon::digest(&heads)));
                            if !self.range_diffs.contains(&id) && unchanged {
                                self.knowledge_updates.push((id, Knowledge { shared: heads.clone(), heads }));
                            }
                        }
                    }
                    for d in diffs {
                        self.stats.range_differences += 1;
                        let conn = self.docs.entry(d.id).or_default();
                        if d.theirs.is_none() {
                            conn.theirs = Some(Vec::new());
                        } else if d.ours.is_some() && conn.theirs.is_none() {
                            // Both hold a version, and the deltas did not explain the difference:
                            // our memory of the peer's version is wrong. Learn its heads.
                            conn.stale = true;
                            conn.pushed = None;
                            conn.announced = None;
                        }
                        if d.ours.is_none() {
                            wanted.push(d.id);
                        } else {
                            touched.push(d.id);
                        }
                    }
                }
                Frame::Heads { doc, heads } => {
                    self.docs.entry(doc).or_default().theirs = Some(sorted(heads));
                    touched.push(doc);
                }
                Frame::Changes(Changes { doc, ack, heads, bytes, sigs }) => {
                    self.stats.change_bytes_received += bytes.len() as u64;
                    if ack {
                        self.docs.entry(doc).or_default().answered();
                    }
                    let heads = sorted(heads);
                    if let Some((mut s, left)) = self.summary_waiting.take() {
                        s.entries.push((doc, heads.clone()));
                        if left > 1 {
                            self.summary_waiting = Some((s, left - 1));
                        } else {
                            touched.extend(self.on_summary(replica, s)?);
                        }
                    }
                    incoming.push((Incoming { doc, bytes, sigs }, heads));
                }
                Frame::Ack { doc, heads } => {
                    // An Ack answers a push of ours: of a document never pushed, nothing is kept.
                    let Some(conn) = self.docs.get_mut(&doc) else { continue };
                    let acked = conn.answered();
                    // Without heads: the peer's heads are those of the push it answers.
                    let heads = match (heads.is_empty(), acked.clone()) {
                        (false, _) => sorted(heads),
                        (true, Some(pushed)) => pushed,
                        // An Ack of no push of ours says nothing we can record.
                        (true, None) => continue,
                    };
                    conn.theirs = Some(heads.clone());
                    let known = replica.known_hashes(&self.peer, &doc, &heads).map_err(EngineError::Replica)?;
                    let shared = if known.len() == heads.len() { heads.clone() } else { acked.unwrap_or_default() };
                    self.knowledge_updates.push((doc, Knowledge { heads, shared }));
                    touched.push(doc);
                }
                Frame::Refused { doc } => {
                    let Some(conn) = self.docs.get_mut(&doc) else { continue };
                    conn.refused = true;
                    conn.refusals = conn.refusals.saturating_add(1);
                    conn.answered();
                    self.log.push(format!("{} refused a document we sent", self.peer.name));
                }
                Frame::Need { doc } => {
                    if let Some(conn) = self.docs.get_mut(&doc) {
                        conn.answered();
                    }
                    // Once a step: the whole document is on its way.
                    if !self.pushed_now.contains(&doc) {
                        self.resend_whole(replica, &doc)?;
                    }
                }
                Frame::Member { credential } => {
                    if !replica.offer_credential(&credential).map_err(EngineError::Replica)? {
                        self.log.push(format!(
                            "{}: refused a member credential not issued by this fleet's CA",
                            self.peer.name
                        ));
                    }
                }
                Frame::BlobWant { hash, manifest, chunks } => self.serve_blob(replica, hash, manifest, chunks)?,
                Frame::BlobManifest(m) => self.on_manifest(replica, m)?,
                Frame::BlobChunk { hash, index, data } => self.on_chunk::<R>(hash, index, data)?,
                Frame::BlobMissing { hash } => {
                    self.transfers.remove(&hash);
                    self.missing_at_peer.insert(hash);
                }
                Frame::Revocations { der } => {
                    if replica.offer_revocations(&der).map_err(EngineError::Replica)? {
                        self.log.push(format!("{}: installed a newer revocation list", self.peer.name));
                    }
                }
                Frame::AuditHead(heads) => {
                    let version = self.version.unwrap_or(0);
                    if version < 3 || self.audit_head_received {
                        return Err(self.protocol(Violation::Unexpected { frame: "audit-head", version }));
                    }
                    self.audit_head_received = true;
                    replica.offer_audit_head(&self.peer, heads, self.now).map_err(EngineError::Replica)?;
                    if self.cfg.initiator
                        && let Some(h) =
                            replica.audit_heads(&self.peer, Some(heads.seen)).map_err(EngineError::Replica)?
                    {
                        self.send(Frame::AuditHead(h));
                    }
                }
                Frame::Mark { received, idle } => {
                    self.last_mark = Some((received, idle));
                    let d =
                        received.checked_sub(1).and_then(|i| self.sent_depths.get(i as usize)).copied().unwrap_or(0);
                    batch_depth = Some(batch_depth.unwrap_or(0).max(d));
                    self.resolve_depths(d);
                }
                Frame::Close { code, reason } => {
                    self.closed = true;
                    if code != CloseCode::Done as u16 {
                        return Err(EngineError::Closed { peer: self.peer.name.clone(), code, reason });
                    }
                }
            }
        }
        if !self.chunks_in.is_empty() {
            // The batch's chunks in one durable write, before anything reads what is held.
            let chunks = std::mem::take(&mut self.chunks_in);
            touched.extend(replica.store_chunks(&self.peer, &chunks, now).map_err(EngineError::Replica)?);
        }
        if !incoming.is_empty() {
            // New documents may reference blobs the peer did not hold when we last asked.
            self.missing_at_peer.clear();
            self.blobs_dirty = true;
            touched.extend(self.apply_incoming(replica, incoming, now)?);
        }
        for id in wanted {
            if replica.heads_for(&self.peer, &id).map_err(EngineError::Replica)?.is_none() {
                self.announce(replica, &id, Vec::new());
            } else {
                touched.push(id);
            }
        }
        let mut seen = HashSet::new();
        for id in touched {
            if seen.insert(id) {
                self.poke(replica, &id)?;
            }
        }
        self.send_acks();
        self.refresh_blobs(replica)?;
        self.flush_knowledge(replica)?;
        if self.cfg.initiator {
            // Frames we send now answer the peer's batch: one round trip deeper than the frames
            // of ours that batch answered. Without a mark yet (the batch was cut by the network),
            // the depth is settled when the mark comes.
            match batch_depth {
                Some(d) => {
                    self.next_depth = self.next_depth.max(d + 1);
                    self.next_depth_provisional = false;
                }
                None => {
                    self.next_depth = self.next_depth.max(self.last_mark_depth + 1);
                    self.next_depth_provisional = true;
                }
            }
        }
        self.end_of_batch(out_before);
        Ok(())
    }

    /// Acknowledges stored changes: by the Changes frame we push back for the same document if
    /// there is one, else by an Ack (without heads when ours equal the sender's).
    fn send_acks(&mut self) {
        if self.reply_queued {
            let pushed = &self.pushed_now;
            for f in self.out.iter_mut() {
                if let Frame::SummaryReply(r) = f {
                    r.entries.retain(|(id, _)| !pushed.contains(id));
                }
            }
        }
        for (id, mine, theirs) in std::mem::take(&mut self.pending_acks) {
            let mut folded = false;
            if self.pushed_now.contains(&id) {
                for f in self.out.iter_mut() {
                    if let Frame::Changes(c) = f
                        && c.doc == id
                    {
                        c.ack = true;
                        folded = true;
                    }
                }
            }
            if !folded {
                let heads = if mine == theirs { Vec::new() } else { mine };
                self.send(Frame::Ack { doc: id, heads });
            }
        }
    }

    fn protocol<E: std::error::Error>(&mut self, detail: Violation) -> EngineError<E> {
        self.closed = true;
        self.out.clear();
        self.out.push_back(Frame::Close { code: CloseCode::ProtocolError as u16, reason: detail.to_string() });
        EngineError::Protocol { peer: self.peer.name.clone(), detail }
    }

    fn on_hello<R: Replica>(&mut self, replica: &mut R, h: Hello) -> Res<(), R> {
        let high = MAX_VERSION.min(h.max_version);
        let low = MIN_VERSION.max(h.min_version);
        if high < low {
            let detail =
                Violation::NoCommonVersion { peer: self.peer.name.clone(), min: h.min_version, max: h.max_version };
            self.closed = true;
            self.out.clear();
            self.out.push_back(Frame::Close { code: CloseCode::NoCommonVersion as u16, reason: detail.to_string() });
            return Err(EngineError::Protocol { peer: self.peer.name.clone(), detail });
        }
        self.version = Some(high);
        // The responder tells its audit head at once; the initiator answers the responder's,
        // so that it can vouch for the end of its chain the responder says it had seen.
        if high >= 3
            && !self.cfg.initiator
            && let Some(h) = replica.audit_heads(&self.peer, None).map_err(EngineError::Replica)?
        {
            self.send(Frame::AuditHead(h));
        }
        if let Some((number, der)) = replica.revocations().map_err(EngineError::Replica)?
            && number > h.crl_number
        {
            self.send(Frame::Revocations { der });
        }
        Ok(())
    }

    /// Answers a summary: our delta, whether the deltas explain every difference, and (by the
    /// caller, after this batch's changes are stored) the pushes. Returns the documents to poke.
    fn on_summary<R: Replica>(&mut self, replica: &mut R, s: Summary) -> Res<Vec<DocId>, R> {
        if self.cfg.initiator {
            return Err(self.protocol(Violation::SummaryToInitiator));
        }
        let mine = if s.delta && replica.knows_peer(&self.peer).map_err(EngineError::Replica)? {
            replica.delta(&self.peer).map_err(EngineError::Replica)?
        } else {
            Vec::new()
        };
        let complete = s.delta && self.deltas_explain_everything(replica, &s, &mine)?;
        for (id, heads) in &s.entries {
            self.docs.entry(*id).or_default().theirs = Some(sorted(heads.clone()));
        }
        for (id, heads) in &mine {
            self.docs.entry(*id).or_default().announced = Some(sorted(heads.clone()));
        }
        self.send(Frame::SummaryReply(SummaryReply { complete, entries: mine.clone() }));
        self.reply_queued = true;
        if s.delta && !complete {
            self.log.push(format!("{}: deltas do not explain every difference; reconciling by ranges", self.peer.name));
            let items = self.recon_items(replica)?;
            self.send(Frame::Ranges(self.cfg.recon.initiate(&items)));
            self.recon_waiting = true;
        }
        let mut ids: Vec<DocId> = s.entries.iter().map(|e| e.0).collect();
        ids.extend(mine.iter().map(|e| e.0));
        Ok(ids)
    }

    /// Whether both sets, once the documents listed in either delta are taken out, are equal.
    fn deltas_explain_everything<R: Replica>(
        &mut self,
        replica: &mut R,
        s: &Summary,
        mine: &[(DocId, Vec<Hash>)],
    ) -> Res<bool, R> {
        let theirs: HashMap<DocId, &Vec<Hash>> = s.entries.iter().map(|(id, h)| (*id, h)).collect();
        let mut listed: BTreeSet<DocId> = theirs.keys().copied().collect();
        listed.extend(mine.iter().map(|(id, _)| *id));
        let ours: HashMap<DocId, &Vec<Hash>> = mine.iter().map(|(id, h)| (*id, h)).collect();
        let (mut count_mine, mut fp_mine) = replica.summary(&self.peer).map_err(EngineError::Replica)?;
        let mut fp_theirs = Fingerprint::from_bytes(&s.fingerprint);
        let mut count_theirs = s.count;
        for id in &listed {
            let my_heads = match ours.get(id) {
                Some(h) => Some((*h).clone()),
                None => replica.heads_for(&self.peer, id).map_err(EngineError::Replica)?,
            };
            if let Some(h) = my_heads {
                fp_mine = fp_mine.sub(&Fingerprint::of(&Item { id: *id, digest: recon::digest(&h) }));
                count_mine = count_mine.wrapping_sub(1);
            }
            let their_heads = match theirs.get(id) {
                Some(h) if !h.is_empty() => Some((*h).clone()),
                Some(_) => None,
                None => replica.knowledge(&self.peer, id).map_err(EngineError::Replica)?.map(|k| k.heads),
            };
            if let Some(h) = their_heads {
                fp_theirs = fp_theirs.sub(&Fingerprint::of(&Item { id: *id, digest: recon::digest(&h) }));
                count_theirs = count_theirs.wrapping_sub(1);
            }
        }
        Ok(fp_mine == fp_theirs && count_mine == count_theirs)
    }

    /// Tells the peer our heads of a document (so that it pushes what we lack).
    fn announce<R: Replica>(&mut self, _replica: &mut R, id: &DocId, heads: Vec<Hash>) {
        let heads = sorted(heads);
        let conn = self.docs.entry(*id).or_default();
        if conn.announced.as_ref() != Some(&heads) {
            conn.announced = Some(heads.clone());
            self.send(Frame::Heads { doc: *id, heads });
        }
    }

    /// Decides what to do for one document: push what the peer lacks, or announce our heads so
    /// that the peer pushes what we lack.
    fn poke<R: Replica>(&mut self, replica: &mut R, id: &DocId) -> Res<bool, R> {
        let Some(mine) = replica.heads_for(&self.peer, id).map_err(EngineError::Replica)? else {
            return Ok(false);
        };
        let mine = sorted(mine);
        let conn = self.docs.entry(*id).or_default();
        if conn.refused {
            return Ok(false);
        }
        let theirs = conn.theirs.clone();
        if theirs.as_ref() == Some(&mine) || conn.pushed.as_ref() == Some(&mine) {
            return Ok(false);
        }
        if conn.stale && theirs.is_none() {
            // What we remember of the peer's version is wrong: tell it ours, and compute from
            // its heads once they come.
            self.announce(replica, id, mine);
            return Ok(false);
        }
        let knowledge = replica.knowledge(&self.peer, id).map_err(EngineError::Replica)?;
        let shared = knowledge.map(|k| k.shared).unwrap_or_default();
        let (base, they_have_more) = match &theirs {
            Some(t) => {
                let known = replica.known_hashes(&self.peer, id, t).map_err(EngineError::Replica)?;
                if known.len() == t.len() {
                    (t.clone(), false)
                } else {
                    let mut base = shared.clone();
                    base.extend(known);
                    base.sort();
                    base.dedup();
                    (base, true)
                }
            }
            None => (shared, false),
        };
        // With no known common base (a peer holding a version we share nothing known with)
        // every change goes: the peer skips what it already holds.
        let out = replica.changes_since(&self.peer, id, &base).map_err(EngineError::Replica)?.unwrap_or_default();
        if !out.bytes.is_empty() {
            if self.output_paused {
                self.deferred.insert(*id);
                return Ok(false);
            }
            self.push(replica, id, mine, out)?;
            return Ok(true);
        } else if they_have_more {
            self.announce(replica, id, mine);
        }
        Ok(false)
    }

    /// Sends changes of a document, preceded by the credentials of authors the peer may not know.
    fn push<R: Replica>(&mut self, replica: &mut R, id: &DocId, mine: Vec<Hash>, out: Outgoing) -> Res<(), R> {
        for author in &out.authors {
            if self.credentials_sent.insert(*author)
                && let Some(credential) = replica.credential(&self.peer, author).map_err(EngineError::Replica)?
            {
                self.stats.credentials_sent += 1;
                self.send(Frame::Member { credential });
            }
        }
        let conn = self.docs.entry(*id).or_default();
        conn.pushed = Some(mine.clone());
        conn.announced = Some(mine.clone());
        conn.awaiting_ack = true;
        conn.in_flight.push_back(mine.clone());
        self.pushed_now.insert(*id);
        self.send(Frame::Changes(Changes { doc: *id, ack: false, heads: mine, bytes: out.bytes, sigs: out.sigs }));
        Ok(())
    }

    /// Answers a Need: every change of the document, or, for a document we do not hold or the
    /// peer may not see, the same answer either way ("I hold nothing of it").
    fn resend_whole<R: Replica>(&mut self, replica: &mut R, id: &DocId) -> Res<(), R> {
        let mine = replica.heads_for(&self.peer, id).map_err(EngineError::Replica)?;
        let out = match &mine {
            Some(_) => replica.changes_since(&self.peer, id, &[]).map_err(EngineError::Replica)?,
            None => None,
        };
        match (mine, out) {
            (Some(mine), Some(out)) if !out.bytes.is_empty() => {
                self.stats.full_resends += 1;
                self.push(replica, id, sorted(mine), out)
            }
            _ => {
                self.send(Frame::Heads { doc: *id, heads: Vec::new() });
                Ok(())
            }
        }
    }

    fn apply_incoming<R: Replica>(
        &mut self,
        replica: &mut R,
        incoming: Vec<(Incoming, Vec<Hash>)>,
        now: TimeMs,
    ) -> Res<Vec<DocId>, R> {
        let (batch, heads): (Vec<Incoming>, Vec<Vec<Hash>>) = incoming.into_iter().unzip();
        let outcomes = replica.apply(&self.peer, &batch, now).map_err(EngineError::Replica)?;
        let mut touched = Vec::new();
        for ((id, sender_heads), outcome) in batch.iter().map(|b| b.doc).zip(heads).zip(outcomes) {
            match outcome {
                Applied::Stored { heads } => {
                    self.stats.docs_received += 1;
                    let heads = sorted(heads);
                    self.knowledge_updates
                        .push((id, Knowledge { heads: sender_heads.clone(), shared: sender_heads.clone() }));
                    let conn = self.docs.entry(id).or_default();
                    conn.theirs = Some(sender_heads.clone());
                    conn.announced = Some(heads.clone());
                    self.pending_acks.push((id, heads, sender_heads));
                    touched.push(id);
                }
                Applied::MissingDeps => {
                    self.docs.entry(id).or_default().theirs = Some(sender_heads);
                    self.send(Frame::Need { doc: id });
                }
                Applied::Refused { reason } => {
                    self.stats.refused += 1;
                    self.log.push(format!("{}: refused a document: {reason}", self.peer.name));
                    self.send(Frame::Refused { doc: id });
                }
            }
        }
        Ok(touched)
    }

    fn refresh_blobs<R: Replica>(&mut self, replica: &mut R) -> Res<(), R> {
        if !std::mem::take(&mut self.blobs_dirty) {
            self.fill_window();
            return Ok(());
        }
        for need in replica.blobs_wanted(&self.peer).map_err(EngineError::Replica)? {
            if self.transfers.contains_key(&need.hash) || self.missing_at_peer.contains(&need.hash) {
                continue;
            }
            self.transfers.insert(
                need.hash,
                Transfer {
                    size: need.size,
                    manifest_requested: false,
                    manifest: need.manifest,
                    missing: need.missing.into_iter().collect(),
                    requested: BTreeSet::new(),
                    last_progress: self.now,
                },
            );
        }
        self.fill_window();
        Ok(())
    }

    fn fill_window(&mut self) {
        let mut in_flight: usize = self.transfers.values().map(|t| t.requested.len()).sum();
        let window = self.cfg.blob_window.max(1);
        let mut wants = Vec::new();
        for (hash, t) in self.transfers.iter_mut() {
            if in_flight >= window {
                break;
            }
            let want_manifest = t.manifest.is_none() && !t.manifest_requested;
            if t.manifest.is_none() && t.manifest_requested {
                continue;
            }
            let mut chunks = Vec::new();
            while in_flight < window {
                let Some(c) = t.missing.pop_front() else { break };
                t.requested.insert(c);
                chunks.push(c);
                in_flight += 1;
            }
            if want_manifest || !chunks.is_empty() {
                t.manifest_requested |= want_manifest;
                wants.push(Frame::BlobWant { hash: *hash, manifest: want_manifest, chunks });
            }
        }
        for w in wants {
            self.send(w);
        }
    }

    /// Counts a summary or reconciliation round of the peer's in this step: past
    /// [`MAX_RECON_PER_STEP`], a violation.
    fn count_round<E: std::error::Error + 'static>(&mut self) -> Result<(), EngineError<E>> {
        self.recon_now += 1;
        if self.recon_now > MAX_RECON_PER_STEP {
            return Err(self.protocol(Violation::TooManyRounds { frames: self.recon_now }));
        }
        Ok(())
    }

    fn serve_blob<R: Replica>(&mut self, replica: &mut R, hash: Hash, manifest: bool, chunks: Vec<u32>) -> Res<(), R> {
        let Some(m) = replica.blob_manifest(&self.peer, &hash).map_err(EngineError::Replica)? else {
            self.send(Frame::BlobMissing { hash });
            return Ok(());
        };
        let count = blob::chunk_count(m.size, m.chunk_size);
        self.served_now = self.served_now.saturating_add(chunks.len());
        let distinct = chunks.iter().collect::<HashSet<_>>().len();
        if chunks.len() > blob::MAX_CHUNKS || distinct < chunks.len() || self.served_now > MAX_SERVED_PER_STEP {
            let asked = chunks.len().max(self.served_now);
            return Err(self.protocol(Violation::TooManyChunks { asked, window: blob::MAX_CHUNKS }));
        }
        if manifest {
            self.send(Frame::BlobManifest(m));
        }
        for index in chunks {
            if u64::from(index) >= count {
                return Err(self.protocol(Violation::ChunkOutOfRange { index: u64::from(index), count }));
            }
            match replica.blob_chunk(&hash, index).map_err(EngineError::Replica)? {
                Some(data) => self.send(Frame::BlobChunk { hash, index, data }),
                None => {
                    self.send(Frame::BlobMissing { hash });
                    break;
                }
            }
        }
        Ok(())
    }

    fn on_manifest<R: Replica>(&mut self, replica: &mut R, m: BlobManifest) -> Res<(), R> {
        let Some(t) = self.transfers.get(&m.hash) else { return Ok(()) };
        let check = blob::verify_manifest(&m, &m.hash).and_then(|_| {
            if m.chunk_size != blob::CHUNK_SIZE {
                Err(BlobError::ChunkSize(m.chunk_size))
            } else if m.size == t.size {
                Ok(())
            } else {
                Err(BlobError::ChunkCount {
                    size: t.size,
                    found: m.cvs.len(),
                    expected: blob::chunk_count(t.size, m.chunk_size),
                })
            }
        });
        if let Err(e) = check {
            self.stats.refused += 1;
            self.log.push(format!("{}: refused a blob manifest: {e}", self.peer.name));
            self.transfers.remove(&m.hash);
            self.missing_at_peer.insert(m.hash);
            return Ok(());
        }
        replica.store_manifest(&m, self.now).map_err(EngineError::Replica)?;
        self.last_blob_progress = self.now;
        if let Some(t) = self.transfers.get_mut(&m.hash) {
            t.manifest = Some(m);
            t.last_progress = self.now;
        }
        self.fill_window();
        Ok(())
    }

    /// A received chunk: verified against its manifest and kept for the batch's write.
    fn on_chunk<R: Replica>(&mut self, hash: Hash, index: u32, data: Vec<u8>) -> Res<(), R> {
        let Some(t) = self.transfers.get_mut(&hash) else {
            self.stats.chunks_duplicate += 1;
            return Ok(());
        };
        if !t.requested.remove(&index) {
            self.stats.chunks_duplicate += 1;
            return Ok(());
        }
        let Some(m) = &t.manifest else {
            return Err(self.protocol(Violation::ChunkBeforeManifest));
        };
        if let Err(e) = blob::verify_chunk(m, index, &data) {
            self.stats.refused += 1;
            self.log.push(format!("{}: refused a blob chunk: {e}", self.peer.name));
            t.missing.push_back(index);
            self.fill_window();
            return Ok(());
        }
        t.last_progress = self.now;
        self.last_blob_progress = self.now;
        self.chunks_in.push((hash, index, data));
        self.stats.chunks_received += 1;
        let done = self.transfers.get(&hash).is_some_and(|t| t.missing.is_empty() && t.requested.is_empty());
        if done {
            self.transfers.remove(&hash);
            self.stats.blobs_received += 1;
        }
        self.fill_window();
        Ok(())
    }

    fn flush_knowledge<R: Replica>(&mut self, replica: &mut R) -> Res<(), R> {
        if !self.knowledge_updates.is_empty() {
            let updates = std::mem::take(&mut self.knowledge_updates);
            replica.set_knowledge(&self.peer, &updates).map_err(EngineError::Replica)?;
        }
        Ok(())
    }

    /// Whether this side is waiting for nothing.
    pub fn is_quiescent(&self) -> bool {
        !self.summary_pending
            && !self.recon_waiting
            && self.transfers.is_empty()
            && self.docs.values().all(|d| !d.awaiting_ack)
            && self.deferred.is_empty()
    }

    /// A mark arrived answering frames of depth `d`: frames we sent in answer to the unmarked
    /// part of that batch are `d + 1` deep.
    fn resolve_depths(&mut self, d: u32) {
        self.last_mark_depth = self.last_mark_depth.max(d);
        for i in std::mem::take(&mut self.unresolved) {
            if let Some(depth) = self.sent_depths.get_mut(i) {
                *depth = (*depth).max(d + 1);
                self.stats.round_trips = self.stats.round_trips.max(u64::from(*depth));
            }
        }
        self.next_depth_provisional = false;
    }

    /// The responder closes each batch of output with a mark (and sends one, once, when it
    /// becomes idle): the initiator learns what the batch answers and when all is settled.
    fn end_of_batch(&mut self, out_before: usize) {
        if self.cfg.initiator || self.closed || self.version.is_none() {
            return;
        }
        let received = self.stats.frames_received;
        let idle = self.is_quiescent();
        let produced = self.out.len() > out_before;
        if produced || (idle && self.idle_sent_at != Some(received)) {
            if idle {
                self.idle_sent_at = Some(received);
            }
            self.send(Frame::Mark { received, idle });
        }
    }

    /// For a one-shot sync: both sides have converged and the peer has processed everything we sent.
    pub fn is_done(&self) -> bool {
        self.is_quiescent() && self.out.is_empty() && self.last_mark == Some((self.stats.frames_sent, true))
    }

    /// Ends the conversation normally.
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.send(Frame::Close { code: CloseCode::Done as u16, reason: "done".into() });
        }
    }
}
