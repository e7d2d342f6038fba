//! `report.html`: one self-contained page (inline CSS and hand-written SVG, nothing
//! fetched from the network) with, per scenario, a summary table, latency CDFs and each
//! arm's backend shares over time.

use crate::results::{ArmResult, Overhead, ScenarioResult};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// Colours for arms (CDF lines) and for servers (stacked bars), cycled by index.
const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Latencies below this (including zero and negatives) are drawn at it on the log axis.
const FLOOR_MS: f64 = 0.01;

const STYLE: &str = "body{font-family:system-ui,-apple-system,\"Segoe UI\",Roboto,\
\"Helvetica Neue\",Arial,sans-serif;background:#f7f7f7;color:#222;margin:2em auto;\
max-width:1200px;padding:0 1em}\
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5em 1.5em 1.5em;margin:1.5em 0}\
table{border-collapse:collapse;font-size:14px}\
th,td{padding:4px 10px;border-bottom:1px solid #e5e5e5;text-align:right}\
th:first-child,td:first-child{text-align:left}th{background:#f0f0f0}\
.plots{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}\
figcaption{font-weight:600;font-size:14px}svg{font-size:11px}svg text{fill:#333}\
.legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.3em 1.2em;font-size:14px}\
.swatch{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}\
.marked{font-weight:700}.meta{color:#666}";

/// Renders the whole benchmark report as a standalone HTML page, one `<section>` per
/// scenario. Needs no network access to display: all plots are inline SVG.
pub fn render_html(results: &[ScenarioResult]) -> String {
    let mut out = String::with_capacity(32 * 1024);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<title>Load-balancing benchmark</title>\n<style>");
    out.push_str(STYLE);
    out.push_str("</style>\n</head>\n<body>\n<h1>Load-balancing benchmark</h1>\n");
    if results.is_empty() {
        out.push_str("<p class=\"meta\">No scenarios were run.</p>\n");
    }
    for scenario in results {
        render_scenario(&mut out, scenario);
    }
    out.push_str("</body>\n</html>\n");
    out
}

fn render_scenario(out: &mut String, s: &ScenarioResult) {
    let _ = writeln!(out, "<section>\n<h2>{}</h2>", esc(&s.scenario));
    let _ = writeln!(out, "<p class=\"meta\">seed {}</p>", s.seed);
    if !s.notes.is_empty() {
        out.push_str("<ul>\n");
        for note in &s.notes {
            let _ = writeln!(out, "<li>{}</li>", esc(note));
        }
        out.push_str("</ul>\n");
    }
    if s.arms.is_empty() {
        out.push_str("<p class=\"meta\">No arms.</p>\n</section>\n");
        return;
    }
    summary_table(out, s);
    overhead_table(out, s);
    out.push_str("<h3>Latency</h3>\n<div class=\"plots\">\n");
    latency_plot(out, &s.arms, YScale::Linear);
    latency_plot(out, &s.arms, YScale::Tail(tail_top(&s.arms)));
    out.push_str("</div>\n");
    share_section(out, s);
    out.push_str("</section>\n");
}

fn summary_table(out: &mut String, s: &ScenarioResult) {
    let marked = match &s.marked_backend {
        Some(id) => format!("share of {}", esc(id)),
        None => "marked share".to_owned(),
    };
    out.push_str("<table>\n<tr><th>arm</th><th>calls</th><th>ok %</th><th>errors</th>");
    out.push_str("<th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th>");
    let _ = writeln!(
        out,
        "<th>attempts/call</th><th>rps</th><th>{marked}</th></tr>"
    );
    for arm in &s.arms {
        let l = &arm.latency_ms;
        let errors: Vec<String> = (arm.errors.iter())
            .filter(|&(_, &n)| n > 0)
            .map(|(code, n)| format!("{} {n}", esc(code)))
            .collect();
        let errors = if errors.is_empty() {
            "—".to_owned()
        } else {
            errors.join(", ")
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{errors}</td>",
            esc(&arm.arm),
            arm.calls,
            fixed(ratio(arm.ok, arm.calls) * 100.0, 2),
        );
        for v in [l.p50, l.p90, l.p99, l.p999, l.max] {
            let _ = write!(out, "<td>{}</td>", fmt_ms(v));
        }
        let _ = writeln!(
            out,
            "<td>{}</td><td>{}</td><td>{}</td></tr>",
            fixed(ratio(arm.attempts, arm.calls), 2),
            fixed(arm.throughput_rps, 1),
            marked_share(arm, s.marked_backend.as_deref()),
        );
    }
    out.push_str("</table>\n");
}

