"""aiprod serve under load, against a tutorial-style Flask service and the raw batched model: requests/s, latency, batches, a soak.

For three bundles (the CNN on MNIST, the MiniLM BERT fine-tuned on SST-2, and BERT's ONNX int8 variant: short runs made
with the real CLI, `aiprod run`, `optimize` and `export`; accuracy does not matter here, the architecture does) it
starts two servers, each a process of its own on loopback: `aiprod serve BUNDLE --access-log off`, and
`bench/serving_flask.py`, Flask's threaded werkzeug server doing one forward pass per request. wrk, a process of its own
too, loads each in turn at 1, 8 and 32 concurrent clients; each request carries one real test input, as a client of a
web service sends it (an MNIST test digit as base64 PNG, an SST-2 validation sentence), in turn from 200 distinct
bodies (`bench/serving.lua`), for `--seconds` after a warm-up. The ceiling is the bundle's `Predictor.predict` on the
same inputs, already decoded, in batches of 32, in this process, for as long: it takes its turn after each pair of
points, so that servers and ceiling meet the same machine load (`--rounds 3` repeats every turn; medians are shown).

It prints one Markdown table (aiprod's mean batch, inputs per forward pass, comes from its /metrics), the goals of
issue 12 with pass or fail, and a soak: 32 clients against aiprod serve for `--soak` seconds, its errors and its
resident memory. wrk and the server share the CPUs: on 2 cores the load generator takes part of the server's time,
which the in-process ceiling does not pay. Making the bundles takes about 5 minutes, the measurements about 6 (times
`--rounds`), the soak 5 more.

    .venv/bin/python bench/serving.py [--seconds 10] [--rounds 1] [--soak 300] [--keep DIR] [--only cnn bert bert-int8] [--quick]

Needs wrk (Debian and Ubuntu: apt-get install wrk). Named data sets come from AIPROD_DATA_DIR; when it is unset and
../shared/data exists, from there.
"""
import argparse, base64, io, json, os, re, shutil, socket, statistics, subprocess, sys, tempfile, time, urllib.request
from contextlib import contextmanager
from pathlib import Path

from optimization import trained_run  # bench/optimization.py: this script's folder is on sys.path

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
SHARED_DATA = HERE.parents[1] / "shared" / "data"
BERT_RUN = ("text_classification", "-p", "model", "bert", "-p", "limit", "200", "-p", "epochs", "1")
BUNDLES = {  # key: (label, data set of the requests, the run's arguments, the optimized variant shipped, goal: times Flask's req/s)
    "cnn": ("MNIST CNN", "mnist", ("image_classification", "-p", "dataset", "mnist", "-p", "limit", "2000", "-p", "epochs", "1"),
            None, 3.0),
    "bert": ("SST-2 BERT fp32", "sst2", BERT_RUN, None, 2.0),
    "bert-int8": ("SST-2 BERT int8 (ONNX)", "sst2", BERT_RUN, "onnx-int8", 5.0),
}
POOL = 200              # distinct request bodies, cycled
CEILING_SHARE = 0.8     # goal: aiprod serve at 32 clients makes at least this share of the raw batched model's inputs/s
MEMORY_GROWTH = 0.10    # goal: the soak's resident memory grows less than this
SERVERS = ("aiprod serve", "Flask")


def aiprod(*args, cwd: Path) -> Path | None:
    "Run an `aiprod` command in `cwd`; the run folder it made, if any. Stops the bench with its errors if it fails."
    reports = cwd / "reports"
    before = set(reports.iterdir()) if reports.exists() else set()
    done = subprocess.run([str(BIN / "aiprod"), *map(str, args)], cwd=cwd, capture_output=True, text=True)
    if done.returncode: sys.exit(f"aiprod {' '.join(map(str, args))} failed:\n{done.stderr}")
    return next((p for p in set(reports.iterdir()) - before if p.is_dir()), None) if reports.exists() else None


def bundle(key: str, root: Path) -> Path:
    "The bundle of `key` in `root`/bundles, made now (run, optimization, export) unless it is there already."
    out, runs = root / "bundles" / key, root / "runs"
    if (out / "bundle.json").is_file(): return out
    print(f"{BUNDLES[key][0]}: making the bundle", file=sys.stderr)
    _, _, args, variant, _ = BUNDLES[key]
    source = trained_run(args, runs)
    if variant:  # one timed pass: the optimization report's own timings are not used here
        source = aiprod("optimize", source.name, "-p", "variants", json.dumps([variant]), "-p", "repeats", "1",
                        "-p", "latency_samples", "10", "--quiet", cwd=runs)
    aiprod("export", source, "--out", out, "--force", *(("--variant", variant) if variant else ()), cwd=runs)
    return out


