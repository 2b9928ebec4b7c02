"""A chapter runs in JupyterLab and its explorer works there, in a real browser.

The test starts a headless JupyterLab server (the one ``make lab`` installs), opens a
copy of chapter 0's notebook set to the ``smoke`` profile in headless Chromium (driven
by playwright), runs every cell through the server's kernel, and checks that

* every code cell ran and none shows an error or stderr output,
* the dataset browser (:func:`nbs_lib.report.widgets.dataset_browser`) renders its
  controls and an image, and choosing another dataset or class changes the image,
* the run wrote its CSV to its own results folder and left ``book/results/`` alone.

Chapter 0 is the quickest chapter at smoke (about 30 s by papermill) with a widget.
JupyterLab and playwright come from ``requirements-lab.txt`` (``make test`` installs
them); Chromium is the system one. A missing piece fails the test, it is never skipped.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import papermill
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "notebooks" / "00_data_and_models.ipynb"
PUBLISHED = ROOT / "book" / "results"
CHROMIUM = os.environ.get("NBS_CHROMIUM", "/usr/bin/chromium")
JUPYTER_LAB = Path(sys.executable).with_name("jupyter-lab")
SERVER_START_S = 90
RUN_ALL_S = 240  # the chapter takes ~30 s at smoke; a busy machine is slower

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]


def _lab_requirements():
    """playwright's sync API, or a failure that says how to install what is missing."""
    missing = []
    if not JUPYTER_LAB.exists():
        missing.append(f"JupyterLab ({JUPYTER_LAB} not found)")
    if not Path(CHROMIUM).exists():
        missing.append(f"Chromium ({CHROMIUM} not found; set NBS_CHROMIUM to another binary)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("playwright (not importable)")
    if missing:
        pytest.fail("the JupyterLab browser test needs " + ", ".join(missing)
                    + ": `make .venv/.lab-installed` installs JupyterLab and playwright"
                    " (requirements-lab.txt); `make browser` installs Chromium (the Debian package)", pytrace=False)
    return sync_playwright


def _snapshot(folder: Path) -> dict:
    """Each file under ``folder``: its size, modification time and content hash."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns,
                                         hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _quiet_settings(settings: Path) -> None:
    """No news or update toasts over the notebook."""
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text('{"fetchNews": "false", "checkForUpdates": false}')


@pytest.fixture
def lab_server(tmp_path):
    """A JupyterLab server over ``tmp_path/root``: ``(url, root, results)``; shut down afterwards."""
    _lab_requirements()
    root, results, settings = tmp_path / "root", tmp_path / "results", tmp_path / "settings"
    root.mkdir()
    _quiet_settings(settings)
    port, token = _free_port(), hashlib.sha256(os.urandom(16)).hexdigest()[:32]
    env = {k: v for k, v in os.environ.items() if k != "NBS_PUBLISH"}  # never the published run
    env.update(NBS_CACHE=str(tmp_path / "cache"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"))
    log = tmp_path / "lab.log"
    cmd = [str(JUPYTER_LAB), "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
           "--ServerApp.terminals_enabled=False", "--allow-root"]  # CI containers often run as root
    with open(log, "wb") as out:
        server = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited with {server.returncode}:\n{log.read_text()}", pytrace=False)
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not answer in {SERVER_START_S} s:\n{log.read_text()}",
                                pytrace=False)
                time.sleep(0.5)
        yield f"{url}/lab/tree/{CHAPTER.name}?token={token}", root, results
    finally:
        try:  # kernels run in their own sessions: ask the server to shut them down with itself
            urllib.request.urlopen(urllib.request.Request(f"{url}/api/shutdown?token={token}", method="POST"),
                                   timeout=10).close()
        except OSError:
            pass
        for signal, wait in ((15, 20), (9, None)):  # the server, its kernel and the rest of its session
            try:
                os.killpg(server.pid, signal)
            except ProcessLookupError:
                pass
            try:
                server.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue


# Every code cell's state from the notebook model: executed?, output types, stderr streams.
CELL_STATES = """() => jupyterapp.shell.currentWidget.content.widgets
  .filter(c => c.model.type === 'code')
  .map(c => ({count: c.model.executionCount,
              outputs: c.model.outputs.toJSON().map(o => o.output_type + (o.name ? ':' + o.name : ''))}))"""

# The visible image's bytes (ipywidgets serves them as a blob: URL), base64.
VISIBLE_IMAGE = """async (area) => {
  const img = [...area.querySelectorAll('.jupyter-widgets img')].find(i => i.offsetParent !== null);
  if (!img) return null;
  const buf = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
  let s = ''; for (const b of buf) s += String.fromCharCode(b);
  return btoa(s);
}"""


def test_chapter_widget_works_in_jupyterlab(lab_server, tmp_path):
    sync_playwright = _lab_requirements()
    url, root, results = lab_server
    papermill.execute_notebook(str(CHAPTER), str(root / CHAPTER.name), prepare_only=True,
                               parameters={"profile": "smoke", "results_dir": str(results)},
                               progress_bar=False)
    before = _snapshot(PUBLISHED)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.wait_for_function("""() => {
                const w = window.jupyterapp && jupyterapp.shell.currentWidget;
                return w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel
                    && w.sessionContext.session.kernel.connectionStatus === 'connected'
                    && w.sessionContext.session.kernel.status === 'idle';
            }""", timeout=SERVER_START_S * 1000)
            page.evaluate("""() => { window.runAll = 'running';
                jupyterapp.commands.execute('notebook:run-all-cells')
                    .then(ok => { window.runAll = ok; }, e => { window.runAll = String(e); }); }""")
            page.wait_for_function("""() => window.runAll !== 'running'
                && jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'""",
                                   timeout=RUN_ALL_S * 1000, polling=500)
            cells, ok = page.evaluate(f"({CELL_STATES})()"), page.evaluate("window.runAll")
            errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
            assert ok is True and errors.count() == 0, (
                f"run all cells returned {ok!r}; a cell failed or wrote to stderr in JupyterLab:\n"
                + "\n---\n".join(errors.all_text_contents()) + f"\ncells: {cells}")
            bad = [(i, c["outputs"]) for i, c in enumerate(cells)
                   if "error" in c["outputs"] or "stream:stderr" in c["outputs"]]
            assert not bad, f"code cells with error/stderr outputs: {bad}"
            assert all(c["count"] for c in cells), f"cells not executed: {cells}"

            # The explorer: dataset toggle buttons over a class dropdown over an image.
            area = page.locator(".jp-OutputArea-output").filter(has=page.locator(".widget-toggle-buttons"))
            assert area.count() == 1, "the dataset browser did not render in the output area"
            area.scroll_into_view_if_needed()
            toggles = area.locator(".widget-toggle-buttons button")
            dropdown = area.locator(".widget-dropdown select:visible")
            assert toggles.count() >= 2, f"{toggles.count()} dataset buttons"
            assert dropdown.count() == 1, f"{dropdown.count()} visible class dropdowns"
            page.wait_for_function(f"(a) => ({VISIBLE_IMAGE})(a).then(x => x !== null)",
                                   arg=area.element_handle())

            def view():
                page.wait_for_timeout(300)  # let the Stack switch children
                data = page.evaluate(VISIBLE_IMAGE, area.element_handle())
                return (data and hashlib.sha256(data.encode()).hexdigest()[:16], area.screenshot())

            first_image, first_pixels = view()
            assert first_image, "no visible image in the dataset browser"
            page.screenshot(path=str(tmp_path / "lab_widget.png"))

            second = toggles.nth(1)
            second.click()
            page.wait_for_function("(b) => b.classList.contains('mod-active')", arg=second.element_handle())
            other_dataset, other_dataset_pixels = view()
            assert other_dataset and other_dataset != first_image, "another dataset shows the same image"
            assert other_dataset_pixels != first_pixels, "another dataset did not change the view"

            dropdown = area.locator(".widget-dropdown select:visible")
            dropdown.select_option(index=1)
            other_class, other_class_pixels = view()
            assert other_class and other_class not in (first_image, other_dataset), \
                "another class shows the same image"
            assert other_class_pixels != other_dataset_pixels, "another class did not change the view"
            page.screenshot(path=str(tmp_path / "lab_widget_changed.png"))
        finally:
            browser.close()

    after = _snapshot(PUBLISHED)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, (f"the JupyterLab run touched book/results/: {changed} "
                         "(or another job, e.g. `make book`, wrote there meanwhile)")
    csvs = sorted(results.glob("*.csv"))
    assert [c.name for c in csvs] == ["00_data_and_models.csv"], f"results written: {csvs}"
    assert "smoke" in csvs[0].read_text()
