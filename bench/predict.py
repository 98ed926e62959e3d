"""The Predictor on raw inputs against the raw model forward on already-prepared tensors; bundle load time; preprocessing cost.

It makes three small runs with the real CLI (`aiprod run`, then `aiprod export`, in a temporary folder): the CNN on
MNIST, the text LSTM and the bundled MiniLM BERT on SST-2 (1 epoch on a few examples: speed does not depend on
accuracy). Then, in this one process and thread count, it times `Predictor.predict` on raw test inputs (PNG bytes
and a uint8 array for images, strings for texts), `encode` alone, and the same network's plain forward on the
tensors `encode` made, alternating them batch by batch so that all meet the same machine load, after a warm-up pass.
It prints medians of `--repeats` passes at batch 1 and 32, the ratio being the median of the pass-by-pass ratios
(goal: predictor >= 0.9x raw at batch 32), the time of `load(bundle)` in a fresh process beside that of
`import torch` alone (best of 3; goal < 1 s for the CNN and the LSTM), and the preprocessing cost per item. About
2 minutes on 2 idle CPUs; on CPUs shared with other work it takes longer and its figures swing.

    .venv/bin/python bench/predict.py [--repeats 7] [--keep DIR] [--only cnn lstm bert]

Named data sets come from AIPROD_DATA_DIR; when it is unset and ../shared/data exists, from there.
"""
import argparse, io, os, statistics, subprocess, sys, tempfile, time
from functools import partial
from pathlib import Path

import numpy as np
import torch

BIN = Path(sys.executable).parent
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RUNS = {  # model: (the run's arguments, data set of the raw inputs, items timed at batch 1, items timed at batch 32)
    "CNN (MNIST)": (("image_classification", "-p", "dataset", "mnist", "-p", "limit", "1000", "-p", "epochs", "1"), "mnist", 128, 512),
    "text LSTM (SST-2)": (("text_classification", "-p", "limit", "1000", "-p", "epochs", "1"), "sst2", 128, 512),
    "BERT MiniLM (SST-2)": (("text_classification", "-p", "model", "bert", "-p", "limit", "64", "-p", "epochs", "1"), "sst2", 32, 128),
}
LOAD_GOAL = {"CNN (MNIST)": 1.0, "text LSTM (SST-2)": 1.0}  # seconds to load a bundle in a fresh process
LOAD = "import time; t = time.perf_counter(); from aiprod.predict import load; p = load({!r}); print(time.perf_counter() - t)"
IMPORT_TORCH = "import time; t = time.perf_counter(); import torch; print(time.perf_counter() - t)"


def cli(*args, cwd: Path):
    "Run an `aiprod` command; stop the bench with its error output if it fails."
    done = subprocess.run([str(BIN / "aiprod"), *map(str, args)], cwd=cwd, capture_output=True, text=True)
    if done.returncode: sys.exit(f"aiprod {' '.join(map(str, args))} failed:\n{done.stderr}")


def make_bundle(args: tuple, bundle: Path):
    "Train a run with `aiprod run` in the bundle's parent folder and export it to `bundle` with `aiprod export`."
    bundle.parent.mkdir(parents=True, exist_ok=True)
    cli("run", *args, "--quiet", cwd=bundle.parent)
    [run_dir] = [p for p in (bundle.parent / "reports").iterdir() if p.is_dir()]
    cli("export", run_dir, "--out", bundle, cwd=bundle.parent)


def raw_inputs(dataset: str, n: int) -> dict[str, list | np.ndarray]:
    "`n` raw test inputs: MNIST digits as PNG bytes and as one (n, 28, 28) uint8 array; SST-2 texts as strings."
    from aiprod import datasets
    test = datasets.load_dataset(dataset, progress=False)["test"]
    x = test.x[np.arange(n) % len(test.x)]
    if dataset == "sst2": return {"strings": [str(t) for t in x]}
    from PIL import Image
    pixels = (np.asarray(x)[:, 0] * 255).round().astype(np.uint8)  # as the MNIST files store them
    def png(image: np.ndarray) -> bytes:
        out = io.BytesIO(); Image.fromarray(image).save(out, format="PNG"); return out.getvalue()
    return {"PNG bytes": [png(image) for image in pixels], "uint8 array": pixels}


def raw_model(bundle: Path):
    "The bundle's network rebuilt by aiprod's training code: the baseline, a plain forward in inference mode."
    from aiprod.training import load_model
    model = load_model(bundle / "model.safetensors").eval()
    def forward(x):
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in x.items()}) if isinstance(x, dict) else model(torch.from_numpy(x))
    return forward


def chunks(items, bs: int) -> list:
    return [items[i:i + bs] for i in range(0, len(items), bs)]


def seconds(work) -> float:
    start = time.perf_counter(); work(); return time.perf_counter() - start


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    "Median of the pass-by-pass ratios: steadier than a ratio of medians while the machine's load changes."
    return statistics.median(a / b for a, b in zip(numerators, denominators))


