//! The wire format: frames with a type byte and a length, and their payloads.
//!
//! ```text
//! frame   = type:u8  length:varint  payload:[u8; length]
//! varint  = unsigned LEB128, at most 10 bytes
//! bytes   = length:varint  [u8; length]
//! heads   = count:varint  [change hash: 32 bytes; count]
//! doc id  = 16 bytes (the ULID of the session)
//! ```
//!
//! A frame longer than [`MAX_FRAME`] is refused before its payload is read. Decoding never
//! panics: every read is bounds-checked and every count is checked against the bytes left, so a
//! hostile length cannot make the decoder allocate more than the frame it was given.
//! The protocol version is negotiated in [`Hello`]; versions 2 and 3 are described here (3 adds
//! [`Frame::AuditHead`]; version 1 carried unsigned changes and Automerge sync messages; it is
//! no longer spoken).

use std::fmt;

/// The ALPN protocol id, named after the major protocol version it starts with.
pub const ALPN: &[u8] = b"outpost/1";
/// Oldest protocol version this build speaks.
pub const MIN_VERSION: u16 = 2;
/// Newest protocol version this build speaks. Version 3 adds [`Frame::AuditHead`], sent only
/// once both sides have said they speak it.
pub const MAX_VERSION: u16 = 3;
/// Largest frame accepted, header excluded.
pub const MAX_FRAME: usize = 8 * 1024 * 1024;

/// A session id on the wire.
pub type DocId = [u8; 16];
/// A 32-byte hash: an Automerge change hash (a document's heads) or a photo's BLAKE3 hash.
/// Shown, stored in documents and named in the API as 64 lower-case hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The hash's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The hash as 64 lower-case hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A hash back from its 64 hex characters; none if it is not one.
    pub fn from_hex(s: &str) -> Option<Hash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Hash(out))
    }
}

impl From<[u8; 32]> for Hash {
    fn from(b: [u8; 32]) -> Self {
        Hash(b)
    }
}

impl From<Hash> for [u8; 32] {
    fn from(h: Hash) -> Self {
        h.0
    }
}

impl From<automerge::ChangeHash> for Hash {
    fn from(h: automerge::ChangeHash) -> Self {
        Hash(h.0)
    }
}

impl From<Hash> for automerge::ChangeHash {
    fn from(h: Hash) -> Self {
        automerge::ChangeHash(h.0)
    }
}

impl AsRef<[u8]> for Hash {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Display for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended inside a value.
    #[error("frame truncated while reading {0}")]
    Truncated(&'static str),
    /// A frame announced a length over the limit.
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME}")]
    TooLong {
        /// The announced length.
        len: u64,
    },
    /// A varint longer than 10 bytes or overflowing 64 bits.
    #[error("malformed varint in {0}")]
    BadVarint(&'static str),
    /// A frame type this version does not know.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// A value outside its range.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// Bytes left over after a frame's payload was read.
    #[error("{0} bytes of trailing garbage in a frame")]
    Trailing(usize),
}

/// The first frame each side sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Oldest protocol version the sender speaks.
    pub min_version: u16,
    /// Newest protocol version the sender speaks.
    pub max_version: u16,
    /// The sender's node name (also in its certificate; informational here).
    pub node: String,
    /// Number of the newest revocation list the sender holds (0: none).
    pub crl_number: u64,
}

/// How the initiator opens reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Whether the initiator has state for this peer (`false`: reconcile by ranges from scratch).
    pub delta: bool,
    /// Number of documents in the initiator's set for this peer.
    pub count: u64,
    /// Fingerprint of that set.
    pub fingerprint: [u8; 32],
    /// The documents that changed since the peer last confirmed them, with their heads, except
    /// those whose changes follow in the same flight.
    pub entries: Vec<(DocId, Vec<Hash>)>,
    /// How many [`Frame::Changes`] follow in the same flight for the rest of the delta (their
    /// document and heads complete the delta).
    pub pushed: u32,
}

/// The responder's answer to a [`Summary`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryReply {
    /// Whether the two deltas explain every difference between the two sets.
    pub complete: bool,
    /// The responder's changed documents, with their heads.
    pub entries: Vec<(DocId, Vec<Hash>)>,
}

