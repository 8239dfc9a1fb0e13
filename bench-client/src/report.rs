//! What a run reports: a table on stdout, a JSON result file and an SVG plot of the
//! latency percentiles (HdrHistogram), all under `results/`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;

use crate::broker::CommandUse;

/// Latency percentiles in microseconds.
#[derive(Debug, Serialize, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub samples: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
            samples: h.len(),
        }
    }
}

/// One run's result, as written to JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    pub label: String,
    pub scenario: String,
    pub proto: String,
    /// Whether the connections spoke TLS (`--tls-ca`).
    pub tls: bool,
    pub command: String,
    pub clients: usize,
    pub rooms: usize,
    pub publishers: usize,
    pub target_rate: f64,
    pub payload: usize,
    pub seconds: f64,
    pub connected: u64,
    pub connect_errors: u64,
    pub sent: u64,
    /// Every message written, warm-up and drain included (`sent` counts only those
    /// stamped inside the window): what a broker in front of the servers carried.
    pub published: u64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    pub messages_per_sec: f64,
    /// Deliveries that arrived inside the window (by arrival time): achieved throughput.
    pub arrived: u64,
    pub throughput_per_sec: f64,
    pub loss: u64,
    pub loss_ratio: f64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub errors: u64,
    pub close_codes: HashMap<String, u64>,
    /// Connect scenario: connections per second over the storm.
    pub connections_per_sec: f64,
    /// Handshake (connect) or end-to-end (others) latency.
    pub latency_us: Percentiles,
    /// Server CPU seconds over the window (connect: over the storm), from the
    /// process's CPU-time clock (with --server-pid; see [`cpu_seconds`]).
    pub server_cpu_seconds: Option<f64>,
    /// Server CPU seconds per second of window (1.0 = one core saturated).
    pub server_cpu_share: Option<f64>,
    /// Server CPU over the window divided by the deliveries that arrived in it.
    pub server_cpu_ns_per_delivery: Option<f64>,
    /// Connect scenario: server CPU over the storm divided by the connections made
    /// (TCP accept, TLS handshake if any, WebSocket upgrade, `welcome`).
    pub server_cpu_ns_per_connection: Option<f64>,
    /// Server RSS growth per connection (idle scenario, with --server-pid).
    pub server_rss_bytes_per_connection: Option<f64>,
    pub server_rss_bytes: Option<u64>,
    /// Generator CPU seconds over the window, to tell when the generator is the limit.
    pub generator_cpu_seconds: f64,
    pub generator_threads: usize,
    /// Generator CPU over the window (connect: over the storm) per generator thread;
    /// near 1.0 the generator, not the server, limits the run.
    pub generator_cpu_share: Option<f64>,
    /// TCP data segments the server sent to the generator's sockets over the window,
    /// per 1 000 deliveries that arrived in it (their `TCP_INFO`): 1 000 ÷ this is how
    /// many deliveries a packet carried.
    pub server_packets_per_1000_deliveries: Option<f64>,
    /// `--stall-every`: the stalls injected into the server through the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub injected_stalls: Option<crate::stall::Stalls>,
    /// `--window`: messages each sender kept in flight (closed loop; `target_rate` is
    /// then 0). `None`: open loop at `target_rate`.
    pub window: Option<usize>,
    /// `[percentile, latency µs]` from p0 to p99.999 at ten points per "nine" (0, 20.6,
    /// 36.9, …, 90, …, 99, …, 99.9, …), the HdrHistogram percentile curve `scripts/bench`
    /// plots; `latency_us.max` is the end of the curve.
    pub latency_percentiles_us: Vec<[f64; 2]>,
    /// The window's deliveries by when they were sent, per 100 ms: how many, how many
    /// took over 10 ms, and the slowest (µs). Late deliveries in a few bins are stalls;
    /// spread over all of them, a queue.
    pub late_by_100ms: crate::scenario::Series,
    /// When the run ended, in seconds since the Unix epoch (the date on the charts).
    pub finished_unix: u64,
    /// What the window's messages cost the broker between the nodes (`--broker`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker: Option<BrokerUse>,
}

/// The broker's work over the measured window, per message sent in it.
#[derive(Debug, Serialize)]
pub struct BrokerUse {
    /// Calls and µs inside the broker, by command (the generator's INFO excluded).
    pub commands: BTreeMap<String, CommandUse>,
    /// PUBLISH calls per message.
    pub publish_per_message: f64,
    /// Calls of every command per message.
    pub commands_per_message: f64,
    /// The broker process's CPU seconds over the window (`--broker-pid`).
    pub cpu_seconds: Option<f64>,
    pub cpu_us_per_message: Option<f64>,
}

