"""`digitlab bench serve`: requests/s and p50/p99 latency of /api/recognize against the real server.

The server is started exactly as a user starts it (`digitlab serve --recognize RUN`), in its own
process, on loopback. The client is a minimal asyncio HTTP/1.1 loop over keep-alive connections (one
per concurrent caller), so the load generator costs little CPU beside the server's. Each request is
what the page sends: a 280x280 PNG canvas (a real MNIST test digit drawn black on white) as
multipart/form-data. Any non-200 answer counts as an error.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from digitlab.bench.common import save_record
from digitlab.errors import DigitlabError
from digitlab.extras import require

# numpy is imported where used, so `digitlab --help` stays quick.


def register(sub) -> None:
    p = sub.add_parser("serve", help="requests/s and p50/p99 latency of the recognise API on loopback",
                       description="Requests/s and p50/p99 latency of the recognise API on loopback.",
                       epilog="example: digitlab bench serve runs/recognize/<run> --seconds 3 --threads 1")
    p.add_argument("run", type=Path, nargs="?", help="recognition run (default: the shipped model)")
    p.add_argument("--runtime", choices=("torch", "onnx", "both"), default="both")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--seconds", type=float, default=3.0, help="measured time per setting (after 0.5 s warm-up)")
    p.add_argument("--threads", type=int, default=1, help="server inference threads")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/serve.json)")
    p.add_argument("--hostile", action="store_true",
                   help="instead: a burst, half-open connections (slowloris) and worst-case images "
                        "(see digitlab/bench/hostile.py); JSON default benchmarks/serve-hostile.json")
    p.add_argument("--requests", type=int, default=1000, help="--hostile burst: requests (default 1000)")
    p.add_argument("--burst-concurrency", type=int, default=200, help="--hostile burst: callers at once (default 200)")
    p.add_argument("--half-open", type=int, default=20000, help="--hostile: stalled connections (default 20000)")
    p.add_argument("--attack-seconds", type=float, default=20, help="--hostile: half-open phase length (default 20)")
    p.add_argument("--image-requests", type=int, default=32, help="--hostile images: requests (default 32)")
    p.add_argument("--image-concurrency", type=int, default=32, help="--hostile images: callers at once (default 32)")
    p.set_defaults(func=run)


def canvas_png(index: int = 0) -> bytes:
    """A real MNIST test digit as the page would send it: 280x280, black ink on white, PNG."""
    from PIL import Image

    from digitlab.data.mnist import load_split

    images, _ = load_split("test")
    img = Image.fromarray(255 - images[index].numpy()).resize((280, 280), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def multipart(data: bytes, field: str = "image") -> tuple[bytes, str]:
    boundary = "digitlabbench7d1f"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"canvas.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class Server:
    """`digitlab serve` in a subprocess, ready once /healthz answers."""

    def __init__(self, run: Path, runtime: str, threads: int):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "digitlab", "serve", "--recognize", str(run), "--port", str(self.port),
               "--runtime", runtime, "--threads", str(threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        # A file, not a pipe: a server that logs more than a pipe holds would block on the write.
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise DigitlabError(f"digitlab serve did not start: {self.output()[-2000:]}",
                                        "run the same `digitlab serve` command by hand to see why") from None
                time.sleep(0.2)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def _caller(port: int, request: bytes, until: list[float], latencies: list[float], errors: list[str],
                  left: list[int] | None = None):
    """One keep-alive connection sending `request` until `until[0]` (or until the shared `left[0]` runs out)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        errors.append(f"connect: {exc!r}")
        return
    try:
        while time.perf_counter() < until[0] and (left is None or left[0] > 0):
            if left is not None:
                left[0] -= 1
            t0 = time.perf_counter()
            writer.write(request)
            await writer.drain()
            status = (await reader.readline()).split(b" ", 2)
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if len(status) < 2 or status[1] != b"200":
                errors.append(b" ".join(status).decode(errors="replace").strip())
    except (OSError, asyncio.IncompleteReadError) as exc:
        errors.append(f"connection: {exc!r}")
    finally:
        writer.close()


