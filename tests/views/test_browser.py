"""The explorers in a real JupyterLab, driven by a real (headless) Chromium.

The test starts JupyterLab on 127.0.0.1 with a random token in a temporary root folder holding
copies of notebooks/01-quickstart.ipynb and 04-token-patch-similarity.ipynb (Lab autosaves: the
repository's files are never served), opens each, runs all its cells and points at the view it
displays last. On the Explorer (01): hovering the picture shows the map's value there, a click on
a patch, on a caption row, a changed option and another method each change the view. On the
TokenPatchView (04): a click on a token and on a patch each change the view (the picture; the
token strip). On the InteractionView (04): a click on a token, a shift-click on another (a span) and a
drag along the strip each change the region map; a drag of a box and a click on a patch each change
the token strip. It prints how long each update took, from the browser's event to the new picture or
strip on the page; bounds are generous timeouts, not speed checks. Screenshots go to
tests/artifacts/browser-explorer.png (the page), browser-explorer-widget.png (the Explorer) and
browser-token-patch-widget.png and browser-interaction-widget.png (before and after, on the same scene); a failure saves browser-explorer-failure.png. The server and the
browser are stopped in every outcome.

Needs Debian's `chromium` (`apt-get install chromium`; .ci/run installs it) and the `playwright`
package from the `test` extra. Playwright's own browser download is not used: it fails here.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from paths import ROOT, TESTS

REPO = ROOT
NOTEBOOK = REPO / "notebooks" / "01-quickstart.ipynb"
TOKEN_NOTEBOOK = REPO / "notebooks" / "04-token-patch-similarity.ipynb"
ARTIFACTS = TESTS / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
    # nothing but the local server resolves: the page cannot reach outside 127.0.0.1
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
METHOD_BEFORE, METHOD_AFTER = "relevance", "rollout"  # the Explorer's default, and the one clicked

# Bounds, in seconds; together under 3 minutes. Typical runs take a fraction of each.
SERVER_START_S = 45
NOTEBOOK_OPEN_S = 45
RUN_ALL_S = 75
UPDATE_S = 20
SERVER_STOP_S = 15

# JupyterLab user settings: no news / update-check notifications over the page, and every cell in
# the DOM (windowed notebooks drop the cells outside the viewport).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


# --- the JupyterLab server -----------------------------------------------------------------------
@dataclass
class Lab:
    url: str
    token: str
    log: Path

    def log_tail(self, n: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_env(tmp: Path) -> dict[str, str]:
    """Config, runtime, settings and workspaces in `tmp`: nothing from (or left in) the user's
    Jupyter and IPython folders. Kernels and lab extensions are still found in sys.prefix."""
    env = dict(os.environ)
    for var, name in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                      ("JUPYTERLAB_SETTINGS_DIR", "lab-settings"), ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
                      ("IPYTHONDIR", "ipython")]:
        env[var] = str(tmp / name)
        (tmp / name).mkdir(parents=True, exist_ok=True)
    for rel, settings in LAB_SETTINGS.items():
        path = tmp / "lab-settings" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    env["HF_HUB_OFFLINE"] = "1"
    return env


def wait_until_ready(proc: subprocess.Popen, lab: Lab) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with code {proc.returncode} while starting:\n{lab.log_tail()}")
        try:
            with urllib.request.urlopen(f"{lab.url}/api/status?token={lab.token}", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s:\n{lab.log_tail()}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM first: the server then shuts its kernels down. Kill the server if it hangs (a kernel
    whose server died exits by itself: ipykernel polls its parent)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(SERVER_STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(SERVER_STOP_S)


@pytest.fixture()
def lab(tmp_path):
    """A JupyterLab serving a temporary folder that holds copies of notebooks 01 and 04."""
    root = tmp_path / "root"
    root.mkdir()
    for notebook in (NOTEBOOK, TOKEN_NOTEBOOK):
        assert notebook.exists(), f"{notebook} is missing"
        shutil.copy(notebook, root / notebook.name)
    port, token = free_port(), secrets.token_hex(16)
    lab = Lab(url=f"http://127.0.0.1:{port}", token=token, log=tmp_path / "jupyterlab.log")
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--port-retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
               "--ServerApp.open_browser=False", "--ServerApp.terminals_enabled=False",
               "--ServerApp.allow_root=True",  # CI runs as root
               "--expose-app-in-browser",  # window.jupyterapp: run Lab commands from the test
               # nothing that would look outside 127.0.0.1: news, update checks, PyPI's extension index
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly"]
    with open(lab.log, "wb") as log:
        proc = subprocess.Popen(command, cwd=root, env=lab_env(tmp_path), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(proc, lab)
        yield lab
    finally:
        stop(proc)


# --- the browser -----------------------------------------------------------------------------------
def require_browser() -> None:
    """A missing browser skips this test where a person runs the suite, and fails it under CI, which
    sets CLIPX_REQUIRE_BROWSER=1 (.ci/run installs chromium), so CI always runs this check."""
    missing = None
    if not Path(CHROMIUM).exists():
        missing = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium), as .ci/run does"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the playwright package is missing: pip install -e '.[test]'"
    if missing and os.environ.get("CLIPX_REQUIRE_BROWSER") == "1":
        pytest.fail(missing + " (CLIPX_REQUIRE_BROWSER=1 makes this a failure)")
    if missing:
        pytest.skip(missing)


# JavaScript run in the page. `panel(path)` is the notebook's NotebookPanel in Lab's main area.
PANEL = "const panel = [...window.jupyterapp.shell.widgets('main')].find(w => w.context && w.context.path === path);"
NOTEBOOK_READY = f"""path => {{
    if (!window.jupyterapp) return false;
    {PANEL}
    return !!panel && panel.context.isReady && panel.sessionContext.session?.kernel?.status === 'idle';
}}"""
KERNEL_IDLE = f"path => {{ {PANEL} return panel.sessionContext.session?.kernel?.status === 'idle'; }}"
RUN_ALL = f"""path => {{
    {PANEL}
    window.jupyterapp.shell.activateById(panel.id);
    window.__runAll = undefined;
    window.jupyterapp.commands.execute('notebook:run-all-cells').then(
        ok => {{ window.__runAll = {{ ok }}; }}, error => {{ window.__runAll = {{ error: String(error) }}; }});
}}"""
NOTEBOOK_JSON = f"path => {{ {PANEL} return panel.content.model.toJSON(); }}"
IMAGE_SHOWN = "img => !!img.src && img.complete && img.naturalWidth > 0"
IMAGE_REPLACED = "([img, old]) => img.src !== old && img.complete && img.naturalWidth > 0"


def wait_for(page, script: str, arg, seconds: float, what: str, lab: Lab) -> None:
    """page.wait_for_function with a message that says what did not happen, and the server's log."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(script, arg=arg, timeout=seconds * 1000, polling=250)
        return
    except PlaywrightTimeout:
        pass  # fail outside the handler: Playwright's own timeout message says nothing more
    pytest.fail(f"timed out after {seconds} s waiting for {what}\n--- JupyterLab log ---\n{lab.log_tail()}")