def timed_passes(predictor, forward, inputs: dict, n: int, bs: int, repeats: int) -> dict[str, list[float]]:
    """Seconds of each pass over `n` items, per step: the raw forward on prepared batches, then `Predictor.predict` and
    `encode` on each kind of raw input. The steps take turns batch by batch, so that all meet the same load."""
    batches = {name: chunks(items[:n], bs) for name, items in inputs.items()}
    prepared = [predictor.preprocessor.encode(chunk) for chunk in next(iter(batches.values()))]  # BERT: padded per batch
    steps = {"raw": [partial(forward, x) for x in prepared],
             **{name: [partial(predictor.predict, chunk, bs=bs) for chunk in chunks_] for name, chunks_ in batches.items()},
             **{f"encode {name}": [partial(predictor.preprocessor.encode, chunk) for chunk in chunks_]
                for name, chunks_ in batches.items()}}
    passes = {name: [] for name in steps}
    for repeat in range(repeats + 1):  # the first pass warms up
        spent = dict.fromkeys(steps, 0.0)
        for i in range(len(prepared)):
            for name in (steps if i % 2 else reversed(steps)): spent[name] += seconds(steps[name][i])
        if repeat:
            for name in steps: passes[name].append(spent[name])
    return passes


def measure(model: str, bundle: Path, dataset: str, sizes: tuple[int, int], repeats: int) -> tuple[list, list]:
    "Throughput rows and preprocessing-cost rows of one bundle, at batch 1 and at batch 32."
    from aiprod.predict import load
    predictor, forward = load(bundle), raw_model(bundle)
    inputs, rows, costs = raw_inputs(dataset, max(sizes)), [], []
    for bs, n in zip((1, 32), sizes):
        passes = timed_passes(predictor, forward, inputs, n, bs, repeats)
        raw = passes["raw"]
        for name in inputs:
            ours, encode = passes[name], passes[f"encode {name}"]
            rows.append((model, bs, name, n / statistics.median(raw), n / statistics.median(ours), median_ratio(raw, ours)))
            costs.append((model, name, bs, statistics.median(encode) / n * 1e6, statistics.median(raw) / n * 1e6,
                          median_ratio(encode, ours)))
    return rows, costs


def fresh_seconds(code: str, tries: int = 3) -> float:
    "Best of `tries` timings that a fresh Python process prints."
    return min(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
               for _ in range(tries))


def main(repeats: int, keep: str | None, models: list[str]):
    if not os.environ.get("AIPROD_DATA_DIR") and SHARED_DATA.is_dir(): os.environ["AIPROD_DATA_DIR"] = str(SHARED_DATA)
    if keep: return report(repeats, Path(keep), models)
    with tempfile.TemporaryDirectory(prefix="aiprod-bench-predict-") as folder: report(repeats, Path(folder), models)


def report(repeats: int, folder: Path, models: list[str]):
    "Make (or reuse) the bundles of `models` in `folder`, measure them, and print the tables."
    rows, costs, loads = [], [], []
    for model in models:
        args, dataset, *sizes = RUNS[model]
        bundle, start = folder / f"run{list(RUNS).index(model)}" / "bundle", time.perf_counter()
        if not bundle.is_dir(): make_bundle(args, bundle)
        made = time.perf_counter()
        model_rows, model_costs = measure(model, bundle, dataset, sizes, repeats)
        rows += model_rows; costs += model_costs
        size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) / 1e6
        loads.append((model, size, fresh_seconds(LOAD.format(str(bundle)))))
        print(f"{model}: run and bundle {made - start:.0f} s, timings {time.perf_counter() - made:.0f} s", file=sys.stderr)
    print_tables(repeats, rows, loads, costs, fresh_seconds(IMPORT_TORCH))


def print_tables(repeats: int, rows: list, loads: list, costs: list, torch_import: float):
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; medians of {repeats} passes, "
          f"raw forward and predictor taking turns batch by batch\n")
    print("| model | batch | raw forward samples/s | predictor samples/s (raw input) | ratio | goal >= 0.9x |\n"
          "|---|---:|---:|---|---:|---|")
    for model, bs, name, raw, ours, ratio in rows:
        goal = ("met" if ratio >= 0.9 else "MISSED") if bs == 32 else "(batch 32 only)"
        print(f"| {model} | {bs} | {raw:,.0f} | {ours:,.0f} ({name}) | {ratio:.2f}x | {goal} |")
    print("\n| bundle | size | `load` in a fresh process, imports included | `import torch` alone, in a fresh process | goal < 1 s |\n"
          "|---|---:|---:|---:|---|")
    for model, size, load_seconds in loads:
        goal = "(none)" if model not in LOAD_GOAL else "met" if load_seconds < LOAD_GOAL[model] else "MISSED"
        print(f"| {model} | {size:.1f} MB | {load_seconds:.2f} s | {torch_import:.2f} s | {goal} |")
    print("\n| model | raw input | batch | preprocessing µs/item (`encode`) | raw forward µs/item | preprocessing share of "
          "predictor time |\n|---|---|---:|---:|---:|---:|")
    for model, name, bs, encode, forward, share in costs:
        print(f"| {model} | {name} | {bs} | {encode:,.1f} | {forward:,.1f} | {share:.0%} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per measurement (medians are shown)")
    parser.add_argument("--keep", help="make the runs and bundles in this folder and keep them; bundles already there are "
                                       "reused (default: a new temporary folder)")
    parser.add_argument("--only", nargs="+", help="only the models whose name holds one of these words, e.g. cnn bert")
    args = parser.parse_args()
    models = [m for m in RUNS if not args.only or any(word.lower() in m.lower() for word in args.only)]
    if args.repeats < 1: parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if not models: parser.error(f"--only {' '.join(args.only)} matches none of the models: {', '.join(RUNS)}")
    main(args.repeats, args.keep, models)
