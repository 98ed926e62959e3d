"""Iterating on feedback, for real: a served model logs the digits it is sent, users label them (POST /feedback), a
run retrained with those labels (`extra_data`) is judged against the served one by `aiprod compare --champion`, and
kept as the bundle's next version only when it is not significantly worse."""
import json, re
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from aiprod import champion, data, datasets, export, optimize, predict
from aiprod.core import AiprodError
from conftest import run_cli
from test_serve import b64, png, serving

LIMIT = 300  # examples per split: the champion learns from 300 digits, and the traffic is training digits it never saw
TRAFFIC = 300
RECIPE = ("-p", "widths", "[8, 16]", "-p", "epochs", 4)  # a small CNN, briefly trained: training is most of this file's time


def new_run(workdir: Path, *params) -> Path:
    "A digits run of at most LIMIT examples per split, with more `-p NAME VALUE` parameters; its folder."
    done = run_cli("aiprod", "run", "--quiet", "-p", "limit", LIMIT, *RECIPE, *params, cwd=workdir)
    assert done.returncode == 0, done.stderr
    return workdir / re.search(r"report: (\S+)/report\.html", done.stdout)[1]


def unseen_digits() -> tuple[list[bytes], list[str]]:
    "PNGs and labels of TRAFFIC training-split digits that the limited runs leave out: new to the champion, not in any test split."
    full = data.split_data(datasets.load_dataset("digits"), seed=0)
    used = {x.tobytes() for x in data.limit_splits(full, LIMIT, seed=0)["train"].x}
    train = full["train"]
    unseen = [i for i in range(len(train)) if train.x[i].tobytes() not in used][:TRAFFIC]
    return [png(train.x[i]) for i in unseen], [train.classes[train.y[i]] for i in unseen]


def send_and_label(url: str, pngs: list[bytes], labels: list[str]) -> list[int]:
    "Send the PNGs in requests of 32, then POST each one's true label to /feedback; the statuses of the feedback posts."
    statuses = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for start in range(0, len(pngs), 32):
            answer = client.post("/predict", json={"inputs": list(map(b64, pngs[start:start + 32]))})
            assert answer.status_code == 200, answer.text
            for index, label in enumerate(labels[start:start + 32]):
                statuses.append(client.post("/feedback", json={"request_id": answer.json()["request_id"], "index": index,
                                                                "label": label}).status_code)
    return statuses


def compare(workdir: Path, *args):
    "`aiprod compare --champion ...`, in `workdir`."
    return run_cli("aiprod", "compare", "--champion", *args, cwd=workdir)


def recount(first: Path, second: Path, inputs, truth: list[str]) -> dict:
    "McNemar's four counts, from the predictions of the bundles `first` (champion) and `second` (challenger)."
    right = [np.array(predict.load(b).predict(inputs).labels) == np.array(truth) for b in (first, second)]
    return {"both_right": int(np.sum(right[0] & right[1])), "only_champion": int(np.sum(right[0] & ~right[1])),
            "only_challenger": int(np.sum(~right[0] & right[1])), "both_wrong": int(np.sum(~right[0] & ~right[1]))}


@pytest.fixture(scope="module")
def iteration(tmp_path_factory):
    "A champion served with logged inputs and labelled by its users, and a challenger retrained with those labels."
    workdir = tmp_path_factory.mktemp("iterate")
    champion_run = new_run(workdir)
    bundle = export.export_run(champion_run, workdir / "bundles" / "digits-cnn-1")
    pngs, labels = unseen_digits()
    logs = workdir / "logs"
    with serving(bundle, "--log-dir", logs, "--log-inputs") as server:
        statuses = send_and_label(server.url, pngs, labels)
    challenger_run = new_run(workdir, "-p", "extra_data", logs)  # the same recipe, with the users' labels
    compared = compare(workdir, bundle, challenger_run.name, "--feedback", logs)
    return SimpleNamespace(workdir=workdir, bundle=bundle, champion_run=champion_run, challenger_run=challenger_run, pngs=pngs,
                           labels=labels, statuses=statuses, compared=compared)


