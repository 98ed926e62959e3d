"""`aiprod batch` and `aiprod compare` end to end: real sweeps of tiny runs, each in its own process and kernel, on two
local workers or a real Dask LocalCluster; failures, timeouts, dead kernels and Ctrl-C; skipping and retrying."""
import json, os, signal, statistics, subprocess
from pathlib import Path

import psutil
import pytest
import yaml

from aiprod.batch import load_sweep
from aiprod.report import list_runs
from conftest import BIN, run_cli, wait_for

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny.ipynb"


def sweep_file(folder: Path, body: str, template: Path = TINY, comparison: bool = False) -> Path:
    "A sweep file on `template`, with or without the real comparison report."
    path = folder / "sweep.yaml"
    path.write_text(f"templates: {template}\ncomparison: {'comparison' if comparison else 'false'}\n{body}")
    return path


def records(reports: Path, role: str = "run") -> list[dict]:
    return [r for r in list_runs(reports) if r.get("role", "run") == role]


def test_grid_sweep_runs_every_combination_then_skips_them(tmp_path):
    sweep = sweep_file(tmp_path, "title: a grid\nparams:\n  sleep: 0\ngrid:\n  x: [1, 2]\n  seed: [0, 1]\n", comparison=True)
    done = run_cli("aiprod", "batch", sweep, "--workers", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = records(tmp_path / "reports")
    assert sorted((r["params"]["x"], r["params"]["seed"]) for r in runs) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert {r["status"] for r in runs} == {"SUCCEEDED"} and len({r["sweep"] for r in runs}) == 1
    assert sorted(r["metrics"]["score"] for r in runs) == [2, 3, 4, 5]
    assert len({r["run_key"] for r in runs}) == 4
    assert "done 4/4 · failed 0 · running 0 · waiting 0 · skipped 0" in done.stderr   # the live progress line
    [comparison] = records(tmp_path / "reports", "comparison")                        # the sweep's comparison report
    assert comparison["status"] == "SUCCEEDED" and comparison["sweep"] == runs[0]["sweep"]
    assert sorted(comparison["params"]["runs"]) == sorted(r["run_id"] for r in runs)
    assert comparison["params"]["title"] == "a grid"
    assert f"comparison report: reports/{comparison['run_id']}/report.html" in done.stdout
    assert done.stdout.count("SUCCEEDED") == 4 and "score=" in done.stdout             # the summary table
    index = (tmp_path / "reports" / "index.html").read_text()
    assert f"sweep {runs[0]['sweep']}: 4 runs (4 succeeded) · <a href=\"{comparison['run_id']}/report.html\">comparison report</a>" in index
    listed = run_cli("aiprod", "runs", cwd=tmp_path)
    assert listed.stdout.count(f"sweep={runs[0]['sweep']}") == 5

    again = run_cli("aiprod", "batch", sweep, "--workers", "2", cwd=tmp_path)   # everything done: nothing runs
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("SUCCEEDED (earlier)") == 4 and len(list_runs(tmp_path / "reports")) == 5


def test_failing_runs_do_not_stop_the_others(tmp_path):
    "An exception, a dead kernel and a timeout each fail their own run, with a report saying why."
    sweep = sweep_file(tmp_path, "runs:\n  - {x: 1}\n  - {x: 2, fail: raise}\n  - {x: 3, fail: die}\n  - {x: 4, sleep: 60}\n  - {x: 5}\n")
    done = run_cli("aiprod", "batch", sweep, "--workers", "2", "--timeout", "12", cwd=tmp_path)
    assert done.returncode == 1 and "aiprod: 3 runs failed" in done.stderr
    by_x = {r["params"]["x"]: r for r in records(tmp_path / "reports")}
    assert {x: r["status"] for x, r in by_x.items()} == {1: "SUCCEEDED", 2: "FAILED", 3: "FAILED", 4: "FAILED", 5: "SUCCEEDED"}
    assert by_x[2]["error"]["ename"] == "ValueError" and by_x[2]["error"]["cell_index"] == 4
    assert by_x[3]["error"]["ename"] == "DeadKernelError"
    assert by_x[4]["error"] == {"ename": "Timeout", "evalue": "the run took longer than its 12 s limit and was stopped in cell 3",
                                "cell_index": 3, "execution_count": None}
    page = (tmp_path / "reports" / by_x[4]["run_id"] / "report.html").read_text()
    assert "aiprod-FAILED" in page and "took longer than its 12 s limit" in page and "celltag_aiprod-failed" in page   # the cell it was in shows
    assert "ValueError: asked to fail with x=2.0" in done.stdout and "Timeout: the run took longer" in done.stdout


def test_retry_failed_reruns_only_failures_and_force_reruns_all(tmp_path):
    sweep = sweep_file(tmp_path, "grid:\n  fail: ['', raise]\n")
    assert run_cli("aiprod", "batch", sweep, "--workers", "2", cwd=tmp_path).returncode == 1
    retried = run_cli("aiprod", "batch", sweep, "--workers", "2", "--retry-failed", cwd=tmp_path)
    assert retried.returncode == 1 and "SUCCEEDED (earlier)" in retried.stdout
    runs = records(tmp_path / "reports")
    assert sorted((r["params"]["fail"], r["status"]) for r in runs) == [("", "SUCCEEDED"), ("raise", "FAILED"), ("raise", "FAILED")]
    index = (tmp_path / "reports" / "index.html").read_text()   # a run tried twice counts once, by its latest attempt
    assert f"sweep {runs[0]['sweep']}: 2 runs (1 failed, 1 succeeded; 1 earlier attempt)" in index, index
    forced = run_cli("aiprod", "batch", sweep, "--workers", "2", "--force", cwd=tmp_path)
    assert forced.returncode == 1 and len(records(tmp_path / "reports")) == 5


def test_sigint_stops_the_sweep_cleanly(tmp_path):
    "Ctrl-C: finished runs keep their reports, running ones are INTERRUPTED, no kernel survives, the index is whole."
    sweep = sweep_file(tmp_path, "runs:\n  - {x: 1}\n  - {x: 2, sleep: 60, marker: started}\n  - {x: 3, sleep: 60, marker: started}\n"
                                 "  - {x: 4}\n", comparison=True)
    temporary = tmp_path / "tmp"  # the sweep's temporary folder: kernels' connection files go under it
    temporary.mkdir()
    batch = subprocess.Popen([BIN / "aiprod", "batch", sweep, "--workers", "2"], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(temporary)})
    wait_for(lambda: len(list((tmp_path / "reports").glob("*/started"))) == 2)
    family = psutil.Process(batch.pid).children(recursive=True)
    assert any("ipykernel" in " ".join(p.cmdline()) for p in family)   # two kernels are running
    batch.send_signal(signal.SIGINT)
    out, err = batch.communicate(timeout=60)
    assert batch.returncode == 130, err
    assert "interrupted" in err and "INTERRUPTED" in out
    gone, alive = psutil.wait_procs(family, timeout=5)
    assert not alive, [p.cmdline() for p in alive]                     # no orphan kernel or run process
    assert not list(temporary.rglob("*")), list(temporary.rglob("*"))  # no kernel connection file, nothing at all
    by_x = {r["params"]["x"]: r for r in records(tmp_path / "reports")}
    assert by_x[1]["status"] == "SUCCEEDED" and 4 not in by_x          # x=4 never started
    assert by_x[2]["status"] == by_x[3]["status"] == "INTERRUPTED"
    assert by_x[2]["error"]["ename"] == "Interrupted" and "in cell 3" in by_x[2]["error"]["evalue"]
    assert not records(tmp_path / "reports", "comparison")             # no comparison of an interrupted sweep
    assert "no comparison report" in out
    index = (tmp_path / "reports" / "index.html").read_text()
    assert index.rstrip().endswith("</html>") and index.count('<tr class="run">') == 3 and "s-INTERRUPTED" in index
    assert not list((tmp_path / "reports").glob(".index.html.*"))


