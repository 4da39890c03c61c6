//! The report's plots, as SVG: delivery latency CDFs, bytes on the wire against payload,
//! link availability, and backlogs over time.

use std::path::Path;

use plotters::prelude::*;

use crate::Report;

type Res = Result<(), Box<dyn std::error::Error>>;

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Writes every plot into `dir`.
pub fn write_all(r: &Report, dir: &Path) -> Res {
    latency_cdf(r, &dir.join("latency-cdf.svg"))?;
    bytes(r, &dir.join("bytes.svg"))?;
    availability(r, &dir.join("availability.svg"))?;
    backlog(r, &dir.join("backlog.svg"))?;
    Ok(())
}

fn latency_cdf(r: &Report, path: &Path) -> Res {
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut series: Vec<(String, Vec<f64>)> = Vec::new();
    for to in ["hub", "desk"] {
        for kind in ["ambulance", "surgery"] {
            let mut v: Vec<f64> =
                r.deliveries.iter().filter(|d| d.0 == kind && d.1 == to).map(|d| d.2.max(0.01)).collect();
            v.sort_by(f64::total_cmp);
            if !v.is_empty() {
                series.push((format!("{kind} → {to}"), v));
            }
        }
    }
    let max = series.iter().filter_map(|s| s.1.last().copied()).fold(10.0f64, f64::max) * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: delivery latency, write to hub and to desk (seed {})", r.scenario, r.seed),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((0.01f64..max).log_scale(), 0f64..1.0f64)?;
    chart.configure_mesh().x_desc("seconds after the write (log scale)").y_desc("share delivered").draw()?;
    for (i, (label, v)) in series.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        let n = v.len() as f64;
        let points: Vec<(f64, f64)> = v.iter().enumerate().map(|(k, x)| (*x, (k + 1) as f64 / n)).collect();
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)))?
            .label(format!("{label} (n={})", v.len()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn bytes(r: &Report, path: &Path) -> Res {
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let end = r.samples.last().map_or(1.0, |s| s.hour).max(0.1);
    let top = r.samples.iter().map(|s| s.wire_bytes.max(s.payload_bytes)).max().unwrap_or(1).max(1) as f64 / 1e6 * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{}: bytes on the wire and payload per 10 minutes", r.scenario), ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end, 0f64..top)?;
    chart.configure_mesh().x_desc("hours").y_desc("MB per 10 minutes").draw()?;
    let wire: Vec<(f64, f64)> = r.samples.iter().map(|s| (s.hour, s.wire_bytes as f64 / 1e6)).collect();
    let payload: Vec<(f64, f64)> = r.samples.iter().map(|s| (s.hour, s.payload_bytes as f64 / 1e6)).collect();
    chart
        .draw_series(LineSeries::new(wire, COLOURS[1].stroke_width(2)))?
        .label("on the wire")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], COLOURS[1].stroke_width(2)));
    chart
        .draw_series(LineSeries::new(payload, COLOURS[0].stroke_width(2)))?
        .label("payload (changes, photo chunks)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], COLOURS[0].stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn by_kind(
    r: &Report,
    path: &Path,
    title: &str,
    ylabel: &str,
    get: impl Fn(&crate::metrics::Sample, &str) -> Option<f64>,
    ymax: Option<f64>,
) -> Res {
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let end = r.samples.last().map_or(1.0, |s| s.hour).max(0.1);
    let kinds = ["ambulance", "surgery", "desk"];
    let top = ymax.unwrap_or_else(|| {
        r.samples.iter().flat_map(|s| kinds.iter().filter_map(|k| get(s, k))).fold(1.0, f64::max) * 1.1
    });
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{}: {title}", r.scenario), ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end, 0f64..top)?;
    chart.configure_mesh().x_desc("hours").y_desc(ylabel).draw()?;
    for (i, k) in kinds.iter().enumerate() {
        let pts: Vec<(f64, f64)> = r.samples.iter().filter_map(|s| Some((s.hour, get(s, k)?))).collect();
        if pts.is_empty() {
            continue;
        }
        let c = COLOURS[i];
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
            .label(*k)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn availability(r: &Report, path: &Path) -> Res {
    by_kind(r, path, "share of links up", "share of links up", |s, k| s.links_up.get(k).copied(), Some(1.05))
}

fn backlog(r: &Report, path: &Path) -> Res {
    by_kind(
        r,
        path,
        "writes not yet at the hub",
        "writes",
        |s, k| Some(s.backlog.get(k).copied().unwrap_or(0) as f64),
        None,
    )
}
