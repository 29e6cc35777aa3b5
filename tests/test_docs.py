"""The documentation stays whole: every public name has its API reference, the README's tour and the
pages' examples are collected as tests, and an example that is not run says why on its page.

The examples themselves run as items of this suite (pytest-markdown-docs, wired in pyproject.toml);
`mkdocs build --strict` in .ci/run checks the links and the API reference resolve."""

from __future__ import annotations

import importlib
import re

from markdown_it import MarkdownIt

import clipx
from paths import ROOT

PAGES = sorted((ROOT / "docs").rglob("*.md"))
EXAMPLE_LANGUAGES = ("py", "python", "python3")  # the fences pytest-markdown-docs runs


def resolve(identifier: str):
    """The object a `::: identifier` line of the API reference documents, found as Python finds it:
    `clipx.decompose` is the function (the module of that name is clipx 0.1's, moved), and
    `clipx.explain.method_options` is in the subpackage, though `clipx.explain` is the function."""
    parts = identifier.split(".")
    path, obj = parts[0], importlib.import_module(parts[0])
    for part in parts[1:]:
        try:
            obj = getattr(obj, part)
        except AttributeError:  # a submodule not imported yet, or one a name of its package hides
            module = importlib.import_module(path)
            obj = getattr(module, part) if hasattr(module, part) else importlib.import_module(f"{path}.{part}")
        path = f"{path}.{part}"
    return obj


def python_fences(path) -> list[tuple[set[str], str, str]]:
    """(options, info string, code) of each Python fence, read as the plugin reads them (superfences
    syntax: `{.python notest title="..."}`)."""
    fences = []
    for token in MarkdownIt("commonmark").parse(path.read_text(encoding="utf-8")):
        if token.type != "fence":
            continue
        info = token.info.strip()
        words = info.strip("{}").split()
        language = next((w[1:] for w in words if w.startswith(".")), words[0] if words else "")
        if language in EXAMPLE_LANGUAGES:
            fences.append((set(words), info, token.content))
    return fences


def test_every_public_name_has_its_api_reference():
    documented = [line.split(":::", 1)[1].strip() for page in (ROOT / "docs" / "api").glob("*.md")
                  for line in page.read_text(encoding="utf-8").splitlines() if line.startswith(":::")]
    objects = [resolve(identifier) for identifier in documented]
    missing = [name for name in clipx.__all__ if not any(obj is getattr(clipx, name) for obj in objects)]
    assert not missing, f"no `::: ...` line under docs/api/ documents clipx.{', clipx.'.join(missing)}"


def test_the_readme_and_every_page_run_as_tests(pytestconfig):
    assert {"README.md", "docs"} <= set(pytestconfig.getini("testpaths"))
    assert pytestconfig.option.markdowndocs and pytestconfig.option.markdowndocs_syntax == "superfences"


def test_the_readme_tour_runs_on_the_demo_model():
    tour = [code for options, _, code in python_fences(ROOT / "README.md") if "notest" not in options]
    assert len(tour) == 1, f"the README should hold one tour, run as written, not {len(tour)}"
    assert 'clipx.load("demo")' in tour[0]


def test_an_example_that_is_not_run_says_why():
    for path in [ROOT / "README.md", *PAGES]:
        for options, info, _ in python_fences(path):
            if "notest" in options:
                assert re.search(r'title="Needs [^"]+: shown, not run"', info), \
                    f"{path.relative_to(ROOT)}: {info!r} is not run; its title should say what it needs"