/// One range of a range-based reconciliation round. Ranges in a frame are contiguous: each
/// starts where the previous one ended (the first at the lowest id) and ends before `upper`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// Exclusive upper bound; `None` is the end of the id space.
    pub upper: Option<DocId>,
    /// What the sender says about its items in the range.
    pub mode: RangeMode,
}

/// What a range carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeMode {
    /// Nothing left to do in this range.
    Skip,
    /// The sender's count and fingerprint of its items in the range.
    Fingerprint {
        /// Items in the range.
        count: u64,
        /// Their fingerprint.
        fingerprint: [u8; 32],
    },
    /// The sender's items in the range, each with the digest of its heads.
    Items {
        /// Whether this answers an item list (no further answer wanted).
        reply: bool,
        /// The items.
        items: Vec<(DocId, [u8; 16])>,
    },
}

/// New changes of one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// The document.
    pub doc: DocId,
    /// Whether these heads include everything the receiver pushed of this document: the frame
    /// then also acknowledges that push (saving an [`Frame::Ack`]).
    pub ack: bool,
    /// The sender's heads, which the sender holds durably.
    pub heads: Vec<Hash>,
    /// Automerge change chunks, uncompressed, one after another.
    pub bytes: Vec<u8>,
    /// One signature per change in `bytes`, in the same order: its author's Ed25519 signature
    /// of the change hash ([`crate::authorship`]). Empty for the ICB directory, which is taken
    /// only from the ICB's hub over its authenticated connection.
    pub sigs: Vec<[u8; 64]>,
}

/// A blob's manifest: the BLAKE3 chaining values of its chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobManifest {
    /// The blob's BLAKE3 hash.
    pub hash: Hash,
    /// Its size in bytes.
    pub size: u64,
    /// Chunk size (a power of two, at least 1 KiB).
    pub chunk_size: u32,
    /// One chaining value per chunk.
    pub cvs: Vec<[u8; 32]>,
}

/// The content of a [`Frame::AuditHead`]: which audit chain the sender keeps (`chain`: an id
/// made with its store, kept by its backups), where it ends (`head`: its newest entry's number)
/// and that entry's anchor (`anchor`), and what it was told of the receiver's chain
/// `seen_chain`: the furthest end (`seen`, 0: never) with its anchor.
///
/// An entry's anchor is a keyed digest over the entry and the anchor before it (a chain of its
/// own beside the audit hashes, which a key rotation does not change; its key never leaves the
/// node, so the digests say nothing of what the entries hold). A receiver whose chain is
/// `seen_chain` and ends before `seen`, or whose entry `seen` has another anchor, has lost
/// entries since (restored from an older copy, or cut back and written again); a node set up
/// anew under the same name has another chain, and is compared with nothing. `proof` is the
/// end of the sender's own chain that the receiver said it had seen (the initiator answers the
/// `seen` just received; the responder gives the one it was told last time), with the
/// sender's anchor of that entry now, so that the receiver, which kept the anchor it was told,
/// finds a chain that was cut and then written past where it had been.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuditHeads {
    /// The sender's audit chain.
    pub chain: u64,
    /// Its newest entry.
    pub head: u64,
    /// The anchor of that entry (zeros for an empty chain).
    pub anchor: [u8; 32],
    /// The receiver's chain the sender was told of.
    pub seen_chain: u64,
    /// The furthest end of that chain the sender was told of (0: never).
    pub seen: u64,
    /// The anchor it was told with `seen`.
    pub seen_anchor: [u8; 32],
    /// The end of the sender's chain the receiver last said it had seen (0: none).
    pub proof: u64,
    /// The sender's anchor of entry `proof`, as its chain holds it now.
    pub proof_anchor: [u8; 32],
}