/// The `overhead` scenario's comparison with `direct`, when the arms carry it.
fn overhead_table(out: &mut String, s: &ScenarioResult) {
    let rows: Vec<(&str, &Overhead)> = (s.arms.iter())
        .filter_map(|a| Some((a.arm.as_str(), a.overhead.as_ref()?)))
        .collect();
    let Some((_, first)) = rows.first() else {
        return;
    };
    let direct_cpu = (rows.iter())
        .find(|(arm, _)| *arm == "direct")
        .and_then(|(_, o)| o.cpu_us_per_call);
    let opt = |v: Option<f64>, decimals: usize| v.map_or("—".to_owned(), |v| fixed(v, decimals));
    let _ = writeln!(
        out,
        "<h3>Overhead: {} interleaved round{}</h3>\n<p class=\"meta\">Throughput ratio: median \
         over rounds of the arm's calls/s ÷ direct's in the same round. CPU: user + system \
         time of the whole process (client and backend) per call at full concurrency. \
         p50 at concurrency 1 and what the arm adds to direct's.</p>",
        first.rounds,
        if first.rounds == 1 { "" } else { "s" }
    );
    out.push_str("<table>\n<tr><th>arm</th><th>calls/s per round</th><th>ratio to direct</th>");
    out.push_str("<th>CPU µs/call</th><th>CPU ÷ direct</th><th>p50 at c=1 µs</th><th>added p50 µs</th></tr>\n");
    for (arm, o) in &rows {
        let per_round: Vec<String> = o
            .round_throughput_rps
            .iter()
            .map(|r| fixed(*r, 0))
            .collect();
        let cpu_ratio = o.cpu_us_per_call.zip(direct_cpu).map(|(a, d)| a / d);
        let single = (o.single_calls > 0).then_some(o.single_p50_ms * 1000.0);
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(arm),
            per_round.join(", "),
            opt(o.throughput_ratio_to_direct, 3),
            opt(o.cpu_us_per_call, 1),
            opt(cpu_ratio, 3),
            opt(single, 1),
            opt(o.added_p50_us, 1),
        );
    }
    out.push_str("</table>\n");
}

fn marked_share(arm: &ArmResult, marked: Option<&str>) -> String {
    match marked {
        Some(id) if !arm.backend_share.is_empty() => {
            let share = arm.backend_share.get(id).copied().unwrap_or(0.0);
            let pct = fixed(share * 100.0, 1);
            if share.is_finite() {
                format!("{pct} %")
            } else {
                pct
            }
        }
        _ => "—".to_owned(),
    }
}

/// The y axis of a latency plot: the fraction of calls itself, or `-log10(1 - p)` up to
/// the given number of nines.
#[derive(Clone, Copy)]
enum YScale {
    Linear,
    Tail(u32),
}

impl YScale {
    fn top(self) -> f64 {
        match self {
            YScale::Linear => 1.0,
            YScale::Tail(nines) => f64::from(nines),
        }
    }

    fn value(self, p: f64) -> f64 {
        match self {
            YScale::Linear => p.clamp(0.0, 1.0),
            YScale::Tail(nines) => {
                let rest = (1.0 - p).max(10f64.powi(-(nines as i32)));
                (-rest.log10()).clamp(0.0, self.top())
            }
        }
    }

    fn ticks(self) -> Vec<(f64, String)> {
        match self {
            YScale::Linear => (0..=10)
                .map(|i| (f64::from(i) / 10.0, fixed(f64::from(i) / 10.0, 1)))
                .collect(),
            YScale::Tail(nines) => (0..=nines)
                .map(|k| {
                    let pct = 100.0 * (1.0 - 10f64.powi(-(k as i32)));
                    let decimals = k.saturating_sub(2) as usize;
                    (f64::from(k), format!("{pct:.decimals$}%"))
                })
                .collect(),
        }
    }

