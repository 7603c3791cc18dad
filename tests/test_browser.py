"""The page in a real browser: Debian's Chromium driven by Playwright, against `digitlab serve` started
as a user would start it. Draws a "1" with mouse strokes and checks the prediction shown."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("DIGITLAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "_artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, mnist_dir) -> Path:
    """A small recognition model trained on real MNIST (one epoch on 10% of it: ~96% test accuracy).
    DIGITLAB_TEST_RECOGNIZE_RUN=RUN reuses an existing run instead (faster when iterating)."""
    if os.environ.get("DIGITLAB_TEST_RECOGNIZE_RUN"):
        return Path(os.environ["DIGITLAB_TEST_RECOGNIZE_RUN"])
    out = tmp_path_factory.mktemp("runs") / "recognize" / "tiny"
    subprocess.run([sys.executable, "-m", "digitlab", "train", "recognize", "--data-dir", str(mnist_dir),
                    "--set", "epochs=1", "subset=0.1", "threads=2", "figures=false", "tensorboard=false",
                    "--out", str(out), "--quiet"], check=True, timeout=300)
    return out


def _serve(runs_root: Path, *flags: str):
    """`digitlab serve ... --port P`, the README command, until /healthz answers."""
    port = _free_port()
    env = {**os.environ, "DIGITLAB_RUNS": str(runs_root)}
    proc = subprocess.Popen([sys.executable, "-m", "digitlab", "serve", *flags, "--port", str(port), "--threads", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"digitlab serve did not start:\n{proc.stdout.read()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    yield from _serve(tmp_path_factory.mktemp("empty-runs"), "--recognize", str(trained_run))


def _untrained_run(root: Path, task: str) -> Path:
    """A run of the task's first registered model with seeded untrained weights: exercises the page only."""
    import torch

    from digitlab import io as dio
    from digitlab.config import resolve
    from digitlab.engine import run as runs
    from digitlab.models import registry

    models = registry.list_models(task)
    if not models:
        pytest.skip(f"no {task} model registered yet")
    cfg = resolve(task, None, {"model": sorted(models)[0]})
    run = root / task / "untrained"
    run.mkdir(parents=True)
    torch.manual_seed(0)
    dio.write_json(run / "config.json", cfg.to_dict())
    runs.save_model(run, registry.create(cfg.model, **cfg.model_kwargs()).eval(), cfg)
    dio.write_json(run / "metrics.json", {})
    return run


@pytest.fixture(scope="module")
def server_all_tasks(trained_run, tmp_path_factory):
    """Recognise with the trained run; denoise and compare found as the newest runs under DIGITLAB_RUNS."""
    root = tmp_path_factory.mktemp("runs-all")
    _untrained_run(root, "denoise"), _untrained_run(root, "compare")
    yield from _serve(root, "--recognize", str(trained_run))


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the Python package)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium (or set DIGITLAB_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def stroke(page, selector: str, points: list[tuple[float, float]]) -> None:
    """Press, drag through points (fractions of the canvas), release: a real mouse stroke."""
    box = page.locator(selector).bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=12)
    page.mouse.up()


def test_draw_a_one_and_see_it_recognised(server, browser):
    # bypass_csp: Playwright evaluates its wait conditions as strings, which the page's CSP forbids
    page = browser.new_page(viewport={"width": 1100, "height": 800}, bypass_csp=True)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    requested = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(server + "/")
    page.wait_for_function("document.querySelector('#tab-denoise .missing') && "
                           "!document.querySelector('#tab-denoise .missing').hidden")
    stroke(page, "#rec-canvas", [(0.52, 0.15), (0.48, 0.85)])  # a "1", slightly slanted
    page.wait_for_function("document.getElementById('rec-digit').textContent !== '?'", timeout=10_000)
    time.sleep(0.5)  # let the final (pointerup) answer land
    digit = page.locator("#rec-digit").text_content()
    bars = page.locator("#rec-bars .bar").count()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-recognize.png"), full_page=True)
    assert digit == "1", f"the page shows {digit!r} for a drawn 1"
    assert bars == 10
    seen = page.evaluate("Array.from(document.getElementById('rec-input').getContext('2d')"
                         ".getImageData(0, 0, 28, 28).data).filter((v, i) => i % 4 === 0 && v > 128).length")
    assert 20 < seen < 300  # the 28x28 input shows a stroke, not a blank or full square

    page.click("#rec-clear")
    assert page.locator("#rec-digit").text_content() == "?" and page.locator("#rec-bars .bar").count() == 0
    stroke(page, "#rec-canvas", [(0.25, 0.2), (0.72, 0.2), (0.42, 0.85)])  # a "7": bar, then diagonal
    page.wait_for_function("document.getElementById('rec-digit').textContent !== '?'", timeout=10_000)
    time.sleep(0.5)
    page.screenshot(path=str(ARTIFACTS / "browser-recognize-7.png"), full_page=True)
    assert page.locator("#rec-digit").text_content() == "7"

    page.click("button[data-tab=denoise]")
    assert "digitlab train denoise" in page.locator("#tab-denoise .missing").text_content()
    assert not errors, errors
    outside = [u for u in requested if not u.startswith((server, "data:"))]
    assert not outside, f"the page must work offline (no CDN), but it fetched {outside}"
    page.close()


def test_denoise_and_compare_tabs(server_all_tasks, browser):
    """The other tabs draw, call the API and show their answers (untrained models: plumbing only)."""
    page = browser.new_page(viewport={"width": 1100, "height": 700}, bypass_csp=True)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server_all_tasks + "/")
    page.wait_for_function("document.getElementById('den-kind').options.length === 7")
    page.click("button[data-tab=denoise]")
    assert page.locator("#tab-denoise .missing").is_hidden()
    page.select_option("#den-kind", "salt_pepper")
    stroke(page, "#den-canvas", [(0.25, 0.2), (0.72, 0.2), (0.42, 0.85)])
    page.wait_for_function("document.getElementById('den-found').textContent !== '?'", timeout=10_000)
    noisy_lit = page.evaluate("Array.from(document.getElementById('den-noisy').getContext('2d')"
                              ".getImageData(0, 0, 28, 28).data).filter((v, i) => i % 4 === 0 && v > 128).length")
    assert noisy_lit > 40  # the 7 plus salt
    assert page.locator("#den-bars .bar").count() == 6
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-denoise.png"))

    page.click("button[data-tab=compare]")
    stroke(page, "#cmp-a", [(0.25, 0.2), (0.72, 0.2), (0.42, 0.85)])
    stroke(page, "#cmp-b", [(0.5, 0.15), (0.5, 0.85)])
    page.wait_for_function("document.getElementById('cmp-prob').textContent.endsWith('%')", timeout=10_000)
    p = float(page.locator("#cmp-prob").text_content().rstrip("%"))
    assert 0 <= p <= 100
    page.screenshot(path=str(ARTIFACTS / "browser-compare.png"))
    assert not errors, errors
    page.close()
