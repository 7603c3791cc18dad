"""`digitlab serve`: the web demo and JSON API on localhost."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("serve", formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="web demo and JSON API (recognise, denoise, compare)",
                       description="Serves a drawing page and a JSON API (OpenAPI docs at /docs). Without a RUN "
                                   "for a task, digitlab's shipped model of that task answers; `--TASK newest` "
                                   "picks the newest finished run under runs/<task>/.",
                       epilog="examples:\n  digitlab serve\n  digitlab serve --recognize runs/recognize/<run> --port 8000\n"
                              "  digitlab serve --recognize newest --denoise newest")
    for task in ("recognize", "denoise", "compare"):
        p.add_argument(f"--{task}", metavar="RUN", help=f"{task} run folder, or 'newest' (default: the shipped model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                   help="onnx: onnxruntime on RUN/model.onnx (exported on first use)")
    p.add_argument("--threads", type=int, help="CPU threads for inference (default: torch's default)")
    p.add_argument("--runs", type=Path, help="runs root that 'newest' searches (default $DIGITLAB_RUNS or runs/)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--max-connections", type=int, default=1000, metavar="N",
                   help="open connections at most; beyond, the one waiting longest for its headers is closed "
                        "(default 1000)")
    p.add_argument("--header-timeout", type=float, default=5.0, metavar="S",
                   help="seconds a connection has to send a request's headers (default 5)")
    p.set_defaults(func=run)


def run(args) -> int:
    from digitlab.extras import require

    require("serve", "`digitlab serve`")
    if args.runtime == "onnx":
        require("export", "`digitlab serve --runtime onnx`")
    import torch
    import uvicorn

    from digitlab.serve.app import create_app
    from digitlab.serve.models import load_engines

    _check_port(args.host, args.port)
    options = server_options(args)  # bad limits fail before models load
    if args.threads:
        torch.set_num_threads(args.threads)
    engines, missing = load_engines({"recognize": args.recognize, "denoise": args.denoise,
                                     "compare": args.compare}, args.runtime, args.runs)
    for task, e in engines.items():
        print(f"{task}: {e.meta.get('model')} from {e.run} ({args.runtime})")
    for task, why in missing.items():
        print(f"{task}: {why}")
    if not engines:
        print("warning: no models at all; the page will only say how to train them")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {args.host} exposes the server to other machines; it has no authentication")
    print(f"open http://{'localhost' if args.host == '127.0.0.1' else args.host}:{args.port}/  "
          f"(API reference at /static/api.html, OpenAPI at /openapi.json; {torch.get_num_threads()} threads)",
          flush=True)
    app = create_app(engines=engines, missing=missing, runtime=args.runtime, host=args.host)
    uvicorn.run(app, **options)
    return 0


def server_options(args) -> dict:
    """uvicorn settings with the limits of digitlab.serve.protocol (see there for why)."""
    from digitlab.errors import DigitlabError
    from digitlab.serve import protocol

    if args.max_connections < 1 or not 0 < args.header_timeout <= 600:
        raise DigitlabError(f"--max-connections {args.max_connections} / --header-timeout {args.header_timeout}",
                            "use at least 1 connection and a header timeout in (0, 600] seconds")
    fds = protocol.raise_fd_limit()
    # Up to 2x the cap can be open briefly, plus a few accept batches of `backlog` sockets each.
    backlog = max(64, min(2048, fds // 8))
    cap = max(1, min(args.max_connections, (fds - 4 * backlog - 100) // 2))
    if cap < args.max_connections:
        print(f"note: --max-connections lowered to {cap} to fit the open-files limit ({fds}; raise `ulimit -n`)")
    protocol.quiet_logs()
    protocol.limit_malloc_arenas()
    return {"host": args.host, "port": args.port, "log_level": "warning", "access_log": args.access_log,
            "http": protocol.guarded_protocol(args.header_timeout, cap),
            "timeout_keep_alive": 5, "backlog": backlog, "h11_max_incomplete_event_size": 16 * 1024}


def _check_port(host: str, port: int) -> None:
    """Fail before loading models if the address is taken, with a fix (uvicorn would only log it)."""
    import socket

    from digitlab.errors import DigitlabError

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise DigitlabError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                            "pick another port with --port, or stop the program using it") from None