def test_feedback_labels_are_taken_and_added_to_training_only(iteration):
    it = iteration
    assert it.statuses == [201] * len(it.pngs)
    record = json.loads((it.challenger_run / "metrics.json").read_text())
    assert record["extra_data"]["examples"] == len(it.pngs) and record["extra_data"]["read_as"] == "prediction log"
    champion = json.loads((it.champion_run / "metrics.json").read_text())
    assert record["data"]["splits"]["train"]["size"] == champion["data"]["splits"]["train"]["size"] + len(it.pngs)
    for split in ("valid", "test"): assert record["data"]["splits"][split]["size"] == champion["data"]["splits"][split]["size"]
    assert record["extra_data"]["feedback_labels"]["used"] == record["extra_data"]["feedback_labels"]["labels"] == len(it.pngs)
    assert f"{len(it.pngs)} of the log's {len(it.pngs)} feedback labels had a logged input" in (it.challenger_run / "report.html").read_text()
    assert (it.challenger_run / "reference.json").is_file() and (it.champion_run / "reference.json").is_file()


def test_the_challenger_is_judged_on_the_same_test_split_and_the_feedback_set_and_kept(iteration):
    it = iteration
    assert it.compared.returncode == 0, it.compared.stderr
    report = it.workdir / re.search(r"(reports/\S+)/report\.html", it.compared.stdout)[1]
    record = json.loads((report / "metrics.json").read_text())
    assert record["status"] == "SUCCEEDED"
    result = record["champion_challenger"]
    kept = it.workdir / "bundles" / "digits-cnn-2"
    assert result["kept"] and result["next_bundle"] == str(kept.resolve())
    loaded = predict.load(kept)
    assert (loaded.manifest["version"], loaded.manifest["name"], loaded.manifest["source_run"]) == ("2", "digits-cnn", it.challenger_run.name)
    test = optimize.run_splits(it.challenger_run, json.loads((it.challenger_run / "metrics.json").read_text()))["test"]
    expected = {"test": recount(it.bundle, kept, test.x, [test.classes[k] for k in test.y]),
                "feedback": recount(it.bundle, kept, it.pngs, it.labels)}
    for name, counts in expected.items():
        found = result["sets"][name]
        assert {k: found["mcnemar"][k] for k in counts} == counts
        assert found["n"] == sum(counts.values())
        assert found["champion"]["accuracy"] == pytest.approx((counts["both_right"] + counts["only_champion"]) / found["n"])
    assert result["sets"]["test"]["better"] == "challenger" and result["sets"]["test"]["significant"]
    page = (report / "report.html").read_text()
    assert "only the challenger" in page and "is kept as the next version" in page and "trained on these very examples" in page


def test_a_significantly_worse_challenger_is_not_kept(iteration):
    it = iteration
    better = it.workdir / "bundles" / "digits-cnn-2"
    done = compare(it.workdir, better, it.champion_run.name)
    assert done.returncode == 0, done.stderr
    record = json.loads((it.workdir / re.search(r"(reports/\S+)/report\.html", done.stdout)[1] / "metrics.json").read_text())
    result = record["champion_challenger"]
    assert not result["kept"] and result["next_bundle"] is None
    assert "significantly worse on the test split: it is not kept" in result["verdict"]
    assert sorted(p.name for p in (it.workdir / "bundles").iterdir()) == ["digits-cnn-1", "digits-cnn-2"]  # no version 3, no temporary folder


def test_extra_data_errors_name_the_problem(iteration, tmp_path):
    it = iteration
    from PIL import Image
    (tmp_path / "extra" / "seven").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "extra" / "seven" / "0.png")
    done = run_cli("aiprod", "run", "--quiet", "-p", "extra_data", tmp_path / "extra", cwd=it.workdir)
    assert done.returncode == 1 and "class 'seven' is not a class of data set 'digits'" in done.stderr
    train = data.split_data(datasets.load_dataset("digits"), seed=0)["train"]
    with pytest.raises(AiprodError, match=re.escape(f"extra data {tmp_path / 'nowhere'}: no file or folder there")):
        champion.add_extra_data({"train": train}, str(tmp_path / "nowhere"))
    with serving(it.bundle, "--log-dir", tmp_path / "logs") as server:  # inputs are not logged without --log-inputs
        assert send_and_label(server.url, it.pngs[:4], it.labels[:4]) == [201] * 4
    with pytest.raises(AiprodError, match="--log-inputs"): champion.add_extra_data({"train": train}, str(tmp_path / "logs"))