def wait_visible(locator) -> bool:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        locator.wait_for(state="visible", timeout=UPDATE_S * 1000)
        return True
    except PlaywrightTimeout:
        return False


def cell_errors(notebook: dict) -> list[str]:
    """Error outputs, tracebacks on stderr and code cells that never ran, as readable lines."""
    problems = []
    for i, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code" or not "".join(cell["source"]).strip():
            continue
        if cell.get("execution_count") is None:
            problems.append(f"cell {i} did not run")
        for out in cell.get("outputs", []):
            text = "".join(out.get("text", "")) if out["output_type"] == "stream" else ""
            if out["output_type"] == "error":
                problems.append(f"cell {i}: {out['ename']}: {out['evalue']}")
            elif out.get("name") == "stderr" and "Traceback" in text:
                problems.append(f"cell {i} printed a traceback:\n{text}")
    return problems


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


@pytest.fixture()
def pw():
    """Playwright, checked before the server starts."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.mark.slow
def test_explorer_in_jupyterlab(pw, lab, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "browser-explorer-failure.png").unlink(missing_ok=True)  # from an earlier run
    path = NOTEBOOK.name
    # a persistent context is how Playwright takes a user-data-dir: a fresh profile per run
    browser = pw.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1400, "height": 1000}, timeout=30_000)
    try:
        browser.set_default_timeout(UPDATE_S * 1000)
        page = browser.pages[0] if browser.pages else browser.new_page()
        try:
            times = drive_explorer(page, lab, path)
            times.update(drive_token_patch_view(page, lab, TOKEN_NOTEBOOK.name))
            times.update(drive_interaction_view(page, lab, TOKEN_NOTEBOOK.name))
        except BaseException:
            save_failure_screenshot(page)
            raise
    finally:
        browser.close()
    print("update times in the browser: " + ", ".join(f"{what} {s * 1000:.0f} ms" for what, s in times.items()))


def save_failure_screenshot(page) -> None:
    try:
        page.screenshot(path=ARTIFACTS / "browser-explorer-failure.png", timeout=10_000)
        print(f"failure screenshot: {ARTIFACTS / 'browser-explorer-failure.png'}")
    except Exception as error:  # the test's own failure matters more
        print(f"no failure screenshot: {error}")


def run_all(page, lab: Lab, path: str) -> None:
    """Open the notebook and run all its cells through Lab's own command (it resolves once every cell has run,
    false on an error); fail on any error output."""
    page.goto(f"{lab.url}/lab/tree/{path}?token={lab.token}", timeout=NOTEBOOK_OPEN_S * 1000)
    wait_for(page, NOTEBOOK_READY, path, NOTEBOOK_OPEN_S, f"{path} to open with an idle kernel", lab)
    page.evaluate(RUN_ALL, path)
    wait_for(page, "() => window.__runAll !== undefined", None, RUN_ALL_S, f"Run All Cells of {path} to finish", lab)
    result = page.evaluate("() => window.__runAll")
    problems = cell_errors(page.evaluate(NOTEBOOK_JSON, path))
    assert not problems and result == {"ok": True}, f"running {path} failed ({result}):\n" + "\n".join(problems)
    wait_for(page, KERNEL_IDLE, path, UPDATE_S, f"the kernel of {path} to go idle after Run All", lab)


def find_view(page, lab: Lab, has: str, what: str, has_not: str | None = None):
    """The last output holding a view's picture and the element `has` (a CSS selector), without `has_not`."""
    view = (page.locator(".jp-OutputArea-output").filter(has=page.locator("img.clipx-picture"))
            .filter(has=page.locator(has)))
    if has_not is not None:
        view = view.filter(has_not=page.locator(has_not))
    view = view.last
    if not wait_visible(view):
        fallback = page.locator(".jp-OutputArea-output img[src^='data:image/png']").count()
        pytest.fail(f"no {what} widget on the page" + (
            ": its static PNG / HTML fallback is shown instead, so Lab has no ipywidgets renderer "
            "(is jupyterlab_widgets installed in the environment that runs JupyterLab?)" if fallback else "")
            + f"\n--- JupyterLab log ---\n{lab.log_tail()}")
    view.evaluate("el => el.scrollIntoView({block: 'center'})")
    return view