    fn title(self) -> &'static str {
        match self {
            YScale::Linear => "Latency CDF",
            YScale::Tail(_) => "Tail: fraction of calls on a log(1 − p) scale",
        }
    }
}

/// The number of nines the tail plot shows: enough for the data, between 3 and 6.
fn tail_top(arms: &[ArmResult]) -> u32 {
    let deepest = (arms.iter().flat_map(|a| a.cdf.iter()))
        .filter(|&&(_, p)| p.is_finite() && p < 1.0)
        .map(|&(_, p)| -(1.0 - p).log10())
        .fold(0.0_f64, f64::max);
    (deepest.ceil() as u32).clamp(3, 6)
}

/// The decades `(lo, hi)` of the latency axis, from the data; 1 ms to 1 s without data.
fn decade_range(arms: &[ArmResult]) -> (i32, i32) {
    let logs = (arms.iter().flat_map(|a| a.cdf.iter()))
        .filter(|(ms, _)| ms.is_finite())
        .map(|&(ms, _)| ms.max(FLOOR_MS).log10());
    let (lo, hi) = logs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), l| {
        (lo.min(l), hi.max(l))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0, 3);
    }
    let lo = lo.floor() as i32;
    (lo, (hi.ceil() as i32).max(lo + 1))
}

/// A plot area in SVG pixels: left, right, top, bottom.
#[derive(Clone, Copy)]
struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Frame {
    /// The x pixel of `t` in 0..=1 along the plot area.
    fn x(&self, t: f64) -> f64 {
        self.x0 + t.clamp(0.0, 1.0) * (self.x1 - self.x0)
    }

    /// The y pixel of `t` in 0..=1 up the plot area.
    fn y(&self, t: f64) -> f64 {
        self.y1 - t.clamp(0.0, 1.0) * (self.y1 - self.y0)
    }

    /// The plot area's border and the axis titles.
    fn finish(&self, out: &mut String, x_label: &str, y_label: &str) {
        let (w, h) = (self.x1 - self.x0, self.y1 - self.y0);
        let (x0, y0, cy) = (self.x0, self.y0, (self.y0 + self.y1) / 2.0);
        let _ = writeln!(
            out,
            "<rect x=\"{x0}\" y=\"{y0}\" width=\"{w}\" height=\"{h}\" fill=\"none\" stroke=\"#888\"/>"
        );
        text(out, (x0 + self.x1) / 2.0, self.y1 + 32.0, "middle", x_label);
        let _ = writeln!(
            out,
            "<text transform=\"translate(14,{cy:.1}) rotate(-90)\" text-anchor=\"middle\">{y_label}</text>"
        );
        out.push_str("</svg>\n");
    }
}

