"""A monitoring report over a million logged predictions: `aiprod monitor` end to end, and reading the log alone,
against a plain `json.loads` loop over the same files.

It trains a small real model (`aiprod run -p epochs 1`: the digits CNN) and exports it, unless `--bundle` names one,
then writes `--lines` prediction-log lines for it the way `aiprod serve --log-dir` writes them: two server processes
over the last 7 days (a daily cycle of traffic), requests of 1 to 4 inputs, 1% of requests failed (422, some 503), input
summaries drawn from the bundle's reference, each file rotated at 64 MB and gzipped, one process logging its inputs
(8×8 PNGs, --log-inputs), and true labels for 2% of the predictions as feedback. Each timing is a process of its own,
imports included; the table gives the median of `--repeats`, and the peak memory of the reading process.

Goal (issue 13): a monitoring report over 1,000,000 logged predictions in <= 60 s.

    .venv/bin/python bench/monitoring.py [--lines 1000000] [--repeats 1] [--bundle BUNDLE] [--keep DIR]

Named data sets come from AIPROD_DATA_DIR; when it is unset and ../shared/data exists, from there.
"""
import argparse, base64, gzip, io, json, os, shutil, statistics, subprocess, sys, tempfile, time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROTATE_BYTES = 64 * 1024 * 1024  # serve's default --log-max-mb
DAYS = 7

