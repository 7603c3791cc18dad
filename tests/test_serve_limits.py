"""The server under hostile load: Host checks, pixel budgets, header deadlines, connection caps, logs.

Live tests run uvicorn in a thread on 127.0.0.1 with the protocol `digitlab serve` uses, with short
limits so each test takes about a second.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from digitlab.data import preprocess
from digitlab.serve import inputs, protocol
from digitlab.serve.app import create_app
from helpers import live_server, untrained_run

fastapi_testclient = pytest.importorskip("fastapi.testclient")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """An untrained tiny recognition run: the plumbing, not the accuracy, is under test."""
    return untrained_run(tmp_path_factory.mktemp("runs").resolve() / "recognize" / "tiny",
                         model_args={"widths": [4, 8, 8]})


@pytest.fixture(scope="module")
def client(run_dir):
    app = create_app(recognize=run_dir, runs_root=run_dir / "none")
    with fastapi_testclient.TestClient(app, raise_server_exceptions=False, base_url="http://localhost") as c:
        yield c


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def digit(side: int, fmt: str = "PNG") -> bytes:
    img = Image.new("L", (side, side), 255)
    ImageDraw.Draw(img).line([(side // 2, side // 6), (side // 2, 5 * side // 6)], fill=0, width=max(1, side // 14))
    return encode(img.convert("RGB") if fmt == "JPEG" else img, fmt)


@pytest.fixture
def decoded_shapes(monkeypatch):
    """Records the (H, W) of every image the server decodes."""
    shapes, real = [], preprocess.load_image

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        shapes.append(out.shape)
        return out

    monkeypatch.setattr(preprocess, "load_image", spy)
    return shapes


# --- Host header, HEAD, docs, paths ------------------------------------------------------------------

@pytest.mark.parametrize("host,ok", [("localhost", True), ("localhost:8000", True), ("127.0.0.1:8000", True),
                                     ("[::1]:8000", True), ("evil.example", False), ("evil.example:8000", False),
                                     ("127.0.0.1.evil.example", False)])
def test_host_header_is_checked(client, host, ok):
    r = client.get("/api/models", headers={"host": host})
    assert (r.status_code == 200) is ok, (host, r.status_code)


def test_bound_host_is_allowed(run_dir):
    app = create_app(engines={}, host="10.1.2.3")
    with fastapi_testclient.TestClient(app, base_url="http://10.1.2.3:8000") as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/healthz", headers={"host": "10.9.9.9"}).status_code == 400


def test_models_show_no_absolute_paths(client, run_dir):
    text = client.get("/api/models").text
    assert str(run_dir.parent) not in text and json.loads(text)["models"][0]["run"] == "tiny"


def test_head_root_and_offline_docs(client):
    assert client.head("/").status_code == 200
    r = client.get("/docs")
    assert r.status_code == 200 and r.url.path == "/static/api.html"
    assert "cdn" not in r.text.lower() and "http://" not in r.text and "https://" not in r.text


# --- pixel budgets ----------------------------------------------------------------------------------

def test_small_file_with_16_mpx_is_refused_before_decoding(client, decoded_shapes):
    bomb = digit(4000)
    assert len(bomb) < 100_000
    t0 = time.perf_counter()
    r = client.post("/api/recognize", files={"image": ("big.png", bomb, "image/png")})
    assert r.status_code == 413 and f"{inputs.MAX_PIXELS:,}" in r.json()["error"]
    assert decoded_shapes == [] and time.perf_counter() - t0 < 1.0


def test_large_jpeg_is_decoded_at_reduced_scale(client, decoded_shapes):
    r = client.post("/api/recognize", files={"image": ("photo.jpg", digit(4000, "JPEG"), "image/jpeg")})
    assert r.status_code == 200, r.text
    assert max(decoded_shapes[0]) <= inputs.WORK_SIDE


def test_large_png_within_the_limit_is_reduced_before_the_float_copy(client, decoded_shapes):
    r = client.post("/api/recognize", files={"image": ("a.png", digit(2000), "image/png")})
    assert r.status_code == 200 and max(decoded_shapes[0]) <= inputs.WORK_SIDE
    small = client.post("/api/recognize", files={"image": ("b.png", digit(280), "image/png")})
    assert small.status_code == 200 and decoded_shapes[1] == (280, 280)  # small images: unchanged


def test_many_images_in_one_request_share_one_pixel_budget(client, decoded_shapes):
    each = digit(1900)  # 3.6 Mpx: each fine alone
    n = inputs.MAX_REQUEST_PIXELS // (1900 * 1900) + 1
    files = [("images", (f"{i}.png", each, "image/png")) for i in range(n)]
    r = client.post("/api/recognize/files", files=files)
    assert r.status_code == 413 and "per request" in r.json()["error"]
    assert decoded_shapes == []  # refused from the headers


def test_upload_budget_answers_503_when_full(run_dir, monkeypatch):
    import digitlab.serve.app as app_module

    monkeypatch.setattr(app_module, "BODY_BUDGET", 100)  # smaller than one upload
    app = create_app(recognize=run_dir, runs_root=run_dir / "none")
    with fastapi_testclient.TestClient(app, base_url="http://localhost") as c:
        r = c.post("/api/recognize", files={"image": ("a.png", digit(280), "image/png")})
    assert r.status_code == 503 and r.json()["fix"]


# Property: whatever bytes arrive as an image, the answer is 200 or a 4xx JSON error, never a 500.
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=2000),
                      st.builds(lambda b, n: digit(64)[:n] + b, st.binary(max_size=50), st.integers(0, 400))))
def test_fuzz_uploads_never_crash(client, data):
    r = client.post("/api/recognize", files={"image": ("x.png", data, "image/png")})
    assert r.status_code == 200 or (400 <= r.status_code < 500 and set(r.json()) == {"error", "fix"}), r.text


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.recursive(st.one_of(st.none(), st.booleans(), st.floats(), st.integers(), st.text(max_size=5)),
                         lambda inner: st.lists(inner, max_size=30) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                         max_leaves=40))
def test_fuzz_json_never_crashes(client, body):
    data = json.dumps({"pixels": body})  # allow_nan: NaN/Infinity tokens are sent as they are
    r = client.post("/api/recognize/pixels", content=data, headers={"content-type": "application/json"})
    assert r.status_code == 200 or (400 <= r.status_code < 500 and set(r.json()) == {"error", "fix"}), r.text


# --- live: header deadline, connection cap, logs -----------------------------------------------------

@pytest.fixture
def live(run_dir):
    guarded = protocol.guarded_protocol(header_timeout=0.5, max_connections=20)
    with live_server(create_app(recognize=run_dir, runs_root=run_dir / "none"), http=guarded) as port:
        yield port


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except (TimeoutError, socket.timeout):
        return False
    except ConnectionResetError:
        return True


def healthz_ms(port: int) -> float:
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:100]
    return 1000 * (time.perf_counter() - t0)


def test_partial_headers_are_cut_off_at_the_deadline(live):
    with socket.create_connection(("127.0.0.1", live)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: loc")
        t0 = time.monotonic()
        for _ in range(3):  # trickling bytes does not extend the deadline
            time.sleep(0.1)
            s.sendall(b"a")
        assert closed_within(s, 2.0) and time.monotonic() - t0 < 1.5


def test_keep_alive_then_partial_headers_is_cut_off_too(live):
    with socket.create_connection(("127.0.0.1", live)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert closed_within(s, 2.0)


def test_connection_cap_evicts_half_open_ones_and_healthz_still_answers(live):
    before = protocol.STATS["evicted"] + protocol.STATS["refused"]
    socks = [socket.create_connection(("127.0.0.1", live)) for _ in range(60)]
    try:
        for s in socks:
            try:
                s.sendall(b"GET / HTTP/1.1\r\n")  # never finished
            except OSError:
                pass  # beyond twice the cap: refused
        time.sleep(protocol.EVICT_AFTER_S + 0.1)  # the server has read them: stalled, so evictable
        assert healthz_ms(live) < 1000
        time.sleep(0.1)
        assert protocol.STATS["evicted"] + protocol.STATS["refused"] - before >= 20  # 60 tried, cap 20
    finally:
        for s in socks:
            s.close()


def test_repeated_log_lines_are_rate_limited():
    logger = logging.getLogger("digitlab.test.flood")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    logger.addFilter(protocol.RateLimit(burst=3, period=60))
    try:
        for i in range(1000):
            logger.warning("Invalid HTTP request received. %d", i)
    finally:
        logger.removeHandler(handler)
    assert len(records) == 3


def test_serve_rejects_impossible_limits(capsys):
    from digitlab.cli import main

    assert main(["serve", "--max-connections", "0", "--port", "0"]) == 2
    assert "max-connections" in capsys.readouterr().err