/// A frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Version negotiation and revocation-list number.
    Hello(Hello),
    /// The initiator's opening of reconciliation.
    Summary(Summary),
    /// The responder's answer.
    SummaryReply(SummaryReply),
    /// A round of range-based reconciliation.
    Ranges(Vec<Range>),
    /// "This is my version of the document": the receiver pushes what the sender lacks.
    Heads {
        /// The document.
        doc: DocId,
        /// The sender's heads (empty: the sender does not hold it).
        heads: Vec<Hash>,
    },
    /// New changes of a document.
    Changes(Changes),
    /// The sender now holds these heads of the document durably.
    Ack {
        /// The document.
        doc: DocId,
        /// Its heads at the sender; empty when they are exactly the heads the receiver pushed.
        heads: Vec<Hash>,
    },
    /// The sender could not integrate changes (missing dependencies): please send every change
    /// of the document.
    Need {
        /// The document.
        doc: DocId,
    },
    /// The sender will not store this document from us (outside its scope, or not a valid
    /// session): stop pushing it in this conversation.
    Refused {
        /// The document.
        doc: DocId,
    },
    /// A fleet member's credential (its certificate), sent before the first changes written by
    /// a member the receiver may not know yet. The receiver checks it against the fleet CA.
    Member {
        /// The credential's bytes (DER of an X.509 certificate in the node).
        credential: Vec<u8>,
    },
    /// Please send these chunks of a blob (and its manifest first, if asked).
    BlobWant {
        /// The blob.
        hash: Hash,
        /// Whether the manifest is wanted.
        manifest: bool,
        /// The chunk indices wanted.
        chunks: Vec<u32>,
    },
    /// A blob's manifest.
    BlobManifest(BlobManifest),
    /// One chunk of a blob.
    BlobChunk {
        /// The blob.
        hash: Hash,
        /// Chunk index.
        index: u32,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The sender does not hold that blob (whole).
    BlobMissing {
        /// The blob.
        hash: Hash,
    },
    /// The fleet revocation list (an X.509 CRL signed by the fleet CA).
    Revocations {
        /// DER bytes.
        der: Vec<u8>,
    },
    /// Where the sender's audit chain ends and what it was told of the receiver's
    /// ([`AuditHeads`]). Sent once by each side when both speak version 3 and they are a hub
    /// and a member of its ICB: by the responder after the Hellos, by the initiator in answer
    /// to the responder's. It asks for nothing and is left out of the frame counts that marks
    /// answer, so it costs no round trip.
    AuditHead(AuditHeads),
    /// Ends each batch of the responder's frames: they answer the first `received` frames of the
    /// peer (which lets the initiator count round trips exactly), and `idle` says whether the
    /// sender then waits for nothing.
    Mark {
        /// Frames received from the peer so far.
        received: u64,
        /// Whether the sender has nothing outstanding.
        idle: bool,
    },
    /// The sender ends the conversation.
    Close {
        /// A code (see [`CloseCode`]).
        code: u16,
        /// Why, for logs.
        reason: String,
    },
}

/// Codes carried by [`Frame::Close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// Normal end of a one-shot sync.
    Done = 0,
    /// No protocol version in common.
    NoCommonVersion = 1,
    /// The peer sent something that could not be decoded or was out of order.
    ProtocolError = 2,
    /// The peer's certificate has been revoked.
    Revoked = 3,
    /// The sender could not store what it received (full disk, damaged store): nothing was acknowledged.
    Unavailable = 4,
}

/// The lane a frame travels on: documents first, blobs in the background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Reconciliation and document changes (high priority).
    Sync,
    /// Blob manifests and chunks (low priority).
    Blob,
}

impl Frame {
    /// The lane this frame belongs on.
    pub fn lane(&self) -> Lane {
        match self {
            Frame::BlobWant { .. } | Frame::BlobManifest(_) | Frame::BlobChunk { .. } | Frame::BlobMissing { .. } => {
                Lane::Blob
            }
            _ => Lane::Sync,
        }
    }

    /// Whether this frame asks the receiver for something, or orders what follows it: a
    /// reconciliation step, a version to push against, a request for a document or a photo's
    /// chunks, a batch's mark or a close. The others carry what the sender sends (its hello,
    /// changes, acknowledgements, credentials, manifests, chunks, refusals, revocations), and
    /// answering one costs the receiver a small frame or a share of what it was sent (a driver
    /// holds back the pushes they would prompt: [`crate::engine::Engine::set_output_paused`]).
    /// A hello is never held: every frame after it needs it first.
    ///
    /// A node that owes its peer much it has not yet read holds the asks back (in order) and
    /// still takes what the peer carries, so that two nodes that each owe the other cannot
    /// wait for each other. Carried frames may overtake held asks (the receiver may then push
    /// again what the peer already holds, which it skips).
    pub fn asks(&self) -> bool {
        !matches!(
            self,
            Frame::Hello(_)
                | Frame::Changes(_)
                | Frame::Ack { .. }
                | Frame::Refused { .. }
                | Frame::Member { .. }
                | Frame::BlobManifest(_)
                | Frame::BlobChunk { .. }
                | Frame::BlobMissing { .. }
                | Frame::Revocations { .. }
                | Frame::AuditHead(..)
        )
    }