impl BrokerUse {
    pub fn of(commands: BTreeMap<String, CommandUse>, cpu_seconds: Option<f64>, sent: u64) -> Self {
        let per = |n: f64| if sent == 0 { 0.0 } else { n / sent as f64 };
        let calls = |name: &str| commands.get(name).map_or(0, |c| c.calls);
        Self {
            publish_per_message: per(calls("publish") as f64),
            commands_per_message: per(commands.values().map(|c| c.calls).sum::<u64>() as f64),
            cpu_us_per_message: cpu_seconds.filter(|_| sent > 0).map(|s| per(s * 1e6)),
            cpu_seconds,
            commands,
        }
    }
}

/// A generator thread busier than this in the window is the bottleneck of the run.
pub const GENERATOR_BOUND: f64 = 0.9;

impl Report {
    pub fn print(&self) {
        let tls = if self.tls { " over TLS" } else { "" };
        println!(
            "\n{} {} ({}{tls}) — {:.1}s",
            self.label, self.scenario, self.proto, self.seconds
        );
        println!(
            "  clients {} (connected {}, errors {}), rooms {}, publishers {}",
            self.clients, self.connected, self.connect_errors, self.rooms, self.publishers
        );
        println!(
            "  sent {}  deliveries {} / {} expected  ({:.0} msg/s, {:.0} deliveries/s)",
            self.sent,
            self.deliveries,
            self.expected_deliveries,
            self.messages_per_sec,
            self.deliveries_per_sec
        );
        println!(
            "  loss {} ({:.4}%), duplicates {}, out-of-order {}, errors {}, closes {:?}",
            self.loss,
            self.loss_ratio * 100.0,
            self.duplicates,
            self.out_of_order,
            self.errors,
            self.close_codes
        );
        let l = &self.latency_us;
        println!(
            "  latency µs: p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  ({} samples)",
            l.p50, l.p90, l.p99, l.p999, l.max, l.samples
        );
        let bins = &self.late_by_100ms.0;
        let late: u64 = bins.iter().map(|b| b.late).sum();
        if late > 0 {
            let with = bins.iter().filter(|b| b.late > 0).count();
            let worst = bins.iter().map(|b| b.late).max().unwrap_or(0);
            println!(
                "  latency over {} ms: {late} deliveries, sent in {with} of {} {}-ms bins \
                 (at most {worst} in one)",
                crate::scenario::LATE_NS / 1_000_000,
                bins.len(),
                crate::scenario::SERIES_BIN_NS / 1_000_000,
            );
        }
        if self.connections_per_sec > 0.0 {
            println!("  connections/s {:.0}", self.connections_per_sec);
        }
        if self.arrived > 0 {
            println!(
                "  throughput {:.0} deliveries/s arrived in the window",
                self.throughput_per_sec
            );
        }
        if let Some(cpu) = self.server_cpu_ns_per_delivery {
            let share = self.server_cpu_share.unwrap_or(0.0) * 100.0;
            println!("  server CPU {cpu:.0} ns per delivery ({share:.0}% of a core)");
        }
        if let Some(cpu) = self.server_cpu_ns_per_connection {
            let share = self.server_cpu_share.unwrap_or(0.0) * 100.0;
            println!(
                "  server CPU {:.1} µs per connection ({share:.0}% of a core)",
                cpu / 1000.0
            );
        }
        if let Some(b) = self.server_rss_bytes_per_connection {
            println!("  server RSS {:.0} bytes per connection", b);
        }
        if let Some(b) = &self.broker {
            let cpu = b
                .cpu_us_per_message
                .map_or(String::new(), |us| format!(", {us:.1} µs of its CPU"));
            println!(
                "  broker per message: {:.2} PUBLISH, {:.2} commands{cpu}",
                b.publish_per_message, b.commands_per_message
            );
        }
        println!(
            "  generator CPU {:.2}s over {} threads",
            self.generator_cpu_seconds, self.generator_threads
        );
        if let Some(p) = self.server_packets_per_1000_deliveries.filter(|p| *p > 0.0) {
            println!(
                "  server packets: {p:.1} per 1000 deliveries ({:.1} deliveries per packet)",
                1000.0 / p
            );
        }
        if let Some(st) = self.injected_stalls {
            println!(
                "  injected stalls: {} of {:.0} ms (server stopped), one every {:.1} s",
                st.count, st.length_ms, st.every_s
            );
        }
        if let Some(w) = self.window {
            println!("  closed loop: {w} messages in flight per sender (--rate ignored)");
        }
        if let Some(share) = self.generator_cpu_share {
            let bound = if share >= GENERATOR_BOUND {
                " — GENERATOR-BOUND: the server was not the limit"
            } else {
                ""
            };
            println!(
                "  generator CPU {:.0}% per thread in the window{bound}",
                share * 100.0
            );
        }
    }

    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }
}

/// Points of the percentile curve per "nine" of [`Report::latency_percentiles_us`].
const CURVE_STEPS_PER_NINE: u32 = 10;
/// The curve ends at five nines (p99.999).
const CURVE_NINES: u32 = 5;

