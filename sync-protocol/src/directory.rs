//! The directory of an ICB: its service lines (specialty and SNOMED CT code, opening hours,
//! channels) and each line's rota (the desks rung, in order, with their ring times).
//!
//! It is one Automerge document per ICB, written only by the ICB's hub and synced to the
//! ICB's edges and desks like a session, so that an edge offline still knows which lines exist
//! and when they are open. Only the hub's copy decides who is rung: a stale copy at an edge
//! informs the clinician, never the router.
//!
//! Shape (`docs/schema.md` has the table):
//!
//! ```text
//! /schema      int   DIRECTORY_SCHEMA
//! /kind        str   "directory"
//! /icb         str   the ICB's code
//! /updated_ms  int   the last edit
//! /lines/<line>      map, one per service line offered
//!     snomed   str   the specialty's SNOMED CT concept id
//!     hours    str   canonical hours (see [`Hours`])
//!     channels list of str (call, photo, message)
//!     rota     list of { desk: str, ring_s: int }
//!     fallback_hub str (optional) another ICB's hub taking the line's calls out of area
//!     updated_ms int
//! ```
//!
//! Its document id is reserved: six `0xFF` bytes (a ULID time no session will reach) and ten
//! bytes of the BLAKE3 hash of the ICB code.

use std::collections::BTreeMap;
use std::fmt;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, AutomergeError, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use serde::{Deserialize, Serialize};

use crate::TimeMs;
use crate::call::RotaDesk;
use crate::scope::PeerInfo;
use crate::vocab::{Channel, Role, ServiceLine};
use crate::wire::DocId;

/// The directory schema this build writes and understands.
pub const DIRECTORY_SCHEMA: i64 = 1;

/// The longest ring time a rota may give a desk, seconds.
pub const MAX_RING_S: u32 = 600;

/// The most desks one line's rota may hold.
pub const MAX_ROTA: usize = 32;

const ID_MARK: [u8; 6] = [0xFF; 6];

/// The reserved document id of an ICB's directory.
pub fn directory_id(icb: &str) -> DocId {
    let mut id = [0u8; 16];
    id[..6].copy_from_slice(&ID_MARK);
    id[6..].copy_from_slice(&blake3::hash(icb.as_bytes()).as_bytes()[..10]);
    id
}

/// Whether a document id is a directory's rather than a session's.
pub fn is_directory_id(id: &DocId) -> bool {
    id[..6] == ID_MARK
}

/// Whether `me` and `peer` exchange the directory of `icb`: both belong to that ICB and one of
/// them is a hub (edges and desks take it from their hub, never from each other).
pub fn may_exchange(me: &PeerInfo, peer: &PeerInfo, icb: &str) -> bool {
    me.icb.as_deref() == Some(icb)
        && peer.icb.as_deref() == Some(icb)
        && (me.role == Role::Hub || peer.role == Role::Hub)
}

/// Whether `me` stores a directory of `icb` received from `from`: only an edge or desk, and
/// only from its own ICB's hub. A hub is the directory's only author and accepts it from no one.
pub fn may_accept(me: &PeerInfo, from: &PeerInfo, icb: &str) -> bool {
    me.role != Role::Hub && from.role == Role::Hub && may_exchange(me, from, icb)
}

/// Why a directory could not be read or edited.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The document does not have the shape of a directory.
    #[error("directory document is malformed at {path}: {problem}")]
    Malformed {
        /// Where.
        path: String,
        /// What is wrong there.
        problem: String,
    },
    /// Written by a newer outpost.
    #[error(
        "directory schema version {0} is newer than this outpost understands ({DIRECTORY_SCHEMA}); upgrade outpost"
    )]
    SchemaVersion(i64),
    /// An entry that breaks a rule (named twice, ring time out of range, bad hours...).
    #[error("{0}")]
    Invalid(String),
    /// Automerge refused an operation or could not decode bytes.
    #[error("automerge: {0}")]
    Automerge(#[from] AutomergeError),
}

fn malformed(path: impl Into<String>, problem: impl Into<String>) -> DirectoryError {
    DirectoryError::Malformed { path: path.into(), problem: problem.into() }
}