    fn type_byte(&self) -> u8 {
        match self {
            Frame::Hello(_) => 0x01,
            Frame::Summary(_) => 0x02,
            Frame::SummaryReply(_) => 0x03,
            Frame::Ranges(_) => 0x04,
            Frame::Heads { .. } => 0x05,
            Frame::Changes(_) => 0x06,
            Frame::Ack { .. } => 0x07,
            Frame::Need { .. } => 0x08,
            Frame::Refused { .. } => 0x0A,
            Frame::Member { .. } => 0x21,
            Frame::BlobWant { .. } => 0x10,
            Frame::BlobManifest(_) => 0x11,
            Frame::BlobChunk { .. } => 0x12,
            Frame::BlobMissing { .. } => 0x13,
            Frame::Revocations { .. } => 0x20,
            Frame::AuditHead(..) => 0x22,
            Frame::Mark { .. } => 0x30,
            Frame::Close { .. } => 0x3F,
        }
    }

    /// A short name for statistics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::Summary(_) => "summary",
            Frame::SummaryReply(_) => "summary-reply",
            Frame::Ranges(_) => "ranges",
            Frame::Heads { .. } => "heads",
            Frame::Changes(_) => "changes",
            Frame::Ack { .. } => "ack",
            Frame::Need { .. } => "need",
            Frame::Refused { .. } => "refused",
            Frame::Member { .. } => "member",
            Frame::BlobWant { .. } => "blob-want",
            Frame::BlobManifest(_) => "blob-manifest",
            Frame::BlobChunk { .. } => "blob-chunk",
            Frame::BlobMissing { .. } => "blob-missing",
            Frame::Revocations { .. } => "revocations",
            Frame::AuditHead(..) => "audit-head",
            Frame::Mark { .. } => "mark",
            Frame::Close { .. } => "close",
        }
    }

    /// Appends the encoded frame (header and payload) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let len = self.payload_len();
        out.reserve(len + 11);
        out.push(self.type_byte());
        put_varint(out, len as u64);
        self.payload(out);
    }

    /// Bytes of the payload, counted without encoding it.
    fn payload_len(&self) -> usize {
        let mut n = Count(0);
        self.payload(&mut n);
        n.0
    }

    /// Bytes of the encoded frame (header and payload), as [`Frame::encode`] writes them.
    pub fn encoded_len(&self) -> usize {
        let len = self.payload_len();
        let mut header = Count(1);
        put_varint(&mut header, len as u64);
        header.0 + len
    }

    /// Writes the payload to `p` (bytes, or a count of them).
    fn payload<S: Sink>(&self, p: &mut S) {
        match self {
            Frame::Hello(h) => {
                p.extend_from_slice(&h.min_version.to_be_bytes());
                p.extend_from_slice(&h.max_version.to_be_bytes());
                put_bytes(p, h.node.as_bytes());
                put_varint(p, h.crl_number);
            }
            Frame::Summary(s) => {
                p.push(u8::from(s.delta));
                put_varint(p, s.count);
                p.extend_from_slice(&s.fingerprint);
                put_entries(p, &s.entries);
                put_varint(p, u64::from(s.pushed));
            }
            Frame::SummaryReply(r) => {
                p.push(u8::from(r.complete));
                put_entries(p, &r.entries);
            }
            Frame::Ranges(ranges) => {
                put_varint(p, ranges.len() as u64);
                for r in ranges {
                    match &r.upper {
                        Some(id) => {
                            p.push(1);
                            p.extend_from_slice(id);
                        }
                        None => p.push(0),
                    }
                    match &r.mode {
                        RangeMode::Skip => p.push(0),
                        RangeMode::Fingerprint { count, fingerprint } => {
                            p.push(1);
                            put_varint(p, *count);
                            p.extend_from_slice(fingerprint);
                        }
                        RangeMode::Items { reply, items } => {
                            p.push(if *reply { 3 } else { 2 });
                            put_varint(p, items.len() as u64);
                            for (id, digest) in items {
                                p.extend_from_slice(id);
                                p.extend_from_slice(digest);
                            }
                        }
                    }
                }
            }
            Frame::Heads { doc, heads } | Frame::Ack { doc, heads } => {
                p.extend_from_slice(doc);
                put_heads(p, heads);
            }
            Frame::Changes(c) => {
                p.extend_from_slice(&c.doc);
                p.push(u8::from(c.ack));
                put_heads(p, &c.heads);
                put_bytes(p, &c.bytes);
                put_varint(p, c.sigs.len() as u64);
                for sig in &c.sigs {
                    p.extend_from_slice(sig);
                }
            }
            Frame::Need { doc } | Frame::Refused { doc } => p.extend_from_slice(doc),
            Frame::Member { credential } => put_bytes(p, credential),
            Frame::BlobWant { hash, manifest, chunks } => {
                p.extend_from_slice(hash.as_bytes());
                p.push(u8::from(*manifest));
                put_varint(p, chunks.len() as u64);
                for c in chunks {
                    put_varint(p, u64::from(*c));
                }
            }
            Frame::BlobManifest(m) => {
                p.extend_from_slice(m.hash.as_bytes());
                put_varint(p, m.size);
                put_varint(p, u64::from(m.chunk_size));
                put_varint(p, m.cvs.len() as u64);
                for cv in &m.cvs {
                    p.extend_from_slice(cv);
                }
            }
            Frame::BlobChunk { hash, index, data } => {
                p.extend_from_slice(hash.as_bytes());
                put_varint(p, u64::from(*index));
                put_bytes(p, data);
            }
            Frame::BlobMissing { hash } => p.extend_from_slice(hash.as_bytes()),
            Frame::Revocations { der } => put_bytes(p, der),
            Frame::AuditHead(h) => {
                p.extend_from_slice(&h.chain.to_be_bytes());
                put_varint(p, h.head);
                p.extend_from_slice(&h.anchor);
                p.extend_from_slice(&h.seen_chain.to_be_bytes());
                put_varint(p, h.seen);
                p.extend_from_slice(&h.seen_anchor);
                put_varint(p, h.proof);
                p.extend_from_slice(&h.proof_anchor);
            }
            Frame::Mark { received, idle } => {
                put_varint(p, *received);
                p.push(u8::from(*idle));
            }
            Frame::Close { code, reason } => {
                p.extend_from_slice(&code.to_be_bytes());
                put_bytes(p, reason.as_bytes());
            }
        }
    }

    /// The encoded frame as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Decodes one frame's payload of the given type.
    pub fn decode_payload(kind: u8, payload: &[u8]) -> Result<Frame, DecodeError> {
        let mut r = Reader { buf: payload };
        let frame = match kind {
            0x01 => Frame::Hello(Hello {
                min_version: r.u16("hello version")?,
                max_version: r.u16("hello version")?,
                node: r.string("hello node name")?,
                crl_number: r.varint("hello revocation number")?,
            }),
            0x02 => Frame::Summary(Summary {
                delta: r.bool("summary mode")?,
                count: r.varint("summary count")?,
                fingerprint: r.array("summary fingerprint")?,
                entries: r.entries()?,
                pushed: r.u32_varint("summary push count")?,
            }),
            0x03 => Frame::SummaryReply(SummaryReply { complete: r.bool("summary verdict")?, entries: r.entries()? }),
            0x04 => {
                let n = r.count("range count", 2)?;
                let mut ranges = Vec::with_capacity(n);
                for _ in 0..n {
                    let upper = match r.u8("range bound")? {
                        0 => None,
                        1 => Some(r.array("range bound")?),
                        _ => return Err(DecodeError::Invalid("range bound flag")),
                    };
                    let mode = match r.u8("range mode")? {
                        0 => RangeMode::Skip,
                        1 => RangeMode::Fingerprint {
                            count: r.varint("range count")?,
                            fingerprint: r.array("range fingerprint")?,
                        },
                        m @ (2 | 3) => {
                            let k = r.count("range items", 32)?;
                            let mut items = Vec::with_capacity(k);
                            for _ in 0..k {
                                items.push((r.array("range item id")?, r.array("range item digest")?));
                            }
                            RangeMode::Items { reply: m == 3, items }
                        }
                        _ => return Err(DecodeError::Invalid("range mode")),
                    };
                    ranges.push(Range { upper, mode });
                }
                Frame::Ranges(ranges)
            }
            0x05 => Frame::Heads { doc: r.array("doc id")?, heads: r.heads()? },
            0x06 => Frame::Changes(Changes {
                doc: r.array("doc id")?,
                ack: r.bool("changes ack flag")?,
                heads: r.heads()?,
                bytes: r.bytes("changes")?,
                sigs: {
                    let n = r.count("signatures", 64)?;
                    let mut sigs = Vec::with_capacity(n);
                    for _ in 0..n {
                        sigs.push(r.array("signature")?);
                    }
                    sigs
                },
            }),
            0x07 => Frame::Ack { doc: r.array("doc id")?, heads: r.heads()? },
            0x08 => Frame::Need { doc: r.array("doc id")? },
            0x0A => Frame::Refused { doc: r.array("doc id")? },
            0x21 => Frame::Member { credential: r.bytes("member credential")? },
            0x10 => {
                let hash = Hash(r.array("blob hash")?);
                let manifest = r.bool("blob manifest flag")?;
                let n = r.count("chunk list", 1)?;
                let mut chunks = Vec::with_capacity(n);
                for _ in 0..n {
                    chunks.push(r.u32_varint("chunk index")?);
                }
                Frame::BlobWant { hash, manifest, chunks }
            }
            0x11 => {
                let hash = Hash(r.array("blob hash")?);
                let size = r.varint("blob size")?;
                let chunk_size = r.u32_varint("chunk size")?;
                let n = r.count("manifest", 32)?;
                let mut cvs = Vec::with_capacity(n);
                for _ in 0..n {
                    cvs.push(r.array("chaining value")?);
                }
                Frame::BlobManifest(BlobManifest { hash, size, chunk_size, cvs })
            }
            0x12 => Frame::BlobChunk {
                hash: Hash(r.array("blob hash")?),
                index: r.u32_varint("chunk index")?,
                data: r.bytes("chunk data")?,
            },
            0x13 => Frame::BlobMissing { hash: Hash(r.array("blob hash")?) },
            0x20 => Frame::Revocations { der: r.bytes("revocation list")? },
            0x22 => Frame::AuditHead(AuditHeads {
                chain: u64::from_be_bytes(r.array("audit chain")?),
                head: r.varint("audit head")?,
                anchor: r.array("audit anchor")?,
                seen_chain: u64::from_be_bytes(r.array("audit chain seen")?),
                seen: r.varint("audit head seen")?,
                seen_anchor: r.array("audit anchor seen")?,
                proof: r.varint("audit proof")?,
                proof_anchor: r.array("audit proof anchor")?,
            }),
            0x30 => Frame::Mark { received: r.varint("mark count")?, idle: r.bool("mark idle flag")? },
            0x3F => Frame::Close { code: r.u16("close code")?, reason: r.string("close reason")? },
            other => return Err(DecodeError::UnknownType(other)),
        };
        if !r.buf.is_empty() {
            return Err(DecodeError::Trailing(r.buf.len()));
        }
        Ok(frame)
    }
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Reassembles frames from a byte stream fed in pieces.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    failed: bool,
}

