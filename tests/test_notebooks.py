"""The tutorials stay honest: every notebook under notebooks/ is in the README's nbval run, and
each is saved executed, top to bottom, without errors (nbval compares a fresh run with what is saved)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import nbformat
import pytest
from paths import ROOT

NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def pytest_args(command: str) -> list[str]:
    """The arguments after `python -m pytest` in a shell line."""
    match = re.search(r"python3? -m pytest(.*?)(?:&&|;|$)", command)
    assert match, f"no `python -m pytest` in {command!r}"
    return shlex.split(match.group(1))


def readme_test_command() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if "pip install -e '.[test]'" in line and "pytest" in line]
    assert len(lines) == 1, "the README should give exactly one test command"
    return lines[0]


def test_there_are_tutorials():
    names = [p.name for p in NOTEBOOKS]
    assert len(names) >= 7 and all(re.match(r"\d\d-[a-z0-9-]+\.ipynb$", n) for n in names), names


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci_lines = [line for line in ci.splitlines() if "-m pytest" in line and not line.lstrip().startswith("#")]
    assert len(ci_lines) == 1
    ci_args = [a for a in pytest_args(ci_lines[0]) if a not in ("-p", "no:cacheprovider")]
    assert ci_args == pytest_args(readme_test_command())


def test_every_notebook_is_in_the_nbval_run():
    """Collect what the README's command would run: every code cell of every notebook is an item."""
    args = pytest_args(readme_test_command())
    assert "--nbval" in args and "--nbval-sanitize-with" in args and "--nbval-lax" not in args
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    items = [line for line in collected.stdout.splitlines() if ".ipynb::" in line]
    for path in NOTEBOOKS:
        rel = path.relative_to(ROOT).as_posix()
        n_code = sum(c.cell_type == "code" for c in nbformat.read(path, as_version=4).cells)
        assert sum(item.startswith(rel + "::") for item in items) == n_code, f"{rel} is not fully in the nbval run"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_saved_executed_in_order(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), \
        f"{path.name} was not saved after one run from the top (Restart & Run All, then save)"
    for cell in code:
        assert "NBVAL_SKIP" not in cell.source and "nbval-skip" not in cell.metadata.get("tags", []), \
            f"{path.name}: a skipped cell checks nothing"
        # an output that moves from one CPU to another is printed as a checked bound, not hidden from nbval
        assert "NBVAL_IGNORE_OUTPUT" not in cell.source and "nbval-ignore-output" not in cell.metadata.get("tags", []), \
            f"{path.name}: an ignored output checks nothing"
        assert not [o for o in cell.outputs if o.output_type == "error"], f"{path.name}: a cell raised"
        streams = "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stderr")
        assert "Warning" not in streams and "Traceback" not in streams, f"{path.name}: {streams[:300]}"
    assert any(c.outputs for c in code), f"{path.name} was saved without outputs"