/// When a line is open, in UK civil time (GMT, or BST in summer).
///
/// Written as `24/7`, or as windows separated by `;`, each an optional day set (`mon-fri`,
/// `sat,sun`, `daily`) and a time range `HH:MM-HH:MM`. A range that ends at or before it starts
/// runs past midnight into the next day (`mon-sun 20:00-08:00`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hours {
    /// Always open.
    Always,
    /// Open in these windows.
    Windows(Vec<Window>),
}

/// One opening window: the days it starts on and its time range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Bit 0 is Monday ... bit 6 Sunday.
    pub days: u8,
    /// Opens, minutes after midnight.
    pub from_min: u16,
    /// Closes, minutes after midnight (1440 for midnight at the end of the day).
    pub to_min: u16,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Hours {
    /// Parses the written form.
    pub fn parse(text: &str) -> Result<Hours, DirectoryError> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("24/7") || text.eq_ignore_ascii_case("always") {
            return Ok(Hours::Always);
        }
        if text.len() > 200 {
            return Err(DirectoryError::Invalid("hours are too long (at most 200 characters)".into()));
        }
        let mut windows = Vec::new();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (days, range) = match part.rsplit_once(' ') {
                Some((d, r)) => (parse_days(d.trim())?, r),
                None => (0x7F, part),
            };
            let (a, b) = range
                .split_once('-')
                .ok_or_else(|| DirectoryError::Invalid(format!("hours {part:?}: expected a range like 08:00-18:30")))?;
            let (from_min, to_min) = (parse_clock(a)?, parse_clock(b)?);
            if from_min == 1440 {
                return Err(DirectoryError::Invalid(format!("hours {part:?}: a window cannot open at 24:00")));
            }
            windows.push(Window { days, from_min, to_min });
        }
        if windows.is_empty() {
            return Err(DirectoryError::Invalid(
                "hours are empty: give 24/7 or windows like \"mon-fri 08:00-18:30\"".into(),
            ));
        }
        Ok(Hours::Windows(windows))
    }

    /// Whether the line is open at `now`.
    pub fn is_open(&self, now: TimeMs) -> bool {
        let Hours::Windows(windows) = self else { return true };
        let local = now + uk_offset_ms(now);
        let days = local.div_euclid(DAY_MS);
        let minute = (local.rem_euclid(DAY_MS) / 60_000) as u16;
        // 1970-01-01 was a Thursday (index 3 with Monday as 0).
        let today = (days + 3).rem_euclid(7) as u8;
        let yesterday = (today + 6) % 7;
        windows.iter().any(|w| {
            let on = |d: u8| w.days & (1 << d) != 0;
            if w.from_min < w.to_min {
                on(today) && minute >= w.from_min && minute < w.to_min
            } else {
                (on(today) && minute >= w.from_min) || (on(yesterday) && minute < w.to_min)
            }
        })
    }
}

impl fmt::Display for Hours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Hours::Windows(windows) = self else { return f.write_str("24/7") };
        let parts: Vec<String> = windows
            .iter()
            .map(|w| {
                let clock = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
                format!("{} {}-{}", days_text(w.days), clock(w.from_min), clock(w.to_min))
            })
            .collect();
        f.write_str(&parts.join("; "))
    }
}

