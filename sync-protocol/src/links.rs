//! Named link profiles, from the figures of the domain brief (`../shared/domain.md`), shared by
//! the simulator and the user-space link emulator of the node and field tests.
//!
//! A profile is data: availability as an on/off process with outage lengths, a bandwidth, an
//! RTT range, Gilbert-Elliott loss (a good and a bad state, each with its own loss rate) and a
//! connect failure rate. [`LinkState`] draws from a profile with a caller-supplied random
//! source, so the simulator (seeded) and the emulator (real randomness) apply the same model.

use serde::{Deserialize, Serialize};

/// Two-state burst loss: packets are lost with `loss_good` in the good state and `loss_bad` in
/// the bad one; each packet moves good to bad with `p_good_bad` and bad to good with `p_bad_good`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GilbertElliott {
    /// Probability per packet of entering the bad state.
    pub p_good_bad: f64,
    /// Probability per packet of leaving it.
    pub p_bad_good: f64,
    /// Loss rate in the good state.
    pub loss_good: f64,
    /// Loss rate in the bad state.
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// No loss.
    pub const NONE: GilbertElliott = GilbertElliott { p_good_bad: 0.0, p_bad_good: 1.0, loss_good: 0.0, loss_bad: 0.0 };

    /// The long-run loss rate.
    pub fn mean_loss(&self) -> f64 {
        let in_bad = if self.p_good_bad + self.p_bad_good > 0.0 {
            self.p_good_bad / (self.p_good_bad + self.p_bad_good)
        } else {
            0.0
        };
        in_bad * self.loss_bad + (1.0 - in_bad) * self.loss_good
    }
}

/// A named link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkProfile {
    /// Name, as used on the command line and in scenario files.
    pub name: String,
    /// Share of time the link is up (1.0: always).
    pub availability: f64,
    /// Median outage length, seconds.
    pub outage_median_s: f64,
    /// 95th percentile outage length, seconds.
    pub outage_p95_s: f64,
    /// Uplink bandwidth, bits per second (median).
    pub uplink_bps: u64,
    /// Downlink bandwidth, bits per second.
    pub downlink_bps: u64,
    /// Round-trip time range, milliseconds.
    pub rtt_ms: (f64, f64),
    /// Burst loss.
    pub loss: GilbertElliott,
    /// Probability that an attempt to connect fails.
    pub connect_failure: f64,
    /// Bytes that may queue at the bottleneck before packets are dropped.
    pub queue_bytes: usize,
}

impl LinkProfile {
    /// Mean time the link stays up between outages, in seconds, so that the up share matches
    /// `availability` given the mean outage length.
    pub fn mean_up_s(&self) -> f64 {
        if self.availability >= 1.0 {
            return f64::INFINITY;
        }
        let mean_outage = self.mean_outage_s();
        mean_outage * self.availability / (1.0 - self.availability)
    }

    /// Mean outage length of the log-normal fitted to the median and 95th percentile.
    pub fn mean_outage_s(&self) -> f64 {
        let (mu, sigma) = self.outage_lognormal();
        (mu + sigma * sigma / 2.0).exp()
    }

    /// Parameters (mu, sigma) of the log-normal outage length.
    pub fn outage_lognormal(&self) -> (f64, f64) {
        let median = self.outage_median_s.max(0.001);
        let p95 = self.outage_p95_s.max(median);
        let mu = median.ln();
        let sigma = ((p95 / median).ln() / 1.644_853_6).max(0.01);
        (mu, sigma)
    }
}

/// The names of the built-in profiles, from best to worst.
pub const PROFILE_NAMES: &[&str] =
    &["urban-4g", "rural-a-road", "cell-edge", "3g-fallback", "remote-moor", "rural-surgery", "satellite", "hospital"];

/// A built-in profile by name.
pub fn profile(name: &str) -> Option<LinkProfile> {
    let p = |name: &str,
             availability: f64,
             outage: (f64, f64),
             up: u64,
             down: u64,
             rtt: (f64, f64),
             loss: GilbertElliott,
             connect_failure: f64| LinkProfile {
        name: name.to_string(),
        availability,
        outage_median_s: outage.0,
        outage_p95_s: outage.1,
        uplink_bps: up,
        downlink_bps: down,
        rtt_ms: rtt,
        loss,
        connect_failure,
        queue_bytes: 256 * 1024,
    };
    let rural_loss = GilbertElliott { p_good_bad: 0.01, p_bad_good: 0.1, loss_good: 0.005, loss_bad: 0.12 };
    Some(match name {
        // Urban / motorway 4G: 95-99% up, outages ~10 s, 7.6 Mbps, 20-45 ms, 0.1-0.5% loss.
        "urban-4g" => p(
            name,
            0.97,
            (10.0, 20.0),
            7_600_000,
            20_000_000,
            (20.0, 45.0),
            GilbertElliott { p_good_bad: 0.002, p_bad_good: 0.2, loss_good: 0.002, loss_bad: 0.05 },
            0.025,
        ),
        // Rural A/B road 4G: 85% up, outages median 90 s, p95 10 min, ~4 Mbps, 40-150 ms.
        "rural-a-road" => p(name, 0.85, (90.0, 600.0), 4_000_000, 10_000_000, (40.0, 150.0), rural_loss, 0.03),
        // Cell edge: always some signal, ~2 Mbps or less, 150-500 ms, 5-20% loss.
        "cell-edge" => p(
            name,
            0.95,
            (20.0, 120.0),
            1_000_000,
            2_000_000,
            (150.0, 500.0),
            GilbertElliott { p_good_bad: 0.05, p_bad_good: 0.15, loss_good: 0.05, loss_bad: 0.2 },
            0.05,
        ),
        // 3G fallback: ~2 Mbps down, less up, 150-500 ms, bursty loss.
        "3g-fallback" => p(
            name,
            0.92,
            (30.0, 180.0),
            384_000,
            2_000_000,
            (150.0, 400.0),
            GilbertElliott { p_good_bad: 0.03, p_bad_good: 0.2, loss_good: 0.02, loss_bad: 0.15 },
            0.04,
        ),
        // Remote (Highlands, moors): 50-80% up, outages up to 30-60 min, otherwise as rural.
        "remote-moor" => p(name, 0.65, (300.0, 2700.0), 4_000_000, 10_000_000, (40.0, 150.0), rural_loss, 0.05),
        // Rural surgery fixed line: outages of hours a few times a year, >= 1 Mbps, 20-40 ms, low loss.
        "rural-surgery" => p(
            name,
            0.999,
            (3600.0, 14_400.0),
            1_000_000,
            8_000_000,
            (20.0, 40.0),
            GilbertElliott { p_good_bad: 0.0005, p_bad_good: 0.3, loss_good: 0.0005, loss_bad: 0.02 },
            0.005,
        ),
        // Satellite backup: 5-16 Mbps, 25-50 ms (low orbit), low loss.
        "satellite" => p(
            name,
            0.99,
            (15.0, 60.0),
            5_000_000,
            16_000_000,
            (25.0, 50.0),
            GilbertElliott { p_good_bad: 0.001, p_bad_good: 0.3, loss_good: 0.001, loss_bad: 0.03 },
            0.01,
        ),
        // A hospital's wired network (where hubs and consultants' desks sit). Not in the brief:
        // an assumption of a well-run LAN/WAN, so that desks are not the weak link.
        "hospital" => p(
            name,
            0.9999,
            (30.0, 120.0),
            50_000_000,
            50_000_000,
            (5.0, 15.0),
            GilbertElliott { p_good_bad: 0.0001, p_bad_good: 0.5, loss_good: 0.0001, loss_bad: 0.01 },
            0.001,
        ),
        _ => return None,
    })
}

