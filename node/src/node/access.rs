//! How many patients' records each person opens through the local API: a person who opens
//! more different records in an hour than anyone at work does is flagged to the deployer, and
//! past a limit is refused new ones (a stolen shift token, or an integrating system's, would
//! otherwise read every record the node holds as fast as the store answers).
//!
//! No I/O and no clock: the node passes the time in, records what this finds in the audit
//! chain, and shows it in its status.

use std::collections::HashMap;

use sync_protocol::session::SessionId;

/// The window counted: different records opened in the last hour.
pub const WINDOW_MS: i64 = 60 * 60 * 1000;
/// The longer window: different records opened in the last day (someone who stays under the
/// hour's alarm all day long).
pub const DAY_MS: i64 = 24 * WINDOW_MS;

/// Whole minutes from `now` until `until_ms` (at least 1 while any time is left).
pub fn minutes_until(until_ms: i64, now: i64) -> i64 {
    ((until_ms - now).max(0) + 59_999) / 60_000
}

/// The thresholds for one kind of caller. Zero turns a threshold off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RecordLimits {
    /// Different records opened in an hour at which the person is flagged (once an hour).
    pub alarm: usize,
    /// Different records in an hour past which a record not already opened in that hour is
    /// refused.
    pub limit: usize,
    /// Different patients' cards shown in one kind of list (the app's list, the callbacks
    /// owed; not the event stream, which pushes every change to everyone) in an hour at which
    /// the person is flagged. A list is the worklist: it is never refused.
    pub cards_alarm: usize,
    /// Different records opened in a day at which the person is flagged (once a day).
    pub day_alarm: usize,
}

/// The thresholds for people and for integrating systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AccessLimits {
    /// A person signed in (paramedic, GP, nurse, consultant).
    pub person: RecordLimits,
    /// An integrating system (a GP record system, an ambulance ePR), which reads for many.
    pub system: RecordLimits,
}

impl Default for AccessLimits {
    /// A consultant working through a list opens a few dozen records in a busy hour; 60 is
    /// more than a shift's work in an hour, 200 is three a minute for the whole hour. The app
    /// lists 500 sessions a screen, a few hundred of them open work: 2,000 different patients
    /// on cards in an hour is four such screens of different patients. A consultant's full day
    /// of advice and guidance is a hundred or so records; 300 in a day is flagged.
    fn default() -> Self {
        AccessLimits {
            person: RecordLimits { alarm: 60, limit: 200, cards_alarm: 2_000, day_alarm: 300 },
            system: RecordLimits { alarm: 2_000, limit: 5_000, cards_alarm: 20_000, day_alarm: 40_000 },
        }
    }
}

/// What one more record opened comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Open it.
    Open,
    /// Open it; this person has just reached the alarm (`opened` different records this
    /// hour): record it once.
    Alarm {
        /// Different records in the hour, this one included.
        opened: usize,
        /// The day's alarm, due on the same record (`opened` in the day): one entry says both.
        day: Option<usize>,
    },
    /// Open it; this person has just reached the day's alarm (`opened` different records in
    /// the last day): record it once a day.
    DayAlarm {
        /// Different records in the day, this one included.
        opened: usize,
    },
    /// Refuse it: `opened` different records this hour already, at the limit.
    Refused {
        /// Different records opened in the hour.
        opened: usize,
        /// When the oldest of them leaves the hour (one more may then be opened).
        until_ms: i64,
        /// The first refusal in an hour for this person (record it once an hour).
        first: bool,
    },
}

/// What the audit chain holds of a caller's last day, given back to a restarted daemon's watch
/// ([`AccessWatch::replay`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replayed {
    /// A record opened.
    Opened(SessionId),
    /// A record made: its maker's to open again within the hour.
    Created(SessionId),
    /// An alarm recorded: for the hour's records, the day's, the cards shown.
    Alarm {
        /// The hour's records.
        hour: bool,
        /// The day's records.
        day: bool,
        /// Cards shown in an hour.
        cards: bool,
    },
    /// A refusal recorded.
    Refused,
}

