//! `outpost run`, `sync` and `linkem`: the daemon, one reconciliation, and an emulated link to
//! try them over.

use super::*;

pub(crate) fn run_daemon(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        dir,
        listen,
        peers,
        congestion,
        auto_answer,
        play,
        record,
        api,
        api_cert,
        api_key,
        metrics,
        log_format,
        log_level,
    } = args;
    let mut flags = crate::settings::Flags::default();
    let one = |v: Option<String>| v.into_iter().collect::<Vec<_>>();
    flags.set("listen", one(listen));
    flags.set("peers", peers);
    flags.set("congestion", one(congestion));
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
    if let Some((cert, _, _)) = node.tls_identity()? {
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
            local_write_recheck: None,
        };
        crate::net::congestion::set_congestion(settings.congestion);
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
        tracing::info!("{why}: stopping: no new connections, closing each with its reason, finishing the store's work");
        daemon.stop().await;
        tracing::info!("stopped cleanly");
        anyhow::Ok(())
    })?;
    Ok(())
}

pub(crate) fn run_sync(args: SyncArgs) -> anyhow::Result<()> {
    let SyncArgs { dir, peer, timeout, json } = args;
    init_logging("warn");
    // The settings the daemon would use (`outpost.toml`, then `OUTPOST_*`): a one-shot sync
    // sends over the same congestion control.
    let settings = crate::settings::Settings::load(&dir.dir, &crate::settings::Flags::default())?;
    crate::net::congestion::set_congestion(settings.congestion);
    let node = open(&dir)?;
    let rt = crate::net::one_shot_runtime()?;
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
    Ok(())
}

pub(crate) fn run_linkem(args: LinkemArgs) -> anyhow::Result<()> {
    let LinkemArgs { listen, to, profile, outages, seed, aqm } = args;
    init_logging("info");
    let aqm = crate::linkem::Aqm::parse(&aqm)
        .ok_or_else(|| InputError(format!("unknown queue {aqm:?}; expected droptail, codel or step:<ms>")))?;
    let p = sync_protocol::links::profile(&profile).ok_or_else(|| {
        InputError(format!(
            "unknown link profile {profile:?}; expected one of: {}",
            sync_protocol::links::PROFILE_NAMES.join(", ")
        ))
    })?;
    let rt = runtime()?;
    rt.block_on(async move {
        let opts = crate::linkem::EmulatorOptions { outages, seed, aqm, ..Default::default() };
        let to = to.resolve().await?;
        let em = crate::linkem::LinkEmulator::start(listen, to, p.clone(), opts).await?;
        println!(
            "relaying {} -> {to} as {} ({} kbit/s up, {:.0}-{:.0} ms RTT, {:.1}% loss{}, {aqm} queue)",
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
    Ok(())
}
