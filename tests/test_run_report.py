"""End to end: `aiprod run` on the default template writes a complete run folder and a readable report."""
import csv, json, re

import yaml

from aiprod.data import batches, split_data
from aiprod.datasets import load_dataset
from aiprod.report import list_runs
from aiprod.training import load_model, read_weights
from conftest import run_cli


def test_default_run_writes_every_file(default_run):
    reports, run_dir, done = default_run
    assert f"report: reports/{run_dir.name}/report.html" in done.stdout
    assert re.fullmatch(r"\d{8}-\d{6}-image_classification-[0-9a-f]{6}", run_dir.name)
    names = {p.name for p in run_dir.iterdir()}
    assert names == {"report.html", "notebook.ipynb", "params.yaml", "metrics.json", "history.csv", "model.safetensors",
                     "preprocessing", "input_example.npy", "reference.json", "training.log", "tensorboard"}  # no checkpoint: the fit finished


def test_default_run_reaches_target_accuracy(default_run):
    _, run_dir, _ = default_run
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "SUCCEEDED" and record["error"] is None
    assert record["metrics"]["test_accuracy"] >= 0.97
    assert record["evaluation"]["confusion_matrix"] and len(record["evaluation"]["per_class"]) == 10
    assert record["environment"]["torch"].startswith("2.") and record["training"]["device"] == "cpu"
    assert record["timings"]["execute_s"] > 0 and record["timings"]["total_s"] >= record["timings"]["execute_s"]
    recipe = record["training"]["recipe"]  # how the model was trained, saved with it
    assert (recipe["opt"], recipe["lr"], recipe["schedule"], recipe["bs"], recipe["epochs"]) == ("adamw", 0.003, "onecycle", 64, 10)


def test_params_yaml_holds_what_was_injected(default_run):
    _, run_dir, _ = default_run
    params = yaml.safe_load((run_dir / "params.yaml").read_text())
    assert params["epochs"] == 10 and params["dataset"] == "digits"
    injected = json.loads((run_dir / "notebook.ipynb").read_text())["cells"][2]
    assert "injected-parameters" in injected["metadata"]["tags"]
    assert "epochs = 10\n" in "".join(injected["source"])


def test_history_and_weights_reload(default_run):
    "history.csv has a row per epoch; the saved weights rebuild the model and reproduce the test accuracy."
    _, run_dir, _ = default_run
    record = json.loads((run_dir / "metrics.json").read_text())
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    assert len(rows) == record["training"]["epochs_run"]
    assert float(rows[-1]["valid_accuracy"]) > 0.9
    model = load_model(run_dir / "model.safetensors")
    metadata = read_weights(run_dir / "model.safetensors")[1]
    assert metadata["data_fingerprint"] == record["data"]["fingerprint"] and metadata["model"] == "cnn"
    assert metadata["recipe"] == record["training"]["recipe"]
    test = split_data(load_dataset("digits"), seed=0)["test"]
    stats = metadata["normalization"]        # the training split's statistics travel with the weights
    test.x = ((test.x - stats["mean"][0]) / stats["std"][0]).astype("float32")
    import torch
    with torch.no_grad():
        predictions = torch.cat([model(xb).argmax(1) for xb, _ in batches(test, bs=512)])
    assert (predictions.numpy() == test.y).mean() == record["metrics"]["test_accuracy"]


def test_report_is_readable_and_self_contained(default_run):
    _, run_dir, _ = default_run
    page = (run_dir / "report.html").read_text()
    assert "aiprod-SUCCEEDED" in page and "Image classification report" in page
    assert "<b>0.99" in page and "test accuracy" in page and "Test accuracy:" in page
    headings = [page.index(f'id="{section}"') for section in ("Data", "Model", "Training", "Evaluation")]
    assert headings == sorted(headings)
    assert page.count("data:image/png;base64") >= 5        # balance, samples, curves, confusion matrix, errors
    assert not re.search(r'(src|href)="https?://', page)    # nothing fetched from a server or CDN
    assert not re.search(r'import\("https?://', page)
    assert "git commit" in page and "fingerprint" in page


def test_index_and_runs_list_the_run(default_run):
    reports, run_dir, _ = default_run
    page = (reports / "index.html").read_text()
    assert f'href="{run_dir.name}/report.html"' in page and "SUCCEEDED" in page
    listed = run_cli("aiprod", "runs", "--reports-dir", reports)
    assert listed.returncode == 0 and run_dir.name in listed.stdout and "test_accuracy=0.99" in listed.stdout


def test_parameters_file_then_p_flags(default_run, tmp_path):
    "A past run's params.yaml repeats it; -p wins over -f; the new run sorts first in the index."
    reports, first, _ = default_run
    done = run_cli("aiprod", "run", "--quiet", "-f", first / "params.yaml", "-p", "epochs", "2", "-p", "widths", "[8, 16]",
                   "--reports-dir", reports)
    assert done.returncode == 0, done.stderr
    newest = list_runs(reports)[0]
    assert newest["run_id"] != first.name and newest["run_id"] > first.name
    assert newest["params"]["epochs"] == 2 and newest["params"]["widths"] == [8, 16]
    assert newest["overrides"] == {**yaml.safe_load((first / "params.yaml").read_text()), "epochs": 2, "widths": [8, 16]}
    assert newest["training"]["epochs_run"] == 2
    page = (reports / "index.html").read_text()
    assert page.index(newest["run_id"]) < page.index(first.name)


def test_training_writes_tensorboard_logs_and_a_training_log(default_run):
    "The run folder holds TensorBoard event files (`tensorboard --logdir reports/`) and the fit's progress lines."
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    _, run_dir, _ = default_run
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert {"loss/train", "loss/valid", "accuracy/valid", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss/valid")] == [int(row["epoch"]) for row in rows]
    lines = (run_dir / "training.log").read_text().splitlines()
    assert lines[0] == "training: 10 epochs of 19 steps" and lines[-1].startswith("epoch 10/10  train_loss ")


def test_a_run_shows_training_progress_on_stderr(tmp_path):
    "Without --quiet, the fit's progress lines reach the terminal as the run goes; the report holds none of them."
    done = run_cli("aiprod", "run", "-p", "epochs", "3", "-p", "widths", "[8, 16]", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "training: 3 epochs of 19 steps\n" in done.stderr, done.stderr
    for epoch in (1, 2, 3): assert re.search(rf"epoch {epoch}/3  train_loss [\d.]+  valid_loss [\d.]+  valid_accuracy [\d.]+  "
                                            rf"[\d,]+ samples/s  [\d.]+ s  ETA \d:\d\d:\d\d", done.stderr), done.stderr
    assert "Executing" in done.stderr  # papermill's bar is still there
    (run_dir,) = (tmp_path / "reports").glob("*/")
    assert "samples/s  ETA" not in (run_dir / "notebook.ipynb").read_text() + (run_dir / "report.html").read_text()
    quiet = run_cli("aiprod", "run", "--quiet", "-p", "epochs", "1", "-p", "widths", "[8, 16]", cwd=tmp_path)
    assert quiet.returncode == 0 and "epoch 1/1" not in quiet.stderr, quiet.stderr
