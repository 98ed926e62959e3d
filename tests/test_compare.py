"""Comparison reports on real runs: two learning rates × two seeds of a tiny image run, plus one run that fails."""
import csv, json, re, statistics, subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from aiprod.report import find_template
from conftest import BIN, needs_chromium, run_cli

FAILING = Path(__file__).parent / "fixtures" / "failing.ipynb"
LRS, SEEDS = ("0.001", "0.01"), ("1", "2")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    "Five real runs (four succeed, one fails), compared by `run_report('comparison', ...)` in a fresh process."
    workdir = tmp_path_factory.mktemp("compare")
    commands = [("aiprod", "run", "image_classification", "-p", "epochs", 1, "-p", "limit", 60, "-p", "lr", lr, "-p", "seed", seed, "--quiet")
                for lr in LRS for seed in SEEDS] + [("aiprod", "run", FAILING, "-p", "divisor", 0, "--quiet")]
    with ThreadPoolExecutor(2) as pool:  # each run is its own process, as a batch runs them
        done = list(pool.map(lambda command: run_cli(*command, cwd=workdir), commands))
    assert [d.returncode for d in done] == [0, 0, 0, 0, 1], [d.stderr[-2000:] for d in done]
    reports = workdir / "reports"
    run_ids = sorted(p.name for p in reports.iterdir() if p.is_dir())
    code = ("from aiprod.report import run_report; import sys; "
            f"print(run_report('comparison', {{'runs': {run_ids!r}, 'title': 'Learning rate sweep'}}, sys.argv[1], progress=False))")
    made = subprocess.run([BIN / "python", "-c", code, reports], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    comparison_dir = Path(made.stdout.strip().splitlines()[-1])
    records = {run_id: json.loads((reports / run_id / "metrics.json").read_text()) for run_id in run_ids}
    return reports, records, comparison_dir


def _succeeded(records):
    return {run_id: r for run_id, r in records.items() if r["status"] == "SUCCEEDED"}


def test_comparison_records_best_run_and_what_varied(sweep):
    _, records, comparison_dir = sweep
    saved = json.loads((comparison_dir / "metrics.json").read_text())
    ok = _succeeded(records)
    best_accuracy = max(r["metrics"]["test_accuracy"] for r in ok.values())
    assert saved["status"] == "SUCCEEDED" and saved["template"] == "comparison"
    assert saved["metrics"] == {"runs": 5, "succeeded": 4, "best_test_accuracy": best_accuracy}
    comparison = saved["comparison"]
    assert comparison["metric"] == "test_accuracy" and comparison["higher_is_better"] is True
    assert comparison["varying"] == ["lr", "seed"]
    assert ok[comparison["best_run"]]["metrics"]["test_accuracy"] == best_accuracy
    assert {r["run_id"]: r["status"] for r in comparison["runs"]} == {i: r["status"] for i, r in records.items()}


def test_seed_mean_and_std_match_the_runs(sweep):
    _, records, comparison_dir = sweep
    saved = json.loads((comparison_dir / "metrics.json").read_text())
    page = (comparison_dir / "report.html").read_text()
    groups = {g["params"]["lr"]: g for g in saved["comparison"]["seed_groups"]}
    assert sorted(groups) == sorted(map(float, LRS))
    for lr, group in groups.items():
        members = [r for r in _succeeded(records).values() if r["params"]["lr"] == lr]
        assert sorted(group["seeds"]) == [1, 2] and len(members) == 2
        for metric in ("test_accuracy", "best_valid_loss"):
            values = [r["metrics"][metric] for r in members]
            stats = group["metrics"][metric]
            assert stats["n"] == 2 and stats["mean"] == pytest.approx(statistics.fmean(values), abs=1e-12)
            assert stats["std"] == pytest.approx(statistics.stdev(values), abs=1e-12)
            shown = f"{statistics.fmean(values):.4g} ± {statistics.stdev(values):.4g}"
            assert shown in page, (metric, lr, shown)


def test_page_lists_every_run_with_working_links(sweep):
    reports, records, comparison_dir = sweep
    page = (comparison_dir / "report.html").read_text()
    rows = dict(re.findall(r'<tr(?: class="aiprod-best")? data-run="([^"]+)">(.*?)</tr>', page))
    assert sorted(rows) == sorted(records)
    failed = next(i for i, r in records.items() if r["status"] == "FAILED")
    assert "aiprod-run-FAILED" in rows[failed] and all("aiprod-run-SUCCEEDED" in rows[i] for i in _succeeded(records))
    best = json.loads((comparison_dir / "metrics.json").read_text())["comparison"]["best_run"]
    assert re.findall(r'<tr class="aiprod-best" data-run="([^"]+)"', page) == [best] and "★ best" in rows[best]
    assert "<th>lr</th><th>seed</th>" in page and "Summary: Learning rate sweep" in page
    links = set(re.findall(r'href="(\.\./[^"]+)"', page))
    assert {f"../{run_id}/report.html" for run_id in records} <= links
    assert all((comparison_dir / link).resolve().is_file() for link in links), links
    assert (comparison_dir / f"../{best}/report.html").resolve() == (reports / best / "report.html").resolve()


def test_plots_are_embedded_pngs(sweep):
    _, _, comparison_dir = sweep
    page = (comparison_dir / "report.html").read_text()
    sources = re.findall(r'<img [^>]*src="([^"]{0,40})', page)
    assert len(sources) >= 3 and all(s.startswith("data:image/png;base64,") for s in sources), sources  # lr plot, gap plot, curves


def _gap_from_history(reports, run_id, record):
    "Validation minus training loss at the run's best epoch, read straight from its history.csv."
    with open(reports / run_id / "history.csv") as f:
        row = next(r for r in csv.DictReader(f) if int(r["epoch"]) == record["training"]["best_epoch"])
    return float(row["valid_loss"]) - float(row["train_loss"])


def test_gap_column_record_and_plot_match_the_histories(sweep):
    "Each run's train–validation gap at its best epoch: in metrics.json, in a sortable column, averaged over seeds, plotted."
    reports, records, comparison_dir = sweep
    saved = json.loads((comparison_dir / "metrics.json").read_text())["comparison"]
    page = (comparison_dir / "report.html").read_text()
    gaps = {run_id: _gap_from_history(reports, run_id, r) for run_id, r in _succeeded(records).items()}
    entries = {entry["run_id"]: entry["loss_gap"] for entry in saved["runs"]}
    for run_id, gap in gaps.items():
        assert entries[run_id]["gap"] == pytest.approx(gap, abs=1e-12)
        assert entries[run_id]["epoch"] == records[run_id]["training"]["best_epoch"]
    failed = next(i for i, r in records.items() if r["status"] == "FAILED")
    assert entries[failed] is None
    rows = dict(re.findall(r'<tr(?: class="aiprod-best")? data-run="([^"]+)">(.*?)</tr>', page))
    head = re.search(r"<thead><tr>(.*?)</tr></thead>", page).group(1)
    column = re.findall(r"<th>(.*?)</th>", head).index("gap (valid − train loss)")
    for run_id, gap in gaps.items():
        cell = re.findall(r"<td[^>]*>.*?</td>", rows[run_id])[column]
        assert f'data-value="{entries[run_id]["gap"]!r}">{entries[run_id]["gap"]:.4g}</td>' in cell, cell
    for group in saved["seed_groups"]:
        values = [gaps[i] for i in group["runs"]]
        assert group["loss_gap"]["mean"] == pytest.approx(statistics.fmean(values), abs=1e-12)
        assert group["loss_gap"]["std"] == pytest.approx(statistics.stdev(values), abs=1e-12)
    assert "Train–validation gap" in page and "<strong>with dropout on</strong>" in page
    assert page.count(">gap (valid − train loss)</th>") == 2  # the runs table and the seed table


def test_template_runs_under_plain_papermill(sweep, tmp_path):
    reports, records, _ = sweep
    template = find_template("comparison")
    helped = run_cli("papermill", "--help-notebook", template)
    assert helped.returncode == 0 and "runs: list (default [])" in helped.stdout and "the metric that ranks runs" in helped.stdout
    folder = reports / "plain-papermill"
    folder.mkdir()
    chosen = sorted(_succeeded(records))[:2]
    done = run_cli("papermill", template, tmp_path / "out.ipynb", "-y", f"runs: {json.dumps(chosen)}", "-p", "metric", "best_valid_loss",
                   "--cwd", folder, "--no-progress-bar")
    assert done.returncode == 0, done.stderr
    saved = json.loads((folder / "metrics.json").read_text())
    best = min(chosen, key=lambda i: records[i]["metrics"]["best_valid_loss"])
    assert saved["metrics"]["runs"] == 2 and saved["comparison"]["best_run"] == best
    assert saved["metrics"]["best_best_valid_loss"] == records[best]["metrics"]["best_valid_loss"]


def test_unknown_run_ids_fail_with_their_names(sweep):
    reports, records, _ = sweep
    known = sorted(records)[0]
    done = run_cli("aiprod", "run", "comparison", "-p", "runs", f"[{known}, 20990101-000000-nothing-abc123]", "--quiet",
                   cwd=reports.parent)
    assert done.returncode == 1
    assert "1 of the 2 runs to compare are not in" in done.stderr and "20990101-000000-nothing-abc123" in done.stderr


@needs_chromium
def test_table_sorts_in_the_browser_offline(sweep, browser):
    _, records, comparison_dir = sweep
    page = browser.new_page()
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto((comparison_dir / "report.html").as_uri())
    column = lambda name: page.evaluate(
        """name => { const table = document.querySelector("table.aiprod-runs");
                     const i = [...table.tHead.rows[0].cells].findIndex(c => c.textContent === name);
                     return [...table.tBodies[0].rows].map(r => r.cells[i].getAttribute("data-value")); }""", name)
    page.locator("table.aiprod-runs th", has_text="test accuracy").click()
    accuracies = [float(v) for v in column("test accuracy") if v]
    assert accuracies == sorted(accuracies) and len(accuracies) == 4 and column("test accuracy")[-1] == ""  # failed run last
    page.locator("table.aiprod-runs th", has_text="test accuracy").click()
    accuracies = [float(v) for v in column("test accuracy") if v]
    assert accuracies == sorted(accuracies, reverse=True)
    page.locator("table.aiprod-runs th", has_text="lr").first.click()
    assert [float(v) for v in column("lr") if v] == sorted(float(r["params"].get("lr", 0)) for r in _succeeded(records).values())
    assert page.locator("table.aiprod-runs th", has_text="lr").first.get_attribute("aria-sort") == "ascending"
    page.locator("table.aiprod-runs th", has_text="gap (valid").click()
    gaps = [float(v) for v in column("gap (valid − train loss)") if v]
    assert gaps == sorted(gaps) and len(gaps) == 4
    assert all(url.startswith(("file:", "data:")) for url in requests), requests  # no server, no CDN
    page.close()
