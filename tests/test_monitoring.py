"""`aiprod monitor` over what a real `aiprod serve --log-dir --log-inputs` logged: the digits test split replayed as it is,
inverted and blurred, each in a window of its own (--since, --until); drift flagged on the features that moved and only
there; true labels imported with `aiprod feedback`, its errors naming the line; a last line cut short by a kill skipped."""
import base64, csv, json, time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from PIL import Image, ImageFilter

from aiprod import export
from aiprod.serve import log_time
from conftest import run_cli
from test_serve import png, serving

BATCH = 8  # inputs per request


def blurred(x: np.ndarray) -> np.ndarray:
    "A digits test item (values 0–1) blurred."
    image = Image.fromarray(np.round(x[0] * 255).astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(1))
    return np.asarray(image, np.float32)[None] / 255


def replay(client: httpx.Client, images: list[np.ndarray], phase: str) -> dict[str, dict]:
    "POST the images as base64 PNGs, BATCH a request, each request named `phase-N`; the predicted labels by request id."
    answers = {}
    for n, start in enumerate(range(0, len(images), BATCH)):
        request_id = f"{phase}-{n}"
        response = client.post("/predict", json={"inputs": [base64.b64encode(png(x)).decode() for x in images[start:start + BATCH]]},
                               headers={"X-Request-ID": request_id})
        assert response.status_code == 200, response.text
        answers[request_id] = [p["label"] for p in response.json()["predictions"]]
    return answers


@pytest.fixture(scope="module")
def traffic(finished_runs, tmp_path_factory):
    "The digits CNN served with a prediction log while its test split goes by as it is, inverted, then blurred; each phase's window."
    run_dir, _, test = finished_runs("image")
    folder = tmp_path_factory.mktemp("monitoring")
    bundle = export.export_run(run_dir, folder / "bundle", name="digits")
    logs, windows, answers = folder / "logs", {}, {}
    images = {"as-is": list(test.x), "inverted": [1 - x for x in test.x], "blurred": [blurred(x) for x in test.x]}
    with serving(bundle, "--log-dir", logs, "--log-inputs", "--access-log", "off") as server, httpx.Client(base_url=server.url, timeout=60) as client:
        for phase, xs in images.items():
            start = time.time()
            answers[phase] = replay(client, xs, phase)
            if phase == "as-is":  # two requests that fail
                for n in range(2): assert client.post("/predict", json={"inputs": ["not base64!"]}).status_code == 422
            windows[phase] = (log_time(start), log_time(time.time()))
            time.sleep(0.01)
    [current] = logs.glob("predictions-*.jsonl")
    with open(current, "a") as f: f.write('{"time": "' + log_time(time.time()) + '", "request_id": "killed", "ind')  # a kill mid-line
    return SimpleNamespace(bundle=bundle, logs=logs, windows=windows, answers=answers, test=test, folder=folder)


def monitor(traffic, phase: str, *more) -> tuple[dict, str]:
    "`aiprod monitor` over one phase's window: its record and its report."
    since, until = traffic.windows[phase]
    done = run_cli("aiprod", "monitor", traffic.bundle, traffic.logs, "--since", since, "--until", until, "--quiet",
                   "--reports-dir", traffic.folder / "reports", *more, cwd=traffic.folder)
    assert done.returncode == 0, done.stderr
    run_dir = max((traffic.folder / "reports").glob("*-monitoring-*"), key=lambda p: p.stat().st_mtime)
    return json.loads((run_dir / "metrics.json").read_text()), (run_dir / "report.html").read_text()


def drifted(record: dict) -> set[str]:
    return {row["feature"] for row in record["monitoring"]["drift"] if row["drifted"]}


def feedback(traffic, rows: list[list], name: str = "labels.csv"):
    "`aiprod feedback LOG_DIR labels.csv` of `rows` (request_id, label, index)."
    path = traffic.folder / name
    with open(path, "w", newline="") as f: csv.writer(f).writerows([["request_id", "label", "index"], *rows])
    return run_cli("aiprod", "feedback", traffic.logs, path)


