"""aiprod/ is exactly what nbdev_export makes from nbs/, and every notebook is as nbdev_clean leaves it."""
import filecmp, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent


def _copy_project(tmp_path):
    for name in ("nbs", "aiprod"): shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("settings.ini", "pyproject.toml"): shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def _changed(before: Path, after: Path) -> list[str]:
    files = sorted(p.relative_to(before) for p in before.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    made = sorted(p.relative_to(after) for p in after.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return sorted({str(f) for f in set(files) ^ set(made)} |
                  {str(f) for f in set(files) & set(made) if not filecmp.cmp(before / f, after / f, shallow=False)})


def test_package_matches_notebooks(tmp_path):
    copy = _copy_project(tmp_path)
    subprocess.run([BIN / "nbdev_export"], cwd=copy, check=True, capture_output=True)
    changed = _changed(ROOT / "aiprod", copy / "aiprod")
    assert not changed, f"nbdev_export changes {changed}: edit nbs/, run nbdev_export and commit aiprod/"


def test_notebooks_are_clean(tmp_path):
    copy = _copy_project(tmp_path)
    subprocess.run([BIN / "nbdev_clean"], cwd=copy, check=True, capture_output=True)
    subprocess.run([BIN / "nbdev_clean", "--fname", "aiprod/templates"], cwd=copy, check=True, capture_output=True)
    changed = _changed(ROOT / "nbs", copy / "nbs") + [f"templates/{f}" for f in _changed(ROOT / "aiprod/templates", copy / "aiprod/templates")]
    assert not changed, f"nbdev_clean changes {changed}: run nbdev_clean and commit"