def timed(page, lab: Lab, path: str, action, changed: str, arg, what: str) -> float:
    """Seconds from `action` (a user's click or keypress) until the page script `changed` holds for `arg`,
    polled every 20 ms; then waits for the kernel to go idle, so the next action starts from rest."""
    start = time.perf_counter()
    action()
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(changed, arg=arg, timeout=UPDATE_S * 1000, polling=20)
    except PlaywrightTimeout:
        pytest.fail(f"timed out after {UPDATE_S} s waiting for the view to change after {what}"
                    f"\n--- JupyterLab log ---\n{lab.log_tail()}")
    seconds = time.perf_counter() - start
    wait_for(page, KERNEL_IDLE, path, UPDATE_S, f"the kernel to go idle after {what}", lab)
    return seconds


def point_at(picture, fraction: tuple[float, float]) -> dict:
    """The position (pixels from the picture's top left corner, as Playwright takes it) at fractions of its
    width and height."""
    box = picture.bounding_box()
    return {"x": box["width"] * fraction[0], "y": box["height"] * fraction[1]}


def open_view(page, lab: Lab, path: str, marker: str, name: str, run: bool = True, has_not: str | None = None):
    """Run the notebook at `path` (unless it ran already), find the view `name` by a `marker` selector inside it
    (and not `has_not`), and wait for its picture: (the view, its picture, the picture's element handle)."""
    if run:
        run_all(page, lab, path)
    view = find_view(page, lab, marker, name, has_not)
    picture = view.locator("img.clipx-picture")
    handle = picture.element_handle()
    wait_for(page, IMAGE_SHOWN, handle, UPDATE_S, f"the {name}'s overlay to load", lab)
    return view, picture, handle


