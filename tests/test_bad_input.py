"""Bad parameters, values out of a template's range or choices, and bad or short secrets fail before any kernel
starts (exit 2, a message naming the item, nothing written); a run whose notebook raises writes a FAILED report and
exits 1; a secret the notebook gives away shows nowhere."""
import html, json, os, subprocess
from pathlib import Path

import pytest

from aiprod.report import TEMPLATES_DIR as TEMPLATES, template_parameters
from conftest import BIN, run_cli

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("args, message", [
    (["no_such_template"], "unknown template 'no_such_template'; known templates: audio_classification, "),
    (["-p", "epoch", "3"], "template 'image_classification' has no parameter 'epoch'; its parameters: dataset, data_path, data_options,"),
    (["-p", "epochs", "3.5"], "parameter 'epochs' of template 'image_classification' must be int, got '3.5'"),
    (["-p", "lr", "fast"], "parameter 'lr' of template 'image_classification' must be float, got 'fast'"),
    (["-p", "widths", "{a: 1}"], "parameter 'widths' of template 'image_classification' must be list"),
    (["missing/notebook.ipynb"], "no notebook at missing/notebook.ipynb"),
    # ranges and choices declared in the parameters cell: checked before any kernel starts
    (["-p", "epochs", "0"], "parameter 'epochs' of template 'image_classification' must be ≥ 1; got 0"),
    (["-p", "bs", "0"], "parameter 'bs' of template 'image_classification' must be ≥ 1; got 0"),
    (["-p", "limit", "-3"], "parameter 'limit' of template 'image_classification' must be ≥ 0; got -3"),
    (["-p", "valid_pct", "1.5"], "parameter 'valid_pct' of template 'image_classification' must be > 0 and < 1; got 1.5"),
    (["-p", "dataset", "mnits"], "parameter 'dataset' of template 'image_classification' must be one of: digits, mnist, imagefolder, npz, idx; got 'mnits'"),
    (["-p", "framework", "jax"], "parameter 'framework' of template 'image_classification' must be one of: torch, keras; got 'jax'"),
    (["-p", "model", "xyz"], "parameter 'model' of template 'image_classification' must be one of: cnn, mlp; got 'xyz'"),
    (["-p", "framework", "keras", "-p", "backend", "jax"], "parameter 'backend' of template 'image_classification' must be one of: torch, tensorflow; got 'jax'"),
    (["-p", "widths", "[16, 0]"], "each item of parameter 'widths' of template 'image_classification' must be ≥ 1; got 0 in [16, 0]"),
    (["text_classification", "-p", "max_length", "1000"], "parameter 'max_length' of template 'text_classification' must be ≥ 2 and ≤ 512; got 1000"),
    (["audio_classification", "-p", "features", "mel"], "parameter 'features' of template 'audio_classification' must be one of: logmel, mfcc; got 'mel'"),
    (["data_report", "-p", "test_pct", "0"], "parameter 'test_pct' of template 'data_report' must be > 0 and < 1; got 0.0"),
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


def test_help_notebook_still_documents_the_rules():
    "papermill reads every parameter of every template, rules included (a second `=` on a line would hide it)."
    for name in ("image_classification", "text_classification", "audio_classification", "data_report"):
        done = run_cli("papermill", "--help-notebook", TEMPLATES / f"{name}.ipynb")
        assert done.returncode == 0 and "Unable to parse" not in done.stdout + done.stderr, done.stderr
        for line in parameter_lines(name):
            assert f"  {line.split(':')[0]}: " in done.stdout, line
    done = run_cli("papermill", "--help-notebook", TEMPLATES / "image_classification.ipynb")
    assert "the library that builds and trains the network [one of: torch, keras]" in done.stdout
    assert "(early stopping may end sooner) [≥ 1]" in done.stdout


def test_template_choices_are_registered():
    "Every data set, model, feature and framework a template offers exists, so the lists cannot drift from the registries."
    from aiprod.audio import feature_extractors
    from aiprod.datasets import datasets
    from aiprod.keras_models import BACKENDS, FRAMEWORKS
    from aiprod.models import models
    registered = {"dataset": datasets.names, "model": models.names, "features": feature_extractors.names,
                  "framework": FRAMEWORKS, "backend": BACKENDS}
    checked = 0
    for name in ("image_classification", "text_classification", "audio_classification", "data_report"):
        for p in template_parameters(TEMPLATES / f"{name}.ipynb").values():
            assert not p.rule or p.choices or p.bounds or p.path, f"{name}.{p.name}: unreadable rule [{p.rule}]"
            if p.name in registered:
                assert p.choices and set(p.choices) <= set(registered[p.name]), (name, p.name, p.choices)
                checked += 1
    assert checked == 14


def parameter_lines(template: str) -> list[str]:
    cell = next(c for c in json.loads((TEMPLATES / f"{template}.ipynb").read_text())["cells"]
                if "parameters" in c["metadata"].get("tags", []))
    return [line for line in "".join(cell["source"]).splitlines() if line.strip() and not line.startswith("#")]


TOKEN = 'tok_5e3c"2f1a<9b7d>'  # with characters that JSON and HTML escape
FORMS = {TOKEN, json.dumps(TOKEN)[1:-1], html.escape(TOKEN)}


def run_secret(folder: Path, *args, env: dict | None = None):
    "`aiprod run` of the secret fixture in `folder`, with more arguments and environment variables."
    return subprocess.run([str(BIN / "aiprod"), "run", "--quiet", str(FIXTURES / "secret.ipynb"), *map(str, args)], cwd=folder,
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def assert_no_leak(folder: Path, done):
    "The token, as typed, JSON- or HTML-escaped, is in no output and in no file of the reports folder."
    files = [p for p in (folder / "reports").rglob("*") if p.is_file()]
    assert files and (folder / "reports" / "index.html") in files
    found = [(p.name, form) for p in files for form in FORMS if form.encode() in p.read_bytes()]
    found += [(stream, form) for stream, text in (("stdout", done.stdout), ("stderr", done.stderr)) for form in FORMS if form in text]
    assert not found, found


def the_run(folder: Path) -> tuple[Path, dict]:
    [run_dir] = (folder / "reports").glob("*-secret-*")
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


def test_secret_from_environment_quoted_in_an_error(tmp_path):
    "The notebook raises with the token in its message: the terminal, the report and metrics.json show <secret>."
    done = run_secret(tmp_path, "-p", "leak", "raise", env={"AIPROD_SECRET_API_TOKEN": TOKEN})
    assert done.returncode == 1 and "PermissionError: auth failed for <secret>" in done.stderr, done.stderr
    assert_no_leak(tmp_path, done)
    run_dir, record = the_run(tmp_path)
    assert record["error"]["evalue"] == "auth failed for <secret>" and "auth failed for &lt;secret&gt;" in (run_dir / "report.html").read_text()
    assert record["metrics"]["token_length"] == len(TOKEN)              # the kernel had it...
    assert record["token"]["on_command_line"] is False                  # ...and no command line did, aiprod's or the kernel's


def test_secret_from_file_saved_by_the_notebook(tmp_path):
    "The notebook saves the token in metrics.json, prints it and writes it to a file of its own: all redacted."
    (tmp_path / "secrets.yaml").write_text(f"api_token: {json.dumps(TOKEN)}\n")
    done = run_secret(tmp_path, "--secrets-file", "secrets.yaml", "-p", "leak", "save")
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    assert_no_leak(tmp_path, done)
    run_dir, record = the_run(tmp_path)
    assert record["leaked"] == {"token": "<secret>", "history": "used <secret>"}
    assert (run_dir / "token.log").read_text() == "token=<secret>\n"
    assert record["metrics"]["token_length"] == len(TOKEN) and record["token"]["on_command_line"] is False


def test_secret_given_with_p_warns(tmp_path):
    done = run_secret(tmp_path, "-p", "api_token", TOKEN)
    assert done.returncode == 0, done.stderr
    assert "aiprod: warning: secret parameter 'api_token' was given with -p, where other users of this machine can read it" in done.stderr
    assert "set AIPROD_SECRET_API_TOKEN or use --secrets-file instead" in done.stderr
    assert_no_leak(tmp_path, done)
    assert the_run(tmp_path)[1]["token"]["on_command_line"] is True  # what the warning is about


@pytest.mark.parametrize("args, env, message", [
    (["-p", "api_token", "abc"], {}, "secret parameter 'api_token' of template 'secret' is 3 characters long: secrets need 8 at least"),
    ([], {"AIPROD_SECRET_API_TOKEN": "1234567"}, "secret parameter 'api_token' of template 'secret' is 7 characters long"),
    (["--secrets-file", "secrets.yaml"], {}, "template 'secret' has no secret parameter 'size' (from the secrets file); its secret parameters: api_token"),
    (["--secrets-file", "missing.yaml"], {}, "cannot read secrets file missing.yaml"),
])
def test_bad_secret_fails_before_running(tmp_path, args, env, message):
    (tmp_path / "secrets.yaml").write_text("size: '12345678'\n")
    done = run_secret(tmp_path, *args, env=env)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "abc" not in done.stderr and "1234567" not in done.stderr.replace("12345678", "")
    assert not (tmp_path / "reports").exists()


@pytest.fixture
def fixtures():
    return FIXTURES


def test_notebook_path_with_braces_runs(tmp_path, fixtures):
    "papermill fills `{name}` in paths from the parameters; a real brace in a notebook's name must not be taken for one."
    notebook = tmp_path / "runs {x}" / "tiny}{.ipynb"
    notebook.parent.mkdir()
    notebook.write_bytes((fixtures / "tiny.ipynb").read_bytes())
    done = run_cli("aiprod", "run", "--quiet", notebook, "-p", "x", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "reports").glob("*-tiny}{-*")
    assert json.loads((run_dir / "metrics.json").read_text())["metrics"] == {"score": 4.0}