def test_dask_local_cluster(tmp_path):
    "The same sweep on a real Dask cluster with worker processes; the runs land in the shared reports folder."
    from distributed import LocalCluster
    sweep = sweep_file(tmp_path, "grid:\n  x: [1, 2, 3]\n  fail: ['', raise]\n", comparison=True)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        done = run_cli("aiprod", "batch", sweep, "--dask", cluster.scheduler_address, "--timeout", "60", cwd=tmp_path)
        worker_pids = {w.pid for w in cluster.workers.values()}
    assert done.returncode == 1 and "aiprod: 3 runs failed" in done.stderr, done.stderr
    runs = records(tmp_path / "reports")
    assert sorted((r["params"]["x"], r["status"]) for r in runs) == [
        (1, "FAILED"), (1, "SUCCEEDED"), (2, "FAILED"), (2, "SUCCEEDED"), (3, "FAILED"), (3, "SUCCEEDED")]
    assert len(worker_pids) == 2 and records(tmp_path / "reports", "comparison")


def test_secret_parameter_is_never_written(tmp_path):
    token = "tok-5e3c2f1a9b7d4e60"
    sweep = sweep_file(tmp_path, f"params:\n  api_token: {token}\ngrid:\n  size: [1, 2]\n", template=FIXTURES / "secret.ipynb")
    done = run_cli("aiprod", "batch", sweep, "--workers", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = records(tmp_path / "reports")
    assert [r["metrics"]["token_length"] for r in runs] == [len(token)] * 2   # the kernel saw it
    leaks = [p for p in (tmp_path / "reports").rglob("*") if p.is_file() and token in p.read_text(errors="replace")]
    assert not leaks and token not in done.stdout + done.stderr
    assert all(r["secret_params"] == ["api_token"] and "api_token" not in r["params"] for r in runs)


@pytest.mark.parametrize("flags, message", [
    (["--workers", "0"], "argument --workers: must be a whole number above 0, got '0'"),
    (["--workers", "-1"], "argument --workers: must be a whole number above 0, got '-1'"),
    (["--timeout", "-1"], "argument --timeout: must be a number above 0, got '-1'"),
    (["--timeout", "0"], "argument --timeout: must be a number above 0, got '0'"),
])
def test_bad_flags_fail_before_running(tmp_path, flags, message):
    done = run_cli("aiprod", "batch", sweep_file(tmp_path, "grid:\n  x: [1, 2]\n"), *flags, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "reports").exists()


def test_secret_quoted_or_saved_is_redacted_in_sweeps(tmp_path):
    "A sweep's secret from the environment: runs that quote it in an error or save it show <secret>, in every file and output."
    token = "tok-2f1a9b7d4e60"
    sweep = sweep_file(tmp_path, "runs:\n  - {leak: raise}\n  - {leak: save}\n", template=FIXTURES / "secret.ipynb")
    done = subprocess.run([BIN / "aiprod", "batch", sweep, "--workers", "2"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "AIPROD_SECRET_API_TOKEN": token})
    assert done.returncode == 1 and "PermissionError: auth failed for <secret>" in done.stdout, done.stdout + done.stderr
    by_leak = {r["params"]["leak"]: r for r in records(tmp_path / "reports")}
    assert by_leak["save"]["leaked"]["token"] == "<secret>" and by_leak["raise"]["metrics"]["token_length"] == len(token)
    leaks = [p for p in (tmp_path / "reports").rglob("*") if p.is_file() and token in p.read_text(errors="replace")]
    assert not leaks and token not in done.stdout + done.stderr


@pytest.mark.parametrize("body, message", [
    ("grid:\n  x: [1, 2]\n  sleep: []\n", "sweep.yaml line 5 (grid.sleep): grid parameter 'sleep' needs a non-empty list of values"),
    ("grid: {}\n", "sweep.yaml line 3 (grid): the grid is empty"),
    ("grid:\n  x: [1, 2]\n  speed: [1]\n", "sweep.yaml line 5 (grid.speed): template 'tiny' has no parameter 'speed'; its parameters: x, seed"),
    ("runs:\n  - {x: 1}\n  - {x: one}\n", "sweep.yaml line 5 (runs[1].x): parameter 'x' of template 'tiny' must be float, got 'one'"),
    ("grid:\n  x: [1, 2\n", "sweep.yaml line 5: not valid YAML"),
    ("comparison: false\n", "sweep.yaml line 3 (comparison): duplicate key"),
    ("gird:\n  x: [1, 2]\n", "sweep.yaml line 3 (gird): unknown key 'gird'; known keys: templates, title, params, grid, runs, comparison"),
])
def test_bad_sweep_fails_before_running(tmp_path, body, message):
    done = run_cli("aiprod", "batch", sweep_file(tmp_path, body), cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not (tmp_path / "reports").exists()


def test_unknown_template_in_sweep_names_its_line(tmp_path):
    (tmp_path / "sweep.yaml").write_text("templates:\n  - image_classification\n  - image_clasification\n")
    done = run_cli("aiprod", "batch", "sweep.yaml", cwd=tmp_path)
    assert done.returncode == 2 and "sweep.yaml line 3 (templates[1]): unknown template 'image_clasification'" in done.stderr


def test_compare_any_runs(tmp_path):
    sweep = sweep_file(tmp_path, "grid:\n  x: [1, 2]\n")
    assert run_cli("aiprod", "batch", sweep, "--workers", "2", cwd=tmp_path).returncode == 0
    ids = [r["run_id"] for r in records(tmp_path / "reports")]
    done = run_cli("aiprod", "compare", *ids, "--title", "by hand", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    made = [r for r in records(tmp_path / "reports", "comparison") if r["params"]["title"] == "by hand"]
    assert len(made) == 1 and made[0]["metrics"]["runs"] == 2 and made[0]["sweep"] is None
    assert f"comparison report: reports/{made[0]['run_id']}/report.html  (SUCCEEDED)" in done.stdout


def _fake_done_run(reports: Path, i: int, plan, sweep_id: str) -> float:
    "A finished run of `plan` as `aiprod run` leaves it, with a two-epoch history whose gap shrinks with wd and dropout."
    gap = 0.3 - 0.1 * (plan.params["wd"] > 0) - 0.1 * (plan.params["dropout"] > 0) + 0.01 * plan.params["seed"]
    folder = reports / f"20260101-0000{i:02d}-text_classification-fake{i:02d}"
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(plan.params))
    (folder / "history.csv").write_text(f"epoch,train_loss,valid_loss,valid_accuracy\n1,0.7,0.7,0.5\n2,{0.6 - gap!r},0.6,0.7\n")
    (folder / "metrics.json").write_text(json.dumps({
        "run_id": folder.name, "run_key": plan.run_key, "status": "SUCCEEDED", "template": plan.name, "role": "run",
        "sweep": sweep_id, "params": plan.params, "metrics": {"test_accuracy": 0.7, "best_epoch": 2}, "training": {"best_epoch": 2}}))
    return gap


def test_shipped_sweep_runs_by_name(tmp_path):
    "`aiprod batch regularisation` finds the shipped sweep; its runs already done (faked), it only makes the comparison."
    sweep = load_sweep("regularisation")
    gaps = {f"20260101-0000{i:02d}-text_classification-fake{i:02d}": _fake_done_run(tmp_path / "reports", i, plan, sweep.id)
            for i, plan in enumerate(sweep.plans)}
    done = run_cli("aiprod", "batch", "regularisation", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"sweep {sweep.id}" in done.stdout and done.stdout.count("SUCCEEDED (earlier)") == len(sweep.plans)
    [comparison] = records(tmp_path / "reports", "comparison")
    assert comparison["status"] == "SUCCEEDED" and sorted(comparison["params"]["runs"]) == sorted(gaps)
    saved = comparison["comparison"]
    assert {e["run_id"]: round(e["loss_gap"]["gap"], 9) for e in saved["runs"]} == {i: round(g, 9) for i, g in gaps.items()}
    for group in saved["seed_groups"]:  # the gap's mean over each setting's seeds
        assert group["loss_gap"]["mean"] == pytest.approx(statistics.fmean(gaps[i] for i in group["runs"]), abs=1e-9)
        assert group["loss_gap"]["n"] == len(group["seeds"]) > 1
    page = (tmp_path / "reports" / comparison["run_id"] / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 5  # test accuracy and gap by wd and by dropout, learning curves


@pytest.mark.parametrize("name, message", [
    ("regularization", "unknown sweep 'regularization'; known sweeps: regularisation"),
    ("nowhere/sweep.yaml", "no sweep file nowhere/sweep.yaml; shipped sweeps, run by name: regularisation"),
])
def test_unknown_sweep_name_lists_the_shipped_ones(tmp_path, name, message):
    done = run_cli("aiprod", "batch", name, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "reports").exists()


def test_a_file_of_that_name_wins_over_the_shipped_sweep(tmp_path):
    sweep_file(tmp_path, "grid:\n  x: [1]\n").rename(tmp_path / "regularisation")
    done = run_cli("aiprod", "batch", "regularisation", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [r["params"]["x"] for r in records(tmp_path / "reports")] == [1]
