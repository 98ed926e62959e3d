"""An interrupted run resumes from its last checkpoint: a real `aiprod run` killed mid-training (as a lost machine
would end it) is executed again in its own folder by `aiprod run --resume`, and ends exactly as the uninterrupted run."""
import csv, json, os, signal, subprocess

import psutil
import pytest

from aiprod.core import AiprodError
from aiprod.report import resume_run
from aiprod.training import CHECKPOINT, load_checkpoint
from conftest import BIN, run_cli, wait_for

ARGS = ["-p", "epochs", "40", "-p", "patience", "40"]  # the digits CNN, about 0.1 s an epoch: long enough to cut short


def _history(run_dir):
    return [{k: v for k, v in row.items() if k not in ("seconds", "samples_per_second")}
            for row in csv.DictReader((run_dir / "history.csv").open())]


def test_a_killed_run_resumes_from_its_checkpoint(tmp_path):
    child = subprocess.Popen([BIN / "aiprod", "run", "--quiet", *ARGS], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
    log = lambda: next((tmp_path / "reports").glob("*/training.log"), None)
    wait_for(lambda: log() is not None and "epoch 5/40  train_loss" in log().read_text(), seconds=120, interval=0.05)
    family = psutil.Process(child.pid).children(recursive=True)  # the kernel runs in a session of its own
    os.killpg(child.pid, signal.SIGKILL)
    for process in family: process.kill()
    child.wait()
    psutil.wait_procs(family, timeout=10)
    run_dir = log().parent
    assert not (run_dir / "metrics.json").exists()                # nothing finished it: an INCOMPLETE run
    done = load_checkpoint(run_dir / CHECKPOINT)["epoch"]
    assert 4 <= done < 40, done  # the checkpoint of epoch 5 may not be written yet

    resumed = run_cli("aiprod", "run", "--resume", run_dir.name, "--quiet", cwd=tmp_path)  # as a user resumes it
    assert resumed.returncode == 0 and f"report: reports/{run_dir.name}/report.html" in resumed.stdout, resumed.stderr
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "SUCCEEDED" and record["run_id"] == run_dir.name
    assert [a["status"] for a in record["attempts"]] == ["INCOMPLETE"]
    assert record["training"]["resumed_at_epoch"] == done + 1 and record["training"]["epochs_run"] == 40
    assert not (run_dir / CHECKPOINT).exists()
    assert f"training: 40 epochs of 19 steps, resumed at epoch {done + 1}" in (run_dir / "training.log").read_text()
    assert "This run was resumed after 1 earlier attempt (INCOMPLETE)" in (run_dir / "report.html").read_text()
    assert len(list((tmp_path / "reports").glob("*/params.yaml"))) == 1  # the same run, not a new one
    with pytest.raises(AiprodError, match="succeeded: there is nothing to resume"): resume_run(run_dir, tmp_path / "reports")

    whole = run_cli("aiprod", "run", "--quiet", *ARGS, cwd=tmp_path)  # the same run, never interrupted
    assert whole.returncode == 0, whole.stderr
    (uninterrupted,) = [p.parent for p in (tmp_path / "reports").glob("*/params.yaml") if p.parent != run_dir]
    assert _history(run_dir) == _history(uninterrupted)              # bit for bit, on the CPU
    other = json.loads((uninterrupted / "metrics.json").read_text())
    assert record["metrics"] == other["metrics"] and record["evaluation"] == other["evaluation"]


def test_resume_refuses_what_it_cannot_resume(tmp_path):
    done = run_cli("aiprod", "run", "--resume", "nope", cwd=tmp_path)
    assert done.returncode == 2 and "no run 'nope' in reports" in done.stderr, done.stderr
    done = run_cli("aiprod", "run", "--resume", "nope", "-p", "epochs", "2", cwd=tmp_path)
    assert done.returncode == 2 and "leave out -p and -f" in done.stderr, done.stderr
