"""The web demo and JSON API: `create_app(...)` builds a FastAPI app; models load once at startup.

Every client error is a 4xx JSON body {"error", "fix"}; bodies over MAX_BODY_BYTES are refused from
their Content-Length before being read, or as soon as the count passes the limit while reading,
and a body that trickles in slower than READ_TIMEOUT_S is dropped with 408.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from digitlab import verdict
from digitlab.data import preprocess
from digitlab.data.noise import NOISE_KINDS
from digitlab.errors import DigitlabError
from digitlab.serve import schemas as S
from digitlab.serve.inputs import (MAX_BODY_BYTES, MAX_PIXELS, ApiError, as_list, check_request, from_pixels,
                                   from_upload, noisy_from_upload)
from digitlab.serve.models import Engine, load_engines

STATIC = Path(__file__).parent / "static"
READ_TIMEOUT_S = 10.0  # the whole body must arrive within this
BODY_BUDGET = 100_000_000  # request bodies held at once, server-wide (each costs ~3x while parsed)
ERRORS = {code: {"model": S.ErrorResponse} for code in (400, 408, 413, 415, 422, 503)}
FORM_PATHS = {"/api/recognize", "/api/recognize/files", "/api/denoise", "/api/compare"}


def create_app(recognize: str | Path | None = None, denoise: str | Path | None = None,
               compare: str | Path | None = None, runtime: str = "torch", runs_root: Path | None = None,
               engines: dict[str, Engine] | None = None, missing: dict[str, str] | None = None,
               host: str = "127.0.0.1", allow_hosts: list[str] | None = None) -> FastAPI:
    """The app. Pass run directories (else the newest run of each task), or already loaded `engines`.
    Requests must name this machine in their Host header (see `allowed_hosts`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if engines is None:
            loaded, why = load_engines({"recognize": recognize, "denoise": denoise, "compare": compare},
                                       runtime, runs_root)
        else:
            loaded, why = engines, dict(missing or {})
        app.state.engines, app.state.missing, app.state.runtime = loaded, why, runtime
        yield

    app = FastAPI(title="digitlab", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Recognise, denoise and compare handwritten digits. Uploads: PNG, JPEG, BMP or "
                              f"WebP, at most {MAX_BODY_BYTES:,} bytes and {MAX_PIXELS:,} pixels. Errors: "
                              "{\"error\", \"fix\"}.")
    _add_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES, timeout=READ_TIMEOUT_S)
    app.add_middleware(SecurityHeaders)
    # DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 could read this API;
    # its requests still say "Host: evil.example". Outermost, so nothing else runs for them.
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(host, allow_hosts))

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/docs", include_in_schema=False)
    def docs():  # FastAPI's Swagger page loads its code from a CDN and is blank offline
        return RedirectResponse("/static/api.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", response_model=S.Health, summary="liveness, and which tasks have a model")
    def healthz(request: Request):
        return {"status": "ok", "tasks": sorted(request.app.state.engines)}

    @app.get("/api/models", response_model=S.ModelsResponse, summary="the loaded runs: task, model, metrics")
    def models(request: Request):
        return {"runtime": request.app.state.runtime,
                # "run" is the run's name only: an absolute path tells a caller about this machine
                "models": [{**e.describe(), "run": e.run.name} for e in request.app.state.engines.values()],
                "missing": request.app.state.missing,
                "limits": {"max_body_bytes": MAX_BODY_BYTES, "max_pixels": MAX_PIXELS, "max_batch": S.MAX_BATCH},
                "noise_kinds": list(NOISE_KINDS)}

    _add_recognize_routes(app)
    _add_denoise_routes(app)
    _add_compare_routes(app)
    return app


def engine(request: Request, task: str) -> Engine:
    """The loaded model of a task, or 503 with the fix."""
    found = request.app.state.engines.get(task)
    if found is None:
        raise ApiError(503, f"no {task} model yet (this server has none loaded)",
                       f"train one with `digitlab train {task}`, then restart `digitlab serve`")
    return found


