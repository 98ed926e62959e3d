"""The prediction log's cost: aiprod serve at 32 clients with `--log-dir` (and `--log-inputs`) against the same server without.

One bundle (the CNN on MNIST of bench/serving.py, made with the real CLI; its bundle carries a drift reference, so every
server below also keeps the drift gauges of /metrics) is served three times on loopback, each a process of its own:
without a log, with `--log-dir`, and with `--log-dir --log-inputs`. wrk, a process of its own, loads each in turn with
32 clients sending one real MNIST test digit (base64 PNG) per request, for `--seconds` after a warm-up; the servers
take turns round after round (`--rounds`), each going first in turn, so all meet the same machine load. A machine
shared with others drifts by more than the 5% to be measured from one round to the next, so each server's rate is
divided by the no-log server's in the same round, and the table shows the median of these paired ratios (and their
range) beside the median requests/s, p50, p99, and the lines each server logged and dropped. A second server without
a log is the control: its ratio is the noise. The issue's goal: with the log, at least 0.95x the throughput without.

    .venv/bin/python bench/prediction_log.py [--seconds 10] [--rounds 3] [--keep DIR]

Needs wrk (apt-get install wrk). Named data sets come from AIPROD_DATA_DIR (../shared/data when unset and present).
"""
import argparse, os, shutil, statistics, sys, tempfile
from pathlib import Path

from serving import SERVERS, SHARED_DATA, bodies_file, bundle, http, median_row, point, server

GOAL = 0.95  # logging on: at least this share of the throughput with logging off, at 32 clients
CONFIGS = {"no log": (), "--log-dir": ("--log-dir", "{log}"), "--log-dir --log-inputs": ("--log-dir", "{log}", "--log-inputs"),
           "no log, a second server": ()}  # the control: how far two identical servers differ on this machine


def counter(url: str, name: str) -> float:
    "A counter's value in the server's /metrics (0 when absent)."
    return sum(float(line.split()[-1]) for line in http(f"{url}/metrics").decode().splitlines() if line.startswith(name + " "))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=6, help="seconds of load per point, after a warm-up of a third of it")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of every point, taking turns; medians are shown")
    parser.add_argument("--keep", type=Path, help="make the run and bundle in this folder and keep them (reused when there)")
    args = parser.parse_args()
    if not shutil.which("wrk"): sys.exit("wrk is not installed: it is this bench's load generator (apt-get install -y wrk)")
    if "AIPROD_DATA_DIR" not in os.environ and SHARED_DATA.is_dir(): os.environ["AIPROD_DATA_DIR"] = str(SHARED_DATA)
    with tempfile.TemporaryDirectory(prefix="aiprod-bench-log-") as folder:
        work = Path(folder)
        path, (_, bodies) = bundle("cnn", args.keep or work), bodies_file("cnn", work)
        first, warmup, rows, logged = bodies.read_text().splitlines()[0], max(1, args.seconds // 3), {}, {}
        options = {name: tuple(o.format(log=work / f"log-{i}") for o in opts) for i, (name, opts) in enumerate(CONFIGS.items())}
        servers = [server(SERVERS[0], path, work / f"server-{i}.log", first, opts) for i, opts in enumerate(options.values())]
        urls = [s.__enter__()[1] for s in servers]
        try:
            for round_ in range(args.rounds):
                turn = round_ % len(urls)
                for name, url in list(zip(CONFIGS, urls))[turn:] + list(zip(CONFIGS, urls))[:turn]:
                    rows.setdefault(name, []).append(point(SERVERS[0], url, 32, args.seconds, warmup, bodies))
                    print(f"{name}: {rows[name][-1]['rate']:,.0f} req/s", file=sys.stderr)
            for name, url in zip(CONFIGS, urls):
                logged[name] = counter(url, "aiprod_prediction_log_lines_total"), counter(url, "aiprod_prediction_log_dropped_total")
        finally:
            for s in servers: s.__exit__(None, None, None)
        sizes = {name: sum(f.stat().st_size for f in (work / f"log-{i}").glob("predictions-*")) if options[name] else 0
                 for i, name in enumerate(CONFIGS)}
    ratios = {name: sorted(r["rate"] / base["rate"] for r, base in zip(rows[name], rows["no log"])) for name in CONFIGS}
    print(f"{os.cpu_count()} CPUs shared by wrk and the servers; MNIST CNN bundle; 32 clients, one digit (base64 PNG) per request; "
          f"{args.seconds} s per point after {warmup} s, {args.rounds} rounds taking turns, medians.\n")
    print("| server | req/s | p50 ms | p99 ms | mean batch | lines logged | dropped | log bytes per line | vs no log, same round (range) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in CONFIGS:
        r, (lines, dropped) = median_row(rows[name]), logged[name]
        per_line = f"{sizes[name] / lines:,.0f}" if lines else ""
        print(f"| aiprod serve {name} | {r['rate']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['batch']:.1f} | {lines:,.0f} | "
              f"{dropped:,.0f} | {per_line} | {statistics.median(ratios[name]):.2f}x ({ratios[name][0]:.2f}–{ratios[name][-1]:.2f}) |")
    worst = min(statistics.median(ratios[name]) for name in CONFIGS if name.startswith("--log-dir"))
    print(f"\nGoal: with the log, >= {GOAL:.2f}x the throughput without it: {worst:.2f}x, {'pass' if worst >= GOAL else 'FAIL'}")


if __name__ == "__main__":
    main()
