"""`digitlab bench serve --hostile`: the server's limits under attack, measured on loopback.

Three scenarios against one `digitlab serve` process (default limits), each bounded in count and time:
  burst      N requests (the page's 280x280 PNG) from C keep-alive callers at once: errors, p50/p99.
  half-open  H connections that send part of a request header and stall (slowloris), opened by worker
             processes (a process may hold only `ulimit -n` sockets); /healthz is probed every 0.1 s
             meanwhile: its latencies and failures, the server's open descriptors and log bytes.
  images     C callers posting the most expensive images the server accepts (2000x2000 RGBA PNGs, four
             per /api/recognize/files request = the per-request pixel budget) for S seconds: the
             server's peak RSS (VmHWM).
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing as mp
import os
import resource
import socket
import time

import numpy as np

from digitlab.bench.serve import load_n, canvas_png, multipart

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: "


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def request_bytes(path: str, body: bytes, ctype: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def burst(port: int, n: int, concurrency: int) -> dict:
    body, ctype = multipart(canvas_png())
    return asyncio.run(load_n(port, request_bytes("/api/recognize", body, ctype), n, concurrency))


# --- half-open ----------------------------------------------------------------------------------

def _stall(port: int, count: int, seconds: float, ready, out) -> None:
    """Worker: open `count` connections (non-blocking: the kernel keeps retrying the handshakes the
    listen queue drops, so the flood lasts), send a partial header on each, hold them for `seconds`.
    Reports opened / failed-to-connect / how often a held socket was found closed by the server."""
    raise_fd_limit()
    socks, opened, failed = [], 0, 0
    give_up = time.monotonic() + 60  # opening is bounded too
    for _ in range(count):
        if time.monotonic() > give_up:
            break
        try:
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            socks.append(s)
            opened += 1
        except OSError:
            failed += 1
    time.sleep(0.2)
    for s in socks:
        try:
            s.send(PARTIAL)
        except OSError:
            pass
    ready.set()
    deadline, dropped = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        time.sleep(0.5)
        for s in socks:
            try:
                if s.recv(1, socket.MSG_PEEK) == b"":
                    dropped += 1
            except BlockingIOError:
                pass
            except OSError:
                dropped += 1
    for s in socks:
        s.close()
    out.put({"opened": opened, "connect_failed": failed, "dropped_checks": dropped})


def _probe(port: int) -> float | None:
    t0 = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(HEALTHZ)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        return 1000 * (time.perf_counter() - t0) if data.startswith(b"HTTP/1.1 200") else None
    except OSError:
        return None


def half_open(port: int, server_pid: int, total: int, seconds: float, per_worker: int = 9000) -> dict:
    ctx = mp.get_context("spawn")
    workers, out = [], ctx.Queue()
    for i in range(0, total, per_worker):
        ready = ctx.Event()
        p = ctx.Process(target=_stall, args=(port, min(per_worker, total - i), seconds, ready, out), daemon=True)
        p.start()
        workers.append((p, ready))
    for _, ready in workers:
        ready.wait(90)
    t_end = time.monotonic() + seconds - 1  # the workers now hold their sockets for `seconds`
    probes, peak_fds = [], 0
    while time.monotonic() < t_end:  # bounded: at most seconds / 0.1 probes
        probes.append(_probe(port))
        peak_fds = max(peak_fds, _open_fds(server_pid))
        time.sleep(0.1)
    reports = [out.get(timeout=seconds + 60) for _ in workers]
    for p, _ in workers:
        p.join(30)
    ok = np.asarray([p for p in probes if p is not None])
    return {"connections": total, "workers": len(workers), "attack_seconds": seconds,
            "opened": sum(r["opened"] for r in reports), "connect_failed": sum(r["connect_failed"] for r in reports),
            "healthz_probes": len(probes), "healthz_failed": sum(p is None for p in probes),
            "healthz_p50_ms": float(np.percentile(ok, 50)) if ok.size else None,
            "healthz_p99_ms": float(np.percentile(ok, 99)) if ok.size else None,
            "healthz_max_ms": float(ok.max()) if ok.size else None, "server_peak_open_fds": peak_fds}


def _open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


# --- worst-case images ------------------------------------------------------------------------------

def worst_image(side: int = 2000) -> bytes:
    """The most decode work the server accepts in one image: side x side RGBA, drawn so it stays small."""
    from PIL import Image, ImageDraw

    img = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    ImageDraw.Draw(img).line([(side // 2, side // 6), (side // 2, 5 * side // 6)], fill=(0, 0, 0, 255), width=side // 14)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def files_body(images: list[bytes]) -> tuple[bytes, str]:
    boundary = "digitlabhostile9c2e"
    parts = [(f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{i}.png\"\r\n"
              f"Content-Type: image/png\r\n\r\n").encode() + data + b"\r\n" for i, data in enumerate(images)]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def images(port: int, server_pid: int, concurrency: int, n: int) -> dict:
    from digitlab.serve.inputs import MAX_PIXELS, MAX_REQUEST_PIXELS

    side = int(MAX_PIXELS ** 0.5)
    per_request = MAX_REQUEST_PIXELS // (side * side)
    body, ctype = files_body([worst_image(side)] * per_request)
    result = asyncio.run(load_n(port, request_bytes("/api/recognize/files", body, ctype), n, concurrency))
    return {**result, "image": f"{side}x{side} RGBA PNG", "images_per_request": per_request,
            "body_bytes": len(body), "server_peak_rss_mb": _peak_rss_mb(server_pid)}


def reset_peak(pid: int) -> None:
    """Reset the process's peak RSS (VmHWM), so each phase reports its own (Linux; best effort)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb(pid: int) -> float | None:
    return _peak_rss_mb(pid)


def rss_mb(pid: int) -> float | None:
    return _peak_rss_mb(pid, "VmRSS:")


def _peak_rss_mb(pid: int, field: str = "VmHWM:") -> float | None:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None
