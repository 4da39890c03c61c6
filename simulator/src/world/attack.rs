//! The hostile node of a `byzantine` fault: a fleet member attacking the hub with its own
//! valid identity and key. It forges changes on purpose (the one place outside the session
//! model that writes a session document), and the checkers judge what the hub made of them.

use super::checks::Observed;
use super::*;

impl World {
    /// One round of attacks by the hostile node of link `l` on the hub, with the node's own valid
    /// identity and key, on a session of someone else (a leaked copy): a self-share, a reply
    /// forged in a consultant's name, a forged hub receipt, a change under another member's
    /// actor, an operation bomb, and reads by id. Every forged change must be refused (the
    /// hub must not hold it afterwards); what the hub sends back is checked for scope on
    /// arrival like every frame.
    pub(super) fn attack(&mut self, l: usize) {
        let (n, hub) = (self.links[l].node, self.links[l].hub);
        if !self.nodes[hub].up || !self.nodes[n].up {
            return;
        }
        let me = self.nodes[n].info.clone();
        let victim = self.nodes[hub].replica.ids().into_iter().find(|id| {
            self.nodes[hub].replica.view_ref(id).is_some_and(|v| !may_hold(&me, &v.meta()) && !v.messages.is_empty())
        });
        let Some(victim) = victim else { return };
        self.check(Observed::Probed { node: n, doc: victim });
        let Some(mut leaked) = self.nodes[hub].replica.copy_doc(&victim) else { return };
        let key = self.nodes[n].replica.author().clone();
        let other = self.nodes.iter().find(|x| x.kind == Kind::Desk).map(|x| x.replica.actor().clone());
        let round = self.attacks.0;
        let mut doc = leaked.fork_as(match (round % 6, other) {
            (3, Some(a)) => a,
            _ => key.actor().clone(),
        });
        let before = doc.heads();
        let am = doc.automerge();
        let obj = |am: &automerge::AutoCommit, parent: &automerge::ObjId, k: &str| match am.get(parent, k) {
            Ok(Some((automerge::Value::Object(_), o))) => Some(o),
            _ => None,
        };
        use automerge::ReadDoc;
        use automerge::transaction::Transactable;
        let forged = match round % 6 {
            0 => obj(am, &automerge::ROOT, "shares").map(|sh| am.put(&sh, me.name.as_str(), 1).is_ok()),
            1 => obj(am, &automerge::ROOT, "messages").map(|m| {
                let at = am.length(&m);
                am.insert_object(&m, at, automerge::ObjType::Map)
                    .and_then(|e| {
                        am.put(&e, "author", "desk-001")?;
                        am.put(&e, "side", "responder")?;
                        am.put(&e, "text", "benign, discharge")
                    })
                    .is_ok()
            }),
            2 | 3 => obj(am, &automerge::ROOT, "messages").and_then(|m| match am.get(&m, 0) {
                Ok(Some((automerge::Value::Object(_), first))) => {
                    obj(am, &first, "receipts").map(|r| am.put(&r, format!("hub/{}", self.nodes[hub].name), 1).is_ok())
                }
                _ => None,
            }),
            4 => obj(am, &automerge::ROOT, "messages")
                .map(|m| am.splice(&m, 0, 0, std::iter::repeat_n(automerge::ScalarValue::Null, 100_000)).is_ok()),
            _ => None,
        };
        let frames = if forged == Some(true) {
            am.commit();
            let changes = am.get_changes(&before);
            let bytes: Vec<u8> = changes.iter().flat_map(|c| c.raw_bytes().to_vec()).collect();
            let sigs = changes.iter().map(|c| key.sign(&c.hash())).collect();
            let hashes: Vec<Hash> = changes.iter().map(|c| Hash::from(c.hash())).collect();
            let heads = doc.heads().iter().map(|h| Hash::from(*h)).collect();
            vec![(hashes, Frame::Changes(sync_protocol::wire::Changes { doc: victim, ack: false, heads, bytes, sigs }))]
        } else {
            vec![
                (Vec::new(), Frame::Need { doc: victim }),
                (Vec::new(), Frame::Heads { doc: victim, heads: vec![Hash([7; 32])] }),
            ]
        };
        let now = self.node_now(hub);
        let hub_info = self.nodes[hub].info.clone();
        for (hashes, frame) in frames {
            self.attacks.0 += 1;
            let Some(c) = self.links[l].conn.as_mut() else { return };
            let result = c.engines[1].handle(&mut self.nodes[hub].replica, vec![frame], now);
            self.flush(l, 1, 0);
            if let Err(e) = result {
                self.drop_conn(l, &e.to_string());
                return;
            }
            let held = self.nodes[hub].replica.known_hashes(&hub_info, &victim, &hashes).unwrap_or_default();
            if held.is_empty() {
                self.attacks.1 += 1;
            }
            self.check(Observed::Forged { hub, by: n, doc: victim, hashes: &hashes });
        }
        self.after_changes(hub, None);
    }
}