impl FrameDecoder {
    /// A new decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed. After an error the stream is
    /// unusable (framing is lost) and every later call returns the same kind of error.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if self.failed {
            return Err(DecodeError::Invalid("stream after a decoding error"));
        }
        let Some(&kind) = self.buf.first() else { return Ok(None) };
        let mut r = Reader { buf: &self.buf[1..] };
        let len = match r.varint("frame length") {
            Ok(l) => l,
            Err(DecodeError::Truncated(_)) => return Ok(None),
            Err(e) => {
                self.failed = true;
                return Err(e);
            }
        };
        if len > MAX_FRAME as u64 {
            self.failed = true;
            return Err(DecodeError::TooLong { len });
        }
        let header = self.buf.len() - r.buf.len();
        let total = header + len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let result = Frame::decode_payload(kind, &self.buf[header..total]);
        self.buf.drain(..total);
        if result.is_err() {
            self.failed = true;
        }
        result.map(Some)
    }
}

/// Where a frame's bytes go: a buffer, or a count of them.
trait Sink {
    fn push(&mut self, b: u8);
    fn extend_from_slice(&mut self, b: &[u8]);
}

impl Sink for Vec<u8> {
    fn push(&mut self, b: u8) {
        Vec::push(self, b);
    }

    fn extend_from_slice(&mut self, b: &[u8]) {
        Vec::extend_from_slice(self, b);
    }
}