fn parse_clock(text: &str) -> Result<u16, DirectoryError> {
    let bad = || DirectoryError::Invalid(format!("time {text:?}: expected HH:MM, 00:00 to 24:00"));
    let (h, m) = text.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn parse_days(text: &str) -> Result<u8, DirectoryError> {
    if text.eq_ignore_ascii_case("daily") {
        return Ok(0x7F);
    }
    let day = |d: &str| {
        DAY_NAMES.iter().position(|n| d.trim().eq_ignore_ascii_case(n)).ok_or_else(|| {
            DirectoryError::Invalid(format!("day {d:?}: expected mon, tue, wed, thu, fri, sat, sun or daily"))
        })
    };
    let mut mask = 0u8;
    for item in text.split(',') {
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                loop {
                    mask |= 1 << d;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => mask |= 1 << day(item)?,
        }
    }
    Ok(mask)
}

fn days_text(mask: u8) -> String {
    if mask == 0x7F {
        return "daily".into();
    }
    // Runs of consecutive days, Monday first.
    let mut parts = Vec::new();
    let mut d = 0usize;
    while d < 7 {
        if mask & (1 << d) == 0 {
            d += 1;
            continue;
        }
        let start = d;
        while d + 1 < 7 && mask & (1 << (d + 1)) != 0 {
            d += 1;
        }
        parts.push(if start == d {
            DAY_NAMES[d].to_string()
        } else {
            format!("{}-{}", DAY_NAMES[start], DAY_NAMES[d])
        });
        d += 1;
    }
    parts.join(",")
}

const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn year_of(days: i64) -> i64 {
    // Close enough to start, then corrected: a year is 365.2425 days on average.
    let mut y = 1970 + (days as f64 / 365.2425).floor() as i64;
    while days_from_civil(y, 1, 1) > days {
        y -= 1;
    }
    while days_from_civil(y + 1, 1, 1) <= days {
        y += 1;
    }
    y
}

/// The last Sunday of a month, as days since the epoch.
fn last_sunday(y: i64, m: i64) -> i64 {
    let last = days_from_civil(if m == 12 { y + 1 } else { y }, if m == 12 { 1 } else { m + 1 }, 1) - 1;
    let weekday = (last + 3).rem_euclid(7); // Monday 0 .. Sunday 6
    last - (weekday + 1) % 7
}

/// UK civil time's offset from UTC: one hour from 01:00 UTC on the last Sunday of March to
/// 01:00 UTC on the last Sunday of October.
pub fn uk_offset_ms(utc: TimeMs) -> i64 {
    let y = year_of(utc.div_euclid(DAY_MS));
    let start = last_sunday(y, 3) * DAY_MS + 3_600_000;
    let end = last_sunday(y, 10) * DAY_MS + 3_600_000;
    if (start..end).contains(&utc) { 3_600_000 } else { 0 }
}

/// One service line as the directory offers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineEntry {
    /// The specialty.
    pub line: ServiceLine,
    /// When it is open.
    pub hours: Hours,
    /// How it can be reached.
    pub channels: Vec<Channel>,
    /// Desks rung for a call, in order.
    pub rota: Vec<RotaDesk>,
    /// Another ICB's hub whose same line takes the call when no desk of the rota answers
    /// (out-of-area fallback), if one is agreed.
    pub fallback_hub: Option<String>,
    /// When this entry was last set.
    pub updated_ms: TimeMs,
}

impl LineEntry {
    /// Checks the rules a line entry must keep: a desk named once, ring times of 1 to
    /// [`MAX_RING_S`] seconds, at most [`MAX_ROTA`] desks, at least one channel.
    pub fn check(&self) -> Result<(), DirectoryError> {
        if self.channels.is_empty() {
            return Err(DirectoryError::Invalid(format!("the {} line needs at least one channel", self.line)));
        }
        if self.rota.len() > MAX_ROTA {
            return Err(DirectoryError::Invalid(format!("a rota holds at most {MAX_ROTA} desks")));
        }
        if let Some(hub) = &self.fallback_hub
            && (hub.trim().is_empty() || hub.len() > 64)
        {
            return Err(DirectoryError::Invalid(format!("fallback hub name {hub:?} must be 1 to 64 characters")));
        }
        let mut seen = std::collections::BTreeSet::new();
        for d in &self.rota {
            if d.desk.trim().is_empty() || d.desk.len() > 64 {
                return Err(DirectoryError::Invalid(format!("desk name {:?} must be 1 to 64 characters", d.desk)));
            }
            if !seen.insert(d.desk.as_str()) {
                return Err(DirectoryError::Invalid(format!("desk {} is named twice in the rota", d.desk)));
            }
            if d.ring_s == 0 || d.ring_s > MAX_RING_S {
                return Err(DirectoryError::Invalid(format!(
                    "ring time of {} must be 1 to {MAX_RING_S} seconds",
                    d.desk
                )));
            }
        }
        Ok(())
    }

