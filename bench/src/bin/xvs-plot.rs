//! Draws the benchmark's plots (PNG) from the files `bench/e2e/run.py` and
//! `bench/e2e/latency.py` write:
//!
//! - `--e2e FILE`: lines `path,mpps,min,max,proc_ns` → packets per second per path, the median
//!   as a bar and the min–max of the runs as a whisker;
//! - `--latency FILE`: lines `path,rtt_us` (one per round trip) → the distribution of round-trip
//!   times per path, as a cumulative distribution;
//! - `--goodput FILE`: lines `label,gbit_s,min,max` (`bench/e2e/goodput.py`) → iperf3 goodput
//!   per path and cell, drawn as the packet rates are.
//!
//! Text is drawn with a TrueType font read at run time (DejaVu Sans, Debian's
//! `fonts-dejavu-core`; `--font` to use another).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use plotters::prelude::*;

#[derive(Debug, Parser)]
struct Args {
    /// End-to-end results (CSV: path,mpps,min,max,proc_ns).
    #[arg(long)]
    e2e: Option<PathBuf>,
    /// Round-trip samples (CSV: path,rtt_us).
    #[arg(long)]
    latency: Option<PathBuf>,
    /// Goodput results (CSV: label,gbit_s,min,max).
    #[arg(long)]
    goodput: Option<PathBuf>,
    /// Directory for the PNG files.
    #[arg(long, default_value = "docs/img")]
    out: PathBuf,
    /// TrueType font for the text.
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// One path of the end-to-end table.
struct Rate {
    path: String,
    mpps: f64,
    min: f64,
    max: f64,
}

fn parse_e2e(text: &str) -> Res<Vec<Rate>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 4 {
            return Err(format!("line {}: expected path,mpps,min,max,...", i + 1).into());
        }
        let num = |s: &str| -> Res<f64> {
            s.trim()
                .parse()
                .map_err(|e| format!("line {}: {s:?}: {e}", i + 1).into())
        };
        out.push(Rate {
            path: f[0].to_string(),
            mpps: num(f[1])?,
            min: num(f[2])?,
            max: num(f[3])?,
        });
    }
    Ok(out)
}

fn parse_latency(text: &str) -> Res<BTreeMap<String, Vec<f64>>> {
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let (path, v) = line
            .rsplit_once(',')
            .ok_or_else(|| format!("line {}: expected path,rtt_us", i + 1))?;
        let v: f64 = v
            .trim()
            .parse()
            .map_err(|e| format!("line {}: {e}", i + 1))?;
        out.entry(path.to_string()).or_default().push(v);
    }
    for v in out.values_mut() {
        v.sort_by(f64::total_cmp);
    }
    Ok(out)
}

fn plot_rates(rates: &[Rate], file: &Path, caption: &str, unit: &str) -> Res<()> {
    let root = BitMapBackend::new(file, (900, 60 + 40 * rates.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = rates.iter().map(|r| r.max).fold(0.0, f64::max) * 1.1;
    let n = rates.len() as i32;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(230)
        .build_cartesian_2d(0.0..top.max(0.01), (0..n - 1).into_segmented())?;
    let names: Vec<String> = rates.iter().map(|r| r.path.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(unit)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names
                .get((n - 1 - *i) as usize)
                .cloned()
                .unwrap_or_default(),
            _ => String::new(),
        })
        .y_labels(rates.len())
        .draw()?;
    // The first path at the top.
    let row = |i: usize| n - 1 - i as i32;
    chart.draw_series(rates.iter().enumerate().map(|(i, r)| {
        let color = if r.path.starts_with("xvs") {
            BLUE.mix(0.7)
        } else if r.path.starts_with("kernel") {
            RED.mix(0.6)
        } else {
            BLACK.mix(0.4)
        };
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(row(i))),
                (r.mpps, SegmentValue::Exact(row(i) + 1)),
            ],
            color.filled(),
        );
        bar.set_margin(5, 5, 0, 0);
        bar
    }))?;
    chart.draw_series(rates.iter().enumerate().map(|(i, r)| {
        PathElement::new(
            vec![
                (r.min, SegmentValue::CenterOf(row(i))),
                (r.max, SegmentValue::CenterOf(row(i))),
            ],
            BLACK.stroke_width(2),
        )
    }))?;
    root.present()?;
    Ok(())
}

