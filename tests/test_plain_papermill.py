"""The shipped template runs under the plain papermill CLI, with no aiprod wrapper."""
import json, re

import pytest

from aiprod.report import find_template, template_names, template_parameters
from conftest import run_cli


def test_help_notebook_documents_parameters():
    done = run_cli("papermill", "--help-notebook", find_template("image_classification"))
    assert done.returncode == 0
    assert "epochs: int (default 10)" in done.stdout and "passes over the training set" in done.stdout


def test_template_runs_under_papermill(tmp_path):
    template = find_template("image_classification")
    done = run_cli("papermill", template, tmp_path / "out.ipynb", "-p", "epochs", "2", "-p", "seed", "3",
                   "--cwd", tmp_path, "--no-progress-bar")
    assert done.returncode == 0, done.stderr
    notebook = json.loads((tmp_path / "out.ipynb").read_text())
    assert notebook["metadata"]["papermill"]["parameters"] == {"epochs": 2, "seed": 3}
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["training"]["epochs_run"] == 2 and record["metrics"]["test_accuracy"] > 0.5
    assert (tmp_path / "model.safetensors").stat().st_size > 0 and (tmp_path / "history.csv").exists()


@pytest.mark.parametrize("name", template_names())
def test_every_declared_parameter_is_understood(name):
    "papermill skips (with only a log line) a parameter line it cannot parse, e.g. one with `=` in its comment."
    cell = next(c for c in json.loads(find_template(name).read_text())["cells"] if "parameters" in c["metadata"].get("tags", []))
    declared = [line.split(":")[0] for line in "".join(cell["source"]).splitlines() if re.match(r"^\w+\s*:", line)]
    assert list(template_parameters(find_template(name))) == declared