    /// Why a call on this line cannot be put through at `now`, if it cannot: the line takes no
    /// calls, or it is closed.
    pub fn call_refusal(&self, now: TimeMs) -> Option<LineRefusal> {
        if !self.channels.contains(&Channel::Call) {
            return Some(LineRefusal::NoCalls { line: self.line, channels: self.channels.clone() });
        }
        if !self.hours.is_open(now) {
            return Some(LineRefusal::Closed { line: self.line, hours: self.hours.clone() });
        }
        None
    }
}

/// Why a line cannot put a call through now ([`LineEntry::call_refusal`]). Its text is what the
/// clinician reads in the callback's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineRefusal {
    /// The line takes no calls (only the channels named).
    NoCalls {
        /// The line.
        line: ServiceLine,
        /// What it takes instead.
        channels: Vec<Channel>,
    },
    /// The line is closed at this hour.
    Closed {
        /// The line.
        line: ServiceLine,
        /// When it is open.
        hours: Hours,
    },
}

impl std::fmt::Display for LineRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineRefusal::NoCalls { line, channels } => {
                let ch: Vec<&str> = channels.iter().map(|c| c.as_str()).collect();
                write!(f, "the {line} line takes no calls (it takes: {})", ch.join(", "))
            }
            LineRefusal::Closed { line, hours } => write!(f, "the {line} line is closed now (open {hours}, UK time)"),
        }
    }
}

/// A directory as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryView {
    /// The ICB.
    pub icb: String,
    /// Its lines.
    pub lines: BTreeMap<ServiceLine, LineEntry>,
    /// The last edit.
    pub updated_ms: TimeMs,
}

/// An ICB's directory document with its typed operations.
#[derive(Debug)]
pub struct DirectoryDoc {
    doc: AutoCommit,
}

impl DirectoryDoc {
    /// A new, empty directory for `icb`.
    pub fn create(icb: &str, actor: ActorId, now: TimeMs) -> Result<Self, DirectoryError> {
        if icb.is_empty() || icb.len() > 16 {
            return Err(DirectoryError::Invalid(format!("ICB code {icb:?} must be 1 to 16 characters")));
        }
        let mut doc = AutoCommit::new().with_actor(actor);
        doc.put(ROOT, "schema", DIRECTORY_SCHEMA)?;
        doc.put(ROOT, "kind", "directory")?;
        doc.put(ROOT, "icb", icb)?;
        doc.put(ROOT, "updated_ms", now)?;
        doc.put_object(ROOT, "lines", ObjType::Map)?;
        let mut d = DirectoryDoc { doc };
        d.commit("create", now);
        Ok(d)
    }

    /// Loads saved bytes and checks the shape.
    pub fn load(bytes: &[u8], actor: ActorId) -> Result<Self, DirectoryError> {
        let doc = AutoCommit::load(bytes)?.with_actor(actor);
        let d = DirectoryDoc { doc };
        d.view()?;
        Ok(d)
    }

    /// An empty document to receive a directory into.
    pub fn empty(actor: ActorId) -> Self {
        DirectoryDoc { doc: AutoCommit::new().with_actor(actor) }
    }

    /// Applies saved bytes (changes or a whole document). Idempotent.
    pub fn apply_bytes(&mut self, bytes: &[u8]) -> Result<(), DirectoryError> {
        self.doc.load_incremental(bytes)?;
        Ok(())
    }

    /// The underlying Automerge document.
    pub fn automerge(&mut self) -> &mut AutoCommit {
        &mut self.doc
    }

    /// The current heads.
    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// The whole document.
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    /// The changes since `heads`.
    pub fn save_after(&mut self, heads: &[ChangeHash]) -> Vec<u8> {
        self.doc.save_after(heads)
    }

    fn commit(&mut self, what: &str, now: TimeMs) {
        self.doc.commit_with(CommitOptions::default().with_message(what).with_time(now / 1000));
    }

