//! The hubs' ICB directories: written when the region is built, edited during a run as a
//! deployer's `outpost rota set` would (`[[directory_edit]]`); the engine carries each change
//! to the ICB's edges and desks, and the hub's router reads its own copy.

use super::checks::Observed;
use super::*;

/// Writes an ICB's directory as its hub's document (the hub is its only author).
pub(super) fn install_directory(hub: &mut Node, icb: &str, lines: &BTreeMap<ServiceLine, LineEntry>, now: TimeMs) {
    let actor = hub.replica.actor().clone();
    let Ok(mut doc) = DirectoryDoc::create(icb, actor, now) else {
        unreachable!("the scenario's ICB code was checked")
    };
    for entry in lines.values() {
        // Every entry is built from a checked scenario: hours parsed, channels known.
        let _ = doc.set_line(entry, now);
    }
    hub.replica.set_directory(doc);
}

impl World {
    /// The scenario's `index`th directory edit, written by the region's hub now.
    pub(super) fn edit_directory(&mut self, index: usize) {
        let Some(edit) = self.scenario.directory_edits.get(index).cloned() else { return };
        let hub = self.hub;
        let now = self.node_now(hub);
        let current = self.nodes[hub].replica.directory_view().and_then(|v| v.lines.get(&edit.line).cloned());
        let mut entry = current.unwrap_or_else(|| LineEntry {
            line: edit.line,
            hours: Hours::Always,
            channels: Channel::ALL.to_vec(),
            rota: Vec::new(),
            fallback_hub: None,
            updated_ms: now,
        });
        // Both were checked when the scenario was loaded.
        if let Some(h) = edit.hours.as_deref().and_then(|h| Hours::parse(h).ok()) {
            entry.hours = h;
        }
        if let Some(rota) = &edit.rota {
            entry.rota = rota.iter().map(|d| RotaDesk { desk: d.clone(), ring_s: DEFAULT_RING_S }).collect();
        }
        entry.updated_ms = now;
        let written = self.nodes[hub].replica.edit_directory(|d| d.set_line(&entry, now));
        if !matches!(written, Some(Ok(()))) {
            self.check(Observed::DirectoryEditFailed { line: edit.line });
            return;
        }
        self.directory_edits += 1;
        self.after_changes(hub, None);
    }
}
