"""What the report machinery costs: the default `aiprod run` end to end vs the same cells as a plain Python script.

Both run side by side in this one benchmark, alternating, `--repeats` times each; the table shows medians.
The plain script is the template's own code (nbconvert's script export, parameters at their defaults), run with
`python` in an empty folder: the same data, training, evaluation and figures, without kernel, papermill or HTML.

    .venv/bin/python bench/report_overhead.py [--repeats 3]
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

from nbconvert import PythonExporter

from aiprod.report import find_template

BIN = Path(sys.executable).parent


def timed(command: list, cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True, env={**os.environ, "MPLBACKEND": "Agg"})
    return time.perf_counter() - start


def main(repeats: int):
    script, _ = PythonExporter().from_filename(str(find_template("image_classification")))
    rows = {"plain": [], "run": [], "execute": [], "render": []}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        (work / "plain.py").write_text(script.replace("get_ipython()", "# get_ipython()"))
        for i in range(repeats):
            scratch = work / f"plain{i}"
            scratch.mkdir()
            rows["plain"].append(timed([sys.executable, work / "plain.py"], scratch))
            rows["run"].append(timed([BIN / "aiprod", "run", "--quiet", "--reports-dir", work / "reports"], work))
            record = json.loads(sorted((work / "reports").glob("*/metrics.json"))[-1].read_text())
            rows["execute"].append(record["timings"]["execute_s"])
            rows["render"].append(record["timings"]["render_s"])
    m = {k: statistics.median(v) for k, v in rows.items()}
    table = [("plain Python script, same cells (baseline)", m["plain"]),
             ("`aiprod run` end to end", m["run"]),
             ("  papermill: kernel start + parameters + cells", m["execute"]),
             ("  nbconvert HTML + header", m["render"]),
             ("  CLI start, parameter checks, files, index", m["run"] - m["execute"] - m["render"]),
             ("report machinery overhead (run - plain)", m["run"] - m["plain"])]
    print(f"default run (digits CNN, 10 epochs), median of {repeats}, {os.cpu_count()} CPUs\n")
    print(f"| {'what':<48} | {'seconds':>7} | {'vs plain':>8} |\n|---|---:|---:|")
    for name, seconds in table: print(f"| {name:<48} | {seconds:7.2f} | {seconds / m['plain']:7.2f}x |")
    print(f"\ngoals: run <= 20 s ({'met' if m['run'] <= 20 else 'MISSED'}), "
          f"overhead <= 5 s ({'met' if m['run'] - m['plain'] <= 5 else 'MISSED'})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    main(parser.parse_args().repeats)
