"""The web page in headless Chromium (Debian's chromium + chromedriver, driven by Selenium):
search with facets, a user's recommendations with their explanation, the data-value dashboard.

When Chromium is absent and we are root with apt-get, the fixture installs it (about a minute
once per machine; set SHOPRANK_NO_APT=1 to forbid); otherwise the test is skipped, saying why."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoprank.serving.app import create_app
from shoprank.serving.process import free_port
from shoprank.serving.service import Service

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _have_browser() -> bool:
    return os.path.exists(CHROMIUM) and os.path.exists(DRIVER)


def _try_install() -> str:
    """'' when Chromium is there (installed now if need be), else why not."""
    if _have_browser():
        return ""
    if os.environ.get("SHOPRANK_NO_APT"):
        return "chromium/chromedriver absent and SHOPRANK_NO_APT is set"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "chromium/chromedriver absent (apt-get install chromium chromium-driver needs root)"
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]
    try:
        if subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            subprocess.run(cmd, env=env, capture_output=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"installing chromium failed: {e}"
    return "" if _have_browser() else "apt-get could not install chromium chromium-driver"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    why = _try_install()
    if why:
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
              "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={tmp_path_factory.mktemp('chrome')}", "--window-size=1280,1000"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=DriverService(executable_path=DRIVER), options=opts)
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def live_url(dense_service: Service) -> Iterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(dense_service.settings, service=dense_service),
                                           host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    th.join(timeout=10)


def _plot(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar(["web", "partner", "bot"], [0.6, 0.3, -0.1])
    fig.savefig(path)
    plt.close(fig)


def test_page_search_facets_recommendations_dashboard(browser: Any, live_url: str,
                                                      dense_service: Service, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    rd = dense_service.settings.reports_dir
    assert isinstance(rd, Path)
    _plot(rd / "value_by_source.png")
    (rd / "report.html").write_text("<html><body><h1 id='title'>Data value report</h1></body></html>")
    d = browser
    wait = WebDriverWait(d, 20)
    try:
        d.get(live_url + "/")
        # search, with a typo
        box = d.find_element(By.ID, "q")
        box.send_keys("standng desk")
        d.find_element(By.ID, "search-btn").click()
        wait.until(lambda drv: len(drv.find_elements(By.CSS_SELECTOR, "#results li.result")) > 0)
        first = d.find_elements(By.CSS_SELECTOR, "#results li.result")
        assert "Standing Desk" in first[0].text
        assert "standing desk" in d.find_element(By.ID, "correction").text
        # facet filter
        facet = d.find_element(By.CSS_SELECTOR, ".facet[data-f='category'][data-v='furniture']")
        facet.click()
        wait.until(lambda drv: drv.find_elements(By.CSS_SELECTOR, ".facet.on"))
        wait.until(lambda drv: all("furniture" in li.text for li in drv.find_elements(By.CSS_SELECTOR, "#results li.result")))
        # user picker -> recommendations -> explanation
        wait.until(lambda drv: len(drv.find_elements(By.CSS_SELECTOR, "#user-list option")) > 1)
        Select(d.find_element(By.ID, "user-list")).select_by_index(1)
        wait.until(lambda drv: len(drv.find_elements(By.CSS_SELECTOR, "#recs li.rec")) > 0)
        assert "personal" in d.find_element(By.ID, "strategy").text
        d.find_element(By.CSS_SELECTOR, "#recs li.rec .why").click()
        expl = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#recs .explain")))
        wait.until(lambda drv: "because of" in expl.text)
        assert "similarity" in expl.text
        # dashboard shows the report's plot (the page loaded before the file existed: reload)
        d.get(live_url + "/")
        img = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#dashboard img")))
        wait.until(lambda drv: drv.execute_script("return arguments[0].naturalWidth", img) > 0)
        frame = d.find_element(By.ID, "report-frame")
        d.switch_to.frame(frame)
        assert wait.until(lambda drv: drv.find_element(By.ID, "title")).text == "Data value report"
        d.switch_to.default_content()
    except Exception:
        d.save_screenshot(str(tmp_path / "page.png"))
        raise
