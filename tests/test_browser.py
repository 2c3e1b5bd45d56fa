"""Notebook 06 in a real browser: JupyterLab on localhost, headless Chromium driven by Selenium.

The notebook is parameterised (papermill, without running it) to open a smoke model trained by
the ``smoke_ldm`` fixture, JupyterLab serves it with a token, Chromium runs all cells, the test
moves the noise-step slider with the keyboard and checks that the displayed image changes. A
screenshot of the widgets goes to ``runs/browser/notebook06.png`` (git-ignored).

Needs Chromium and its driver (Debian: ``apt-get install chromium chromium-driver``) and the
``selenium`` package; nothing is downloaded (the driver path is given, so Selenium Manager never
runs). Without them the test skips, unless ``MMLDM_REQUIRE_BROWSER=1`` (set by CI in ``.ci/run``),
which makes a missing browser a failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import REPO

SCREENSHOT = REPO / "runs" / "browser" / "notebook06.png"
TIMEOUT = 180  # seconds for JupyterLab to load and the notebook to run on a busy 2-core machine


def _need(what: str):
    if os.environ.get("MMLDM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser test required (MMLDM_REQUIRE_BROWSER=1) but {what}")
    pytest.skip(what)


def _browser() -> tuple[str, str]:
    try:
        import selenium  # noqa: F401
    except ImportError:
        _need("the selenium package is not installed (pip install selenium)")
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        _need("Chromium or chromedriver is missing (Debian: apt-get install chromium chromium-driver)")
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver); checked before the smoke model is trained for nothing."""
    return _browser()


@pytest.fixture
def lab(browser_paths, smoke_ldm, tmp_path):
    """JupyterLab serving a parameterised copy of notebook 06; yields its URL and paths."""
    import papermill as pm

    chromium, driver = browser_paths
    root = tmp_path / "lab"
    root.mkdir()
    pm.execute_notebook(
        str(REPO / "notebooks" / "06_interactive.ipynb"),
        str(root / "06_interactive.ipynb"),
        parameters={"profile": "smoke", "overrides": smoke_ldm["overrides"]},
        prepare_only=True,
        kernel_name="python3",
        progress_bar=False,
    )
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    env.pop("MPLBACKEND", None)  # the kernel's own inline backend, so figures show in the page
    news = tmp_path / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')  # no "official Jupyter news?" pop-up (and no network)
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            f"--port={port}",
            "--ip=127.0.0.1",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--ServerApp.allow_root=True",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(
                        f"JupyterLab did not start: {(tmp_path / 'lab.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.3)
        yield {
            "url": f"http://127.0.0.1:{port}/lab/tree/06_interactive.ipynb?token={token}",
            "figures": smoke_ldm["figures"],
            "chromium": chromium,
            "driver": driver,
            "log": tmp_path / "lab.log",
        }
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.mark.slow
def test_notebook06_in_chromium(lab):
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    figure = lab["figures"] / "06_trajectory.png"
    figure.unlink(missing_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = lab["chromium"]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1500,1100",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(executable_path=lab["driver"]), options=options)
    t_start = time.time()
    try:
        wait = WebDriverWait(browser, TIMEOUT)
        browser.get(lab["url"])
        # The notebook is open and its kernel is up.
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell")))
        wait.until(
            EC.presence_of_element_located(
                (By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status='idle']")
            )
        )

        # Run > Run All Cells. On a busy machine the first request can arrive before the kernel's
        # connection is ready and be dropped (every prompt stays "[ ]"): then ask again.
        def started(b):
            return any(
                p.text.strip() not in ("", "[ ]:")
                for p in b.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-CodeCell .jp-InputPrompt")
            )

        for _attempt in range(3):
            menu = next(
                e for e in browser.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item") if e.text.strip() == "Run"
            )
            menu.click()
            wait.until(
                lambda b: next(
                    (
                        e
                        for e in b.find_elements(By.CSS_SELECTOR, ".lm-Menu-item")
                        if e.text.strip() == "Run All Cells" and e.is_displayed()
                    ),
                    False,
                )
            ).click()
            try:
                WebDriverWait(browser, 30).until(started)
                break
            except TimeoutException:
                browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        else:
            raise AssertionError("Run All Cells never started the kernel on the notebook")
        # The explorer appears, with its forward panel drawn.
        image = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, ".mmldm-explorer img.mmldm-fwd-xt")))
        wait.until(lambda b: image.get_attribute("src") and image.size["width"] > 0)
        assert figure.is_file(), f"the notebook did not write {figure}"
        slider = browser.find_element(By.CSS_SELECTOR, ".mmldm-t")
        readout = slider.find_element(By.CSS_SELECTOR, ".widget-readout")
        browser.execute_script("arguments[0].scrollIntoView({block: 'start'});", slider)
        time.sleep(0.5)
        before_t, before_src, before_png = readout.text, image.get_attribute("src"), image.screenshot_as_png

        # Move the slider: focus its handle, press the right arrow five times.
        handle = slider.find_element(By.CSS_SELECTOR, ".noUi-handle")
        browser.execute_script("arguments[0].focus();", handle)
        for _ in range(5):
            handle.send_keys(Keys.ARROW_RIGHT)
        after_t = str(int(before_t) + 5)
        wait.until(lambda b: readout.text == after_t)
        caption = browser.find_element(By.XPATH, "//img[contains(@class, 'mmldm-fwd-xt')]/preceding-sibling::*[1]")
        WebDriverWait(browser, 30).until(lambda b: f"t = {after_t}" in caption.text)
        WebDriverWait(browser, 30).until(lambda b: image.get_attribute("src") != before_src)
        time.sleep(0.5)  # let the new blob render before the pixels are compared
        assert image.screenshot_as_png != before_png, "the image did not change on screen"

        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        explorer = browser.find_element(By.CSS_SELECTOR, ".mmldm-explorer")
        browser.set_window_size(1500, max(1100, explorer.size["height"] + 200))
        browser.execute_script("arguments[0].scrollIntoView({block: 'start'});", explorer)
        time.sleep(0.5)
        tmp = SCREENSHOT.with_name(f".{SCREENSHOT.name}.tmp-{os.getpid()}.png")
        explorer.screenshot(str(tmp))
        os.replace(tmp, SCREENSHOT)
        errors = [
            e.text
            for e in browser.find_elements(
                By.CSS_SELECTOR, ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']"
            )
        ]
        assert not errors, errors
        print(
            f"browser test: notebook loaded, ran and answered the slider in {time.time() - t_start:.1f} s; "
            f"t {before_t} -> {after_t}; screenshot {SCREENSHOT}"
        )
    except Exception:
        browser.save_screenshot(str(lab["log"].with_name("failure.png")))
        print(f"page screenshot: {lab['log'].with_name('failure.png')}; JupyterLab log: {lab['log']}")
        raise
    finally:
        browser.quit()