def drive_explorer(page, lab: Lab, path: str) -> dict[str, float]:
    explorer, picture, handle = open_view(page, lab, path, ".clipx-options", "Explorer")
    method = explorer.locator(".widget-dropdown select").filter(has=page.locator(f"option[value='{METHOD_AFTER}']"))
    assert method.input_value() == METHOD_BEFORE, f"{METHOD_BEFORE} is not selected"
    times, shot_before = {}, picture.screenshot()

    hover = explorer.locator(".clipx-hover")
    times["hover"] = timed(page, lab, path, lambda: picture.hover(position=point_at(picture, (0.7, 0.4))),
                           "el => el.textContent.includes('patch (')", hover.element_handle(),
                           "hovering the picture")
    assert METHOD_BEFORE in hover.inner_text(), f"the hover line does not say what the value is: {hover.inner_text()!r}"

    src = picture.get_attribute("src")
    captions = explorer.locator(".clipx-captions select")
    rows_before = captions.inner_text()
    times["click a patch"] = timed(page, lab, path, lambda: picture.click(position=point_at(picture, (0.1, 0.1))),
                                   IMAGE_REPLACED, [handle, src], "clicking a patch")
    assert captions.inner_text() != rows_before, "the caption rows do not show the values at the clicked patch"

    src = picture.get_attribute("src")
    times["click a caption row"] = timed(page, lab, path, lambda: captions.locator("option").nth(1).click(),
                                         IMAGE_REPLACED, [handle, src], "clicking a caption row")

    src = picture.get_attribute("src")
    box = explorer.locator(".clipx-options input").first

    def change_option():
        box.fill(str(int(box.input_value()) + 1))
        box.press("Enter")

    times["change an option"] = timed(page, lab, path, change_option, IMAGE_REPLACED, [handle, src],
                                      "changing an option")

    src = picture.get_attribute("src")
    times["pick a method"] = timed(page, lab, path, lambda: method.select_option(METHOD_AFTER), IMAGE_REPLACED,
                                   [handle, src], f"picking {METHOD_AFTER!r}")
    changed = np.abs(png(picture.screenshot()) - png(shot_before)).max(axis=-1) > 8
    assert changed.mean() > 0.01, f"the overlay's pixels hardly changed ({changed.mean():.2%} of them)"

    explorer.evaluate("el => el.scrollIntoView({block: 'center'})")  # the whole Explorer on the page
    page.screenshot(path=ARTIFACTS / "browser-explorer.png")
    explorer.screenshot(path=ARTIFACTS / "browser-explorer-widget.png")
    print(f"screenshots: {ARTIFACTS / 'browser-explorer.png'}, {ARTIFACTS / 'browser-explorer-widget.png'}")
    return times