/// One caller's last hour.
#[derive(Debug, Default)]
struct Hour {
    /// Each record opened in the hour, with when it was last opened.
    opened: HashMap<SessionId, i64>,
    /// When the alarm was last raised.
    alarmed_ms: Option<i64>,
    /// When a refusal was last recorded.
    refusal_recorded_ms: Option<i64>,
    /// When the alarm for cards shown was last raised.
    cards_alarmed_ms: Option<i64>,
    /// Each record opened in the last day (counted, not refused), with when it was last.
    day: HashMap<SessionId, i64>,
    /// When `day` was last pruned.
    day_pruned_ms: i64,
    /// When the day's alarm was last raised.
    day_alarmed_ms: Option<i64>,
}

impl Hour {
    fn prune(&mut self, now: i64) {
        self.opened.retain(|_, at| now - *at < WINDOW_MS && *at <= now + WINDOW_MS);
    }

    fn recent(at: Option<i64>, now: i64) -> bool {
        at.is_some_and(|t| now - t < WINDOW_MS && t <= now + WINDOW_MS)
    }

    /// A record counted today: whether the day's alarm is due (once a day).
    fn count_day(&mut self, id: SessionId, limits: RecordLimits, now: i64) -> Option<usize> {
        if limits.day_alarm == 0 {
            return None;
        }
        if now - self.day_pruned_ms >= 60_000 || now < self.day_pruned_ms {
            self.day.retain(|_, at| now - *at < DAY_MS && *at <= now + WINDOW_MS);
            self.day_pruned_ms = now;
        }
        // With no hourly limit, no more are kept than the alarm needs (the hour's limit bounds
        // a day to 24 hours' worth otherwise).
        if limits.limit > 0 || self.day.len() < limits.day_alarm || self.day.contains_key(&id) {
            self.day.insert(id, now);
        }
        let opened = self.day.len();
        let alarmed = self.day_alarmed_ms.is_some_and(|t| now - t < DAY_MS && t <= now + WINDOW_MS);
        if opened >= limits.day_alarm && !alarmed {
            self.day_alarmed_ms = Some(now);
            return Some(opened);
        }
        None
    }
}

/// Every caller's last hour (by person id), kept in memory by the daemon's node: a restart
/// forgets it, the audit chain does not.
#[derive(Debug, Default)]
pub struct AccessWatch {
    limits: AccessLimits,
    hours: HashMap<i64, Hour>,
}

impl AccessWatch {
    /// A watch with these thresholds.
    pub fn new(limits: AccessLimits) -> Self {
        AccessWatch { limits, hours: HashMap::new() }
    }

    /// The thresholds.
    pub fn limits(&self) -> AccessLimits {
        self.limits
    }