BASELINE = """
import gzip, json, resource, sys, time
from pathlib import Path
start = time.perf_counter()
lines = 0
for path in sorted(Path(sys.argv[1]).glob("predictions-*.jsonl*")):
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        for line in f:
            json.loads(line); lines += 1
print(json.dumps({"seconds": time.perf_counter() - start, "lines": lines, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
READER = """
import json, resource, sys, time
start = time.perf_counter()
from aiprod.monitor import read_predictions
imported = time.perf_counter()
log = read_predictions(sys.argv[1], sys.argv[2] or None)
print(json.dumps({"seconds": time.perf_counter() - imported, "import": imported - start, "lines": len(log),
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def utc(seconds: float) -> str: return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def small_bundle(work: Path) -> Path:
    "Train the digits CNN for one epoch and export it: a real bundle with its drift reference."
    env = {**os.environ, **({"AIPROD_DATA_DIR": str(SHARED_DATA)} if "AIPROD_DATA_DIR" not in os.environ and SHARED_DATA.is_dir() else {})}
    for args in (["run", "--quiet", "-p", "epochs", "1"], ["export", "--out", "bundle"]):
        if args[0] == "export": args.insert(1, str(next((work / "reports").glob("*image_classification*"))))
        done = subprocess.run([str(BIN / "aiprod"), *args], cwd=work, capture_output=True, text=True, env=env)
        if done.returncode: sys.exit(f"aiprod {' '.join(args)} failed:\n{done.stderr}")
    return work / "bundle"


def pngs(n: int, rng) -> list[str]:
    "Base64 PNGs of 8×8 greys, as a client sends them."
    from PIL import Image
    out = []
    for _ in range(n):
        buffer = io.BytesIO(); Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(buffer, "PNG")
        out.append(base64.b64encode(buffer.getvalue()).decode())
    return out


class Writer:
    "One server process's prediction log: a file being written, rotated and gzipped at 64 MB."
    def __init__(self, folder: Path, name: str):
        self.folder, self.name, self.parts, self.size = folder, name, [], 0

    def write(self, text: str, seconds: float):
        self.parts.append(text); self.size += len(text)
        if self.size >= ROTATE_BYTES:
            stamp = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y%m%dT%H%M%S%f")
            (self.folder / f"predictions-{self.name}-{stamp}.jsonl.gz").write_bytes(gzip.compress("".join(self.parts).encode(), 6))
            self.parts, self.size = [], 0

    def close(self): (self.folder / f"predictions-{self.name}.jsonl").write_text("".join(self.parts))


def write_log(folder: Path, bundle: Path, lines: int, seed: int = 0) -> dict:
    "A realistic prediction log of about `lines` lines for `bundle`; what it holds."
    rng = np.random.default_rng(seed)
    manifest, reference = (json.loads((bundle / name).read_text()) for name in ("bundle.json", "reference.json"))
    classes, features = manifest["classes"], reference["features"]
    prior = np.array([reference["test_predicted"][c] for c in classes])  # the model predicts as it did on its test split
    confidence, images = np.array(reference["test_confidence"]), pngs(256, rng)
    (folder / "models").mkdir(parents=True)
    (folder / "models" / f"{manifest['name']}-{manifest['version']}.json").write_text(json.dumps(
        {"name": manifest["name"], "version": manifest["version"], "classes": classes, "kind": "image", "bundle": str(bundle)}))
    end = time.time(); start = end - DAYS * 86400
    hours = np.linspace(0, DAYS * 24, 10_000)
    weight = 1.5 + np.sin((hours % 24 - 9) / 24 * 2 * np.pi)  # busy afternoons, quiet nights
    times = np.sort(np.interp(rng.random(lines), np.cumsum(weight) / weight.sum(), hours) * 3600 + start)
    # every draw made at once: a million draws one at a time would take longer than the report
    predicted = rng.choice(len(classes), lines, p=prior / prior.sum())
    top = rng.choice(confidence, lines)
    rest = rng.dirichlet(np.ones(len(classes) - 1), lines) * (1 - top[:, None])
    rows, labelled = rng.integers(len(features["mean"]), size=lines), rng.random(lines) < 0.02
    truth = np.where(rng.random(lines) < 0.8, predicted, rng.integers(len(classes), size=lines))
    sizes, fails = rng.choice([1, 1, 1, 2, 4], lines), rng.random(lines)
    latency, process, shown = rng.lognormal(np.log(12), 0.5, lines).round(3), rng.integers(2, size=lines), rng.integers(len(images), size=lines)
    writers = [Writer(folder, "web-1001"), Writer(folder, "web-1002")]
    feedback, requests, failed, i = [], 0, 0, 0
    name, version = manifest["name"], manifest["version"]
    while i < lines:
        r = requests
        base = {"time": utc(times[i]), "request_id": f"{rng.integers(1 << 63):016x}"}
        requests += 1
        if fails[r] < 0.01:
            status = 503 if fails[r] < 0.002 else 422
            line = {**base, "model": name, "version": version, "status": status, "latency_ms": float(latency[r]),
                    "error": "inputs[0]: not base64" if status == 422 else f"model {name} {version} has 1024 inputs waiting"}
            writers[process[r]].write(json.dumps(line, ensure_ascii=False) + "\n", times[i]); failed += 1; i += 1
            continue
        text = []
        for index in range(min(int(sizes[r]), lines - i)):
            j, k = i + index, int(predicted[i + index])
            line = {**base, "index": index, "model": name, "version": version, "status": 200, "latency_ms": float(latency[r]),
                    "label": classes[k], "probability": round(float(top[j]), 6),
                    "probabilities": np.insert(rest[j], k, top[j]).round(6).tolist(),
                    "summary": {feature: values[rows[j]] for feature, values in features.items()}}
            if process[r] == 1: line["input"] = images[shown[j]]
            text.append(json.dumps(line, ensure_ascii=False) + "\n")
            if labelled[j]:
                feedback.append(json.dumps({"time": utc(times[j] + 3600), "request_id": base["request_id"], "index": index, "model": name,
                                            "version": version, "label": classes[int(truth[j])], "source": "api"}) + "\n")
        writers[process[r]].write("".join(text), times[i]); i += len(text)
    for writer in writers: writer.close()
    (folder / "feedback-web-1001.jsonl").write_text("".join(feedback))
    files = sorted(folder.glob("predictions-*"))
    return {"lines": lines, "requests": requests, "failed": failed, "feedback": len(feedback), "files": len(files),
            "rotated": sum(p.suffix == ".gz" for p in files), "mb": sum(p.stat().st_size for p in files) / 2**20}


def child(script: str, *args) -> dict:
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True)
    if done.returncode: sys.exit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def monitor(bundle: Path, logs: Path, reports: Path, *window: str) -> dict:
    "`aiprod monitor` end to end (wall time), with the run's own timings."
    start = time.perf_counter()
    done = subprocess.run([str(BIN / "aiprod"), "monitor", bundle, logs, "--reports-dir", reports, "--quiet", *window], capture_output=True, text=True)
    if done.returncode: sys.exit(f"aiprod monitor failed:\n{done.stderr}")
    seconds = time.perf_counter() - start
    record = json.loads(sorted(reports.glob("*monitoring*/metrics.json"), key=os.path.getmtime)[-1].read_text())
    return {"seconds": seconds, "execute": record["timings"]["execute_s"], "render": record["timings"]["render_s"],
            "predictions": record["metrics"]["predictions"], "findings": record["monitoring"]["findings"]}


def main(lines: int, repeats: int, bundle: str | None, keep: str | None):
    work = Path(keep or tempfile.mkdtemp(prefix="aiprod-monitoring-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = Path(bundle).resolve() if bundle else (work / "bundle" if (work / "bundle" / "bundle.json").exists() else small_bundle(work))
    logs = work / "logs"
    if not logs.exists():
        started = time.perf_counter()
        facts = write_log(logs, bundle, lines)
        print(f"wrote {facts['lines']:,} lines ({facts['requests']:,} requests, {facts['failed']:,} failed) in {facts['files']} files "
              f"({facts['rotated']} rotated, gzipped; {facts['mb']:,.0f} MB on disk), {facts['feedback']:,} feedback labels, "
              f"in {time.perf_counter() - started:.0f} s")
    runs = {"baseline": [], "read": [], "read_day": [], "monitor": [], "monitor_day": []}
    for _ in range(repeats):
        runs["baseline"].append(child(BASELINE, logs))
        runs["read"].append(child(READER, logs, ""))
        runs["read_day"].append(child(READER, logs, "24h"))
        runs["monitor"].append(monitor(bundle, logs, work / "reports"))
        runs["monitor_day"].append(monitor(bundle, logs, work / "reports", "--since", "24h"))
    m = {name: {key: statistics.median(r[key] for r in rows) for key in rows[0] if key != "findings"} for name, rows in runs.items()}
    base = m["baseline"]["seconds"]
    table = [("plain json.loads loop over every file (baseline)", m["baseline"]["seconds"], f"{m['baseline']['rss_mb']:,.0f} MB"),
             ("read_predictions, whole log (after its import)", m["read"]["seconds"], f"{m['read']['rss_mb']:,.0f} MB"),
             ("  import aiprod.monitor (numpy, matplotlib, serve)", m["read"]["import"], ""),
             ("read_predictions since 24h ago", m["read_day"]["seconds"], f"{m['read_day']['rss_mb']:,.0f} MB"),
             ("`aiprod monitor` end to end, whole log", m["monitor"]["seconds"], ""),
             ("  papermill: kernel start + cells", m["monitor"]["execute"], ""),
             ("  nbconvert HTML + header", m["monitor"]["render"], ""),
             ("`aiprod monitor --since 24h` end to end", m["monitor_day"]["seconds"], "")]
    print(f"\n{m['read']['lines']:,.0f} logged lines ({m['monitor']['predictions']:,.0f} predictions of the bundle), median of {repeats}, "
          f"{os.cpu_count()} CPUs\n")
    print(f"| {'what':<50} | {'seconds':>7} | {'vs baseline':>11} | {'peak memory':>11} |\n|---|---:|---:|---:|")
    for name, seconds, memory in table: print(f"| {name:<50} | {seconds:7.2f} | {seconds / base:10.2f}x | {memory:>11} |")
    print(f"\nfindings over the whole log: {runs['monitor'][-1]['findings'] or 'none'}")
    print(f"goal: report over {m['read']['lines']:,.0f} predictions <= 60 s ({'met' if m['monitor']['seconds'] <= 60 else 'MISSED'})")
    if not keep: shutil.rmtree(work)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--bundle", help="a bundle to log for (default: train and export the digits CNN)")
    parser.add_argument("--keep", help="a folder to keep the bundle, log and reports in, and to take them from next time")
    main(**vars(parser.parse_args()))