    fn lines_obj(&self) -> Result<ObjId, DirectoryError> {
        match self.doc.get(ROOT, "lines")? {
            Some((Value::Object(ObjType::Map), id)) => Ok(id),
            Some(_) => Err(malformed("/lines", "expected a map")),
            None => Err(malformed("/lines", "missing")),
        }
    }

    /// Sets (adds or replaces) one line's entry, as one change.
    pub fn set_line(&mut self, entry: &LineEntry, now: TimeMs) -> Result<(), DirectoryError> {
        entry.check()?;
        let lines = self.lines_obj()?;
        let obj = self.doc.put_object(&lines, entry.line.as_str(), ObjType::Map)?;
        self.doc.put(&obj, "snomed", entry.line.snomed())?;
        self.doc.put(&obj, "hours", entry.hours.to_string())?;
        let channels = self.doc.put_object(&obj, "channels", ObjType::List)?;
        for (i, c) in entry.channels.iter().enumerate() {
            self.doc.insert(&channels, i, c.as_str())?;
        }
        let rota = self.doc.put_object(&obj, "rota", ObjType::List)?;
        for (i, d) in entry.rota.iter().enumerate() {
            let m = self.doc.insert_object(&rota, i, ObjType::Map)?;
            self.doc.put(&m, "desk", d.desk.as_str())?;
            self.doc.put(&m, "ring_s", i64::from(d.ring_s))?;
        }
        if let Some(hub) = &entry.fallback_hub {
            self.doc.put(&obj, "fallback_hub", hub.as_str())?;
        }
        self.doc.put(&obj, "updated_ms", now)?;
        self.doc.put(ROOT, "updated_ms", now)?;
        self.commit(&format!("set {}", entry.line), now);
        Ok(())
    }

    /// Removes a line; returns whether it was there.
    pub fn remove_line(&mut self, line: ServiceLine, now: TimeMs) -> Result<bool, DirectoryError> {
        let lines = self.lines_obj()?;
        if self.doc.get(&lines, line.as_str())?.is_none() {
            return Ok(false);
        }
        self.doc.delete(&lines, line.as_str())?;
        self.doc.put(ROOT, "updated_ms", now)?;
        self.commit(&format!("remove {line}"), now);
        Ok(true)
    }

    /// Reads and checks the whole directory.
    pub fn view(&self) -> Result<DirectoryView, DirectoryError> {
        match self.int(&ROOT, "schema", "/schema")? {
            Some(v) if v > DIRECTORY_SCHEMA => return Err(DirectoryError::SchemaVersion(v)),
            Some(_) => {}
            None => return Err(malformed("/schema", "missing")),
        }
        if self.str(&ROOT, "kind", "/kind")?.as_deref() != Some("directory") {
            return Err(malformed("/kind", "not a directory"));
        }
        let icb = self.str(&ROOT, "icb", "/icb")?.ok_or_else(|| malformed("/icb", "missing"))?;
        let updated_ms = self.int(&ROOT, "updated_ms", "/updated_ms")?.unwrap_or(0);
        let lines_obj = self.lines_obj()?;
        let mut lines = BTreeMap::new();
        for key in self.doc.keys(&lines_obj) {
            let path = format!("/lines/{key}");
            let line = ServiceLine::parse(&key).map_err(|e| malformed(&path, e.to_string()))?;
            let obj = match self.doc.get(&lines_obj, key.as_str())? {
                Some((Value::Object(ObjType::Map), id)) => id,
                _ => return Err(malformed(&path, "expected a map")),
            };
            let hours_text =
                self.str(&obj, "hours", &path)?.ok_or_else(|| malformed(format!("{path}/hours"), "missing"))?;
            let hours = Hours::parse(&hours_text).map_err(|e| malformed(format!("{path}/hours"), e.to_string()))?;
            let mut channels = Vec::new();
            if let Some((Value::Object(ObjType::List), ch)) = self.doc.get(&obj, "channels")? {
                for i in 0..self.doc.length(&ch) {
                    let text = self.str_at(&ch, i, &format!("{path}/channels/{i}"))?;
                    let c =
                        Channel::parse(&text).map_err(|e| malformed(format!("{path}/channels/{i}"), e.to_string()))?;
                    if !channels.contains(&c) {
                        channels.push(c);
                    }
                }
            }
            let mut rota = Vec::new();
            if let Some((Value::Object(ObjType::List), list)) = self.doc.get(&obj, "rota")? {
                for i in 0..self.doc.length(&list) {
                    let p = format!("{path}/rota/{i}");
                    let m = match self.doc.get(&list, i)? {
                        Some((Value::Object(ObjType::Map), id)) => id,
                        _ => return Err(malformed(&p, "expected a map")),
                    };
                    let desk = self.str(&m, "desk", &p)?.ok_or_else(|| malformed(format!("{p}/desk"), "missing"))?;
                    let ring_s = self.int(&m, "ring_s", &p)?.unwrap_or(i64::from(crate::call::DEFAULT_RING_S));
                    let ring_s = u32::try_from(ring_s).map_err(|_| malformed(format!("{p}/ring_s"), "out of range"))?;
                    rota.push(RotaDesk { desk, ring_s });
                }
            }
            let entry = LineEntry {
                line,
                hours,
                channels,
                rota,
                fallback_hub: self.str(&obj, "fallback_hub", &path)?,
                updated_ms: self.int(&obj, "updated_ms", &path)?.unwrap_or(0),
            };
            entry.check().map_err(|e| malformed(&path, e.to_string()))?;
            lines.insert(line, entry);
        }
        Ok(DirectoryView { icb, lines, updated_ms })
    }

