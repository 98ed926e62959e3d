"""`aiprod optimize` on small real runs (CNN, LSTM, BERT, Keras): every variant builds, loads from its bundle and predicts
what its scorecard row measured; the report shows metrics.json's figures; `aiprod export --variant` ships one."""
import html, json, re, shutil

import numpy as np
import pytest

from aiprod import optimize
from aiprod.predict import load
from conftest import run_cli

QUICK = ("-p", "finetune_steps", "2", "-p", "sparsities", "[0.5]", "-p", "calibration_samples", "32", "-p", "latency_samples", "5",
         "-p", "repeats", "1")
VARIANTS = {  # kind of run (conftest.RUNS) → variants asked for; "channels-50" cannot be built for an LSTM, and says so
    "image": ["onnx", "onnx-int8", "onnx-int8-static", "pruned-50", "channels-50"],
    "text": ["onnx", "onnx-int8", "torch-int8", "pruned-50", "channels-50"],
    "bert": ["onnx", "onnx-int8", "torch-int8", "pruned-50"],
    "keras": ["keras-int8"],
}
SHIPPED = {"image": "onnx-int8-static", "text": "onnx-int8", "bert": "onnx-int8", "keras": "keras-int8"}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def optimized(request, finished_runs, tmp_path_factory):
    "A small run copied into a reports folder of its own and optimized there: (kind, reports, run, optimization run, test split)."
    run_dir, _, test = finished_runs(request.param)
    reports = tmp_path_factory.mktemp(f"optimize-{request.param}") / "reports"
    shutil.copytree(run_dir, reports / run_dir.name)
    done = run_cli("aiprod", "optimize", run_dir.name, "-p", "variants", json.dumps(VARIANTS[request.param]), *QUICK,
                   "--reports-dir", reports, "--quiet", cwd=reports.parent, timeout=900)
    assert done.returncode == 0, done.stderr
    [opt] = [p for p in reports.iterdir() if "-optimization-" in p.name]
    return request.param, reports, reports / run_dir.name, opt, test


def test_every_variant_builds_and_its_bundle_predicts_what_its_row_measured(optimized):
    kind, _, run_dir, opt, test = optimized
    record = json.loads((opt / "metrics.json").read_text())
    assert record["status"] == "SUCCEEDED" and record["optimization"]["source_run"] == run_dir.name
    rows = {row["variant"]: row for row in record["optimization"]["variants"]}
    assert list(rows) == ["fp32", *VARIANTS[kind]]
    if kind == "text": assert rows.pop("channels-50")["error"] == "AiprodError: channel pruning applies to CNNs"
    assert not [row for row in rows.values() if "error" in row], rows
    source_accuracy = json.loads((run_dir / "metrics.json").read_text())["evaluation"]["accuracy"]
    assert rows["fp32"]["accuracy"] == pytest.approx(source_accuracy, abs=0.01)  # the split made again is the run's own
    for name, row in rows.items():  # loaded as a user loads it, on the raw test split
        predicted = load(opt / "variants" / name).predict(list(test.x) if test.kind != "image" else test.x).probabilities.argmax(1)
        assert (predicted == test.y).mean() == pytest.approx(row["accuracy"], abs=1e-9), name
        assert row["size_mb"] > 0 and row["peak_memory_mb"] > 50 and row["throughput"] > 0 and row["latency_p50_ms"] > 0


def test_the_report_shows_the_scorecard_of_metrics_json(optimized):
    _, _, _, opt, _ = optimized
    page = (opt / "report.html").read_text(encoding="utf-8")
    cells = [[html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
             for row in re.findall(r"<tr>(.*?)</tr>", page, re.S)]
    shown = {row[0]: row for row in cells if row}
    for row in json.loads((opt / "metrics.json").read_text())["optimization"]["variants"]:
        if "error" in row: assert shown[row["variant"]][1] == f"not built: {row['error']}"; continue
        assert shown[row["variant"]][:len(optimize.COLUMNS)] == [optimize.cell(row, key, form) for key, _, form in optimize.COLUMNS]
    assert page.count("<img") >= 1 and "Pareto front" in page


def test_export_ships_a_variant_that_predicts_as_the_optimization_measured(optimized, tmp_path):
    kind, reports, run_dir, opt, test = optimized
    name = SHIPPED[kind]
    done = run_cli("aiprod", "export", run_dir.name, "--variant", name, "--out", tmp_path / "bundle", "--reports-dir", reports)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert manifest["variant"]["name"] == name and manifest["variant"]["optimization_run"] == opt.name
    assert manifest["source_run"] == run_dir.name and f"`{name}` variant" in (tmp_path / "bundle" / "model_card.md").read_text()
    items = list(test.x) if test.kind != "image" else test.x
    shipped, measured = (load(path).predict(items).probabilities for path in (tmp_path / "bundle", opt / "variants" / name))
    np.testing.assert_array_equal(shipped, measured)
    done = run_cli("aiprod", "export", opt.name, "--variant", "nope", "--out", tmp_path / "other", "--reports-dir", reports)
    assert done.returncode == 2 and f"unknown variant 'nope'; known variants: fp32, {VARIANTS[kind][0]}" in done.stderr, done.stderr
    assert not (tmp_path / "other").exists()


def test_unknown_run_or_variant_is_named_before_anything_runs(optimized):
    _, reports, run_dir, _, _ = optimized
    before = sorted(reports.iterdir())
    done = run_cli("aiprod", "optimize", "20990101-000000-none-000000", "--reports-dir", reports)
    assert done.returncode == 2 and "unknown run '20990101-000000-none-000000'; known runs: " in done.stderr
    assert run_dir.name in done.stderr and "-optimization-" not in done.stderr.split("known runs:")[1]
    done = run_cli("aiprod", "optimize", run_dir.name, "-p", "variants", "[onnx-int4]", "--reports-dir", reports)
    assert done.returncode == 2 and "unknown variant 'onnx-int4'; known variants: onnx, onnx-int8, " in done.stderr, done.stderr
    assert sorted(reports.iterdir()) == before
