"""docs/figures/demo.png: ``pulse-ext demo`` as a user starts it, one search of examples/astronaut16.png
run in headless Chromium, and the page photographed when it is done.

    python python/demo_screenshot.py [--out docs/figures/demo.png]

Needs Debian's chromium + chromium-driver and selenium (the test extra), like tests/test_demo_browser.py.
"""
import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from demo_helpers import chrome  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs/figures/demo.png"))
    parser.add_argument("--image", default=str(ROOT / "examples/astronaut16.png"))
    args = parser.parse_args()
    from selenium.webdriver.common.by import By

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "pulse_ext", "demo", "--port", str(port)])
    try:
        with tempfile.TemporaryDirectory() as folder:
            driver = chrome(folder, 1100, 1420)
            try:
                for _ in range(100):  # the generator loads before the server listens
                    try:
                        socket.create_connection(("127.0.0.1", port), 0.2).close()
                        break
                    except OSError:
                        time.sleep(0.2)
                driver.get(f"http://127.0.0.1:{port}/")
                time.sleep(1)
                driver.find_element(By.ID, "file").send_keys(args.image)
                for name, value in (("restarts", 8), ("steps", 100), ("num_outputs", 4), ("seed", 2)):
                    box = driver.find_element(By.ID, name)
                    box.clear()
                    box.send_keys(str(value))
                driver.find_element(By.ID, "start").click()
                for _ in range(600):
                    cards = driver.find_elements(By.CSS_SELECTOR, "#searches .search")
                    if cards and cards[0].get_attribute("data-state") in ("done", "error"):
                        break
                    time.sleep(0.5)
                time.sleep(1)
                driver.save_screenshot(args.out)
                print(f"wrote {args.out}")
            finally:
                driver.quit()
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