def test_feedback_rows_are_checked_against_the_log_and_nothing_is_written_when_one_is_wrong(traffic):
    before = sorted(traffic.logs.glob("feedback-*"))
    done = feedback(traffic, [["as-is-0", "3", 0], ["nobody", "3", 0], ["as-is-0", "eleven", 1], ["as-is-0", "3", 8]], "bad.csv")
    assert done.returncode != 0
    bad = traffic.folder / "bad.csv"
    assert f"{bad}, line 3: unknown request id 'nobody'" in done.stderr
    assert f"{bad}, line 4: label 'eleven' is not a class of digits 1" in done.stderr
    assert f"{bad}, line 5: index 8: request 'as-is-0' had 8 inputs" in done.stderr
    assert "line 2" not in done.stderr  # the good row
    assert sorted(traffic.logs.glob("feedback-*")) == before


def test_test_split_as_served_shows_no_drift_and_its_accuracy_on_feedback(traffic):
    classes, test = traffic.test.classes, traffic.test
    truth = [classes[y] for y in test.y]
    rows = [[f"as-is-{j // BATCH}", truth[j], j % BATCH] for j in range(len(truth))]
    done = feedback(traffic, rows)
    assert done.returncode == 0, done.stderr
    predicted = [label for labels in traffic.answers["as-is"].values() for label in labels]
    record, page = monitor(traffic, "as-is")
    assert record["status"] == "SUCCEEDED"
    counts, requests = record["monitoring"]["counts"], len(traffic.answers["as-is"]) + 2
    assert (counts["predictions"], counts["requests"], counts["failed"], counts["skipped_lines"]) == (len(test.y), requests, 2, 1)
    assert record["metrics"]["error_rate"] == pytest.approx(2 / requests)
    assert drifted(record) == set() and record["monitoring"]["dataset_drift"] is False
    accuracy = record["monitoring"]["accuracy"]["overall"]
    assert accuracy["labelled"] == len(rows)
    assert accuracy["accuracy"] == pytest.approx(np.mean([p == t for p, t in zip(predicted, truth)]))
    assert accuracy["low"] < accuracy["accuracy"] < accuracy["high"]
    assert sum(b["labelled"] for b in record["monitoring"]["accuracy"]["buckets"]) == len(rows)
    assert record["monitoring"]["findings"] == [] and "<strong>Nothing crossed a threshold</strong>" in page


def test_inverted_images_drift_on_their_mean(traffic):
    record, page = monitor(traffic, "inverted")
    assert record["monitoring"]["counts"]["predictions"] == len(traffic.test.y)  # the window holds this phase alone
    assert "mean" in drifted(record) and not {"std", "sharpness", "width", "height"} & drifted(record)
    assert any(line.startswith("**Input drift**") and "mean" in line for line in record["monitoring"]["findings"])
    assert "Input drift</strong> in 1 of 5 features: mean" in page


def test_blurred_images_drift_on_their_sharpness(traffic):
    record, page = monitor(traffic, "blurred")
    assert {"sharpness", "std"} <= drifted(record) and not {"width", "height"} & drifted(record)
    assert "sharpness" in next(line for line in record["monitoring"]["findings"] if line.startswith("**Input drift**"))
    assert "accuracy" not in record["metrics"] and "feedback_accuracy" not in record["metrics"]  # no label in this window


def test_monitor_refuses_what_it_cannot_read_before_a_kernel_starts(traffic, tmp_path):
    for args, message in [((tmp_path / "nope", traffic.logs), "no such bundle folder"),
                          ((traffic.bundle, tmp_path), "no prediction log in it"),
                          ((traffic.bundle, traffic.logs, "--since", "last tuesday"), "--since 'last tuesday': not an ISO 8601")]:
        done = run_cli("aiprod", "monitor", *args, "--reports-dir", tmp_path / "reports", timeout=60)
        assert done.returncode != 0 and message in done.stderr, done.stderr
    assert not (tmp_path / "reports").exists()