fn latency_plot(out: &mut String, arms: &[ArmResult], scale: YScale) {
    let f = Frame {
        x0: 64.0,
        x1: 450.0,
        y0: 30.0,
        y1: 294.0,
    };
    let (lo, hi) = decade_range(arms);
    let span = f64::from(hi - lo);
    let fx = |ms: f64| f.x((ms.max(FLOOR_MS).log10() - f64::from(lo)) / span);
    let fy = |p: f64| f.y(scale.value(p) / scale.top());
    svg_open(out, 600.0, 340.0);
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"18\" font-weight=\"600\">{}</text>",
        f.x0,
        scale.title()
    );
    for k in lo..=hi {
        let decade = 10f64.powi(k);
        line(
            out,
            (fx(decade), f.y0),
            (fx(decade), f.y1),
            "stroke=\"#ccc\"",
        );
        text(out, fx(decade), f.y1 + 14.0, "middle", &decade_label(k));
        for m in (2..10).filter(|_| k < hi) {
            let x = fx(decade * f64::from(m));
            line(out, (x, f.y0), (x, f.y1), "stroke=\"#eee\"");
        }
    }
    for (v, label) in scale.ticks() {
        let y = f.y(v / scale.top());
        line(out, (f.x0, y), (f.x1, y), "stroke=\"#ddd\"");
        text(out, f.x0 - 4.0, y + 4.0, "end", &label);
    }
    for (i, arm) in arms.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let name = esc(&arm.arm);
        let points: Vec<String> = (arm.cdf.iter())
            .filter(|(ms, p)| ms.is_finite() && p.is_finite())
            .map(|&(ms, p)| format!("{:.1},{:.1}", fx(ms), fy(p)))
            .collect();
        if !points.is_empty() {
            let _ = writeln!(
                out,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.8\" points=\"{}\">\
                 <title>{name}</title></polyline>",
                points.join(" "),
            );
        }
        let y = f.y0 + 8.0 + 18.0 * i as f64;
        let style = format!("stroke=\"{colour}\" stroke-width=\"3\"");
        line(out, (f.x1 + 10.0, y), (f.x1 + 28.0, y), &style);
        text(out, f.x1 + 32.0, y + 4.0, "start", &name);
    }
    f.finish(out, "latency (ms, log scale)", "fraction of calls");
}

/// `10^k` as a tick label: `0.01`, `0.1`, `1`, `10`, `1000`.
fn decade_label(k: i32) -> String {
    let decimals = k.min(0).unsigned_abs() as usize;
    format!("{:.decimals$}", 10f64.powi(k))
}

fn share_section(out: &mut String, s: &ScenarioResult) {
    let servers = server_ids(s);
    let marked = s.marked_backend.as_deref();
    out.push_str("<h3>Share of OK calls per backend over time</h3>\n<ul class=\"legend\">\n");
    for id in &servers {
        let is_marked = Some(id.as_str()) == marked;
        let _ = writeln!(
            out,
            "<li{}><span class=\"swatch\" style=\"background:{}\"></span>{}{}</li>",
            if is_marked { " class=\"marked\"" } else { "" },
            server_colour(&servers, id),
            esc(id),
            if is_marked { " (marked)" } else { "" },
        );
    }
    out.push_str("</ul>\n<div class=\"plots\">\n");
    for arm in &s.arms {
        let _ = writeln!(out, "<figure><figcaption>{}</figcaption>", esc(&arm.arm));
        share_chart(out, &arm.share_over_time, &servers, marked);
        out.push_str("</figure>\n");
    }
    out.push_str("</div>\n");
}

/// Every server id the scenario mentions, sorted: the index gives its colour.
fn server_ids(s: &ScenarioResult) -> Vec<String> {
    let mut ids = BTreeSet::new();
    for arm in &s.arms {
        ids.extend(arm.backend_share.keys());
        ids.extend(arm.share_over_time.iter().flat_map(|slice| slice.keys()));
    }
    ids.extend(&s.marked_backend);
    ids.into_iter().cloned().collect()
}

fn server_colour(servers: &[String], id: &str) -> &'static str {
    match servers.binary_search_by(|s| s.as_str().cmp(id)) {
        Ok(i) => PALETTE[i % PALETTE.len()],
        Err(_) => "#999",
    }
}

