"""Quality targets of the model templates: full runs on the real data sets, trained and evaluated one after another.

Each target is a real `aiprod run` of a report template (its own kernel, as a user runs it) into
`bench/results/quality/`; the table reads each run's metrics.json and history.csv. Full runs take a while on a
2-core CPU (about 35 minutes for all of them, most of it BERT); `--only` picks some.

    .venv/bin/python bench/quality.py [--only mnist_cnn,sst2_lstm] [--reports-dir bench/results/quality]
"""
import argparse, csv, json, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MNIST = ["-p", "dataset", "mnist", "-p", "widths", "[16, 32, 64]", "-p", "epochs", "5", "-p", "bs", "128", "-p", "lr", "0.005"]
# name: (template, parameters, metric, goal, what the goal is)
TARGETS = {
    "mnist_cnn": ("image_classification", MNIST, "test_accuracy", 0.992, "MNIST CNN test accuracy"),
    "sst2_lstm": ("text_classification", [], "test_accuracy", 0.82, "SST-2 LSTM dev accuracy"),
    "sst2_bert": ("text_classification", ["-p", "model", "bert", "-p", "epochs", "1", "-p", "bs", "32"], "test_accuracy", 0.88,
                  "SST-2 BERT (bundled MiniLM) dev accuracy"),
    "fsdd_lstm": ("audio_classification", [], "test_accuracy", 0.95, "FSDD LSTM test accuracy"),
    "mnist_cnn_keras_torch": ("image_classification", MNIST + ["-p", "framework", "keras", "-p", "backend", "torch"],
                              "test_accuracy", None, "the same CNN in Keras on torch"),
    "mnist_cnn_keras_tensorflow": ("image_classification", MNIST + ["-p", "framework", "keras", "-p", "backend", "tensorflow"],
                                   "test_accuracy", None, "the same CNN in Keras on TensorFlow"),
}


def run(name: str, reports_dir: Path) -> dict:
    "One target through the `aiprod` command; its metrics.json and history, and the wall time."
    template, params, *_ = TARGETS[name]
    before = set(reports_dir.glob("*/metrics.json"))
    start = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).parent / "aiprod"), "run", template, *params, "--quiet",
                           "--reports-dir", str(reports_dir)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    (new,) = set(reports_dir.glob("*/metrics.json")) - before
    record = json.loads(new.read_text())
    if done.returncode: print(f"{name}: FAILED ({record.get('error')})", file=sys.stderr)
    history_file = new.parent / "history.csv"
    history = list(csv.DictReader(history_file.open())) if history_file.exists() else []
    return {"record": record, "history": history, "wall": wall}


def seconds_to(history: list[dict], accuracy: float) -> float | None:
    "Training time (validation passes included) until validation accuracy first reaches `accuracy`."
    elapsed = 0.0
    for row in history:
        elapsed += float(row["seconds"])
        if float(row["valid_accuracy"]) >= accuracy: return elapsed
    return None


def table(results: dict) -> str:
    lines = ["| run | metric | result | goal | met | epochs | training (s) | samples/s (last epoch) | wall (s) |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    torch_cnn = results.get("mnist_cnn")
    for name, r in results.items():
        template, _, metric, goal, what = TARGETS[name]
        value, training = r["record"].get("metrics", {}).get(metric), r["record"].get("training", {})
        if goal is None and torch_cnn:  # the Keras CNNs: within 1 point of the torch CNN
            goal = torch_cnn["record"]["metrics"][metric] - 0.01
        met = "n/a" if value is None or goal is None else ("yes" if value >= goal else "NO")
        speed = f'{float(r["history"][-1]["samples_per_second"]):,.0f}' if r["history"] else ""
        shown = "FAILED" if value is None else f"{value:.4f}"
        lines.append(f"| {name}: {what} | {metric} | {shown} | {'' if goal is None else f'{goal:.4f}'} | {met} | "
                     f"{training.get('epochs_run', '')} | {training.get('seconds', 0):.0f} | {speed} | {r['wall']:.0f} |")
    if torch_cnn and torch_cnn["history"]:
        reached = seconds_to(torch_cnn["history"], 0.99)
        lines.append(f"\nMNIST CNN time to 99.0% validation accuracy: "
                     + (f"{reached:.0f} s (goal under 180 s: {'met' if reached < 180 else 'MISSED'})" if reached else "never reached"))
    return "\n".join(lines)


def main(names: list[str], reports_dir: Path):
    reports_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run(name, reports_dir)
    print(table(results))
    print(f"\nreports: {reports_dir / 'index.html'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(TARGETS), help=f"comma-separated, from: {', '.join(TARGETS)}")
    parser.add_argument("--reports-dir", type=Path, default=ROOT / "bench" / "results" / "quality")
    args = parser.parse_args()
    unknown = set(args.only.split(",")) - set(TARGETS)
    if unknown: parser.error(f"unknown target(s) {', '.join(sorted(unknown))}; known: {', '.join(TARGETS)}")
    main(args.only.split(","), args.reports_dir)
