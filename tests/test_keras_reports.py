"""The Keras path of each report template (framework keras, on the torch or TensorFlow backend) through the real CLI,
on real data with a tiny limit and one epoch: the same run folder, history and metrics as the PyTorch path."""
import json

import pytest

from aiprod.keras_models import read_metadata
from conftest import run_cli

RUN_FILES = {"report.html", "notebook.ipynb", "params.yaml", "metrics.json", "history.csv", "model.keras", "training.log", "tensorboard"}


def keras_run(tmp_path, template, backend, *extra):
    "Run `template` with Keras on `backend` for one epoch: (run folder, metrics.json)."
    done = run_cli("aiprod", "run", template, "--quiet", "-p", "framework", "keras", "-p", "backend", backend,
                   "-p", "epochs", "1", *extra, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (run_dir,) = [p for p in (tmp_path / "reports").iterdir() if p.is_dir()]
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


def shape(record: dict) -> dict:
    "What must not depend on the framework: the sections of metrics.json and the keys within them."
    given = ("params", "overrides", "training")  # the parameters passed, and the framework's own facts
    return {section: sorted(value) if isinstance(value, dict) and section not in given else None
            for section, value in record.items()}


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_image_classification_with_keras(tmp_path, default_run, backend):
    run_dir, record = keras_run(tmp_path, "image_classification", backend, "-p", "limit", "200")
    assert RUN_FILES <= {p.name for p in run_dir.iterdir()} and not (run_dir / "model.safetensors").exists()
    assert record["status"] == "SUCCEEDED" and record["params"]["framework"] == "keras"
    training = record["training"]
    assert (training["framework"], training["backend"]) == ("keras", backend) and training["keras"] and training[backend]
    assert record["model"]["architecture"] == "CNN" and record["model"]["config"]["widths"] == [32, 64]
    assert record["metrics"]["test_accuracy"] >= 0.15 and record["metrics"]["best_epoch"] == 1  # chance 0.1; measured 0.195-0.2
    # the report has the shape of the PyTorch run's: metrics.json, history columns, figures
    _, torch_run, _ = default_run
    torch_record = json.loads((torch_run / "metrics.json").read_text())
    assert torch_record["training"]["framework"] == "torch" and torch_record["training"]["backend"] is None
    assert shape(record) == shape(torch_record)
    common = {"epochs_run", "stopped_early", "seconds", "device", "framework", "backend"}
    assert common <= set(training) and common <= set(torch_record["training"])
    history = (run_dir / "history.csv").read_text().splitlines()
    assert history[0] == (torch_run / "history.csv").read_text().splitlines()[0] and len(history) == 2
    page, torch_page = (run_dir / "report.html").read_text(), (torch_run / "report.html").read_text()
    assert page.count("data:image/png;base64") == torch_page.count("data:image/png;base64")
    assert "Training ran all 1 epochs" in page and "<td>keras</td>" in page
    metadata = read_metadata(run_dir / "model.keras")
    assert metadata["model"] == "cnn" and metadata["epoch"] == 1 and len(metadata["classes"]) == 10
    assert metadata["recipe"] == training["recipe"] == torch_record["training"]["recipe"] | {"epochs": 1}
    assert {p.name for p in (run_dir / "tensorboard").iterdir()} == {"train", "validation"}  # Keras's own TensorBoard runs


def test_classic_mlp_with_keras_sgd(tmp_path):
    "The MLP and SGD with momentum on Keras (TensorFlow): the same recipe, on Keras's optimizer and schedule."
    run_dir, record = keras_run(tmp_path, "image_classification", "tensorflow", "-p", "model", "mlp", "-p", "opt", "sgd",
                                "-p", "lr", "0.05", "-p", "schedule", "constant", "-p", "limit", "200")
    assert RUN_FILES <= {p.name for p in run_dir.iterdir()} and record["model"]["architecture"] == "MLP"
    assert (record["training"]["recipe"]["opt"], record["training"]["recipe"]["schedule"]) == ("sgd", "constant")
    assert record["metrics"]["test_accuracy"] >= 0.2, record["metrics"]  # chance 0.1; measured 0.315 (one epoch of 200 images)


# Floors: what these seeded one-epoch runs reach, with a margin (measured: text 0.609 ROC AUC, its accuracy 0.51 is the
# majority class's share; audio 0.2 accuracy, chance 0.1).
@pytest.mark.parametrize("template, backend, extra, expected, floors", [
    ("text_classification", "tensorflow", ["-p", "dataset", "sst2", "-p", "limit", "300", "-p", "units", "32"],
     "Word vocabulary", {"test_roc_auc": 0.56}),
    ("audio_classification", "torch", ["-p", "dataset", "fsdd", "-p", "limit", "150", "-p", "units", "32"],
     "Features: logmel at 8,000 Hz", {"test_accuracy": 0.15}),
])
def test_sequence_templates_with_keras(tmp_path, template, backend, extra, expected, floors):
    run_dir, record = keras_run(tmp_path, template, backend, *extra)
    assert RUN_FILES <= {p.name for p in run_dir.iterdir()}
    assert (record["training"]["framework"], record["training"]["backend"]) == ("keras", backend)
    assert record["model"]["architecture"] == {"text_classification": "LSTM", "audio_classification": "AudioLSTM"}[template]
    for metric, floor in floors.items(): assert record["metrics"][metric] >= floor, (metric, record["metrics"][metric])
    assert 0 <= record["metrics"]["test_ece"] <= 1
    assert record["evaluation"]["confusion_matrix"] and record["evaluation"]["log_loss"] > 0
    assert expected in (run_dir / "report.html").read_text()
    assert read_metadata(run_dir / "model.keras")["config"]["units"] == 32


def test_keras_bert_fails_in_the_kernel_naming_the_parameter(tmp_path):
    "framework and backend choices are checked before the kernel (tests/test_bad_input.py); the model/framework pair is not."
    args, message = (["text_classification", "-p", "framework", "keras", "-p", "model", "bert"],
                     "model 'bert' has no Keras version (Keras models: audio_lstm, cnn, lstm, mlp); use framework torch")
    done = run_cli("aiprod", "run", "--quiet", *args, cwd=tmp_path)
    assert done.returncode == 1 and "ParameterError" in done.stderr and message in done.stderr, done.stderr
    (run_dir,) = [p for p in (tmp_path / "reports").iterdir() if p.is_dir()]
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "FAILED" and record["error"]["cell_index"] is not None  # stopped in the setup cell
