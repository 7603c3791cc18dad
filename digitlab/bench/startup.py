"""Startup protocol: wall time of fresh processes, as a person meets them.

Each case is a new interpreter (`python -m digitlab ...`, the same code path as the `digitlab` console
script), timed from spawn to exit; the cases take turns (round-robin) so a change in machine load hits
all of them alike, after one untimed warm-up each (the OS file cache is warm, the interpreter is not).
A separate, untimed run of each case records which heavy libraries it imported.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from digitlab.bench.common import save_record
from digitlab.errors import DigitlabError

# Libraries whose import costs a noticeable part of a second (or pulls a big tree).
HEAVY = ("torch", "numpy", "PIL", "matplotlib", "torchmetrics", "scipy", "skimage", "optuna", "sqlalchemy",
         "fastapi", "uvicorn", "pydantic", "onnx", "onnxruntime", "tensorboard", "safetensors")
TARGETS_S = {"help": 0.5, "predict": 1.5}  # issue 12: instant help, a prediction well under two seconds

# Runs one case inside a probe that writes the top-level modules it ended up with to a JSON file.
_PROBE = """
import json, os, runpy, sys
try:
    if sys.argv[1] == "-c":
        exec(sys.argv[2])
    else:
        sys.argv = ["digitlab", *sys.argv[1:]]
        runpy.run_module("digitlab", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
finally:
    with open(os.environ["DIGITLAB_PROBE_OUT"], "w") as f:
        json.dump(sorted({m.partition(".")[0] for m in sys.modules}), f)
"""


def register(sub) -> None:
    p = sub.add_parser("startup", help="cold-start wall time of --help, `import digitlab` and predict",
                       description="Median wall time of N fresh processes for: `python -c pass` (the "
                                   "interpreter alone), `python -c 'import torch'` (the floor of any command "
                                   "that runs a model), `digitlab --help`, `import digitlab`, and `digitlab "
                                   "predict` on a generated PNG; and which heavy libraries each one imported.",
                       epilog="examples:\n  digitlab bench startup\n"
                              "  digitlab bench startup --run runs/recognize/<run> -n 20\n"
                              "  digitlab bench startup --source /tmp/old-checkout --out benchmarks/startup-before.json")
    p.add_argument("-n", "--repeats", type=int, default=10, help="fresh processes per case (default 10)")
    p.add_argument("--run", type=Path, help="recognition run for the predict case (default: the shipped model, "
                                            "when `digitlab predict IMAGE` works; else predict is skipped)")
    p.add_argument("--source", type=Path, help="folder holding the digitlab package to measure, e.g. an older "
                                               "checkout for a before/after (default: this installation)")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/startup.json)")
    p.set_defaults(func=run)


def measured_env(source: Path | None = None) -> dict:
    """Environment for the measured processes: `source` (default: the folder of this digitlab) first on the path."""
    import digitlab

    root = Path(source) if source else Path(digitlab.__file__).resolve().parents[1]
    if not (root / "digitlab" / "__init__.py").is_file():
        raise DigitlabError(f"{root} holds no digitlab package (no digitlab/__init__.py)",
                            "pass --source the folder that contains the digitlab/ package folder")
    env = dict(os.environ)
    # As for an installed package: bytecode is cached (.pyc), so the warm-up run compiles and the timed ones do not.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def loaded_modules(args: list[str], env: dict | None = None, cwd: Path | None = None) -> list[str]:
    """Top-level modules in sys.modules after `digitlab ARGS` (or `python -c CODE` for args ["-c", CODE])."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "modules.json"
        subprocess.run([sys.executable, "-c", _PROBE, *args], env={**(env or os.environ), "DIGITLAB_PROBE_OUT": str(out)},
                       cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
        if not out.is_file():
            raise DigitlabError(f"the module probe of {' '.join(args)} wrote nothing", "run the command by hand to see why")
        return json.loads(out.read_text())


def write_digit_png(path: Path) -> Path:
    """A 280x280 dark-on-light '7', like a photo or a drawing a person would pass to predict."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (280, 280), 245)
    draw = ImageDraw.Draw(image)
    draw.line([(70, 60), (210, 60), (120, 230)], fill=20, width=22, joint="curve")
    image.save(path)
    return path


def _wall(argv: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    # cwd: a folder without a digitlab/ of its own (`-m` and `-c` put the working directory first on sys.path)
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=env["DIGITLAB_STARTUP_CWD"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=300)
    return time.perf_counter() - t0, done


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-2:]) if lines else "(no output)"


def predict_args(run_dir: Path | None, image: Path, env: dict) -> tuple[list[str] | None, str]:
    """The predict case's arguments and what model it uses; (None, why) when there is none to use."""
    if run_dir is not None:
        return ["predict", str(run_dir), str(image)], f"run {run_dir}"
    _, done = _wall([sys.executable, "-m", "digitlab", "predict", str(image)], env)
    if done.returncode == 0:
        return ["predict", str(image)], "shipped model"
    return None, f"skipped: no --run, and `digitlab predict IMAGE` failed: {_last_line(done.stderr)}"


def _torch_only_copy(run_dir: Path | None, env: dict, tmp: Path) -> Path | None:
    """A copy of the predict case's model folder without model.onnx, or None if it has none."""
    import shutil

    folder = run_dir or Path(env["PYTHONPATH"].split(os.pathsep)[0]) / "digitlab" / "pretrained" / "recognize"
    if not (folder / "model.onnx").is_file():
        return None
    return Path(shutil.copytree(folder, tmp / "recognize-torch", ignore=shutil.ignore_patterns("model.onnx")))


def time_cases(cases: dict[str, list[str]], repeats: int, env: dict) -> dict[str, list[float]]:
    """Wall seconds per case over `repeats` rounds; each case runs once untimed first and must succeed."""
    for name, argv in cases.items():
        _, done = _wall(argv, env)
        if done.returncode != 0:
            raise DigitlabError(f"the {name} case ({' '.join(argv[1:])}) exited {done.returncode}: "
                                f"{_last_line(done.stderr)}", "run it by hand to see the whole error")
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, argv in cases.items():  # round-robin: load changes hit every case alike
            times[name].append(_wall(argv, env)[0])
    return times


def measure(repeats: int, run_dir: Path | None = None, source: Path | None = None) -> dict:
    env = measured_env(source)
    python, digitlab = [sys.executable], [sys.executable, "-m", "digitlab"]
    run_dir = run_dir.resolve() if run_dir else None  # the processes run in a temporary folder
    with tempfile.TemporaryDirectory() as tmp:
        env["DIGITLAB_STARTUP_CWD"] = tmp
        image = write_digit_png(Path(tmp) / "seven.png")
        # `import torch` alone is the floor of any command that runs a torch model.
        cases = {"python": python + ["-c", "pass"], "torch": python + ["-c", "import torch"],
                 "import": python + ["-c", "import digitlab"], "help": digitlab + ["--help"]}
        predict, model = predict_args(run_dir, image, env)
        if predict:
            cases["predict"] = digitlab + predict
            torch_copy = _torch_only_copy(run_dir, env, Path(tmp))
            if torch_copy:  # the same model without model.onnx: what predict costs through torch
                cases["predict_torch"] = digitlab + ["predict", str(torch_copy), str(image)]
        times = time_cases(cases, repeats, env)
        results = {}
        for name, argv in cases.items():
            modules = loaded_modules(argv[1:] if argv[1] == "-c" else argv[3:], env, Path(tmp))
            heavy = [m for m in HEAVY if m in modules]
            results[name] = {"command": " ".join(["python", *argv[1:]]).replace(str(image), "IMAGE"),
                             "median_s": statistics.median(times[name]), "min_s": min(times[name]),
                             "max_s": max(times[name]), "seconds": [round(t, 4) for t in times[name]],
                             "torch_imported": "torch" in modules, "heavy_modules": heavy}
    if not predict:
        results["predict"] = {"skipped": model}
    else:
        results["predict"]["model"] = model
    targets = {name: {"target_s": limit, "met": results[name]["median_s"] < limit}
               for name, limit in TARGETS_S.items() if "median_s" in results[name]}
    return {"source": str(env["PYTHONPATH"].split(os.pathsep)[0]), "repeats": repeats, "results": results,
            "targets": targets, "method": "median wall time of fresh processes, cases round-robin, one "
                                          "untimed warm-up each; heavy_modules from a separate untimed run"}


def run(args) -> int:
    if args.repeats < 1:
        raise DigitlabError(f"--repeats {args.repeats}", "use 1 or more")
    record = measure(args.repeats, args.run, args.source)
    path = save_record("startup", record, args.out)
    r = record["results"]
    parts = [f"{name} {r[name]['median_s']:.3f} s (torch {'imported' if r[name]['torch_imported'] else 'not imported'})"
             for name in ("python", "torch", "help", "import", "predict", "predict_torch") if "median_s" in r.get(name, {})]
    if "skipped" in r["predict"]:
        parts.append(f"predict {r['predict']['skipped']}")
    print(f"startup, median of {args.repeats}: " + "; ".join(parts) + f" -> {path}")
    return 0