/// The random numbers a [`LinkState`] needs: uniform in [0, 1).
pub trait Uniform {
    /// The next number.
    fn next_f64(&mut self) -> f64;
}

/// The evolving state of one direction of a link: burst-loss state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkState {
    bad: bool,
}

impl LinkState {
    /// Whether the next packet is lost, advancing the Gilbert-Elliott chain.
    pub fn lose(&mut self, ge: &GilbertElliott, rng: &mut impl Uniform) -> bool {
        let flip = if self.bad { ge.p_bad_good } else { ge.p_good_bad };
        if rng.next_f64() < flip {
            self.bad = !self.bad;
        }
        rng.next_f64() < if self.bad { ge.loss_bad } else { ge.loss_good }
    }
}

/// A one-way delay drawn from the profile's RTT range (half the RTT), in milliseconds.
pub fn one_way_delay_ms(p: &LinkProfile, rng: &mut impl Uniform) -> f64 {
    let (lo, hi) = p.rtt_ms;
    (lo + (hi - lo) * rng.next_f64()) / 2.0
}

/// An outage length drawn from the profile's log-normal, in seconds.
pub fn outage_s(p: &LinkProfile, rng: &mut impl Uniform) -> f64 {
    let (mu, sigma) = p.outage_lognormal();
    (mu + sigma * standard_normal(rng)).exp()
}

/// An up period drawn from an exponential with the profile's mean, in seconds.
pub fn up_s(p: &LinkProfile, rng: &mut impl Uniform) -> f64 {
    let mean = p.mean_up_s();
    if mean.is_infinite() {
        return f64::INFINITY;
    }
    -mean * (1.0 - rng.next_f64()).max(1e-12).ln()
}

fn standard_normal(rng: &mut impl Uniform) -> f64 {
    // Box-Muller.
    let u1 = rng.next_f64().max(1e-12);
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lcg(u64);
    impl Uniform for Lcg {
        fn next_f64(&mut self) -> f64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn every_named_profile_exists_and_is_plausible() {
        for name in PROFILE_NAMES {
            let p = profile(name).unwrap();
            assert!(p.availability > 0.5 && p.availability <= 1.0, "{name}");
            assert!(p.rtt_ms.0 <= p.rtt_ms.1 && p.uplink_bps > 0, "{name}");
            assert!(p.loss.mean_loss() < 0.2, "{name}");
        }
        assert!(profile("carrier-pigeon").is_none());
    }

    #[test]
    fn outages_follow_the_median_and_availability() {
        let p = profile("rural-a-road").unwrap();
        let mut rng = Lcg(7);
        let mut outages: Vec<f64> = (0..20_000).map(|_| outage_s(&p, &mut rng)).collect();
        outages.sort_by(f64::total_cmp);
        let median = outages[outages.len() / 2];
        assert!((median - 90.0).abs() < 9.0, "median outage {median}");
        let p95 = outages[outages.len() * 95 / 100];
        assert!((p95 - 600.0).abs() < 90.0, "p95 outage {p95}");
        let up: f64 = (0..20_000).map(|_| up_s(&p, &mut rng)).sum::<f64>() / 20_000.0;
        let down: f64 = outages.iter().sum::<f64>() / outages.len() as f64;
        let share = up / (up + down);
        assert!((share - 0.85).abs() < 0.03, "availability {share}");
    }

    #[test]
    fn burst_loss_matches_its_long_run_rate() {
        let ge = profile("cell-edge").unwrap().loss;
        let mut rng = Lcg(3);
        let mut st = LinkState::default();
        let lost = (0..200_000).filter(|_| st.lose(&ge, &mut rng)).count() as f64 / 200_000.0;
        assert!((lost - ge.mean_loss()).abs() < 0.01, "{lost} vs {}", ge.mean_loss());
    }
}
