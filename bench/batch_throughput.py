"""What batch runs cost: per-run overhead, sweep throughput (1 vs 2 local workers vs a 2-worker Dask LocalCluster),
and the time to rebuild the index of 1,000 runs.

Every run executes tests/fixtures/tiny.ipynb, a template whose cells take milliseconds, so what is measured is
the machinery: a process per run, kernel start, parameters, HTML, metrics and the index update.

    .venv/bin/python bench/batch_throughput.py [--repeats 5] [--runs 12]
"""
import argparse, os, statistics, sys, tempfile, time
from pathlib import Path

from aiprod.batch import load_sweep, run_sweep, supervise
from aiprod.report import plan_run, save_metrics, write_index

TINY = Path(__file__).parents[1] / "tests" / "fixtures" / "tiny.ipynb"


def per_run_overhead(work: Path, repeats: int) -> tuple[float, float]:
    "Median seconds of one supervised run, end to end, and of its execution + rendering alone."
    totals, inside = [], []
    for i in range(repeats):
        start = time.perf_counter()
        result = supervise(plan_run(str(TINY), {"seed": i}), work / "overhead")
        totals.append(time.perf_counter() - start)
        inside.append(result["seconds"])
    return statistics.median(totals), statistics.median(inside)


def sweep_seconds(work: Path, name: str, runs: int, **how) -> float:
    "Seconds for a sweep of `runs` tiny runs (no comparison report) in a fresh reports folder."
    sweep_file = work / f"{name}.yaml"
    sweep_file.write_text(f"templates: {TINY}\ncomparison: false\ngrid:\n  seed: {list(range(runs))}\n")
    start = time.perf_counter()
    result = run_sweep(load_sweep(sweep_file), work / name, progress=False, **how)
    assert not result.failed and len(result.runs) == runs, result.runs
    return time.perf_counter() - start


def index_seconds(work: Path, count: int = 1000) -> float:
    "Seconds to rebuild index.html over `count` run folders with realistic metrics.json files."
    reports = work / "many"
    for i in range(count):
        run_dir = reports / f"20261124-{i:06d}-image_classification-{i:06x}"
        run_dir.mkdir(parents=True)
        (run_dir / "params.yaml").write_text(f"lr: {i / 1000}\nseed: {i % 3}\n")
        save_metrics(run_dir / "metrics.json", run_id=run_dir.name, template="image_classification", status="SUCCEEDED",
                     started="2026-11-24T00:00:00", timings={"execute_s": 9.5}, sweep=f"sweep-{i // 12}",
                     metrics={"test_accuracy": 0.9, "test_loss": 0.1}, overrides={"lr": i / 1000, "seed": i % 3},
                     evaluation={"confusion_matrix": [[i % 7] * 10] * 10, "per_class": [{"precision": 0.9}] * 10})
    start = time.perf_counter()
    write_index(reports)
    return time.perf_counter() - start


def main(repeats: int, runs: int):
    from distributed import LocalCluster
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        total, inside = per_run_overhead(work, repeats)
        rows = [("1 local worker", sweep_seconds(work, "one", runs, workers=1)),
                ("2 local workers", sweep_seconds(work, "two", runs, workers=2))]
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            rows.append(("Dask LocalCluster, 2 worker processes", sweep_seconds(work, "dask", runs, dask=cluster.scheduler_address)))
        index = index_seconds(work)
    print(f"tiny template, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, Python {sys.version.split()[0]}\n")
    print(f"per-run overhead, median of {repeats}: {total:.2f} s end to end (process, kernel start, parameters, cells, "
          f"HTML, metrics, index); {inside:.2f} s of it until the notebook had run (process start, imports, kernel start, cells) "
          f"(goal <= 3 s: {'met' if total <= 3 else 'MISSED'})\n")
    print(f"sweep of {runs} runs\n\n| {'how':<38} | seconds | runs/min | vs 1 worker | scaling efficiency |\n|---|---:|---:|---:|---:|")
    base = rows[0][1]
    for (name, seconds), workers in zip(rows, (1, 2, 2)):
        print(f"| {name:<38} | {seconds:7.1f} | {runs / seconds * 60:8.1f} | {base / seconds:10.2f}x | {base / seconds / workers:17.0%} |")
    print(f"\nindex.html over 1,000 runs: {index:.2f} s (goal <= 2 s: {'met' if index <= 2 else 'MISSED'})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", type=int, default=12)
    args = parser.parse_args()
    main(args.repeats, args.runs)
