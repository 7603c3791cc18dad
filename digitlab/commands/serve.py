"""`digitlab serve`: the web demo and JSON API on localhost."""

from __future__ import annotations

from pathlib import Path

from digitlab.commands.common import add_parser


def register(sub) -> None:
    p = add_parser(sub, "serve", help="web demo and JSON API (recognise, denoise, compare)",
                   description="Serves a drawing page and a JSON API (OpenAPI docs at /docs). Without a RUN for a "
                               "task, digitlab's shipped model of that task answers; `--TASK newest` picks the "
                               "newest finished run under runs/<task>/.",
                   examples=["digitlab serve", "digitlab serve --recognize runs/recognize/<run> --port 8000",
                             "digitlab serve --recognize newest --denoise newest"])
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

    from digitlab.serve import protocol
    from digitlab.serve.app import create_app
    from digitlab.serve.models import load_engines

    protocol.check_port(args.host, args.port)
    options, note = protocol.uvicorn_options(args.host, args.port, args.max_connections, args.header_timeout,
                                             args.access_log)  # bad limits fail before models load
    if note:
        print(note)
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