    fn str(&self, obj: &ObjId, key: &str, path: &str) -> Result<Option<String>, DirectoryError> {
        match self.doc.get(obj, key)? {
            None => Ok(None),
            Some((Value::Scalar(s), _)) => match s.as_ref() {
                ScalarValue::Str(v) => Ok(Some(v.to_string())),
                _ => Err(malformed(format!("{path}/{key}"), "expected text")),
            },
            Some(_) => Err(malformed(format!("{path}/{key}"), "expected text, found an object")),
        }
    }

    fn str_at(&self, list: &ObjId, i: usize, path: &str) -> Result<String, DirectoryError> {
        match self.doc.get(list, i)? {
            Some((Value::Scalar(s), _)) => match s.as_ref() {
                ScalarValue::Str(v) => Ok(v.to_string()),
                _ => Err(malformed(path, "expected text")),
            },
            _ => Err(malformed(path, "expected text")),
        }
    }

    fn int(&self, obj: &ObjId, key: &str, path: &str) -> Result<Option<i64>, DirectoryError> {
        match self.doc.get(obj, key)? {
            None => Ok(None),
            Some((v @ Value::Scalar(_), _)) => {
                v.as_i64().map(Some).ok_or_else(|| malformed(format!("{path}/{key}"), "expected a number"))
            }
            Some(_) => Err(malformed(format!("{path}/{key}"), "expected a number, found an object")),
        }
    }
}

/// What a directory line looks like in JSON output (`outpost rota show --json`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LineJson {
    /// The line.
    pub line: ServiceLine,
    /// Its SNOMED CT code.
    pub snomed: String,
    /// Hours, written form.
    pub hours: String,
    /// Channels.
    pub channels: Vec<Channel>,
    /// The rota.
    pub rota: Vec<RotaDesk>,
    /// The federated hub for out-of-area fallback.
    pub fallback_hub: Option<String>,
    /// Last set.
    pub updated_ms: TimeMs,
}