/// Counts the bytes it is given.
struct Count(usize);

impl Sink for Count {
    fn push(&mut self, _: u8) {
        self.0 += 1;
    }

    fn extend_from_slice(&mut self, b: &[u8]) {
        self.0 += b.len();
    }
}

fn put_varint(out: &mut impl Sink, mut v: u64) {
    loop {
        let byte = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_bytes(out: &mut impl Sink, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_heads(out: &mut impl Sink, heads: &[Hash]) {
    put_varint(out, heads.len() as u64);
    for h in heads {
        out.extend_from_slice(h.as_bytes());
    }
}

fn put_entries(out: &mut impl Sink, entries: &[(DocId, Vec<Hash>)]) {
    put_varint(out, entries.len() as u64);
    for (id, heads) in entries {
        out.extend_from_slice(id);
        put_heads(out, heads);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid(what)),
        }
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let b = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8(what)?;
            let bits = u64::from(b & 0x7F);
            if i == 9 && bits > 1 {
                return Err(DecodeError::BadVarint(what));
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::BadVarint(what))
    }

    fn u32_varint(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        u32::try_from(self.varint(what)?).map_err(|_| DecodeError::Invalid(what))
    }

    /// A count of items each at least `min_size` bytes long, checked against what is left.
    fn count(&mut self, what: &'static str, min_size: usize) -> Result<usize, DecodeError> {
        let n = self.varint(what)?;
        if n.saturating_mul(min_size as u64) > self.buf.len() as u64 {
            return Err(DecodeError::Truncated(what));
        }
        Ok(n as usize)
    }

    fn bytes(&mut self, what: &'static str) -> Result<Vec<u8>, DecodeError> {
        let n = self.count(what, 1)?;
        Ok(self.take(n, what)?.to_vec())
    }

    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes(what)?).map_err(|_| DecodeError::Invalid(what))
    }

    fn heads(&mut self) -> Result<Vec<Hash>, DecodeError> {
        let n = self.count("heads", 32)?;
        (0..n).map(|_| self.array("change hash").map(Hash)).collect()
    }

    fn entries(&mut self) -> Result<Vec<(DocId, Vec<Hash>)>, DecodeError> {
        let n = self.count("entries", 17)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push((self.array("doc id")?, self.heads()?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello { min_version: 1, max_version: 3, node: "hub-qhm".into(), crl_number: 7 }),
            Frame::Summary(Summary {
                delta: true,
                count: 10_000,
                fingerprint: [9; 32],
                entries: vec![([1; 16], vec![Hash([2; 32])]), ([3; 16], vec![])],
                pushed: 4,
            }),
            Frame::SummaryReply(SummaryReply {
                complete: false,
                entries: vec![([4; 16], vec![Hash([5; 32]), Hash([6; 32])])],
            }),
            Frame::Ranges(vec![
                Range { upper: Some([7; 16]), mode: RangeMode::Skip },
                Range { upper: Some([8; 16]), mode: RangeMode::Fingerprint { count: 3, fingerprint: [1; 32] } },
                Range { upper: None, mode: RangeMode::Items { reply: true, items: vec![([9; 16], [1; 16])] } },
            ]),
            Frame::Heads { doc: [1; 16], heads: vec![Hash([2; 32])] },
            Frame::Changes(Changes {
                doc: [1; 16],
                ack: true,
                heads: vec![Hash([3; 32])],
                bytes: vec![0x85, 0x6f, 1, 2, 3],
                sigs: vec![[9; 64]],
            }),
            Frame::Ack { doc: [1; 16], heads: vec![] },
            Frame::Need { doc: [2; 16] },
            Frame::Refused { doc: [3; 16] },
            Frame::Member { credential: vec![0x30, 0x82, 1] },
            Frame::BlobWant { hash: Hash([1; 32]), manifest: true, chunks: vec![0, 1, 300] },
            Frame::BlobManifest(BlobManifest {
                hash: Hash([1; 32]),
                size: 70_000,
                chunk_size: 16384,
                cvs: vec![[2; 32]; 5],
            }),
            Frame::BlobChunk { hash: Hash([1; 32]), index: 4, data: vec![7; 100] },
            Frame::BlobMissing { hash: Hash([1; 32]) },
            Frame::Revocations { der: vec![0x30, 0x82] },
            Frame::AuditHead(AuditHeads {
                chain: 0x1234_5678_9abc_def0,
                head: 4_812,
                anchor: [3; 32],
                seen_chain: 7,
                seen: 4_700,
                seen_anchor: [4; 32],
                proof: 4_690,
                proof_anchor: [5; 32],
            }),
            Frame::Mark { received: 12, idle: true },
            Frame::Close { code: 1, reason: "no common version".into() },
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for f in samples() {
            let bytes = f.to_bytes();
            let mut d = FrameDecoder::new();
            d.feed(&bytes);
            assert_eq!(d.next_frame().unwrap(), Some(f.clone()), "{f}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn the_counted_length_of_every_frame_is_its_encoded_length() {
        // Samples with payloads past one varint byte's reach too: a large chunk, many ranges.
        let mut frames = samples();
        frames.push(Frame::BlobChunk { hash: Hash([9; 32]), index: 300, data: vec![7; 20_000] });
        frames.push(Frame::Ack { doc: [3; 16], heads: vec![Hash([1; 32]); 200] });
        for f in frames {
            assert_eq!(f.encoded_len(), f.to_bytes().len(), "{f}");
        }
    }

    #[test]
    fn frames_split_at_every_byte_reassemble() {
        let mut stream = Vec::new();
        for f in samples() {
            f.encode(&mut stream);
        }
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        for b in &stream {
            d.feed(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, samples());
    }

    #[test]
    fn an_oversized_length_is_refused_before_reading_the_payload() {
        let mut bytes = vec![0x06];
        put_varint(&mut bytes, MAX_FRAME as u64 + 1);
        let mut d = FrameDecoder::new();
        d.feed(&bytes);
        assert_eq!(d.next_frame(), Err(DecodeError::TooLong { len: MAX_FRAME as u64 + 1 }));
    }

    #[test]
    fn a_hostile_count_does_not_allocate() {
        // A Summary claiming 2^60 entries in a 20-byte payload.
        let mut p = vec![1u8];
        put_varint(&mut p, 1);
        p.extend_from_slice(&[0; 32]);
        put_varint(&mut p, 1 << 60);
        assert!(matches!(Frame::decode_payload(0x02, &p), Err(DecodeError::Truncated(_))));
    }

    #[test]
    fn unknown_types_and_trailing_bytes_are_errors() {
        assert_eq!(Frame::decode_payload(0x7E, &[]), Err(DecodeError::UnknownType(0x7E)));
        let mut bytes = Frame::Need { doc: [1; 16] }.to_bytes();
        bytes.push(0);
        bytes[1] += 1; // length covers the extra byte
        let mut d = FrameDecoder::new();
        d.feed(&bytes);
        assert_eq!(d.next_frame(), Err(DecodeError::Trailing(1)));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut d = FrameDecoder::new();
            d.feed(&bytes);
            for _ in 0..64 {
                match d.next_frame() {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }

        #[test]
        fn decoding_mutated_frames_never_panics(index in 0usize..17, flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
            let mut bytes = samples()[index].to_bytes();
            for (at, value) in flips {
                let n = bytes.len();
                bytes[at % n] = value;
            }
            let mut d = FrameDecoder::new();
            d.feed(&bytes);
            let _ = d.next_frame();
        }

        #[test]
        fn every_payload_type_survives_arbitrary_payloads(kind in any::<u8>(), payload in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = Frame::decode_payload(kind, &payload);
        }
    }
}