async def _load(port: int, request: bytes, concurrency: int, seconds: float, warmup: float = 0.5) -> dict:
    warm_lat, warm_err = [], []
    await asyncio.gather(*(_caller(port, request, [time.perf_counter() + warmup], warm_lat, warm_err)
                           for _ in range(concurrency)))
    latencies, errors = [], []
    t0 = time.perf_counter()
    await asyncio.gather(*(_caller(port, request, [t0 + seconds], latencies, errors) for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    import numpy as np

    ms = np.asarray(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(latencies), "seconds": round(elapsed, 3),
            "requests_per_s": len(latencies) / elapsed, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
            "errors": len(errors) + len(warm_err), "error_samples": (errors + warm_err)[:5]}


async def load_n(port: int, request: bytes, n: int, concurrency: int, limit_s: float = 300) -> dict:
    """`n` requests from `concurrency` keep-alive callers at once (bounded by `limit_s` too)."""
    latencies, errors, left = [], [], [n]
    t0 = time.perf_counter()
    await asyncio.gather(*(_caller(port, request, [t0 + limit_s], latencies, errors, left) for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    import numpy as np

    ms = np.asarray(latencies or [float("nan")]) * 1000
    return {"concurrency": concurrency, "requests": len(latencies), "seconds": round(elapsed, 3),
            "requests_per_s": round(len(latencies) / elapsed, 1), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()),
            "errors": len(errors), "error_samples": errors[:5]}


def run(args) -> int:
    from digitlab import pretrained

    require("serve", "`digitlab bench serve`")
    if args.runtime != "torch":
        require("export", f"`digitlab bench serve --runtime {args.runtime}`")
    run_dir = pretrained.resolve("recognize", args.run)
    if args.hostile:
        return _hostile(args, run_dir)
    body, ctype = multipart(canvas_png())
    request = (f"POST /api/recognize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    runtimes = ["torch", "onnx"] if args.runtime == "both" else [args.runtime]
    results = []
    for runtime in runtimes:
        server = Server(run_dir, runtime, args.threads)
        try:
            for c in args.concurrency:
                r = {"runtime": runtime, **asyncio.run(_load(server.port, request, c, args.seconds))}
                results.append(r)
                print(f"{runtime:5s} concurrency {c:3d}: {r['requests_per_s']:7.1f} requests/s, "
                      f"p50 {r['p50_ms']:.2f} ms, "
                      f"p99 {r['p99_ms']:.2f} ms, {r['errors']} errors ({r['requests']} requests, "
                      f"server {args.threads} thread(s))", flush=True)
        finally:
            server.close()
    from digitlab import io as dio

    model = dio.read_json(Path(run_dir) / "model.json")
    record = {"run": str(run_dir), "model": {k: model.get(k) for k in ("model", "model_args", "params")},
              "endpoint": "POST /api/recognize (multipart 280x280 PNG)",
              "server_threads": args.threads, "seconds_per_setting": args.seconds, "results": results,
              "note": "client and server share the machine's CPUs over loopback"}
    path = save_record("serve", record, args.out)
    print(f"saved {path}")
    return 1 if any(r["errors"] for r in results) else 0


def _hostile(args, run_dir: Path) -> int:
    from digitlab.bench import hostile

    fds = hostile.raise_fd_limit()
    server = Server(run_dir, "torch" if args.runtime == "both" else args.runtime, args.threads)
    try:
        record = {"run": str(run_dir), "server_threads": args.threads, "client_fd_limit": fds,
                  "server": "digitlab serve defaults: --max-connections 1000 --header-timeout 5",
                  "server_rss_at_start_mb": hostile.rss_mb(server.proc.pid)}
        pid = server.proc.pid
        hostile.reset_peak(pid)
        record["burst"] = {**hostile.burst(server.port, args.requests, args.burst_concurrency),
                           "server_peak_rss_mb": hostile.peak_rss_mb(pid)}
        print(f"burst: {record['burst']['requests']} requests at concurrency {args.burst_concurrency}: "
              f"{record['burst']['errors']} errors, p50 {record['burst']['p50_ms']:.0f} ms, "
              f"p99 {record['burst']['p99_ms']:.0f} ms", flush=True)
        hostile.reset_peak(pid)
        record["half_open"] = {**hostile.half_open(server.port, pid, args.half_open, args.attack_seconds),
                               "server_peak_rss_mb": hostile.peak_rss_mb(pid)}
        h = record["half_open"]
        print(f"half-open: {h['opened']} stalled connections; /healthz {h['healthz_probes'] - h['healthz_failed']}/"
              f"{h['healthz_probes']} answered, p99 {h['healthz_p99_ms']} ms, max {h['healthz_max_ms']} ms; "
              f"server peak open fds {h['server_peak_open_fds']}, peak RSS {h['server_peak_rss_mb']} MB", flush=True)
        hostile.reset_peak(pid)
        record["images"] = hostile.images(server.port, pid, args.image_concurrency, args.image_requests)
        i = record["images"]
        print(f"images: {i['requests']} requests of {i['images_per_request']} x {i['image']} at concurrency "
              f"{args.image_concurrency}: {i['errors']} errors, p99 {i['p99_ms']:.0f} ms, "
              f"server peak RSS {i['server_peak_rss_mb']} MB", flush=True)
    finally:
        server.close()
    record["server_log_bytes"] = len(server.output().encode())
    record["note"] = "client and server share the machine's CPUs over loopback"
    path = save_record("serve-hostile", record, args.out)
    print(f"saved {path}; server log {record['server_log_bytes']} bytes")
    return 0
