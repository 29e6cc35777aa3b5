"""`import clipx` costs little more than `import torch`: the heavy optional parts load on first use."""

import subprocess
import sys

HEAVY = ("ipywidgets", "IPython", "matplotlib", "captum", "jupyterlab")


def imported_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True, timeout=120).stdout.split()
    return {name.split(".")[0] for name in out}


def test_import_clipx_leaves_the_heavy_packages_alone():
    assert not imported_after("import clipx") & set(HEAVY)


def test_the_lazy_parts_load_on_first_use():
    loaded = imported_after("import clipx\nclipx.views.Explorer, clipx.metrics.pointing_game")
    assert "ipywidgets" in loaded and "matplotlib" not in loaded  # matplotlib: once a picture is drawn
    assert "captum" not in loaded  # only integrated gradients needs it
    drawn = imported_after("import clipx, numpy\nclipx.views.overlay(numpy.zeros((4, 4, 3)), numpy.eye(4))")
    assert "matplotlib" in drawn
