"""README.md and nbs/index.ipynb (the docs' home page) say the same thing; the README's commands exist."""
import json, re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_readme_matches_index_notebook():
    cells = json.loads((ROOT / "nbs/index.ipynb").read_text())["cells"]
    index = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    readme = (ROOT / "README.md").read_text().replace("](nbs/images/", "](images/")
    assert index.strip() == readme.strip(), "README.md and nbs/index.ipynb differ: edit both the same way"


def test_readme_commands_are_make_targets_and_ci_runs_the_test_command():
    readme, makefile = (ROOT / "README.md").read_text(), (ROOT / "Makefile").read_text()
    for target in re.findall(r"^make (\w+)", readme, re.M): assert re.search(rf"^{target}:", makefile, re.M), target
    assert "make test" in readme and "make test" in (ROOT / ".ci/run").read_text()
    assert (ROOT / "nbs/images/report.png").stat().st_size > 10_000
