"""JSON API of `digitlab serve`: answers match `predict`'s preprocessing and model, and every kind of
bad input gets a 4xx JSON {"error", "fix"} while the server keeps answering."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from digitlab.data.noise import NOISE_KINDS, apply_noise
from digitlab.data.preprocess import from_array, prepare
from digitlab.api import Recognizer
from digitlab.serve import inputs
from digitlab.serve.app import create_app
from digitlab.serve.models import Engine, newest_run
from helpers import live_server as live_server_in_thread, untrained_run

fastapi_testclient = pytest.importorskip("fastapi.testclient")


def make_run(root: Path, name: str = "tiny", seed: int = 0) -> Path:
    """A recognition run with untrained (seeded) weights: enough to check the plumbing, in well under a second."""
    return untrained_run(root / "recognize" / name, model_args={"widths": [4, 8, 8]}, seed=seed,
                         metrics={"test_acc": 0.1, "val_acc": 0.1})


def png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def drawn_one(size: int = 200, fmt: str = "PNG") -> bytes:
    img = Image.new("L", (size, size), 255)
    ImageDraw.Draw(img).line([(size // 2, size // 6), (size // 2, 5 * size // 6)], fill=0, width=size // 14)
    return png(img.convert("RGB") if fmt == "JPEG" else img, fmt)


def canvas(img: Image.Image) -> dict:
    """The JSON body the page sends: the drawing's gray bytes, base64."""
    return {"width": img.width, "height": img.height, "gray": base64.b64encode(img.convert("L").tobytes()).decode()}


class FakeDenoiser:
    """Returns the input as the 'clean' image and always identifies speckle."""

    def __call__(self, x):
        logits = np.zeros((len(x), len(NOISE_KINDS)), np.float32)
        logits[:, NOISE_KINDS.index("speckle")] = 5
        return x, logits


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def client(run_dir):
    """Recognition from run_dir; no denoise or compare model at all (an install without shipped models)."""
    app = create_app(recognize=run_dir, runs_root=run_dir.parent.parent / "no-runs-here")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("digitlab.pretrained.ROOT", run_dir.parent.parent / "no-shipped-models")
        with fastapi_testclient.TestClient(app, raise_server_exceptions=False, base_url="http://localhost") as c:
            yield c


def assert_error(r, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "fix"} and body["fix"], body
    for w in words:
        assert w.lower() in body["error"].lower(), body


# --- answers -------------------------------------------------------------------------------------

