"""The page in a real browser: Debian's Chromium driven by Playwright, against `digitlab serve` started
as a user would start it. Draws digits with mouse strokes (tests/handwriting.py) and checks the answers
shown, how soon after pen-up they appear, and that Clear leaves no late answer behind."""

from __future__ import annotations

import json
import os
import statistics
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from handwriting import drawings

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("DIGITLAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "_artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
def server(tmp_path_factory):
    """`digitlab serve` as after a fresh install: no runs at all, the shipped model of every task."""
    yield from _serve(tmp_path_factory.mktemp("empty-runs"))


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


def draw(page, selector: str, strokes: list[list[tuple[float, float]]]) -> None:
    """Strokes as a hand moves: one mouse event per ~8 px, like a mouse sampled at 60-125 Hz."""
    box = page.locator(selector).bounding_box()
    for points in strokes:
        xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
        page.mouse.move(*xy[0])
        page.mouse.down()
        for (x0, y0), (x, y) in zip(xy, xy[1:]):
            page.mouse.move(x, y, steps=max(1, round(((x - x0) ** 2 + (y - y0) ** 2) ** 0.5 / 8)))
        page.mouse.up()


# In-page clock: performance.now() at every pen-up (capture phase: before the page's own handler) and at
# every re-render of the probability bars, which the page redraws once per answer it shows.
WATCH = """() => { window.__t = {up: [], shown: []};
  addEventListener('pointerup', () => __t.up.push(performance.now()), true);
  new MutationObserver(() => __t.shown.push(performance.now()))
    .observe(document.getElementById('rec-bars'), {childList: true}); }"""


def open_page(browser, url: str, errors: list):
    # bypass_csp: Playwright evaluates its wait conditions as strings, which the page's CSP forbids
    page = browser.new_page(viewport={"width": 1100, "height": 800}, bypass_csp=True)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('den-kind').options.length > 0")  # /api/models answered
    page.evaluate(WATCH)
    return page


def read_drawing(page, strokes) -> tuple[str, int, float]:
    """Draw on a cleared pad; (message shown, digit, ms from the last pen-up to the last answer shown)."""
    page.click("#rec-clear")
    page.evaluate("__t.up = []; __t.shown = []")
    draw(page, "#rec-canvas", strokes)
    page.wait_for_function("__t.shown.some((t) => t > __t.up.at(-1))", timeout=10_000)
    page.wait_for_timeout(300)  # a later answer (to the final drawing) would replace the one shown
    t = page.evaluate("__t")
    latency = max(t["shown"]) - t["up"][-1]
    return (page.locator("#rec-digit").text_content(),
            int(page.locator("#rec-digit").get_attribute("data-digit")), latency)


def test_draw_a_one_and_see_it_recognised(server, browser):
    # bypass_csp: Playwright evaluates its wait conditions as strings, which the page's CSP forbids
    page = browser.new_page(viewport={"width": 1100, "height": 800}, bypass_csp=True)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    requested = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(server + "/")
    page.wait_for_function("document.getElementById('den-kind').options.length === 7")  # /api/models answered
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

    for task in ("recognize", "denoise", "compare"):  # no training needed: every tab has its model
        assert page.locator(f"#tab-{task} .missing").count() == 0 or page.locator(f"#tab-{task} .missing").is_hidden()
    assert not errors, errors
    outside = [u for u in requested if not u.startswith((server, "data:"))]
    assert not outside, f"the page must work offline (no CDN), but it fetched {outside}"
    page.close()


def test_denoise_and_compare_tabs(server, browser):
    """The other tabs draw, call the API and show the shipped models' answers."""
    page = browser.new_page(viewport={"width": 1100, "height": 700}, bypass_csp=True)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
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
    assert page.locator("#den-found").text_content() == "salt_pepper"  # the shipped denoiser names the noise
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-denoise.png"))

    page.click("button[data-tab=compare]")
    stroke(page, "#cmp-a", [(0.25, 0.2), (0.72, 0.2), (0.42, 0.85)])
    stroke(page, "#cmp-b", [(0.5, 0.15), (0.5, 0.85)])
    page.wait_for_function("document.getElementById('cmp-prob').textContent.endsWith('%')", timeout=10_000)
    p = float(page.locator("#cmp-prob").text_content().rstrip("%"))
    assert 0 <= p < 50, f"a 7 and a 1 called the same digit with p = {p}%"
    page.screenshot(path=str(ARTIFACTS / "browser-compare.png"))
    assert not errors, errors
    page.close()


# Threshold for the stroke set (30 drawings, tests/handwriting.py) read by the shipped recogniser (99.38% on
# MNIST test): measured 30/30, all shown confidently, in Chromium, as were the single-seed models before it. At
# twice the shipped model's MNIST error rate, 3 or more errors in 30 happen < 1% of the time. Shrinking the
# whole pad to 28x28 (no crop/fit/centre, the mistake this guards against) scored 16-18/30 with a weaker model.
MIN_RIGHT = 28
# Pen-up -> answer shown: the goal is 200 ms at the median (measured ~15 ms p50 on an idle-ish 2-core
# machine, 1.1 s before the page sent pixels instead of a PNG); the bound leaves room for a loaded machine.
MAX_P50_MS = 600


def test_handwritten_digits_are_read_soon_after_pen_up(server, browser):
    errors = []
    page = open_page(browser, server, errors)
    rows, unsure_shot = [], False
    for digit, style, strokes in drawings():
        message, top, ms = read_drawing(page, strokes)
        rows.append({"digit": digit, "style": style, "message": message, "top": top, "ms": round(ms, 1)})
        if message.startswith("not ") and not unsure_shot:  # the abstaining look, for a person to check
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "browser-abstain.png"), full_page=True)
            unsure_shot = True
    right = sum(r["top"] == r["digit"] for r in rows)
    shown_right = sum(r["message"] == str(r["digit"]) for r in rows)
    p50 = statistics.median(r["ms"] for r in rows)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "browser-handwriting.json").write_text(json.dumps(
        {"right": right, "shown_right": shown_right, "n": len(rows), "p50_ms": p50, "rows": rows}, indent=1))
    print(f"handwriting: {right}/{len(rows)} right, {shown_right} shown confidently right; pen-up -> answer "
          f"p50 {p50:.0f} ms, max {max(r['ms'] for r in rows):.0f} ms")
    wrong = [r for r in rows if r["top"] != r["digit"]]
    assert right >= MIN_RIGHT, f"{right}/{len(rows)} right, wrong: {wrong}"
    assert p50 < MAX_P50_MS, f"pen-up -> answer p50 {p50:.0f} ms"
    for r in rows:  # the big answer is the verdict's message
        assert r["message"] in (str(r["top"]), "not a digit") or r["message"].startswith(f"not sure: {r['top']} or ")
    assert not errors, errors
    page.close()


