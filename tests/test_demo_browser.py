"""pulse-ext demo in a real browser: Debian's headless Chromium driven through chromedriver (selenium).

.ci/run installs chromium and chromium-driver; where they (or selenium) are missing the tests are
skipped and say so.
"""
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo_helpers import CHROMEDRIVER, CHROMIUM, chrome, running_demo
from pulse_ext.demo import DemoLimits

def _missing():
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            return f"{path} not found: install Debian's {package} (apt-get install chromium chromium-driver)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


@pytest.fixture
def browser(tmp_path):
    driver = chrome(tmp_path)
    try:
        yield driver
    finally:
        driver.quit()


def _face(path, size=16):
    """A 16x16 face the default generator can reach: one of its own samples, area-downscaled."""
    import torch

    from pulse_ext.checkpoints import load_generator

    G = load_generator("default")
    with torch.no_grad():
        z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(3))
        image = ((G(z, noise_mode="const") + 1) / 2).clamp(0, 1)
    low = torch.nn.functional.avg_pool2d(image, G.img_resolution // size)[0]
    Image.fromarray((low * 255).round().byte().permute(1, 2, 0).numpy()).save(path)
    return path


def _wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _fill(driver, **fields):
    from selenium.webdriver.common.by import By

    for name, value in fields.items():
        box = driver.find_element(By.ID, name)
        box.clear()
        box.send_keys(str(value))


def _cards(driver):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#searches .search")


def _open(browser, server):
    """Load the page and wait until it has read the server's config."""
    from selenium.webdriver.common.by import By

    browser.get(server.url)
    _wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#generator option"), 20, "the page's config")


def _submit(browser, image, **fields):
    """Choose ``image``, fill the form's ``fields`` and press the start button."""
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "file").send_keys(str(image))
    _fill(browser, **fields)
    browser.find_element(By.ID, "start").click()


def test_upload_search_see_outputs_and_download_one(browser, tmp_path):
    from selenium.webdriver.common.by import By

    from pulse_ext.pulse.losses import downscale
    from pulse_ext.upscale import image_to_tensor

    face = _face(tmp_path / "face16.png")
    with running_demo() as server:
        _open(browser, server)
        _submit(browser, face, restarts=4, steps=60, num_outputs=3, seed=11)
        card = _wait_for(lambda: (_cards(browser) or [None])[0], 20, "the search to appear")
        # live: a running search shows its step and current best images before it ends
        _wait_for(lambda: card.get_attribute("data-state") in ("running", "done"), 60, "the search to start")
        _wait_for(lambda: card.get_attribute("data-state") == "done", 180, "the search to finish")
        outputs = card.find_elements(By.CSS_SELECTOR, ".outputs .output")
        assert len(outputs) == 3
        for output in outputs:
            for img in output.find_elements(By.TAG_NAME, "img"):
                _wait_for(lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                                         img), 10, "an output image to load")
        sizes = [browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img)
                 for img in outputs[0].find_elements(By.TAG_NAME, "img")]
        assert sizes == [[64, 64], [16, 16]]  # the output and its downscale
        status = card.find_element(By.CSS_SELECTOR, ".status").text
        assert re.match(r"(stopped at )?step \d+ of 60( \(every restart met eps\))?, best L2 \d\.\d\de-\d+ \(", status), status
        shot = os.environ.get("PULSE_EXT_DEMO_SCREENSHOT")  # docs/demo.md's picture
        if shot:
            browser.save_screenshot(shot)
        reported_l2 = float(outputs[0].text.split("L2 ")[1].split()[0])

        outputs[0].find_element(By.CSS_SELECTOR, "a.download").click()
        download = _wait_for(lambda: [p for p in browser.downloads.iterdir() if p.suffix == ".png"], 20,
                             "the download")[0]
        assert download.name == "face16_1.png"
        image = Image.open(download)
        assert image.size == (64, 64)
        target = image_to_tensor(face)
        l2 = float(((downscale(image_to_tensor(image), (16, 16), "area") - target) ** 2).mean())
        assert l2 == pytest.approx(reported_l2, rel=0.1, abs=3e-5)  # the page's L2, up to PNG rounding
        assert l2 < 0.01, "the downloaded face does not downscale to the input"


def test_a_broken_file_shows_an_error_and_the_server_keeps_serving(browser, tmp_path):
    from selenium.webdriver.common.by import By

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    with running_demo() as server:
        _open(browser, server)
        _submit(browser, broken)
        error = _wait_for(lambda: browser.find_element(By.ID, "form-error").text, 20, "the error message")
        assert error.startswith("cannot read broken.png"), error
        assert not _cards(browser)
        # the same page goes on working
        _submit(browser, _face(tmp_path / "ok.png"), restarts=2, steps=5, num_outputs=1)
        card = _wait_for(lambda: (_cards(browser) or [None])[0], 20, "the search to appear")
        _wait_for(lambda: card.get_attribute("data-state") == "done", 120, "the search to finish")


def test_an_oversized_upload_and_alignment_without_dlib_are_explained(browser, tmp_path):
    from selenium.webdriver.common.by import By

    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(big)
    with running_demo(DemoLimits(max_upload_bytes=50_000), align_unavailable="dlib is not installed here") as server:
        _open(browser, server)
        assert not browser.find_element(By.ID, "align").is_enabled()
        assert "dlib is not installed here" in browser.find_element(By.ID, "align-note").text
        _submit(browser, big)
        error = _wait_for(lambda: browser.find_element(By.ID, "form-error").text, 20, "the error message")
        kb = big.stat().st_size / 1024
        assert error == f"big.png is {kb:.1f} KB; this demo takes images up to 48.8 KB.", error


def test_two_searches_at_once_queue(browser, tmp_path):
    from selenium.webdriver.common.by import By

    face = _face(tmp_path / "face16.png")
    with running_demo() as server:
        _open(browser, server)
        _submit(browser, face, restarts=4, steps=400, num_outputs=1, seed=1)
        _wait_for(lambda: len(_cards(browser)) == 1, 20, "the first search")
        _fill(browser, steps=10, seed=2)
        browser.find_element(By.ID, "start").click()
        _wait_for(lambda: len(_cards(browser)) == 2, 20, "the second search")
        second, first = _cards(browser)  # newest on top
        state = _wait_for(lambda: second.find_element(By.CSS_SELECTOR, ".state").text, 10, "the queue state")
        assert state == "(queued: 1 search ahead of this one)", state
        _wait_for(lambda: first.get_attribute("data-state") == "done", 240, "the first search")
        _wait_for(lambda: second.get_attribute("data-state") == "done", 120, "the second search")
        a, b = (server.app.get(s.get_attribute("id").removeprefix("search-")) for s in (first, second))
        assert b.started >= a.finished  # one search at a time
