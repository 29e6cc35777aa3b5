"""The code examples of README.md and docs/ run as tests (pytest-markdown-docs, `--markdown-docs` in
pyproject.toml's addopts). The files they write go to a temporary folder, not into the checkout, and
what they print is kept with the test's report, as pytest keeps a test's output (the plugin turns
pytest's capture off while a block runs)."""

import functools
import io

import pytest

_printed = io.StringIO()


def _is_example(item) -> bool:
    return item.get_closest_marker("markdown-docs") is not None


@pytest.fixture(autouse=True)
def _examples_write_elsewhere(request, tmp_path, monkeypatch):
    if _is_example(request.node):
        monkeypatch.chdir(tmp_path)


def pytest_markdown_docs_globals():
    """Names every code block starts with: a `print` into the report."""
    return {"print": functools.partial(print, file=_printed)}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    if not _is_example(item):
        return (yield)
    _printed.seek(0)
    _printed.truncate()
    try:
        return (yield)
    finally:
        item.add_report_section("call", "stdout", _printed.getvalue())
