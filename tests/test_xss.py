"""User text shows as typed and never runs: HTML payloads planted in real runs, pages opened in headless Chromium."""
import json

import nbformat
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from conftest import needs_chromium, run_cli

pytestmark = needs_chromium


def payload(n: int) -> str:
    "Inline HTML (valid for CommonMark) that would set `window.__xss` to `n`; no `/`, as it also names files."
    return f"<img src=x onerror=Object.assign(window,{{__xss:{n}}})>"


NOTE, TITLE, ERROR, CLASS, ESCAPED_TEXT, TEXT_CLASS = (payload(n) for n in range(1, 7))
# no "_" in a metric name (shown with "_" as " "), no braces in a notebook's name (papermill formats paths with them)
METRIC, NOTEBOOK = "<img src=x onerror=alert(3)>", "<img src=x onerror=alert(8)>"  # the notebook's name goes into run ids


def notes_notebook(path):
    "A custom notebook whose string parameter `note` takes any text; it records `x` under a metric named like HTML."
    cells = [nbformat.v4.new_markdown_cell("# Notes"),
             nbformat.v4.new_code_cell('note: str = ""  # any text\nseed: int = 0  # repeats\nx: float = 0.5  # the score\n'
                                       'fail: str = ""  # non-empty: raise with `note` as the message',
                                       metadata={"tags": ["parameters"]}),
             nbformat.v4.new_code_cell("if fail: raise ValueError(note)\nfrom aiprod.report import save_metrics\n"
                                       f"save_metrics(metrics={{{(METRIC + '_accuracy')!r}: x, 'score': x}})\nprint(note)")]
    notebook = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "python3",
                                                                              "language": "python"}})
    nbformat.write(notebook, path)
    return path


def digits_folder(root, classes, per_class=30):
    "A tiny image folder: `per_class` 8x8 digits PNGs (of digit i) under a folder named after each class."
    digits = load_digits()
    for i, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for j, image in enumerate(digits.images[digits.target == i][:per_class]):
            Image.fromarray((image * 16).clip(0, 255).astype(np.uint8)).save(root / name / f"{j}.png")
    return root


def text_table(path):
    "A CSV of texts: entity-encoded HTML (cleaning decodes it), raw HTML (cleaning strips it), and a class named like HTML."
    encoded = ESCAPED_TEXT.replace("<", "&lt;").replace(">", "&gt;")
    label = lambda i: f'"{TEXT_CLASS}"' if i % 2 else "plain"
    rows = ["text,label"] + [f'"review {i} {encoded}",{label(i)}' for i in range(20)]
    rows += [f'"raw {i} {payload(9)} tag",{label(i)}' for i in range(20)]
    path.write_text("\n".join(rows) + "\n")
    return path


def new_runs(reports, before: set) -> list:
    return sorted(p for p in reports.iterdir() if p.is_dir() and p.name not in before)


def run(workdir, *args, code=0) -> list:
    "`aiprod run ARGS --quiet` in `workdir`; the new run folder(s)."
    reports = workdir / "reports"
    before = {p.name for p in reports.iterdir()} if reports.exists() else set()
    done = run_cli("aiprod", "run", *args, "--quiet", cwd=workdir)
    assert done.returncode == code, done.stderr[-3000:]
    return new_runs(reports, before)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    "Real runs with payloads in parameters, a title, a metric name, an error, class folders, texts and labels."
    workdir = tmp_path_factory.mktemp("xss")
    notebook = notes_notebook(workdir / f"{NOTEBOOK}.ipynb")
    notes = [run(workdir, notebook, "-p", "note", note, "-p", "seed", seed, "-p", "x", x)[0]
             for note, seed, x in [(NOTE, 0, 0.9), (NOTE, 1, 0.8), ("plain", 0, 0.1)]]
    failed = run(workdir, notebook, "-p", "note", ERROR, "-p", "fail", "yes", code=1)[0]
    reports = workdir / "reports"
    before = {p.name for p in reports.iterdir()}
    done = run_cli("aiprod", "compare", *[p.name for p in [*notes, failed]], "--title", TITLE, cwd=workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    comparison = new_runs(reports, before)[0]
    digits_folder(workdir / "images", [CLASS, "seven"])
    images = run(workdir, "-p", "dataset", "imagefolder", "-p", "data_path", "images", "-p", "data_options", "{size: 8}",
                 "-p", "epochs", 1, "-p", "widths", "[4, 8]")[0]
    text_table(workdir / "texts.csv")
    data_report = run(workdir, "data_report", "-p", "dataset", "texttable", "-p", "data_path", "texts.csv")[0]
    texts = run(workdir, "text_classification", "-p", "dataset", "texttable", "-p", "data_path", "texts.csv",
                "-p", "epochs", 1)[0]
    return {"notes": notes, "failed": failed, "comparison": comparison, "images": images, "data_report": data_report,
            "texts": texts, "index": reports / "index.html"}


def open_inert(browser, path, shown: list[str]) -> str:
    "Open `path`; assert no payload became an element or ran, and every text in `shown` is visible as typed."
    page, dialogs = browser.new_page(), []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    page.wait_for_timeout(300)  # time for a broken image's onerror to fire
    found = page.evaluate("""() => ({xss: window.__xss, images: document.querySelectorAll("img[src='x'], [onerror]").length,
                                     text: document.body.innerText})""")
    page.close()
    assert found["xss"] is None, f"{path.parent.name}/{path.name}: payload {found['xss']} ran"
    assert found["images"] == 0 and dialogs == [], (found["images"], dialogs)
    for text in shown: assert text in found["text"], f"{text!r} not shown as typed in {path}"
    return found["text"]


def test_comparison_shows_parameters_title_and_run_ids_as_text(browser, planted):
    text = open_inert(browser, planted["comparison"] / "report.html", [TITLE, NOTE, NOTEBOOK, planted["notes"][0].name])
    assert f"Summary: {TITLE}" in text and f"note={NOTE}" in text   # heading, seed table, links, best run
    assert f"{METRIC} accuracy" in text                              # the ranking metric, in the summary


def test_run_reports_and_index_show_parameters_and_errors_as_text(browser, planted):
    open_inert(browser, planted["notes"][0] / "report.html", [NOTE])
    open_inert(browser, planted["failed"] / "report.html", [ERROR])
    open_inert(browser, planted["index"], [planted["notes"][0].name])


def test_image_class_folder_named_like_html(browser, planted):
    metrics = json.loads((planted["images"] / "metrics.json").read_text())
    assert CLASS in json.dumps(metrics)  # the class really is named so
    open_inert(browser, planted["images"] / "report.html", [CLASS])   # data section and per-class metrics table


def test_texts_and_labels_like_html(browser, planted):
    open_inert(browser, planted["data_report"] / "report.html", [ESCAPED_TEXT, TEXT_CLASS])   # sample table, classes
    open_inert(browser, planted["texts"] / "report.html", [TEXT_CLASS])  # metrics table, worst errors
