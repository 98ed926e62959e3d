"""Shared fixtures: the `aiprod` command of this environment and one default run, made once per session."""
import os, subprocess, sys, tempfile
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"  # the project's local copies of real data (MANIFEST.md)
# No test downloads: named data sets come from the local copies, and nothing is cached in the user's home.
os.environ.setdefault("AIPROD_DATA_DIR", str(SHARED_DATA))
os.environ["AIPROD_CACHE_DIR"] = tempfile.mkdtemp(prefix="aiprod-test-cache-")


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