def drive_token_patch_view(page, lab: Lab, path: str) -> dict[str, float]:
    view, picture, handle = open_view(page, lab, path, ".clipx-tokens", "TokenPatchView", has_not=".clipx-span")
    times = {}
    src = picture.get_attribute("src")
    times["click a token"] = timed(page, lab, path, lambda: view.locator(".clipx-tokens button").nth(1).click(),
                                   IMAGE_REPLACED, [handle, src], "clicking a token")
    strip = view.locator(".clipx-tokens")
    text = strip.inner_text()
    times["click a patch (tokens)"] = timed(
        page, lab, path, lambda: picture.click(position=point_at(picture, (0.9, 0.9))),
        "([el, old]) => el.innerText !== old", [strip.element_handle(), text], "clicking a patch")
    # the "before" picture: "star" and a patch of the star, as the InteractionView's "after" shows "red star"
    src = picture.get_attribute("src")
    timed(page, lab, path, lambda: view.locator(".clipx-tokens button").nth(3).click(), IMAGE_REPLACED, [handle, src],
          "clicking 'star'")
    src = picture.get_attribute("src")
    timed(page, lab, path, lambda: picture.click(position=point_at(picture, (0.3, 0.4))), IMAGE_REPLACED,
          [handle, src], "clicking the star")
    view.screenshot(path=ARTIFACTS / "browser-token-patch-widget.png")
    return times


def drive_interaction_view(page, lab: Lab, path: str) -> dict[str, float]:
    """The notebook ran already (drive_token_patch_view): select spans on the strip, regions on the picture."""
    view, picture, handle = open_view(page, lab, path, ".clipx-span", "InteractionView", run=False)
    tokens = view.locator(".clipx-span button")
    times = {}
    src = picture.get_attribute("src")
    times["span: click a token"] = timed(page, lab, path, lambda: tokens.nth(2).click(), IMAGE_REPLACED,
                                         [handle, src], "clicking a token")
    src = picture.get_attribute("src")
    times["span: shift-click"] = timed(page, lab, path, lambda: tokens.nth(3).click(modifiers=["Shift"]),
                                       IMAGE_REPLACED, [handle, src], "shift-clicking a token")
    bold = [b.evaluate("el => getComputedStyle(el).fontWeight") for b in tokens.all()[1:5]]
    assert [int(w) >= 600 for w in bold] == [False, True, True, False], f"the span is not marked: {bold}"

    strip = view.locator(".clipx-span")
    text = strip.inner_text()
    box = picture.bounding_box()

    def drag_box():
        # from patch (2, 1) to patch (4, 3) of the 8 x 8 grid: around the star
        page.mouse.move(box["x"] + 0.15 * box["width"], box["y"] + 0.28 * box["height"])
        page.mouse.down()
        page.mouse.move(box["x"] + 0.48 * box["width"], box["y"] + 0.6 * box["height"], steps=5)
        page.mouse.up()

    times["region: drag a box"] = timed(page, lab, path, drag_box, "([el, old]) => el.innerText !== old",
                                        [strip.element_handle(), text], "dragging a box on the picture")
    assert "region 9 patches" in view.inner_text(), "the summary does not say the box's 9 patches"
    # the "after" picture: the span "red star" and the box around the star
    view.screenshot(path=ARTIFACTS / "browser-interaction-widget.png")

    def drag(source, target):
        source.hover()
        page.mouse.down()
        target.hover()
        page.mouse.up()

    src = picture.get_attribute("src")
    times["span: drag along the strip"] = timed(page, lab, path, lambda: drag(tokens.nth(5), tokens.nth(7)),
                                                IMAGE_REPLACED, [handle, src], "dragging along the tokens")
    text = strip.inner_text()
    times["region: click a patch"] = timed(
        page, lab, path, lambda: picture.click(position=point_at(picture, (0.8, 0.3))),
        "([el, old]) => el.innerText !== old", [strip.element_handle(), text], "clicking a patch")
    assert "region 1 patch:" in view.inner_text()
    return times


def test_a_missing_browser_skips_here_and_fails_under_ci(monkeypatch, tmp_path):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.delenv("CLIPX_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        require_browser()
    monkeypatch.setenv("CLIPX_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="no-chromium is missing"):
        require_browser()