def _add_recognize_routes(app: FastAPI) -> None:
    """/api/recognize[/pixels|/canvas|/batch|/files]."""

    def run_recognise(e: Engine, images: list[torch.Tensor]) -> list[dict]:
        x = torch.stack(images).unsqueeze(1).numpy()  # (B,1,28,28)
        readings = verdict.read(e(x)[0], verdict.Calibration.from_meta(e.meta))
        return [{**r.to_dict(), "input": as_list(img)} for r, img in zip(readings, images)]

    @app.post("/api/recognize", response_model=S.RecognizeResponse, responses=ERRORS,
              summary="recognise the digit in an uploaded image (multipart field 'image')")
    def recognize_upload(request: Request, image: UploadFile = File(description="PNG, JPEG, BMP or WebP")):
        e = engine(request, "recognize")
        return {"run": e.run.name, **run_recognise(e, [from_upload(image.file.read(), "image")])[0]}

    @app.post("/api/recognize/pixels", response_model=S.RecognizeResponse, responses=ERRORS,
              summary="recognise a 28x28 array")
    def recognize_pixels(request: Request, body: S.PixelsRequest):
        e = engine(request, "recognize")
        return {"run": e.run.name, **run_recognise(e, [from_pixels(body.pixels, body.normalize)])[0]}

    @app.post("/api/recognize/canvas", response_model=S.RecognizeResponse, responses=ERRORS,
              summary="recognise a drawing sent as base64 grayscale bytes, prepared like an upload")
    def recognize_canvas(request: Request, body: S.Canvas):
        e = engine(request, "recognize")
        return {"run": e.run.name, **run_recognise(e, [preprocess.to_mnist(body.image())])[0]}

    @app.post("/api/recognize/batch", response_model=S.BatchResponse, responses=ERRORS,
              summary=f"recognise up to {S.MAX_BATCH} 28x28 arrays in one call")
    def recognize_batch(request: Request, body: S.BatchRequest):
        e = engine(request, "recognize")
        images = [from_pixels(px, body.normalize, f"images[{i}]") for i, px in enumerate(body.images)]
        return {"run": e.run.name, "results": run_recognise(e, images)}

    @app.post("/api/recognize/files", response_model=S.BatchResponse, responses=ERRORS,
              summary=f"recognise up to {S.MAX_BATCH} uploaded images (repeated multipart field 'images')")
    def recognize_files(request: Request, images: list[UploadFile] = File(description="PNG, JPEG, BMP or WebP")):
        e = engine(request, "recognize")
        if len(images) > S.MAX_BATCH:
            raise ApiError(422, f"{len(images)} images in one request, the limit is {S.MAX_BATCH}",
                           "split them over several requests")
        files = [(f.file.read(), f"images[{i}] ({f.filename})") for i, f in enumerate(images)]
        check_request(files)
        prepared = [from_upload(data, field, checked=True) for data, field in files]
        return {"run": e.run.name, "results": run_recognise(e, prepared)}