    /// Person `who` (an integrating system if `system`) opens record `id` at `now`.
    pub fn open(&mut self, who: i64, system: bool, id: SessionId, now: i64) -> Verdict {
        let limits = if system { self.limits.system } else { self.limits.person };
        if limits.alarm == 0 && limits.limit == 0 && limits.day_alarm == 0 {
            return Verdict::Open;
        }
        if self.hours.len() > 4096 {
            // Forget the callers with nothing in the last hour (a node has few people).
            self.hours.retain(|_, h| {
                h.prune(now);
                !h.opened.is_empty() || !h.day.is_empty()
            });
        }
        let hour = self.hours.entry(who).or_default();
        hour.prune(now);
        if let Some(at) = hour.opened.get_mut(&id) {
            // A record already opened this hour: work under way is never cut off.
            *at = now;
            // Counted in the day too (a record they created is counted at its first opening),
            // and a day's alarm owed (its entry not written) is due here as at a new record.
            return match hour.count_day(id, limits, now) {
                Some(opened) => Verdict::DayAlarm { opened },
                None => Verdict::Open,
            };
        }
        let opened = hour.opened.len();
        if limits.limit > 0 && opened >= limits.limit {
            let oldest = hour.opened.values().copied().min().unwrap_or(now);
            let first = !Hour::recent(hour.refusal_recorded_ms, now);
            if first {
                hour.refusal_recorded_ms = Some(now);
            }
            return Verdict::Refused { opened, until_ms: oldest + WINDOW_MS, first };
        }
        // With no limit (the alarm alone), no more records are kept than the alarm needs: the
        // count stops there, and so does the memory a caller walking every record costs.
        if limits.limit > 0 || opened < limits.alarm {
            hour.opened.insert(id, now);
        }
        let opened = hour.opened.len();
        let day = hour.count_day(id, limits, now);
        if limits.alarm > 0 && opened >= limits.alarm && !Hour::recent(hour.alarmed_ms, now) {
            hour.alarmed_ms = Some(now);
            // Both at once (rare): one entry says both, so neither waits on a next record.
            return Verdict::Alarm { opened, day };
        }
        match day {
            Some(opened) => Verdict::DayAlarm { opened },
            None => Verdict::Open,
        }
    }

    /// Whether `who` would be refused record `id` at `now`, without counting it: `Some` with
    /// the records opened this hour and when one leaves it (a read receipt is written only for
    /// a record its person may open).
    pub fn refuses(&self, who: i64, system: bool, id: SessionId, now: i64) -> Option<(usize, i64)> {
        let limit = if system { self.limits.system.limit } else { self.limits.person.limit };
        let hour = self.hours.get(&who)?;
        let live = |at: &i64| now - *at < WINDOW_MS && *at <= now + WINDOW_MS;
        if limit == 0 || hour.opened.get(&id).is_some_and(live) {
            return None;
        }
        let times: Vec<i64> = hour.opened.values().copied().filter(live).collect();
        (times.len() >= limit).then(|| (times.len(), times.iter().min().copied().unwrap_or(now) + WINDOW_MS))
    }

    /// `who` (an integrating system if `system`) has now been shown `cards` different
    /// patients' cards in one kind of list within the hour: whether that raises the alarm
    /// (once an hour; [`AccessWatch::unrecorded`] with `None` if its entry is not written).
    pub fn shown(&mut self, who: i64, system: bool, cards: usize, now: i64) -> bool {
        let alarm = if system { self.limits.system.cards_alarm } else { self.limits.person.cards_alarm };
        if alarm == 0 || cards < alarm {
            return false;
        }
        let hour = self.hours.entry(who).or_default();
        if Hour::recent(hour.cards_alarmed_ms, now) {
            return false;
        }
        hour.cards_alarmed_ms = Some(now);
        true
    }

    /// `who` made record `id` (a new session): theirs to open again this hour, whatever the
    /// limit (a crew never loses sight of the request it just sent).
    pub fn created(&mut self, who: i64, system: bool, id: SessionId, now: i64) {
        let limits = if system { self.limits.system } else { self.limits.person };
        if limits.alarm == 0 && limits.limit == 0 && limits.day_alarm == 0 {
            return;
        }
        let hour = self.hours.entry(who).or_default();
        hour.prune(now);
        hour.opened.insert(id, now);
    }