def test_clear_leaves_no_late_answer(server, browser):
    """Clear ~100 ms after pen-up, then let every answer in flight arrive: the pad stays blank and '?'.
    The answers are held back until after the Clear (page.route), so a late one cannot slip in before it."""
    errors = []
    page = open_page(browser, server, errors)
    held, holding = [], [True]

    def hold(route):
        if holding[0]:
            held.append(route)
        else:
            route.continue_()

    page.route("**/api/recognize**", hold)
    for digit, _, strokes in drawings()[::8]:  # 4 drawings
        holding[0] = True
        draw(page, "#rec-canvas", strokes)
        page.wait_for_timeout(100)
        page.click("#rec-clear")
        holding[0] = False
        for route in held:
            try:
                route.continue_()
            except Exception:  # noqa: BLE001 - the page aborted it: exactly what Clear should do
                pass
        held.clear()
        page.wait_for_timeout(1500)
        shown = page.locator("#rec-digit").text_content()
        assert shown == "?" and page.locator("#rec-bars .bar").count() == 0, \
            f"after Clear the page shows {shown!r} (an answer about the erased {digit})"
    page.unroute("**/api/recognize**")
    message, top, _ = read_drawing(page, drawings()[0][2])  # and it still answers afterwards (a round 0)
    assert top == 0 and not errors, (message, errors)
    page.close()