def _add_denoise_routes(app: FastAPI) -> None:
    """/api/denoise[/pixels]."""

    def run_denoise(e: Engine, image: torch.Tensor, noise: str, strength: float, seed: int, already_noisy: bool):
        from digitlab.data.noise import apply_noise

        if noise not in (*NOISE_KINDS, "none"):
            raise ApiError(422, f"unknown noise kind {noise!r}", f"use one of {', '.join(NOISE_KINDS)} or none")
        x = image.view(1, 1, 28, 28)
        if already_noisy or noise == "none":
            noisy, noise, strength = x, "none", 0.0
        else:
            noisy = apply_noise(x, torch.tensor([NOISE_KINDS.index(noise)]), torch.tensor([float(strength)]),
                                torch.Generator().manual_seed(seed))
        clean, kind_logits = e(noisy.numpy().astype(np.float32))
        kp = torch.from_numpy(kind_logits).softmax(1)[0]
        return {"run": e.run.name, "clean": None if already_noisy else as_list(image), "noisy": as_list(noisy),
                "denoised": as_list(np.clip(clean, 0, 1)), "noise_added": noise, "strength": float(strength),
                "kind": NOISE_KINDS[int(kp.argmax())],
                "kind_probabilities": {k: float(v) for k, v in zip(NOISE_KINDS, kp)}}

    @app.post("/api/denoise", response_model=S.DenoiseResponse, responses=ERRORS,
              summary="add noise to an uploaded digit (or take a noisy image) and denoise it")
    def denoise_upload(request: Request, image: UploadFile = File(description="PNG, JPEG, BMP or WebP"),
                       noise: str = Form("gaussian"), strength: float = Form(0.5, ge=0, le=1),
                       seed: int = Form(0, ge=0, le=2**31 - 1), already_noisy: bool = Form(False)):
        e = engine(request, "denoise")
        data = image.file.read()
        x = noisy_from_upload(data, "image") if already_noisy else from_upload(data, "image")
        return run_denoise(e, x, noise, strength, seed, already_noisy)

    @app.post("/api/denoise/pixels", response_model=S.DenoiseResponse, responses=ERRORS,
              summary="denoise a 28x28 array (noise added unless already_noisy)")
    def denoise_pixels(request: Request, body: S.DenoiseRequest):
        e = engine(request, "denoise")
        x = from_pixels(body.pixels, normalize=not body.already_noisy)
        return run_denoise(e, x, body.noise, body.strength, body.seed, body.already_noisy)


def _add_compare_routes(app: FastAPI) -> None:
    """/api/compare[/pixels|/canvas]."""

    def run_compare(e: Engine, a: torch.Tensor, b: torch.Tensor) -> dict:
        logit = e(a.view(1, 1, 28, 28).numpy(), b.view(1, 1, 28, 28).numpy())[0]
        return {"run": e.run.name, "same_probability": float(torch.sigmoid(torch.tensor(float(logit.reshape(-1)[0])))),
                "a": as_list(a), "b": as_list(b)}

    @app.post("/api/compare", response_model=S.CompareResponse, responses=ERRORS,
              summary="probability that two uploaded images (fields 'a' and 'b') show the same digit")
    def compare_upload(request: Request, a: UploadFile = File(), b: UploadFile = File()):
        e = engine(request, "compare")
        files = [(a.file.read(), "a"), (b.file.read(), "b")]
        check_request(files)
        return run_compare(e, *(from_upload(data, field, checked=True) for data, field in files))

    @app.post("/api/compare/pixels", response_model=S.CompareResponse, responses=ERRORS,
              summary="probability that two 28x28 arrays show the same digit")
    def compare_pixels(request: Request, body: S.CompareRequest):
        e = engine(request, "compare")
        return run_compare(e, from_pixels(body.a, body.normalize, "a"), from_pixels(body.b, body.normalize, "b"))

    @app.post("/api/compare/canvas", response_model=S.CompareResponse, responses=ERRORS,
              summary="probability that two drawings (base64 grayscale bytes, as for /api/recognize/canvas) "
                      "show the same digit")
    def compare_canvas(request: Request, body: S.CompareCanvasRequest):
        e = engine(request, "compare")
        return run_compare(e, preprocess.to_mnist(body.a.image()), preprocess.to_mnist(body.b.image()))


LOOPBACK_HOSTS = ["localhost", "127.0.0.1", "[::1]"]


def allowed_hosts(host: str, extra: list[str] | None = None) -> list[str]:
    """Host header values to serve: loopback names, the bound address, and `extra`. Bound to every
    interface (0.0.0.0 / ::), this machine's own names are added too."""
    import socket

    hosts = [*LOOPBACK_HOSTS, *(extra or [])]
    if host in ("0.0.0.0", "::", ""):
        hosts += [socket.gethostname(), socket.getfqdn()]
    elif host:
        hosts.append(f"[{host}]" if ":" in host and not host.startswith("[") else host)
    return list(dict.fromkeys(h.lower() for h in hosts if h))