    /// What the audit chain holds of `who`'s last day, counted again by a restarted daemon
    /// (oldest first, `at` each one's time, `now` the daemon's): the records opened or made in
    /// the hour and the day, and when each alarm and refusal was last recorded. A restart then
    /// neither gives anyone a fresh hour nor raises an alarm again within it. An entry up to an
    /// hour ahead of `now` (a clock set back since it was written) counts as the live watch
    /// counts it ([`Hour::prune`]): in the hour.
    pub fn replay(&mut self, who: i64, system: bool, what: Replayed, at: i64, now: i64) {
        let limits = if system { self.limits.system } else { self.limits.person };
        let off = limits.alarm == 0 && limits.limit == 0 && limits.day_alarm == 0;
        if (off && limits.cards_alarm == 0) || at > now + WINDOW_MS || now - at >= DAY_MS {
            return;
        }
        let in_hour = now - at < WINDOW_MS;
        let hour = self.hours.entry(who).or_default();
        match what {
            // As [`AccessWatch::open`] keeps them: with no limit, no more than the alarms need.
            Replayed::Opened(id) => {
                let keep = |kept: &HashMap<SessionId, i64>, most: usize| {
                    limits.limit > 0 || kept.len() < most || kept.contains_key(&id)
                };
                if in_hour && keep(&hour.opened, limits.alarm) {
                    hour.opened.insert(id, at);
                }
                if limits.day_alarm > 0 && keep(&hour.day, limits.day_alarm) {
                    hour.day.insert(id, at);
                }
            }
            Replayed::Created(id) if in_hour && !off => {
                hour.opened.insert(id, at);
            }
            Replayed::Created(_) => {}
            Replayed::Alarm { hour: records, day, cards } => {
                if records && in_hour {
                    hour.alarmed_ms = Some(at);
                }
                if day {
                    hour.day_alarmed_ms = Some(at);
                }
                if cards && in_hour {
                    hour.cards_alarmed_ms = Some(at);
                }
            }
            Replayed::Refused if in_hour => hour.refusal_recorded_ms = Some(at),
            Replayed::Refused => {}
        }
    }