impl From<&LineEntry> for LineJson {
    fn from(e: &LineEntry) -> Self {
        LineJson {
            line: e.line,
            snomed: e.line.snomed().into(),
            hours: e.hours.to_string(),
            channels: e.channels.clone(),
            rota: e.rota.clone(),
            fallback_hub: e.fallback_hub.clone(),
            updated_ms: e.updated_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(n: u8) -> ActorId {
        ActorId::from(vec![n; 16])
    }

    fn entry(line: ServiceLine, desks: &[(&str, u32)]) -> LineEntry {
        LineEntry {
            line,
            hours: Hours::Always,
            channels: vec![Channel::Call, Channel::Photo, Channel::Message],
            rota: desks.iter().map(|(d, s)| RotaDesk { desk: (*d).into(), ring_s: *s }).collect(),
            fallback_hub: None,
            updated_ms: 0,
        }
    }

    fn utc(y: i64, m: i64, d: i64, h: i64, min: i64) -> TimeMs {
        days_from_civil(y, m, d) * DAY_MS + (h * 60 + min) * 60_000
    }

    #[test]
    fn a_directory_round_trips_through_bytes_and_merges_at_an_edge() {
        let mut hub = DirectoryDoc::create("QHM", actor(1), 1_000).unwrap();
        hub.set_line(&entry(ServiceLine::Dermatology, &[("desk-derm-1", 20), ("desk-derm-2", 30)]), 2_000).unwrap();
        let mut edge = DirectoryDoc::empty(actor(2));
        edge.apply_bytes(&hub.save()).unwrap();
        let view = edge.view().unwrap();
        assert_eq!(view.icb, "QHM");
        assert_eq!(view.lines[&ServiceLine::Dermatology].rota[1], RotaDesk { desk: "desk-derm-2".into(), ring_s: 30 });
        // A later edit reaches the edge as changes only.
        let before = hub.heads();
        hub.set_line(&entry(ServiceLine::Dermatology, &[("desk-derm-2", 15)]), 3_000).unwrap();
        let mut cardiology = entry(ServiceLine::Cardiology, &[("desk-card-1", 20)]);
        cardiology.fallback_hub = Some("hub-qox".into());
        hub.set_line(&cardiology, 3_000).unwrap();
        edge.apply_bytes(&hub.save_after(&before)).unwrap();
        let view = edge.view().unwrap();
        assert_eq!(
            view.lines[&ServiceLine::Dermatology].rota,
            vec![RotaDesk { desk: "desk-derm-2".into(), ring_s: 15 }]
        );
        assert_eq!(view.lines.len(), 2);
        assert_eq!(view.lines[&ServiceLine::Cardiology].fallback_hub.as_deref(), Some("hub-qox"));
        assert_eq!(view.lines[&ServiceLine::Dermatology].fallback_hub, None);
        assert!(hub.remove_line(ServiceLine::Cardiology, 4_000).unwrap());
        assert!(!hub.remove_line(ServiceLine::Cardiology, 4_000).unwrap());
        assert_eq!(hub.view().unwrap().lines.len(), 1);
    }

    #[test]
    fn a_rota_naming_a_desk_twice_or_ringing_too_long_is_refused() {
        let mut d = DirectoryDoc::create("QHM", actor(1), 0).unwrap();
        let twice = entry(ServiceLine::Cardiology, &[("desk-a", 20), ("desk-a", 20)]);
        assert!(d.set_line(&twice, 1).unwrap_err().to_string().contains("named twice"));
        let long = entry(ServiceLine::Cardiology, &[("desk-a", 601)]);
        assert!(d.set_line(&long, 1).unwrap_err().to_string().contains("ring time"));
        let mut none = entry(ServiceLine::Cardiology, &[]);
        none.channels.clear();
        assert!(d.set_line(&none, 1).is_err());
        assert!(d.view().unwrap().lines.is_empty(), "nothing refused was written");
    }

    #[test]
    fn a_session_document_is_not_a_directory() {
        let mut other = AutoCommit::new();
        other.put(ROOT, "schema", 1).unwrap();
        other.put(ROOT, "icb", "QHM").unwrap();
        let err = DirectoryDoc::load(&other.save(), actor(3)).unwrap_err();
        assert!(err.to_string().contains("/kind"), "{err}");
    }

    #[test]
    fn directory_ids_are_reserved_and_differ_per_icb() {
        let a = directory_id("QHM");
        assert!(is_directory_id(&a));
        assert_ne!(a, directory_id("QOX"));
        let session = crate::SessionId::from_parts(1_800_000_000_000, 42).to_bytes();
        assert!(!is_directory_id(&session));
    }

    #[test]
    fn only_the_icbs_hub_is_a_source_and_the_hub_takes_it_from_no_one() {
        let p = |name: &str, role, icb: &str| PeerInfo {
            name: name.into(),
            role,
            org: None,
            icb: Some(icb.into()),
            lines: vec![],
        };
        let hub = p("hub-qhm", Role::Hub, "QHM");
        let edge = p("amb-07", Role::Edge, "QHM");
        let desk = p("desk-1", Role::Desk, "QHM");
        let far_hub = p("hub-qox", Role::Hub, "QOX");
        assert!(may_accept(&edge, &hub, "QHM"));
        assert!(may_accept(&desk, &hub, "QHM"));
        assert!(!may_accept(&hub, &edge, "QHM"), "the hub is the only author");
        assert!(!may_accept(&desk, &edge, "QHM"), "an edge is no source");
        assert!(!may_accept(&edge, &far_hub, "QOX"), "another ICB's directory");
        assert!(!may_exchange(&edge, &desk, "QHM"));
        assert!(may_exchange(&hub, &edge, "QHM"));
    }

    #[test]
    fn hours_parse_print_and_follow_uk_summer_time() {
        let h = Hours::parse("mon-fri 08:00-18:30; sat 09:00-12:00").unwrap();
        assert_eq!(h.to_string(), "mon-fri 08:00-18:30; sat 09:00-12:00");
        assert_eq!(Hours::parse(&h.to_string()).unwrap(), h);
        // Wednesday 2026-01-14, 08:30 UTC = 08:30 GMT: open.
        assert!(h.is_open(utc(2026, 1, 14, 8, 30)));
        // Wednesday 2026-07-15, 07:30 UTC = 08:30 BST: open; 17:45 UTC = 18:45 BST: closed.
        assert!(h.is_open(utc(2026, 7, 15, 7, 30)));
        assert!(!h.is_open(utc(2026, 7, 15, 17, 45)));
        // Sunday 2026-07-19 10:00 BST: closed; Saturday 10:00 BST open.
        assert!(!h.is_open(utc(2026, 7, 19, 9, 0)));
        assert!(h.is_open(utc(2026, 7, 18, 9, 0)));
        // BST 2026 runs from 29 March 01:00 UTC to 25 October 01:00 UTC.
        assert_eq!(uk_offset_ms(utc(2026, 3, 29, 0, 59)), 0);
        assert_eq!(uk_offset_ms(utc(2026, 3, 29, 1, 0)), 3_600_000);
        assert_eq!(uk_offset_ms(utc(2026, 10, 25, 0, 59)), 3_600_000);
        assert_eq!(uk_offset_ms(utc(2026, 10, 25, 1, 0)), 0);
        let night = Hours::parse("fri 20:00-08:00").unwrap();
        assert!(night.is_open(utc(2026, 1, 17, 7, 0)), "Saturday 07:00 is within Friday night's window");
        assert!(!night.is_open(utc(2026, 1, 16, 7, 0)), "Friday 07:00 is not");
        assert!(Hours::parse("24/7").unwrap().is_open(0));
        for bad in ["", "mon-fri", "funday 08:00-09:00", "25:00-26:00", "08:60-09:00", "24:00-08:00"] {
            assert!(Hours::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_line_closed_or_without_calls_refuses_a_call_with_the_reason() {
        let mut e = entry(ServiceLine::Dermatology, &[("desk-1", 20)]);
        assert_eq!(e.call_refusal(0), None);
        e.channels = vec![Channel::Photo];
        let r = e.call_refusal(0).unwrap();
        assert!(matches!(r, LineRefusal::NoCalls { .. }) && r.to_string().contains("takes no calls"), "{r}");
        e.channels = vec![Channel::Call];
        e.hours = Hours::parse("mon-fri 08:00-18:00").unwrap();
        let sunday = utc(2026, 1, 18, 12, 0);
        let r = e.call_refusal(sunday).unwrap();
        assert!(matches!(r, LineRefusal::Closed { .. }), "{r}");
        let r = r.to_string();
        assert!(r.contains("closed") && r.contains("mon-fri 08:00-18:00"), "{r}");
    }
}