# --- errors --------------------------------------------------------------------------------------

def _error(status: int, problem: str, fix: str) -> JSONResponse:
    return JSONResponse({"error": problem, "fix": fix}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.problem, exc.fix)

    @app.exception_handler(DigitlabError)
    async def digitlab_error(request: Request, exc: DigitlabError):
        return _error(400, exc.problem, exc.fix)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        path = request.url.path
        if request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers:
            return _error(400, "the request body is empty",
                          "upload an image as multipart/form-data" if path in FORM_PATHS else "send a JSON body")
        if path in FORM_PATHS and ctype != "multipart/form-data":
            return _error(415, f"{path} takes multipart/form-data, got {ctype or 'no content type'}",
                          f"upload the image as a form field, or POST JSON to {path}/pixels")
        if path not in FORM_PATHS and ctype != "application/json":
            return _error(415, f"{path} takes application/json, got {ctype or 'no content type'}",
                          "send a JSON body with Content-Type: application/json")
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            msg = err.get("msg", "invalid")
            if err.get("type") == "missing":
                msg = "is required (the request body is empty or lacks it)"
            if not any(p.endswith(msg) for p in parts):  # one line per kind of mistake, not per row
                parts.append(f"{where}: {msg}")
        return _error(422, "invalid request: " + "; ".join(parts[:5]), "see the request format at /docs")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        fix = {404: "see the endpoints at /docs", 405: "see the allowed methods at /docs"}.get(exc.status_code,
                                                                                              "see /docs")
        return _error(exc.status_code, str(exc.detail), fix)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):  # a bug, never the client's fault; keep serving
        return _error(500, f"internal error: {type(exc).__name__}", "please report this with the request")


class SecurityHeaders:
    """ASGI middleware: the page may load only its own files, never be framed."""

    PAGE = [(b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'"),
            (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.PAGE]}
            await send(message)

        await self.app(scope, receive, with_headers)


_TOO_BIG = b"<too big>"


class BodyLimit:
    """ASGI middleware: read the body up front within the size and time limits, then replay it."""

    def __init__(self, app, max_bytes: int, timeout: float, budget: int | None = None):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout
        self.budget = budget or BODY_BUDGET
        self.held = 0  # bytes reserved by requests in progress (one event loop: no lock needed)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await _error(400, "the Content-Length header is not a number",
                                    "send a valid Content-Length")(scope, receive, send)
            if int(length) > self.max_bytes:
                return await self._too_large(scope, receive, send, int(length))
        reserve = int(length) if length is not None else self.max_bytes
        if self.held + reserve > self.budget:
            return await _error(503, "the server is busy (too many uploads in progress)",
                                "retry in a moment")(scope, receive, send)
        self.held += reserve
        try:
            await self._handle(scope, receive, send)
        finally:
            self.held -= reserve

    async def _handle(self, scope, receive, send):
        try:
            body = await asyncio.wait_for(self._read(receive), self.timeout)
        except asyncio.TimeoutError:
            return await _error(408, f"the request body did not arrive within {self.timeout:g} s",
                                "send the whole body at once")(scope, receive, send)
        if body is None:  # client went away
            return
        if body is _TOO_BIG:
            return await self._too_large(scope, receive, send, None)
        done = False

        async def replay():
            nonlocal done
            if not done:
                done = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive):
        """The whole body; None if the client left; _TOO_BIG once it passes the limit."""
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                return _TOO_BIG  # stop reading; the caller answers 413
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, scope, receive, send, length: int | None):
        said = f" ({length:,} bytes)" if length is not None else ""
        await _error(413, f"the request body is too large{said}; the limit is {self.max_bytes:,} bytes",
                     "send a smaller image (a digit needs only a few hundred pixels per side)")(scope, receive, send)