def test_recognize_upload_matches_predict(client, run_dir):
    data = drawn_one()
    r = client.post("/api/recognize", files={"image": ("one.png", data, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    want_input = prepare(data)  # the same code as `digitlab predict`
    want = Recognizer(run_dir).predict(data)  # the same code as `digitlab predict`
    assert np.allclose(body["input"], want_input.numpy(), atol=1e-3)
    assert np.allclose(body["probabilities"], want.probabilities, atol=1e-5)
    assert body["digit"] == want.digit and body["message"] == want.message and body["run"] == run_dir.name
    assert abs(sum(body["probabilities"]) - 1) < 1e-4


@pytest.mark.parametrize("fmt", ["JPEG", "BMP", "WEBP"])
def test_recognize_accepts_other_formats(client, fmt):
    r = client.post("/api/recognize", files={"image": ("x", drawn_one(fmt=fmt), "application/octet-stream")})
    assert r.status_code == 200, r.text
    assert np.asarray(r.json()["input"]).shape == (28, 28)


def test_pixels_and_batch_agree(client, run_dir):
    g = np.zeros((28, 28))
    g[6:22, 13:15] = 1.0
    single = client.post("/api/recognize/pixels", json={"pixels": g.tolist()}).json()
    batch = client.post("/api/recognize/batch", json={"images": [g.tolist(), (255 * g).tolist()]}).json()
    assert len(batch["results"]) == 2
    want = Recognizer(run_dir).predict(g).probabilities
    for res in (single, *batch["results"]):
        assert np.allclose(res["probabilities"], want, atol=1e-5)


def test_canvas_is_prepared_like_an_upload(client):
    """The page's pixels go through the same crop/fit/centre as an uploaded PNG of the same drawing."""
    drawing = Image.open(io.BytesIO(drawn_one(140)))
    r = client.post("/api/recognize/canvas", json=canvas(drawing))
    assert r.status_code == 200, r.text
    upload = client.post("/api/recognize", files={"image": ("one.png", drawn_one(140), "image/png")}).json()
    assert r.json()["input"] == upload["input"]
    assert np.allclose(r.json()["probabilities"], upload["probabilities"], atol=1e-6)
    assert {"message", "abstain", "runner_up"} <= set(r.json())


def test_batch_of_uploads(client, run_dir):
    files = [("images", ("a.png", drawn_one(), "image/png")),
             ("images", ("b.jpg", drawn_one(fmt="JPEG"), "image/jpeg"))]
    r = client.post("/api/recognize/files", files=files)
    assert r.status_code == 200, r.text
    single = client.post("/api/recognize", files={"image": ("a.png", drawn_one(), "image/png")}).json()
    results = r.json()["results"]
    assert len(results) == 2 and np.allclose(results[0]["probabilities"], single["probabilities"], atol=1e-6)
    bad = client.post("/api/recognize/files", files=[files[0], ("images", ("c.png", b"junk", "image/png"))])
    assert_error(bad, 400, "images[1] (c.png)", "not an image")


def test_healthz_models_and_openapi(client, run_dir):
    assert client.get("/healthz").json() == {"status": "ok", "tasks": ["recognize"]}
    m = client.get("/api/models").json()
    assert [x["task"] for x in m["models"]] == ["recognize"] and m["models"][0]["model"] == "digitnet"
    assert m["models"][0]["metrics"]["test_acc"] == 0.1 and m["runtime"] == "torch"
    assert "train one with `digitlab train denoise`" in m["missing"]["denoise"]
    assert "digitlab train compare" in m["missing"]["compare"]
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/api/recognize", "/api/recognize/pixels", "/api/recognize/batch", "/api/recognize/files",
              "/api/recognize/canvas", "/api/denoise", "/api/compare", "/api/compare/canvas",
              "/api/models", "/healthz"):
        assert p in paths
    page = client.get("/")
    assert page.status_code == 200 and "rec-canvas" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200


def test_missing_task_is_503_with_fix(client):
    g = np.zeros((28, 28)).tolist()
    assert_error(client.post("/api/denoise/pixels", json={"pixels": g}), 503, "no denoise model")
    assert_error(client.post("/api/compare/pixels", json={"a": g, "b": g}), 503, "no compare model")


def test_newest_run_is_picked(tmp_path):
    old, new = make_run(tmp_path, "a"), make_run(tmp_path, "b")
    import os
    os.utime(old / "model.safetensors", (1e9, 1e9))
    assert newest_run("recognize", tmp_path) == new
    (tmp_path / "recognize" / "unfinished").mkdir()  # no weights: never picked
    assert newest_run("recognize", tmp_path) == new
    assert newest_run("denoise", tmp_path) is None


def test_denoise_and_compare_endpoints_with_stand_in_models(run_dir):
    engines = {"denoise": Engine("denoise", run_dir, "torch", {"model": "fake"}, {}, FakeDenoiser()),
               "compare": Engine("compare", run_dir, "torch", {"model": "fake"}, {},
                                 lambda a, b: (np.full((len(a),), 2.0, np.float32),))}
    with fastapi_testclient.TestClient(create_app(engines=engines, missing={}), base_url="http://localhost") as c:
        r = c.post("/api/denoise", files={"image": ("one.png", drawn_one(), "image/png")},
                   data={"noise": "salt_pepper", "strength": "0.8", "seed": "3"})
        assert r.status_code == 200, r.text
        body = r.json()
        clean, noisy = np.asarray(body["clean"]), np.asarray(body["noisy"])
        assert body["kind"] == "speckle" and body["noise_added"] == "salt_pepper"
        assert np.allclose(clean, prepare(drawn_one()).numpy(), atol=1e-3)
        want = apply_noise(prepare(drawn_one()).view(1, 1, 28, 28), torch.tensor([NOISE_KINDS.index("salt_pepper")]),
                           torch.tensor([0.8]), torch.Generator().manual_seed(3))
        assert np.allclose(noisy, want.numpy().reshape(28, 28), atol=1e-3) and np.mean(noisy != clean) > 0.1
        assert np.allclose(body["denoised"], noisy)  # the stand-in returns its input
        again = c.post("/api/denoise", files={"image": ("one.png", drawn_one(), "image/png")},
                       data={"noise": "salt_pepper", "strength": "0.8", "seed": "3"}).json()
        assert again["noisy"] == body["noisy"]  # seeded
        r = c.post("/api/denoise", files={"image": ("n.png", drawn_one(28), "image/png")},
                   data={"already_noisy": "true"})
        assert r.status_code == 200 and r.json()["clean"] is None and r.json()["noise_added"] == "none"
        assert_error(c.post("/api/denoise/pixels", json={"pixels": np.eye(28).tolist(), "noise": "pink"}),
                     422, "unknown noise kind")
        pair = {"a": ("a.png", drawn_one(), "image/png"), "b": ("b.png", drawn_one(), "image/png")}
        r = c.post("/api/compare", files=pair)
        assert r.status_code == 200 and abs(r.json()["same_probability"] - 1 / (1 + np.exp(-2))) < 1e-6
        one = canvas(Image.open(io.BytesIO(drawn_one(100))))
        r = c.post("/api/compare/canvas", json={"a": one, "b": one})
        assert r.status_code == 200, r.text
        assert r.json()["a"] == c.post("/api/compare", files=pair).json()["a"]
        assert_error(c.post("/api/compare/canvas", json={"a": one, "b": {**one, "width": 99}}), 422,
                     "b", "one byte per pixel")


# --- errors --------------------------------------------------------------------------------------

def test_canvas_of_wrong_size(client):
    body = canvas(Image.new("L", (140, 140), 255))
    assert_error(client.post("/api/recognize/canvas", json={**body, "width": 139}), 422,
                 "19,600 bytes", "139x140 = 19,460", "one byte per pixel")
    assert_error(client.post("/api/recognize/canvas", json={**body, "gray": ""}), 422, "0 bytes")
    assert_error(client.post("/api/recognize/canvas", json={**body, "width": 0}), 422, "width")


@pytest.mark.parametrize("gray", ["not base64!", "AAE", "AA\nEC"])
def test_canvas_of_bad_base64(client, gray):
    assert_error(client.post("/api/recognize/canvas", json={"width": 2, "height": 2, "gray": gray}), 422,
                 "gray", "not valid base64")


def test_canvas_too_large(client):
    """Each side is capped, and so is the string's length, before any decoding."""
    assert_error(client.post("/api/recognize/canvas", json={"width": 1001, "height": 1, "gray": "AAAA"}), 422,
                 "width", "1000")
    huge = base64.b64encode(bytes(1001 * 1000)).decode()
    assert_error(client.post("/api/recognize/canvas", json={"width": 1000, "height": 1000, "gray": huge}), 422,
                 "gray", "at most")


def test_blank_canvas(client):
    assert_error(client.post("/api/recognize/canvas", json=canvas(Image.new("L", (140, 140), 255))), 400, "blank")


def test_not_an_image(client):
    assert_error(client.post("/api/recognize", files={"image": ("x.png", b"hello, not a picture", "image/png")}),
                 400, "not an image")


def test_truncated_image(client):
    data = drawn_one()
    r = client.post("/api/recognize", files={"image": ("x.png", data[: len(data) // 2], "image/png")})
    assert_error(r, 400)


def test_empty_body_and_empty_file(client):
    assert_error(client.post("/api/recognize", content=b""), 400, "empty")
    assert_error(client.post("/api/recognize/pixels", content=b""), 400, "empty")
    assert_error(client.post("/api/recognize", files={"image": ("x.png", b"", "image/png")}), 400, "empty")


def test_missing_field(client):
    assert_error(client.post("/api/recognize", files={"picture": ("x.png", drawn_one(), "image/png")}),
                 422, "image", "required")


def test_blank_drawing(client):
    assert_error(client.post("/api/recognize", files={"image": ("x.png", png(Image.new("L", (50, 50), 255)),
                                                                   "image/png")}), 400, "blank")


@pytest.mark.parametrize("pixels, words", [
    (np.zeros((27, 28)).tolist(), ["28"]),
    (np.zeros((28, 29)).tolist(), ["28"]),
    ([[0] * 28] * 27 + [[0] * 5], ["28"]),
    ("abc", ["list"]),
])
def test_wrong_array_shape(client, pixels, words):
    assert_error(client.post("/api/recognize/pixels", json={"pixels": pixels}), 422, *words)


def test_wrong_array_values(client):
    g = np.zeros((28, 28))
    g[10, 10] = 300
    assert_error(client.post("/api/recognize/pixels", json={"pixels": g.tolist()}), 422, "[0, 255]")
    g[10, 10] = -1
    assert_error(client.post("/api/recognize/pixels", json={"pixels": g.tolist()}), 422)
    bad = json.dumps({"pixels": [[float("nan")] * 28] * 28})  # Python's json writes NaN
    assert_error(client.post("/api/recognize/pixels", content=bad, headers={"content-type": "application/json"}), 422)
    assert_error(client.post("/api/recognize/pixels", json={"pixels": [["a"] * 28] * 28}), 422)
    r = client.post("/api/recognize/pixels", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 422)


def test_batch_limits(client):
    g = np.zeros((28, 28)).tolist()
    assert_error(client.post("/api/recognize/batch", json={"images": []}), 422)
    assert_error(client.post("/api/recognize/batch", json={"images": [g] * 257}), 422, "256")


def test_body_over_limit_refused_from_content_length(client):
    big = b"\x89PNG" + b"0" * inputs.MAX_BODY_BYTES
    assert_error(client.post("/api/recognize", files={"image": ("x.png", big, "image/png")}), 413, "too large")


def test_body_over_limit_refused_while_reading(client):
    """No Content-Length (chunked upload): counted as it arrives."""
    def chunks():
        for _ in range(8):
            yield b"0" * 1_000_000
    r = client.post("/api/recognize/pixels", content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, 413, "too large")


@pytest.mark.parametrize("side, words", [(5_000, ["pixels", f"{inputs.MAX_PIXELS:,}"]), (20_000, ["decompression bomb"])])
def test_decompression_bomb(client, side, words):
    """A small PNG that claims side x side pixels is refused from its header, undecoded."""
    bomb = png(Image.new("1", (side, side)))
    assert len(bomb) < inputs.MAX_BODY_BYTES
    assert_error(client.post("/api/recognize", files={"image": ("bomb.png", bomb, "image/png")}), 413, *words)


def test_unsupported_types(client):
    gif = png(Image.new("L", (40, 40), 255), "GIF")
    assert_error(client.post("/api/recognize", files={"image": ("x.gif", gif, "image/gif")}), 415, "GIF")
    assert_error(client.post("/api/recognize", content=drawn_one(), headers={"content-type": "image/png"}),
                 415, "multipart")
    assert_error(client.post("/api/recognize/pixels", content=b"pixels=1",
                             headers={"content-type": "application/x-www-form-urlencoded"}), 415, "json")


def test_unknown_route_and_method(client):
    assert_error(client.get("/api/nothing"), 404)
    assert_error(client.get("/api/recognize"), 405)


def test_server_keeps_serving_after_errors(client):
    for _ in range(3):
        client.post("/api/recognize", files={"image": ("x.png", b"junk", "image/png")})
        client.post("/api/recognize/pixels", content=b"", headers={"content-type": "application/json"})
    assert client.get("/healthz").status_code == 200
    assert client.post("/api/recognize", files={"image": ("one.png", drawn_one(), "image/png")}).status_code == 200


def test_slow_body_times_out_with_408():
    """A client that never finishes its body gets 408 after the read timeout instead of holding a worker."""
    import asyncio

    from digitlab.serve.app import BodyLimit

    async def app(scope, receive, send):  # pragma: no cover - must not be reached
        raise AssertionError("the app was called with an incomplete body")

    async def receive():
        await asyncio.sleep(0.05)
        return {"type": "http.request", "body": b"x", "more_body": True}  # trickles forever

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/recognize", "headers": []}
    asyncio.run(BodyLimit(app, max_bytes=1000, timeout=0.3)(scope, receive, send))
    assert sent[0]["status"] == 408 and b"did not arrive" in sent[1]["body"]


@pytest.fixture
def live_server(run_dir, monkeypatch):
    """The app under a real uvicorn server on loopback, in a thread (raw-socket tests need real HTTP)."""
    import digitlab.serve.app as app_module

    monkeypatch.setattr(app_module, "READ_TIMEOUT_S", 0.5)
    with live_server_in_thread(create_app(recognize=run_dir, runs_root=run_dir / "none")) as port:
        yield port


def raw_request(port: int, head: bytes, body: bytes = b"", wait: float = 5.0) -> tuple[int, dict]:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1])


def test_live_server_refuses_big_body_before_reading_it(live_server):
    head = (b"POST /api/recognize HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 100000000\r\n\r\n")
    status, body = raw_request(live_server, head)  # no body sent at all: the answer must not wait for it
    assert status == 413 and "too large" in body["error"]


def test_live_server_drops_a_stalled_body_then_keeps_serving(live_server):
    head = (b"POST /api/recognize/pixels HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n")
    status, body = raw_request(live_server, head, b'{"pixels": [')
    assert status == 408 and body["fix"]
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{live_server}/healthz", timeout=5) as r:
        assert r.status == 200
