"""Data sets from report parameters alone: the named ones from local copies, and users' own folders and tables."""
import json, math, wave

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import run_cli


def record(reports, pattern="*"):
    (run_dir,) = [p for p in reports.glob(pattern) if p.is_dir()]
    return run_dir, json.loads((run_dir / "metrics.json").read_text()), (run_dir / "report.html").read_text()


@pytest.mark.parametrize("dataset, examples, test_size, expected", [
    ("sst2", 66978 + 872, 872, ["371 exact duplicates were dropped", "unknown words", "WordPiece"]),
    ("fsdd", 3000, 300, ["3,000 audio examples of 10 classes", "Features: logmel at 8,000 Hz"]),
    ("mnist", 70000, 10000, ["70,000 image examples of 10 classes, each of shape (1, 28, 28)", "per-channel mean [0.13"]),
])
def test_data_report_on_named_data_sets(tmp_path, dataset, examples, test_size, expected):
    "Each named data set keeps its official test split; the report shows what prep did."
    done = run_cli("aiprod", "run", "data_report", "--quiet", "-p", "dataset", dataset, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    _, metrics, page = record(tmp_path / "reports")
    assert metrics["metrics"]["examples"] == examples and metrics["data"]["name"] == dataset
    assert metrics["data"]["splits"]["test"]["size"] == test_size
    for text in expected: assert text in page, text
    assert page.count("data:image/png;base64") >= 2


def draw_shapes(root, per_class=30, size=20):
    "A folder of small circles and squares, one subfolder per class."
    rng = np.random.default_rng(0)
    for shape in ("circle", "square"):
        (root / shape).mkdir(parents=True)
        for i in range(per_class):
            image = Image.new("L", (size, size))
            low, high = sorted(rng.integers(2, size - 2, 2) + [0, 4])
            box = (low, low, high + 4, high + 4)
            (ImageDraw.Draw(image).ellipse if shape == "circle" else ImageDraw.Draw(image).rectangle)(box, fill=255)
            image.save(root / shape / f"{i}.png")


def test_image_folder_trains_by_parameters_and_lists_skipped_files(tmp_path):
    draw_shapes(tmp_path / "shapes")
    (tmp_path / "shapes" / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    args = ["aiprod", "run", "--quiet", "-p", "dataset", "imagefolder", "-p", "data_path", "shapes", "-p", "epochs", "2",
            "-p", "widths", "[8, 16]", "-p", "valid_pct", "0.2", "-p", "test_pct", "0.3"]
    failed = run_cli(*args, cwd=tmp_path)
    assert failed.returncode == 1 and "circle/broken.png" in failed.stderr, failed.stderr
    done = run_cli(*args, "-p", "data_options", "{size: 16, skip_bad: true}", "--reports-dir", "ok", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run_dir, metrics, page = record(tmp_path / "ok")
    assert metrics["data"]["splits"]["train"]["size"] + metrics["data"]["splits"]["test"]["size"] < 60
    assert "1 unreadable items were skipped" in page and "circle/broken.png" in page
    assert metrics["data"]["input_shape"] == [1, 16, 16] and (run_dir / "model.safetensors").exists()


def test_text_table_report_shows_cleaning(tmp_path):
    rows = ["review,stars", '"<b>Great</b> film",good', "great film,good", "dull plot,bad", "  dull   plot ,bad", ",bad"]
    rows += [f"review number {i},{'good' if i % 2 else 'bad'}" for i in range(40)]
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")
    done = run_cli("aiprod", "run", "data_report", "--quiet", "-p", "dataset", "texttable", "-p", "data_path", "reviews.csv",
                   "-p", "data_options", '{"text_column": "review", "label_column": "stars", "skip_bad": true}', cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    _, metrics, page = record(tmp_path / "reports")
    assert metrics["data"]["classes"] == ["bad", "good"]
    cleaning = metrics["data"]["info"]["cleaning"]
    assert (cleaning["html_stripped"], cleaning["duplicates_dropped"], cleaning["empty_dropped"]) == (1, 1, 1), cleaning
    assert "1 exact duplicates were dropped" in page


def test_malformed_table_row_fails_naming_the_line(tmp_path):
    (tmp_path / "reviews.csv").write_text("text,label\ngood,1\nbad,0,extra\n")
    done = run_cli("aiprod", "run", "data_report", "--quiet", "-p", "dataset", "texttable", "-p", "data_path", "reviews.csv",
                   cwd=tmp_path)
    assert done.returncode == 1 and "line 3" in done.stderr and "reviews.csv" in done.stderr, done.stderr


def test_audio_folder_report(tmp_path):
    rate = 8000
    for label, pitch in (("low", 300), ("high", 1200)):
        (tmp_path / "tones" / label).mkdir(parents=True)
        for i in range(12):
            seconds = 0.3 + 0.05 * i
            samples = (0.5 * np.sin(2 * math.pi * pitch * np.arange(int(rate * seconds)) / rate) * 32767).astype("<i2")
            with wave.open(str(tmp_path / "tones" / label / f"{i}.wav"), "wb") as out:
                out.setnchannels(1), out.setsampwidth(2), out.setframerate(rate), out.writeframes(samples.tobytes())
    done = run_cli("aiprod", "run", "data_report", "--quiet", "-p", "dataset", "audiofolder", "-p", "data_path", "tones",
                   "-p", "valid_pct", "0.25", "-p", "test_pct", "0.25", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    _, metrics, page = record(tmp_path / "reports")
    assert metrics["metrics"]["examples"] == 24 and metrics["data"]["classes"] == ["high", "low"]
    assert "Features: logmel at 8,000 Hz" in page and "seconds" in page


def test_missing_data_path_fails_before_running(tmp_path):
    done = run_cli("aiprod", "run", "data_report", "-p", "dataset", "imagefolder", "-p", "data_path", "nowhere", cwd=tmp_path)
    assert done.returncode == 2
    assert "parameter 'data_path' of template 'data_report': no file or folder at nowhere" in done.stderr
    assert not (tmp_path / "reports").exists()


def test_unknown_loader_option_names_the_valid_ones(tmp_path):
    (tmp_path / "reviews.csv").write_text("text,label\ngood,1\nbad,0\n")
    done = run_cli("aiprod", "run", "data_report", "--quiet", "-p", "dataset", "texttable", "-p", "data_path", "reviews.csv",
                   "-p", "data_options", "{text_col: review}", cwd=tmp_path)
    assert done.returncode == 1
    assert "data set 'texttable' takes no option 'text_col'; its options: path, text_column, label_column" in done.stderr
