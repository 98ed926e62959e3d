"""Bad parameters and templates fail before any kernel starts (exit 2, a message naming the item, nothing written);
a run whose notebook raises writes a FAILED report and exits 1."""
import json

import pytest

from conftest import run_cli


@pytest.mark.parametrize("args, message", [
    (["no_such_template"], "unknown template 'no_such_template'; known templates: audio_classification, "),
    (["-p", "epoch", "3"], "template 'image_classification' has no parameter 'epoch'; its parameters: dataset, data_path, data_options,"),
    (["-p", "epochs", "3.5"], "parameter 'epochs' of template 'image_classification' must be int, got '3.5'"),
    (["-p", "lr", "fast"], "parameter 'lr' of template 'image_classification' must be float, got 'fast'"),
    (["-p", "widths", "{a: 1}"], "parameter 'widths' of template 'image_classification' must be list"),
    (["missing/notebook.ipynb"], "no notebook at missing/notebook.ipynb"),
])
def test_bad_parameters_fail_before_running(tmp_path, args, message):
    done = run_cli("aiprod", "run", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr, done.stderr
    assert not (tmp_path / "reports").exists()


def test_bad_parameters_file_names_line(tmp_path):
    (tmp_path / "params.yaml").write_text("epochs: 3\nlr: [0.1\n")
    done = run_cli("aiprod", "run", "-f", "params.yaml", cwd=tmp_path)
    assert done.returncode == 2 and "params.yaml line 3: not valid YAML" in done.stderr, done.stderr
    (tmp_path / "params.yaml").write_text("epochs: three\n")
    done = run_cli("aiprod", "run", "-f", "params.yaml", cwd=tmp_path)
    assert done.returncode == 2 and "must be int, got 'three'" in done.stderr
    assert not (tmp_path / "reports").exists()


def test_failing_cell_gives_failed_report(tmp_path, fixtures):
    done = run_cli("aiprod", "run", "--quiet", fixtures / "failing.ipynb", "-p", "divisor", "0", cwd=tmp_path)
    assert done.returncode == 1
    assert "FAILED" in done.stderr and "ZeroDivisionError: division by zero" in done.stderr
    run_dir = next((tmp_path / "reports").glob("*-failing-*"))
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "FAILED" and record["error"]["ename"] == "ZeroDivisionError"
    page = (run_dir / "report.html").read_text()
    assert "aiprod-FAILED" in page and "ZeroDivisionError" in page
    failing_cell = page[page.index("celltag_aiprod-failed"):]
    assert "divisor" in failing_cell.split("jp-Cell-outputWrapper")[0]   # the failing cell's code is shown
    assert "before the failure" in page                                   # cells before it still have outputs
    assert "FAILED" in (tmp_path / "reports" / "index.html").read_text()


def test_dead_kernel_gives_failed_report(tmp_path, fixtures):
    done = run_cli("aiprod", "run", "--quiet", fixtures / "kernel_dies.ipynb", cwd=tmp_path)
    assert done.returncode == 1 and "DeadKernelError" in done.stderr
    run_dir = next((tmp_path / "reports").glob("*-kernel_dies-*"))
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "FAILED"
    page = (run_dir / "report.html").read_text()
    assert "aiprod-FAILED" in page and "Kernel died" in page and "still alive" in page


def test_unknown_data_set_fails_inside_run_with_clear_message(tmp_path):
    done = run_cli("aiprod", "run", "--quiet", "-p", "dataset", "mnits", cwd=tmp_path)
    assert done.returncode == 1
    assert "unknown data set 'mnits'; known data sets: audiofolder, digits, fsdd" in done.stderr, done.stderr
    run_dir = next((tmp_path / "reports").glob("*-image_classification-*"))
    assert "unknown data set" in (run_dir / "report.html").read_text()
    assert not (run_dir / "model.safetensors").exists()


@pytest.fixture
def fixtures():
    from pathlib import Path
    return Path(__file__).parent / "fixtures"
