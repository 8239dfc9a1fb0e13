"""What scripts/bench and scripts/bench-cluster share when they turn stellar-bench's JSON
runs (results/bench/runs/<name>-<label>-<round>.json) into a table of medians."""
import json
import pathlib
import statistics

RUNS_DIR = pathlib.Path("results/bench/runs")
# stellar-bench's GENERATOR_BOUND: a generator thread this busy is the run's limit.
BOUND = 0.9


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, f="{:,.0f}"):
    return "–" if v is None else f.format(v)


def run_paths(name, label, runs, suffix=".json"):
    """The files of the first `runs` rounds of `label` in the session `name`
    (<name>-<label>-<round><suffix>), by round number. Only that label's: `stellar`'s
    rounds are not `stellar-tls`'s."""
    prefix = f"{name}-{label}-"
    rounds = []
    for p in RUNS_DIR.glob(f"{prefix}*{suffix}"):
        tail = p.name[len(prefix):-len(suffix)]
        if tail.isdigit():
            rounds.append((int(tail), p))
    return [p for _, p in sorted(rounds)][:runs]


def load_runs(name, label, runs, suffix=".json"):
    return [json.loads(p.read_text()) for p in run_paths(name, label, runs, suffix)]


def summarize(rs):
    """Medians of what every bench table shows."""
    return {
        "runs": len(rs),
        "connected": med([r["connected"] for r in rs]),
        "connect_errors": med([r["connect_errors"] for r in rs]),
        "deliveries_per_sec": med([r["deliveries_per_sec"] for r in rs]),
        "throughput_per_sec": med([r.get("throughput_per_sec") for r in rs]),
        "p50_us": med([r["latency_us"]["p50"] for r in rs]),
        "p99_us": med([r["latency_us"]["p99"] for r in rs]),
        "p99_range_us": [min(r["latency_us"]["p99"] for r in rs), max(r["latency_us"]["p99"] for r in rs)],
        "loss_ratio": med([r["loss_ratio"] for r in rs]),
        "server_cpu_ns_per_delivery": med([r["server_cpu_ns_per_delivery"] for r in rs]),
        "server_cpu_ns_per_connection": med([r.get("server_cpu_ns_per_connection") for r in rs]),
        "server_rss_bytes_per_connection": med([r["server_rss_bytes_per_connection"] for r in rs]),
        "connections_per_sec": med([r["connections_per_sec"] for r in rs]),
        "generator_cpu_share": med([r.get("generator_cpu_share") for r in rs]),
        # 100-ms bins of send time holding a delivery over 10 ms, and how many bins
        # (runs from before the series was recorded have none).
        "late_bins": med([late_bins(r) for r in rs]),
        "bins": med([len(r["late_by_100ms"]) if "late_by_100ms" in r else None for r in rs]),
        "server_packets_per_1000_deliveries": med([r.get("server_packets_per_1000_deliveries") for r in rs]),
    }


def late_bins(run):
    bins = run.get("late_by_100ms")
    return None if bins is None else sum(1 for b in bins if b["late"] > 0)


def late_cell(r):
    """`late of bins`, or – where the scenario has no latency series (connect, idle)."""
    if not r.get("bins"):
        return "–"
    return f"{fmt(r['late_bins'])} of {fmt(r['bins'])}"


def generator_cell(share):
    return fmt(share, "{:.0%}") + (" **generator-bound**" if share is not None and share >= BOUND else "")