def payloads(dataset: str) -> tuple[list, list[str]]:
    "`POOL` distinct real test inputs, decoded (PNG bytes or strings), and the JSON body of a request carrying each one."
    from aiprod import datasets
    test = datasets.load_dataset(dataset, progress=False)["test"]
    if dataset == "sst2":
        texts = list(dict.fromkeys(str(t) for t in test.x))[:POOL]
        return texts, [json.dumps({"inputs": [t]}) for t in texts]
    import numpy as np
    from PIL import Image
    def png(pixels: np.ndarray) -> bytes:
        out = io.BytesIO(); Image.fromarray(pixels).save(out, format="PNG"); return out.getvalue()
    images = [png(p) for p in (np.asarray(test.x[:POOL])[:, 0] * 255).round().astype(np.uint8)]  # as the MNIST files store them
    return images, [json.dumps({"inputs": [base64.b64encode(image).decode()]}) for image in images]


def http(url: str, body: str | None = None) -> bytes:
    "The body of a GET (or, with `body`, a JSON POST) answered 2xx; other statuses raise."
    request = urllib.request.Request(url, body.encode() if body else None, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response: return response.read()


def ready(process: subprocess.Popen, log: Path, check, what: str):
    "What `check()` returns once it returns something without an OSError; stops the bench if the server dies or never gets there."
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None: sys.exit(f"{what} stopped (exit {process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if found := check(): return found
        except OSError: pass
        time.sleep(0.2)
    sys.exit(f"{what} was not ready within 5 minutes:\n{log.read_text()[-3000:]}")


@contextmanager
def server(kind: str, bundle: Path, log: Path, body: str, options: tuple = ()):
    "A process serving `bundle` on loopback, warmed up, and its base URL; `kind` is aiprod serve (with `options`) or Flask. Stopped on leaving."
    if kind == "aiprod serve": command = [BIN / "aiprod", "serve", bundle, "--port", 0, "--access-log", "off", *options]
    else:
        with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]  # werkzeug does not say which port 0 gave
        command = [sys.executable, HERE / "serving_flask.py", bundle, port]
    with open(log, "w") as out: process = subprocess.Popen(list(map(str, command)), stdout=out, stderr=subprocess.STDOUT)
    def aiprod_ready():
        if found := re.search(r"serving on (http://\S+)", log.read_text()): return http(found[1] + "/readyz") and found[1]
    def flask_ready(): return http(f"http://127.0.0.1:{port}/predict", body) and f"http://127.0.0.1:{port}"
    try: yield process, ready(process, log, aiprod_ready if kind == "aiprod serve" else flask_ready, f"{kind} {bundle}")
    finally:
        process.terminate()
        try: process.wait(60)
        except subprocess.TimeoutExpired: process.kill(); process.wait()


def wrk(url: str, clients: int, seconds: int, bodies: Path) -> subprocess.Popen:
    "wrk, started: `clients` connections POSTing the bodies of the file `bodies` to `url`/predict for `seconds`."
    return subprocess.Popen(["wrk", "-t", str(min(clients, 2)), "-c", str(clients), "-d", f"{seconds}s", "--timeout", "30s",
                             "-s", str(HERE / "serving.lua"), f"{url}/predict", "--", str(bodies)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def results(load: subprocess.Popen) -> dict:
    "What serving.lua printed when wrk ended: requests, requests/s, latency percentiles in ms, errors (non-2xx and socket)."
    out, err = load.communicate()
    line = next((line for line in reversed(out.splitlines()) if line.startswith("{")), None)
    if load.returncode or line is None: sys.exit(f"wrk failed (exit {load.returncode}):\n{out}{err}")
    r = json.loads(line)
    return {"requests": r["requests"], "rate": r["requests"] / r["duration_us"] * 1e6, "errors": r["non2xx"] + r["socket_errors"],
            **{f"p{q}": r[f"p{q}_us"] / 1000 for q in (50, 95, 99)}}


def batch_totals(url: str) -> tuple[float, float]:
    "Inputs and forward passes so far, from aiprod's /metrics (the aiprod_batch_size histogram's sum and count)."
    lines = http(f"{url}/metrics").decode().splitlines()
    def total(name): return sum(float(line.split()[-1]) for line in lines if re.match(rf"{name}[{{ ]", line))
    return total("aiprod_batch_size_sum"), total("aiprod_batch_size_count")


def point(kind: str, url: str, clients: int, seconds: int, warmup: int, bodies: Path) -> dict:
    "One measurement: a warm-up, then `seconds` of load; with aiprod serve, the mean batch size over them."
    results(wrk(url, clients, warmup, bodies))
    before = batch_totals(url) if kind == "aiprod serve" else None
    row = results(wrk(url, clients, seconds, bodies))
    if before:
        inputs, passes = (after - first for after, first in zip(batch_totals(url), before))
        row["batch"] = inputs / passes if passes else float("nan")
    return row


def median_row(rows: list[dict]) -> dict:
    "The median of each figure over the rounds of a point; requests and errors added up."
    return {k: sum(r[k] for r in rows) if k in ("requests", "errors") else statistics.median(r[k] for r in rows) for k in rows[0]}


def ceiling(bundle: Path, items: list, seconds: int, warmup: int):
    "A function timing `Predictor.predict` on the decoded inputs in batches of 32, in this process: inputs/s over `seconds`."
    from aiprod.predict import load
    predictor = load(bundle)
    batches = [items[i:i + 32] for i in range(0, len(items) - 31, 32)]
    def rate(seconds: int) -> float:
        done, start = 0, time.perf_counter()
        while (spent := time.perf_counter() - start) < seconds:
            predictor.predict(batches[done % len(batches)]); done += 1
        return done * 32 / spent
    rate(warmup)
    return lambda: rate(seconds)


def bodies_file(key: str, work: Path) -> tuple[list, Path]:
    "The decoded inputs of `key`'s data set, and a file of their request bodies, one a line, for serving.lua."
    items, bodies = payloads(BUNDLES[key][1])
    path = work / f"{key}-bodies.txt"
    path.write_text("\n".join(bodies) + "\n")
    return items, path


def measure(key: str, root: Path, work: Path, clients: tuple, seconds: int, warmup: int, rounds: int) -> tuple[list[dict], float]:
    "The rows of both servers at each number of clients, and the ceiling, for the bundle `key`; medians over `rounds`."
    path = bundle(key, root)
    items, bodies = bodies_file(key, work)
    raw, first = ceiling(path, items, seconds, warmup), bodies.read_text().splitlines()[0]
    points, limits = {}, []
    with server(SERVERS[0], path, work / f"{key}-aiprod.log", first) as (_, ours), \
         server(SERVERS[1], path, work / f"{key}-flask.log", first) as (_, flask):
        for _ in range(rounds):
            for n in clients:  # both servers and the ceiling take turns, so that all meet the same machine load
                for kind, url in zip(SERVERS, (ours, flask)):
                    points.setdefault((kind, n), []).append(point(kind, url, n, seconds, warmup, bodies))
                    print(f"{BUNDLES[key][0]}, {kind}, {n} clients: {points[kind, n][-1]['rate']:,.0f} req/s", file=sys.stderr)
                limits.append(raw())
    return [{"server": kind, "clients": n, **median_row(rows)} for (kind, n), rows in points.items()], statistics.median(limits)


def table(measured: dict[str, tuple[list, float]]) -> str:
    "Every point of every bundle, with its ratios to Flask at as many clients and to the ceiling, as a Markdown table."
    lines = ["| bundle | clients | server | req/s | p50 ms | p95 ms | p99 ms | mean batch | errors | vs Flask | vs ceiling |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, (rows, limit) in measured.items():
        label, flask = BUNDLES[key][0], {r["clients"]: r["rate"] for r in rows if r["server"] == "Flask"}
        for r in sorted(rows, key=lambda r: (r["clients"], SERVERS.index(r["server"]))):
            batch = f"{r['batch']:.1f}" if "batch" in r else ""
            lines.append(f"| {label} | {r['clients']} | {r['server']} | {r['rate']:,.0f} | {r['p50']:.1f} | {r['p95']:.1f} | "
                         f"{r['p99']:.1f} | {batch} | {r['errors']} | {r['rate'] / flask[r['clients']]:.2f}x | {r['rate'] / limit:.0%} |")
        lines.append(f"| {label} | | ceiling: `Predictor.predict`, batches of 32, in process (inputs/s) | {limit:,.0f} | | | | 32 | | | 100% |")
    return "\n".join(lines)


def goals(measured: dict[str, tuple[list, float]]) -> str:
    "The goals of issue 12, each with its figure and pass or FAIL."
    lines = ["| bundle | goal | measured | met |", "|---|---|---:|---|"]
    for key, (rows, limit) in measured.items():
        label, speedup = BUNDLES[key][0], BUNDLES[key][4]
        at = {(r["server"], r["clients"]): r for r in rows}
        def goal(text, figure, met): lines.append(f"| {label} | {text} | {figure} | {'pass' if met else 'FAIL'} |")
        ours, flask = at[SERVERS[0], 32], at[SERVERS[1], 32]
        goal(f"aiprod serve at 32 clients >= {CEILING_SHARE:.0%} of the raw batched ceiling", f"{ours['rate'] / limit:.0%}",
             ours["rate"] >= CEILING_SHARE * limit)
        goal(f"aiprod serve at 32 clients >= {speedup:g}x Flask", f"{ours['rate'] / flask['rate']:.2f}x", ours["rate"] >= speedup * flask["rate"])
        if (SERVERS[0], 8) not in at: lines.append(f"| {label} | p99 at 8 clients no worse than Flask's | not measured (--quick) | |"); continue
        ours, flask = at[SERVERS[0], 8], at[SERVERS[1], 8]
        goal("p99 at 8 clients no worse than Flask's", f"{ours['p99']:.1f} ms vs {flask['p99']:.1f} ms", ours["p99"] <= flask["p99"])
    return "\n".join(lines)


def soak(key: str, root: Path, work: Path, seconds: int, warmup: int) -> str:
    "32 clients against aiprod serve for `seconds`: requests, errors, and the server's resident memory, as lines of text."
    import psutil
    path, (_, bodies) = bundle(key, root), bodies_file(key, work)
    with server(SERVERS[0], path, work / f"soak-{key}.log", bodies.read_text().splitlines()[0]) as (process, url):
        results(wrk(url, 32, warmup, bodies))
        rss = psutil.Process(process.pid).memory_info
        start = peak = rss().rss
        load = wrk(url, 32, seconds, bodies)
        while load.poll() is None:
            time.sleep(1); peak = max(peak, rss().rss)
        end = rss().rss
        r = results(load)
    growth = end / start - 1
    return (f"Soak, {BUNDLES[key][0]}, aiprod serve, 32 clients, {seconds} s: {r['requests']:,} requests ({r['rate']:,.0f} req/s, "
            f"p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms)\n"
            f"- errors (non-2xx and socket errors): {r['errors']} (goal 0): {'pass' if r['errors'] == 0 else 'FAIL'}\n"
            f"- server resident memory: {start / 2**20:.1f} MiB after the warm-up, {end / 2**20:.1f} MiB at the end, "
            f"peak {peak / 2**20:.1f} MiB; growth {growth:+.1%} (goal < {MEMORY_GROWTH:.0%}): {'pass' if growth < MEMORY_GROWTH else 'FAIL'}")


def report(args, root: Path, work: Path):
    "Make (or reuse) the bundles in `root`, measure them, print the table, the goals and the soak."
    seconds, clients = (3, (1, 32)) if args.quick else (args.seconds, (1, 8, 32))
    warmup = max(1, seconds // 3)
    soak_seconds = args.soak if args.soak is not None else 0 if args.quick else 300
    load = os.getloadavg()[1]
    measured = {key: measure(key, root, work, clients, seconds, warmup, args.rounds) for key in args.only}
    print(f"{os.cpu_count()} CPUs, shared by wrk (1 or 2 threads) and the server under test; load average (5 min) {load:.1f} "
          f"before the measurements, {os.getloadavg()[1]:.1f} after: other work on these CPUs lowers every figure. {seconds} s "
          f"per point after a {warmup} s warm-up, {args.rounds} round(s); one input per request, {POOL} distinct bodies cycled; "
          f"aiprod serve with its defaults (batches of up to 32 inputs, 2 ms wait, threads: the cores but one) and --access-log off.\n")
    print(table(measured) + "\n\n" + goals(measured))
    if soak_seconds: print("\n" + soak(args.soak_bundle, root, work, soak_seconds, warmup))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="seconds of load per point, after a warm-up of a third of it")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every point, taking turns; medians are shown (3 on a busy machine)")
    parser.add_argument("--soak", type=int, help="seconds of the soak, 32 clients against aiprod serve (default 300; 0: none)")
    parser.add_argument("--soak-bundle", choices=list(BUNDLES), default="cnn", help="the bundle of the soak")
    parser.add_argument("--keep", type=Path, help="make the runs and bundles in this folder and keep them; bundles already there "
                                                  "are reused (default: a new temporary folder)")
    parser.add_argument("--only", nargs="+", choices=list(BUNDLES), default=list(BUNDLES), help="the bundles to measure")
    parser.add_argument("--quick", action="store_true", help="check the bench: 3 s per point, 1 and 32 clients, no soak")
    args = parser.parse_args()
    for name in ("seconds", "rounds"):
        if getattr(args, name) < 1: parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: it is this bench's load generator (Debian, Ubuntu: apt-get install -y wrk; macOS: brew install wrk)")
    if "AIPROD_DATA_DIR" not in os.environ and SHARED_DATA.is_dir(): os.environ["AIPROD_DATA_DIR"] = str(SHARED_DATA)
    with tempfile.TemporaryDirectory(prefix="aiprod-bench-serving-") as folder:
        report(args, args.keep or Path(folder), Path(folder))


if __name__ == "__main__":
    main()