fn plot_latency(samples: &BTreeMap<String, Vec<f64>>, file: &Path) -> Res<()> {
    let root = BitMapBackend::new(file, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    // Up to the 99.9th percentile of the slowest path: the far tail would flatten the rest.
    let hi = samples
        .values()
        .filter(|v| !v.is_empty())
        .map(|v| v[((v.len() - 1) as f64 * 0.999) as usize])
        .fold(0.0, f64::max)
        * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Round-trip time, cumulative distribution (to the 99.9th percentile)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..hi.max(1.0), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("round trip, µs")
        .y_desc("fraction of round trips")
        .draw()?;
    for (i, (path, v)) in samples.iter().enumerate() {
        const COLORS: [RGBColor; 5] = [
            RGBColor(200, 30, 30),
            RGBColor(30, 80, 200),
            RGBColor(20, 140, 40),
            RGBColor(150, 40, 160),
            RGBColor(0, 0, 0),
        ];
        let color = COLORS[i % COLORS.len()];
        let n = v.len() as f64;
        let pts = v
            .iter()
            .enumerate()
            .filter(|(_, &x)| x <= hi)
            .map(|(k, &x)| (x, (k + 1) as f64 / n));
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(path.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
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

fn run(a: &Args) -> Res<()> {
    let font = std::fs::read(&a.font).map_err(|e| {
        format!(
            "{}: {e} (install Debian's fonts-dejavu-core or pass --font)",
            a.font.display()
        )
    })?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, font.leak())
        .map_err(|_| format!("{}: not a TrueType font", a.font.display()))?;
    std::fs::create_dir_all(&a.out)?;
    let bars = [
        (
            &a.e2e,
            "e2e-mpps.png",
            "Packets per second at the receiver (median, min–max)",
            "Mpps",
        ),
        (
            &a.goodput,
            "goodput.png",
            "iperf3 goodput through the balancer (median, min–max)",
            "Gbit/s",
        ),
    ];
    for (file, png, caption, unit) in bars {
        let Some(f) = file else { continue };
        let rates = parse_e2e(&std::fs::read_to_string(f)?)?;
        if rates.is_empty() {
            return Err(format!("{}: no results", f.display()).into());
        }
        let out = a.out.join(png);
        plot_rates(&rates, &out, caption, unit)?;
        println!("{}", out.display());
    }
    if let Some(f) = &a.latency {
        let samples = parse_latency(&std::fs::read_to_string(f)?)?;
        if samples.is_empty() {
            return Err(format!("{}: no samples", f.display()).into());
        }
        let out = a.out.join("latency-cdf.png");
        plot_latency(&samples, &out)?;
        println!("{}", out.display());
    }
    Ok(())
}

fn main() {
    let a = Args::parse();
    if a.e2e.is_none() && a.latency.is_none() && a.goodput.is_none() {
        eprintln!("xvs-plot: nothing to draw (--e2e, --latency and/or --goodput FILE)");
        std::process::exit(2);
    }
    if let Err(e) = run(&a) {
        eprintln!("xvs-plot: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_parse_and_bad_lines_are_errors() {
        let r = parse_e2e("bare,0.4,0.3,0.5,2600\nxvs-dr-est,0.38,0.3,0.41,3000\n").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].path, "xvs-dr-est");
        assert!((r[1].max - 0.41).abs() < 1e-9);
        assert!(parse_e2e("bare,0.4\n").is_err());
        assert!(parse_e2e("bare,x,0.3,0.5,1\n").is_err());
        let l = parse_latency("a,3.5\nb,1\na,2.5\n").unwrap();
        assert_eq!(l["a"], vec![2.5, 3.5]);
        assert!(parse_latency("a;3\n").is_err());
    }
}
