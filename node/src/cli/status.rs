//! `outpost status`: what the node holds, who it last synced with, its certificate, its store's
//! health.

use super::*;

pub(crate) fn run_status(args: StatusArgs) -> anyhow::Result<()> {
    let StatusArgs { dir, json } = args;
    let node = open(&dir)?;
    let st = node.status()?;
    let (stats, audit, photos, backlog, peers, cert_until) =
        (&st.store, &st.audit, &st.photos, &st.not_yet_left_this_device, &st.peers, st.certificate_valid_until_ms);
    let now = now_ms();
    if json.json {
        print_json(&st)?;
    } else {
        let c = &node.config();
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
        if node.config().role == Role::Edge {
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
            let ok = p.last_ok_ms.map_or("never".to_string(), |t| format!("{} ({} ago)", time(t), ago(now - t)));
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
        println!("files: database {}, write-ahead log {}", bytes(stats.db_file_bytes), bytes(stats.wal_file_bytes));
        match audit.broken_at {
            None => println!("audit chain: {} entries, intact", audit.entries),
            Some(seq) => println!("audit chain: BROKEN at entry {seq} of {}", audit.entries),
        }
        for loss in &st.audit_losses {
            println!(
                "audit chain: SHORTER than {} had seen (entry {}), or holding another entry there: entries were \
                 lost since, by a restore from a backup or a chain cut back, perhaps written again (`outpost audit \
                 show` lists the audit.behind entry)",
                loss.peer, loss.seen
            );
        }
        for loss in &st.audit_peer_losses {
            println!(
                "audit chain of {peer}: SHORTER than it had told (entry {seen}), or holding another entry there: \
                 entries were lost on {peer} since, by a restore from a backup or a chain cut back; what was done \
                 there is no longer all on record: find out why (`outpost audit show` lists the peer.audit_behind \
                 entry)",
                peer = loss.peer,
                seen = loss.seen
            );
        }
        for u in &st.unusual_access {
            let mut what = Vec::new();
            if u.records > 0 {
                let refused = if u.refused { ", and new ones were refused past the limit" } else { "" };
                what.push(format!("opened {} different patients' records within an hour{refused}", u.records));
            }
            if u.records_day > 0 {
                what.push(format!("opened {} different patients' records within a day", u.records_day));
            }
            if u.cards > 0 {
                what.push(format!("was shown {} different patients on session cards within an hour", u.cards));
            }
            println!(
                "unusual access: {person}{role} {what} ({ago} ago): find out whether that was their work; if their \
                 token may have been taken, `outpost user disable` ends it (`outpost audit show` lists the access \
                 entries and what they opened)",
                person = u.person,
                role = u.role.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(),
                what = what.join(", and "),
                ago = ago(now - u.at_ms),
            );
        }
    }
    // The whole file, page by page: a damaged store is said, and the exit is non-zero.
    match node.integrity_check() {
        Ok(()) if !json.json => println!("store: SQLite integrity check passed"),
        Ok(()) => {}
        Err(e) => {
            if !json.json {
                println!("store: DAMAGED");
            }
            return Err(e.into());
        }
    }
    Ok(())
}
