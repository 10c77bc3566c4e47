"""The demo for tests (and python/demo_screenshot.py): ``running_demo()`` starts a DemoApp with the
embedded default generator behind a DemoServer on a free loopback port, served from a thread;
``chrome()`` starts Debian's headless Chromium through its chromedriver."""
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

import torch

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def chrome(folder, width=1200, height=1600):
    """A selenium Chrome driver on headless Chromium, its profile in ``folder``/profile and its downloads
    in ``driver.downloads`` (``folder``/downloads). Quit it when done."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = Path(folder) / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # No network but loopback here: without the background-networking flags Chromium keeps trying to
    # reach its update and sync services.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--window-size={width},{height}", f"--user-data-dir={Path(folder) / 'profile'}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.downloads = downloads
    return driver


@contextmanager
def running_demo(limits=None, aligner=None, align_unavailable="alignment not set up in this test",
                 preview_every=5):
    from pulse_ext.checkpoints import load_generator
    from pulse_ext.demo import DemoApp, DemoServer

    generators = {"default": load_generator("default", device="cpu")}
    app = DemoApp(generators, torch.device("cpu"), limits, aligner=aligner, align_unavailable=align_unavailable,
                  preview_every=preview_every)
    server = DemoServer(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    app.start()
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        app.close()
        thread.join(5)