/// One bar per slice, stacked by backend and normalised to the slice's OK calls.
fn share_chart(
    out: &mut String,
    slices: &[BTreeMap<String, u64>],
    servers: &[String],
    marked: Option<&str>,
) {
    let f = Frame {
        x0: 50.0,
        x1: 350.0,
        y0: 10.0,
        y1: 140.0,
    };
    svg_open(out, 360.0, 180.0);
    for (v, label) in [(0.0, "0%"), (0.5, "50%"), (1.0, "100%")] {
        text(out, f.x0 - 4.0, f.y(v) + 4.0, "end", label);
    }
    let slot = (f.x1 - f.x0) / slices.len().max(1) as f64;
    for (i, slice) in slices.iter().enumerate() {
        let total: f64 = slice.values().map(|&n| n as f64).sum();
        let x = f.x0 + slot * (i as f64 + 0.075);
        let mut acc = 0.0;
        // The marked backend sits at the bottom of every bar, so its share is easy to follow.
        let is_marked = |id: &String| Some(id.as_str()) == marked;
        let ordered = (slice.iter().filter(|(id, _)| is_marked(id)))
            .chain(slice.iter().filter(|(id, _)| !is_marked(id)));
        for (id, &n) in ordered.filter(|&(_, &n)| n > 0) {
            let frac = n as f64 / total;
            let (top, bottom) = (f.y(acc + frac), f.y(acc));
            acc += frac;
            let stroke = if is_marked(id) {
                "#000\" stroke-width=\"1.2"
            } else {
                "#fff\" stroke-width=\"0.3"
            };
            let _ = writeln!(
                out,
                "<rect x=\"{x:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" stroke=\"{stroke}\">\
                 <title>{}: {} % ({n} calls)</title></rect>",
                slot * 0.85,
                bottom - top,
                server_colour(servers, id),
                esc(id),
                fixed(frac * 100.0, 1),
            );
        }
    }
    if slices.iter().all(|slice| slice.values().all(|&n| n == 0)) {
        text(
            out,
            (f.x0 + f.x1) / 2.0,
            (f.y0 + f.y1) / 2.0,
            "middle",
            "no share data",
        );
    }
    f.finish(out, "time →", "share of OK calls");
}

fn svg_open(out: &mut String, w: f64, h: f64) {
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\
         <rect width=\"{w}\" height=\"{h}\" fill=\"#fff\"/>"
    );
}

/// A line from `a` to `b`; `style` holds its stroke attributes.
fn line(out: &mut String, a: (f64, f64), b: (f64, f64), style: &str) {
    let ((x1, y1), (x2, y2)) = (a, b);
    let _ = writeln!(
        out,
        "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" {style}/>"
    );
}

/// A text label; `body` must already be escaped.
fn text(out: &mut String, x: f64, y: f64, anchor: &str, body: &str) {
    let _ = writeln!(
        out,
        "<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"{anchor}\">{body}</text>"
    );
}

/// `a / b`, NaN when `b` is zero (and so printed as "—").
fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        f64::NAN
    } else {
        a as f64 / b as f64
    }
}

/// `v` with `decimals` decimals, or "—" when it is NaN or infinite.
fn fixed(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        // `+ 0.0` turns -0.0 into 0.0.
        format!("{:.decimals$}", v + 0.0)
    } else {
        "—".to_owned()
    }
}