    /// The entry `verdict` called for could not be written: it is owed again at the next
    /// record opened, not forgotten for an hour.
    /// (`None`: the alarm for cards shown.)
    pub fn unrecorded(&mut self, who: i64, verdict: Option<Verdict>) {
        let Some(hour) = self.hours.get_mut(&who) else { return };
        match verdict {
            None => hour.cards_alarmed_ms = None,
            Some(Verdict::Alarm { day, .. }) => {
                hour.alarmed_ms = None;
                if day.is_some() {
                    hour.day_alarmed_ms = None;
                }
            }
            Some(Verdict::DayAlarm { .. }) => hour.day_alarmed_ms = None,
            Some(Verdict::Refused { first: true, .. }) => hour.refusal_recorded_ms = None,
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_796_360_400_000;
    const LOW: AccessLimits = AccessLimits {
        person: RecordLimits { alarm: 3, limit: 5, cards_alarm: 10, day_alarm: 0 },
        system: RecordLimits { alarm: 0, limit: 8, cards_alarm: 0, day_alarm: 0 },
    };

    fn id(n: u128) -> SessionId {
        SessionId::from_parts(T0, n)
    }

    #[test]
    fn a_person_is_flagged_once_at_the_alarm_then_refused_new_records_past_the_limit() {
        let mut w = AccessWatch::new(LOW);
        assert_eq!(w.open(1, false, id(1), T0), Verdict::Open);
        assert_eq!(w.open(1, false, id(2), T0 + 1), Verdict::Open);
        assert_eq!(w.open(1, false, id(3), T0 + 2), Verdict::Alarm { opened: 3, day: None });
        assert_eq!(w.open(1, false, id(4), T0 + 3), Verdict::Open, "the alarm is raised once an hour");
        assert_eq!(w.open(1, false, id(5), T0 + 4), Verdict::Open);
        assert_eq!(
            w.open(1, false, id(6), T0 + 5),
            Verdict::Refused { opened: 5, until_ms: T0 + WINDOW_MS, first: true }
        );
        assert_eq!(
            w.open(1, false, id(7), T0 + 6),
            Verdict::Refused { opened: 5, until_ms: T0 + WINDOW_MS, first: false },
            "a refusal is recorded once an hour"
        );
    }

    #[test]
    fn records_already_opened_in_the_hour_still_open_at_the_limit() {
        let mut w = AccessWatch::new(LOW);
        for n in 1..=5 {
            w.open(1, false, id(n), T0 + n as i64);
        }
        assert!(matches!(w.open(1, false, id(6), T0 + 10), Verdict::Refused { .. }));
        assert_eq!(w.open(1, false, id(2), T0 + 11), Verdict::Open);
        assert_eq!(w.open(1, false, id(2), T0 + 12), Verdict::Open);
    }

    #[test]
    fn a_watch_given_the_chains_last_day_counts_on_where_the_last_one_stopped() {
        let limits = AccessLimits { person: RecordLimits { day_alarm: 8, ..LOW.person }, ..LOW };
        let mut w = AccessWatch::new(limits);
        let now = T0 + DAY_MS;
        // Yesterday's records count in the day only; this hour's in both.
        for n in 1..=3 {
            w.replay(1, false, Replayed::Opened(id(n)), T0 + n as i64, now);
        }
        for n in 4..=8 {
            w.replay(1, false, Replayed::Opened(id(n)), now - 10_000 + n as i64, now);
        }
        w.replay(1, false, Replayed::Created(id(20)), now - 5_000, now);
        w.replay(1, false, Replayed::Alarm { hour: true, day: false, cards: false }, now - 9_000, now);
        w.replay(1, false, Replayed::Refused, now - 2_000, now);
        // The hour's five: a new record is refused, and the refusal is not recorded again.
        assert_eq!(
            w.open(1, false, id(9), now),
            Verdict::Refused { opened: 6, until_ms: now - 10_000 + 4 + WINDOW_MS, first: false }
        );
        // What was opened or made this hour still opens. The day's eight were not flagged
        // before the restart: the day's alarm is due at the next (the hour's was raised).
        assert_eq!(w.open(1, false, id(20), now), Verdict::DayAlarm { opened: 9 });
        assert_eq!(w.open(1, false, id(5), now), Verdict::Open);
        // Entries from before the day, from more than an hour ahead or of callers not counted
        // change nothing.
        let mut fresh = AccessWatch::new(LOW);
        fresh.replay(2, false, Replayed::Opened(id(1)), now - DAY_MS, now);
        fresh.replay(2, false, Replayed::Opened(id(2)), now + WINDOW_MS + 1, now);
        assert_eq!(fresh.open(2, false, id(3), now), Verdict::Open);
        assert_eq!(fresh.open(2, false, id(4), now), Verdict::Open);
        assert_eq!(fresh.open(2, false, id(5), now), Verdict::Alarm { opened: 3, day: None });
        let none = RecordLimits { alarm: 0, limit: 0, cards_alarm: 0, day_alarm: 0 };
        let mut off = AccessWatch::new(AccessLimits { person: none, system: none });
        off.replay(3, false, Replayed::Opened(id(1)), now - 1, now);
        assert!(off.hours.is_empty(), "nothing kept for a watch that counts nothing");
        // A clock set back a few minutes since the last entries: they are still this hour's,
        // as the live watch keeps them.
        let mut behind = AccessWatch::new(LOW);
        for n in 1..=5 {
            behind.replay(4, false, Replayed::Opened(id(n)), now + 120_000, now);
        }
        assert!(matches!(behind.open(4, false, id(6), now), Verdict::Refused { opened: 5, .. }));
    }

    #[test]
    fn the_hour_slides_and_each_caller_has_their_own() {
        let mut w = AccessWatch::new(LOW);
        for n in 1..=5 {
            w.open(1, false, id(n), T0 + n as i64 * 1000);
        }
        // Someone else is not held back by this person's hour.
        assert_eq!(w.open(2, false, id(6), T0 + 6000), Verdict::Open);
        assert!(
            matches!(w.open(1, false, id(6), T0 + WINDOW_MS), Verdict::Refused { until_ms, .. } if until_ms == T0 + 1000 + WINDOW_MS)
        );
        // An hour after the first was opened, one more may be.
        assert_eq!(w.open(1, false, id(6), T0 + 1000 + WINDOW_MS), Verdict::Open);
        assert!(matches!(w.open(1, false, id(7), T0 + 1000 + WINDOW_MS), Verdict::Refused { .. }));
        // A day later the hour is empty, and the alarm may be raised again.
        let day = T0 + 24 * WINDOW_MS;
        assert_eq!(w.open(1, false, id(10), day), Verdict::Open);
        assert_eq!(w.open(1, false, id(11), day), Verdict::Open);
        assert_eq!(w.open(1, false, id(12), day), Verdict::Alarm { opened: 3, day: None });
    }

    #[test]
    fn an_integrating_system_has_its_own_thresholds_and_zero_turns_one_off() {
        let mut w = AccessWatch::new(LOW);
        for n in 1..=8 {
            assert_eq!(w.open(9, true, id(n), T0), Verdict::Open, "record {n}: no alarm for systems here");
        }
        assert!(matches!(w.open(9, true, id(9), T0), Verdict::Refused { opened: 8, .. }));
        let mut off = AccessWatch::new(AccessLimits {
            person: RecordLimits { alarm: 0, limit: 0, cards_alarm: 0, day_alarm: 0 },
            system: RecordLimits { alarm: 0, limit: 0, cards_alarm: 0, day_alarm: 0 },
        });
        for n in 1..=1000 {
            assert_eq!(off.open(1, false, id(n), T0), Verdict::Open);
        }
    }

    #[test]
    fn with_the_alarm_alone_no_more_records_are_kept_than_the_alarm() {
        let alarm_only = RecordLimits { alarm: 3, limit: 0, cards_alarm: 0, day_alarm: 0 };
        let mut w = AccessWatch::new(AccessLimits { person: alarm_only, system: alarm_only });
        for n in 1..=1000 {
            let v = w.open(1, false, id(n), T0 + n as i64);
            assert_eq!(v == Verdict::Alarm { opened: 3, day: None }, n == 3, "record {n}: {v:?}");
        }
        assert_eq!(w.hours[&1].opened.len(), 3);
        // An hour on, the alarm is raised again for one still reading.
        let later = T0 + WINDOW_MS + 2000;
        for n in 1001..=1003 {
            w.open(1, false, id(n), later + n as i64);
        }
        assert_eq!(w.hours[&1].alarmed_ms, Some(later + 1003));
    }

    #[test]
    fn an_entry_not_written_is_owed_again_and_a_record_made_is_its_makers() {
        let mut w = AccessWatch::new(LOW);
        for n in 1..=2 {
            w.open(1, false, id(n), T0);
        }
        let v = w.open(1, false, id(3), T0);
        assert_eq!(v, Verdict::Alarm { opened: 3, day: None });
        w.unrecorded(1, Some(v));
        assert_eq!(w.open(1, false, id(4), T0), Verdict::Alarm { opened: 4, day: None });
        w.open(1, false, id(5), T0);
        assert_eq!(w.refuses(1, false, id(6), T0), Some((5, T0 + WINDOW_MS)));
        assert_eq!(w.refuses(1, false, id(5), T0), None, "opened this hour");
        assert_eq!(w.refuses(2, false, id(6), T0), None, "someone else");
        w.created(1, false, id(7), T0 + 1);
        assert_eq!(w.open(1, false, id(7), T0 + 2), Verdict::Open, "their own new record");
    }

    #[test]
    fn cards_shown_raise_their_own_alarm_once_an_hour() {
        let mut w = AccessWatch::new(LOW);
        assert!(!w.shown(1, false, 9, T0));
        assert!(w.shown(1, false, 10, T0 + 1));
        assert!(!w.shown(1, false, 500, T0 + 2), "once an hour");
        assert!(!w.shown(9, true, 10_000, T0), "off for systems here");
        w.unrecorded(1, None);
        assert!(w.shown(1, false, 11, T0 + 3), "owed again when its entry was not written");
        assert!(w.shown(1, false, 10, T0 + 3 + WINDOW_MS), "an hour on");
        // The records' alarm is apart.
        for n in 1..=2 {
            assert_eq!(w.open(1, false, id(n), T0 + 4), Verdict::Open);
        }
        assert_eq!(w.open(1, false, id(3), T0 + 4), Verdict::Alarm { opened: 3, day: None });
    }

    #[test]
    fn one_who_stays_under_the_hours_alarm_all_day_is_flagged_once_a_day() {
        let slow = RecordLimits { alarm: 60, limit: 200, cards_alarm: 0, day_alarm: 300 };
        let mut w = AccessWatch::new(AccessLimits { person: slow, system: slow });
        let mut flagged = Vec::new();
        // 50 different records an hour, every hour, for two days.
        for n in 0..2400u128 {
            let at = T0 + (n as i64) * (WINDOW_MS / 50);
            match w.open(1, false, id(n), at) {
                Verdict::Open => {}
                Verdict::DayAlarm { opened } => flagged.push((n, opened)),
                other => panic!("record {n}: {other:?}"),
            }
        }
        // The 300th record of the first day, then a day later again.
        assert_eq!(flagged.first(), Some(&(299, 300)), "{flagged:?}");
        assert_eq!(flagged.len(), 2, "{flagged:?}");
        assert!(flagged[1].0 >= 299 + 1200, "{flagged:?}");
        // Memory: a day's records at most.
        assert!(w.hours[&1].day.len() <= 1200 + 1, "{}", w.hours[&1].day.len());
    }

    #[test]
    fn the_hours_and_the_days_alarm_due_on_one_record_are_both_told() {
        let both = RecordLimits { alarm: 3, limit: 5, cards_alarm: 0, day_alarm: 3 };
        let mut w = AccessWatch::new(AccessLimits { person: both, system: both });
        for n in 1..=2 {
            assert_eq!(w.open(1, false, id(n), T0), Verdict::Open);
        }
        let v = w.open(1, false, id(3), T0);
        assert_eq!(v, Verdict::Alarm { opened: 3, day: Some(3) });
        // Not written: both owed again, at the next record, even one opened before.
        w.unrecorded(1, Some(v));
        assert_eq!(w.open(1, false, id(1), T0 + 1), Verdict::DayAlarm { opened: 3 });
        assert_eq!(w.open(1, false, id(4), T0 + 2), Verdict::Alarm { opened: 4, day: None });
    }

    #[test]
    fn with_the_days_alarm_alone_no_more_records_are_kept_than_it_needs() {
        let day_only = RecordLimits { alarm: 0, limit: 0, cards_alarm: 0, day_alarm: 5 };
        let mut w = AccessWatch::new(AccessLimits { person: day_only, system: day_only });
        let mut flagged = 0;
        for n in 1..=10_000u128 {
            match w.open(1, false, id(n), T0 + n as i64) {
                Verdict::Open => {}
                Verdict::DayAlarm { opened: 5 } => flagged += 1,
                other => panic!("record {n}: {other:?}"),
            }
        }
        assert_eq!(flagged, 1);
        assert!(w.hours[&1].day.len() <= 5 && w.hours[&1].opened.is_empty());
        // A clock set back more than an hour starts the day again, not for ever locked.
        assert_eq!(w.open(1, false, id(1), T0 - 2 * WINDOW_MS), Verdict::Open);
        assert_eq!(w.hours[&1].day.len(), 1);
    }

    #[test]
    fn a_clock_set_back_does_not_lock_a_person_out_for_ever() {
        let mut w = AccessWatch::new(LOW);
        // Opened with the clock a day ahead, then the clock put right.
        for n in 1..=5 {
            w.open(1, false, id(n), T0 + 24 * WINDOW_MS);
        }
        assert_eq!(w.open(1, false, id(6), T0), Verdict::Open);
    }
}