/// `[percentile, latency µs]` at `CURVE_STEPS_PER_NINE` points per nine, up to
/// p99.999; empty for an empty histogram.
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<[f64; 2]> {
    if h.is_empty() {
        return Vec::new();
    }
    (0..=CURVE_NINES * CURVE_STEPS_PER_NINE)
        .map(|i| {
            let nines = f64::from(i) / f64::from(CURVE_STEPS_PER_NINE);
            let q = 1.0 - 10f64.powf(-nines);
            // Rounded so the JSON reads 99.9, not 99.90000000000001.
            let percentile = (q * 100.0 * 1e6).round() / 1e6;
            [percentile, h.value_at_quantile(q) as f64 / 1000.0]
        })
        .collect()
}

/// Plots latency against percentile (log scale of 1/(1-q)), the usual HdrHistogram view.
pub fn write_svg(
    path: &Path,
    title: &str,
    h: &Histogram<u64>,
) -> Result<(), Box<dyn std::error::Error>> {
    if h.is_empty() {
        return Ok(());
    }
    let points: Vec<(f64, f64)> = (0..=50)
        .map(|i| {
            let nines = i as f64 / 10.0; // 0 .. 5 nines
            let q = 1.0 - 10f64.powf(-nines);
            (nines, h.value_at_quantile(q.min(0.99999)) as f64 / 1000.0)
        })
        .collect();
    let max_y = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..5f64, 0f64..max_y)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_label_formatter(&|x| format!("{:.3}%", (1.0 - 10f64.powf(-x)) * 100.0))
        .draw()?;
    chart.draw_series(LineSeries::new(points, &BLUE))?;
    root.present()?;
    Ok(())
}

/// User+system CPU seconds of a process (`self` for this one), to the nanosecond: the
/// process's CPU-time clock, which counts every thread it has run, ended ones included.
/// `/proc/PID/stat` counts in clock ticks (10 ms here), too coarse for a connection
/// storm, whose whole cost is a few tenths of a second; it is the fallback.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    use nix::time::{ClockId, clock_getcpuclockid};
    let clock = if pid == "self" {
        Some(ClockId::CLOCK_PROCESS_CPUTIME_ID)
    } else {
        let pid = pid.parse().ok().map(nix::unistd::Pid::from_raw)?;
        clock_getcpuclockid(pid).ok()
    };
    match clock.and_then(|c| c.now().ok()) {
        Some(t) => Some(t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9),
        None => ticked_cpu_seconds(pid),
    }
}

fn ticked_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    Some((utime + stime) / ticks as f64)
}

/// CPU seconds summed over `pids` (the nodes of one cluster); `None` without PIDs or
/// when one cannot be read.
pub fn cpu_seconds_of(pids: &[String]) -> Option<f64> {
    sum_over(pids, cpu_seconds)
}

/// RSS summed over `pids`; `None` without PIDs or when one cannot be read.
pub fn rss_bytes_of(pids: &[String]) -> Option<u64> {
    sum_over(pids, rss_bytes)
}

fn sum_over<T: std::iter::Sum<T>>(pids: &[String], of: impl Fn(&str) -> Option<T>) -> Option<T> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|pid| of(pid)).sum()
}

/// Resident set size of a process in bytes.
pub fn rss_bytes(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_finer_than_a_clock_tick_and_counts_ended_threads() {
        // By PID, as the server is read; this process is the one measured.
        let me = std::process::id().to_string();
        let before = cpu_seconds(&me).unwrap();
        std::thread::spawn(|| {
            let start = std::time::Instant::now();
            let mut spins = 0u64;
            while start.elapsed() < std::time::Duration::from_millis(3) {
                spins = std::hint::black_box(spins + 1);
            }
        })
        .join()
        .unwrap();
        let spent = cpu_seconds(&me).unwrap() - before;
        // 3 ms of spinning, in a thread that has ended, is under one clock tick: the
        // ticked count would most often say 0, a sum over live threads would miss it.
        assert!(
            (0.002..0.5).contains(&spent),
            "{spent} s for 3 ms of spinning"
        );
        assert!(cpu_seconds("self").unwrap() >= before + spent);
    }

    #[test]
    fn percentile_curve_runs_from_p0_to_five_nines_and_never_falls() {
        let mut h = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).expect("bounds");
        for us in 1..=100_000u64 {
            h.record(us * 1_000).expect("in range");
        }
        let curve = percentile_curve(&h);
        assert_eq!(curve.len(), 51);
        assert_eq!(curve[0][0], 0.0);
        assert_eq!(curve[10][0], 90.0);
        assert_eq!(curve[20][0], 99.0);
        assert_eq!(curve[30][0], 99.9);
        assert_eq!(curve[50][0], 99.999);
        assert!(
            (curve[20][1] - 99_000.0).abs() < 100.0,
            "p99 {}",
            curve[20][1]
        );
        assert!(curve.windows(2).all(|w| w[0][1] <= w[1][1]));
        assert!(percentile_curve(&Histogram::<u64>::new(3).expect("3 sigfigs")).is_empty());
    }
}