/// Milliseconds: more decimals for small values, so sub-millisecond latencies stay legible.
fn fmt_ms(v: f64) -> String {
    let a = v.abs();
    fixed(
        v,
        if a < 1.0 {
            3
        } else if a < 10.0 {
            2
        } else {
            1
        },
    )
}

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::Percentiles;

    fn arm(name: &str, slices: Vec<BTreeMap<String, u64>>) -> ArmResult {
        ArmResult {
            arm: name.to_owned(),
            calls: 100,
            ok: 98,
            errors: BTreeMap::from([("UNAVAILABLE".to_owned(), 2)]),
            attempts: 103,
            throughput_rps: 1234.5,
            latency_ms: Percentiles {
                p50: 1.2,
                p90: 4.0,
                p99: 20.0,
                p999: 80.0,
                max: 120.0,
            },
            backend_share: BTreeMap::from([("a<b".to_owned(), 0.25), ("s1".to_owned(), 0.75)]),
            overhead: None,
            subsetting: None,
            cdf: vec![
                (0.0, 0.1),
                (1.2, 0.5),
                (4.0, 0.9),
                (20.0, 0.99),
                (120.0, 1.0),
            ],
            share_over_time: slices,
        }
    }

    fn scenario() -> ScenarioResult {
        let slice = |a: u64, b: u64| BTreeMap::from([("a<b".to_owned(), a), ("s1".to_owned(), b)]);
        ScenarioResult {
            scenario: "one-slow".to_owned(),
            seed: 42,
            arms: vec![
                arm(
                    "round_robin",
                    vec![slice(10, 30), BTreeMap::new(), slice(5, 5)],
                ),
                arm(
                    "p2c \"ewma\"",
                    vec![slice(1, 30), slice(0, 0), slice(2, 40)],
                ),
            ],
            notes: vec!["slow backend <a<b> & friends".to_owned()],
            marked_backend: Some("a<b".to_owned()),
        }
    }

    #[test]
    fn renders_a_scenario() {
        let html = render_html(&[scenario()]);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.trim_end().ends_with("</html>"));
        // Two latency plots plus one share chart per arm.
        assert_eq!(html.matches("<svg").count(), 4);
        assert_eq!(html.matches("<polyline").count(), 4);
        assert!(html.contains("a&lt;b"));
        assert!(!html.contains("a<b"));
        assert!(html.contains("p2c &quot;ewma&quot;"));
        assert!(html.contains("25.0 %"));
        assert!(html.contains("latency (ms, log scale)"));
        assert!(html.contains("fraction of calls"));
        assert!(html.contains("share of OK calls"));
    }

    #[test]
    fn renders_the_overhead_comparison() {
        let mut s = scenario();
        assert!(!render_html(&[s.clone()]).contains("Overhead"));
        let overhead = |ratio: Option<f64>, cpu: f64, added: Option<f64>| Overhead {
            rounds: 2,
            round_throughput_rps: vec![30_000.0, 31_000.0],
            throughput_ratio_to_direct: ratio,
            cpu_us_per_call: Some(cpu),
            single_calls: 100,
            single_p50_ms: 0.125,
            added_p50_us: added,
        };
        s.arms[0].arm = "direct".to_owned();
        s.arms[0].overhead = Some(overhead(Some(1.0), 6.0, Some(0.0)));
        s.arms[1].overhead = Some(overhead(Some(0.9), 7.5, Some(12.5)));
        let html = render_html(&[s.clone()]);
        assert!(html.contains("Overhead: 2 interleaved rounds"));
        assert!(html.contains("30000, 31000"));
        assert!(
            html.contains("<td>0.900</td><td>7.5</td><td>1.250</td><td>125.0</td><td>12.5</td>")
        );
        // Without direct: no ratios, shown as dashes.
        s.arms.remove(0);
        s.arms[0].overhead = Some(overhead(None, 7.5, None));
        let html = render_html(&[s]);
        assert!(html.contains("<td>—</td><td>7.5</td><td>—</td><td>125.0</td><td>—</td>"));
    }

    #[test]
    fn fetches_nothing() {
        let html = render_html(&[scenario()]);
        let rest = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        assert!(!rest.contains("http://") && !rest.contains("https://"));
        assert!(!rest.contains("src=") && !rest.contains("href=") && !rest.contains("url("));
    }

    #[test]
    fn renders_empty_and_degenerate_input() {
        let html = render_html(&[]);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(!html.contains("<svg"));

        let mut s = scenario();
        s.marked_backend = None;
        s.notes.clear();
        for a in &mut s.arms {
            a.cdf.clear();
            a.share_over_time.clear();
            a.calls = 0;
            a.throughput_rps = f64::NAN;
            a.latency_ms.max = f64::INFINITY;
        }
        s.arms[0].cdf = vec![(f64::NAN, 0.5), (-3.0, 1.0)];
        let empty_arms = ScenarioResult {
            arms: Vec::new(),
            ..scenario()
        };
        let html = render_html(&[s, empty_arms]);
        assert_eq!(html.matches("<svg").count(), 4);
        assert!(html.contains("no share data"));
        assert!(!html.contains("NaN") && !html.contains("inf"));
    }

    #[test]
    fn formats_numbers_and_ticks() {
        assert_eq!(decade_label(-2), "0.01");
        assert_eq!(decade_label(0), "1");
        assert_eq!(decade_label(3), "1000");
        assert_eq!(fmt_ms(0.0123), "0.012");
        assert_eq!(fmt_ms(123.45), "123.5");
        assert_eq!(fixed(f64::NAN, 1), "—");
        let labels: Vec<String> = YScale::Tail(3)
            .ticks()
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%"]);
    }
}
