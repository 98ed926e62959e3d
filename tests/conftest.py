"""Shared fixtures: the `aiprod` command of this environment, one default run made once per session, headless Chromium."""
import json, shutil, subprocess, sys, time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
# Named data sets come through aiprod's registry, as in any run: from the folders named in AIPROD_DATA_DIR when it is
# set (`make test` sets it to ../shared/data when that folder exists), else from the cache, downloaded once and
# checked by sha256. Nothing here chooses a path: a clone anywhere runs the same tests.


def wait_for(condition, seconds: float = 60, interval: float = 0.2):
    "Poll `condition` until it holds; fail the test after `seconds`."
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out waiting"
        time.sleep(interval)


def run_cli(*args, cwd=None, timeout=300):
    "Run a command of this environment (`aiprod`, `papermill`), capturing its output."
    return subprocess.run([str(BIN / args[0]), *map(str, args[1:])], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    "`aiprod run` with no arguments, as a new user types it: (reports folder, run folder, completed process)."
    workdir = tmp_path_factory.mktemp("project")
    done = run_cli("aiprod", "run", "--quiet", cwd=workdir)
    assert done.returncode == 0, done.stderr
    run_dirs = [p for p in (workdir / "reports").iterdir() if p.is_dir()]
    assert len(run_dirs) == 1
    return workdir / "reports", run_dirs[0], done



RUNS = {  # small runs of each model template
    "image": ("image_classification",),
    "text": ("text_classification", "-p", "limit", "300", "-p", "epochs", "1"),
    "audio": ("audio_classification", "-p", "limit", "100", "-p", "epochs", "1"),
    "keras": ("image_classification", "-p", "framework", "keras", "-p", "epochs", "1"),
    "bert": ("text_classification", "-p", "model", "bert", "-p", "limit", "40", "-p", "epochs", "1", "-p", "max_length", "32"),
}
KERAS_RUNS = {  # the other Keras bundles, only exported and predicted (their model cards and errors are those of "keras")
    "keras-text": ("text_classification", "-p", "framework", "keras", "-p", "limit", "300", "-p", "epochs", "1"),
    "keras-audio": ("audio_classification", "-p", "framework", "keras", "-p", "limit", "100", "-p", "epochs", "1"),
    "keras-tensorflow": ("image_classification", "-p", "framework", "keras", "-p", "backend", "tensorflow", "-p", "epochs", "1"),
}


@pytest.fixture(scope="session")
def finished_runs(tmp_path_factory):
    "Finished runs of `RUNS` and `KERAS_RUNS`, each trained on first use and kept for the session (test_export and test_optimize share them): kind → (run folder, record, raw test split)."
    from aiprod import optimize
    runs = {}
    def finished(kind: str):
        if kind not in runs:
            workdir = tmp_path_factory.mktemp(kind)
            done = run_cli("aiprod", "run", *{**RUNS, **KERAS_RUNS}[kind], "--quiet", cwd=workdir, timeout=600)
            assert done.returncode == 0, done.stderr
            [run_dir] = [p for p in (workdir / "reports").iterdir() if p.is_dir()]
            record = json.loads((run_dir / "metrics.json").read_text())
            runs[kind] = run_dir, record, optimize.run_splits(run_dir, record)["test"]
        return runs[kind]
    return finished



@pytest.fixture(scope="session")
def digits_bundle(finished_runs, tmp_path_factory):
    "The session's digits CNN run exported with `aiprod export` (its drift reference included), and the run's raw test split."
    run_dir, _, test = finished_runs("image")
    out = tmp_path_factory.mktemp("digits-bundle") / "bundle"
    done = run_cli("aiprod", "export", run_dir, "--out", out)
    assert done.returncode == 0, done.stderr
    return out, test

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(not CHROMIUM, reason="no headless Chromium on this machine (`make browser` installs it)")


@pytest.fixture(scope="module")
def browser():
    "Headless Chromium, kept off the network's background services: pages must open from files alone."
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield browser
        browser.close()
