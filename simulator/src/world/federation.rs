//! A federated hub: another ICB's hub dialling the region's hub, with a desk of its own for
//! each line it takes out of area, and its own directory (those lines, open 24/7, that desk).

use super::*;
use crate::scenario::Federation;

/// The parts of the region under construction that a federated hub joins.
pub(super) struct Region<'a> {
    pub(super) nodes: &'a mut Vec<Node>,
    pub(super) links: &'a mut Vec<Link>,
    pub(super) rng: &'a mut ChaCha8Rng,
}

/// Adds the federated hub and its desks; returns the hub's index and its directory.
pub(super) fn build(
    f: &Federation,
    region: &mut Region<'_>,
    enrol: &dyn Fn(&mut ChaCha8Rng, &PeerInfo) -> MemReplica,
    pool: &ChunkPool,
    epoch_ms: TimeMs,
) -> (usize, BTreeMap<ServiceLine, LineEntry>) {
    let profile = links::profile(&f.link).unwrap_or_else(|| unreachable!("checked by the scenario"));
    let icb = f.icb.clone();
    let join = |region: &mut Region<'_>, info: PeerInfo, kind: Kind, hub: usize| {
        let i = region.nodes.len();
        let delay_us = (links::one_way_delay_ms(&profile, &mut U(region.rng)) * 1000.0) as Micros;
        region.links.push(Link::new(i, hub, Spec::Fixed(profile.clone()), profile.clone(), 0, delay_us));
        let replica = enrol(region.rng, &info).with_pool(pool.clone());
        region.nodes.push(Node::new(info.name.clone(), kind, replica, info, Some(region.links.len() - 1)));
        i
    };
    let hub = PeerInfo { name: f.hub_name(), role: Role::Hub, org: None, icb: Some(icb.clone()), lines: vec![] };
    // It dials the region's hub (node 0).
    let h = join(region, hub, Kind::Hub, 0);
    let mut directory = BTreeMap::new();
    for (i, line) in f.lines.iter().enumerate() {
        let name = format!("desk-{}-{:03}", icb.to_lowercase(), i + 1);
        let desk =
            PeerInfo { name: name.clone(), role: Role::Desk, org: None, icb: Some(icb.clone()), lines: vec![*line] };
        join(region, desk, Kind::Desk, h);
        let entry = LineEntry {
            line: *line,
            hours: Hours::Always,
            channels: Channel::ALL.to_vec(),
            rota: vec![RotaDesk { desk: name, ring_s: DEFAULT_RING_S }],
            fallback_hub: None,
            updated_ms: epoch_ms,
        };
        directory.insert(*line, entry);
    }
    (h, directory)
}
