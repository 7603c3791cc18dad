#!/usr/bin/env bash
# Rebuild digitlab's shipped models (digitlab/pretrained/<task>/) from their presets, 1 thread (a fixed
# thread count keeps the arithmetic, and so the weights, the same run after run on one machine).
# The denoiser and the comparer are one `digitlab train` run each, seed 0. The recogniser is five runs
# averaged by `digitlab ensemble`: recognize-robust seeds 0, 1 and 2 and recognize-robust-deep seeds 0 and 2
# (docs/shift.md, "Three seeds averaged", "A deeper fourth member", "Haze residue", "Digits normalised to
# their field" and "Shift replay": the ensemble reads the shifted digits of `digitlab bench shift` better than any
# one of its members).
# Each model is then packed by `python -m digitlab.pretrained.build`, which writes its MODEL_CARD.md and
# records its SHA-256 and check figures in benchmarks/pretrained-<task>.json.
#
#   bash scripts/build_pretrained.sh                 # all three (the recogniser: five runs of 8-13 minutes each)
#   bash scripts/build_pretrained.sh recognize       # one of them
#
# WORK (default build/pretrained-runs) keeps the full run folders (history, figures, report).
# The recogniser's "not a digit" examples include Fashion-MNIST: it is fetched first if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
digitlab data info --dataset fashion-mnist >/dev/null 2>&1 || digitlab data fetch --dataset fashion-mnist
work=${WORK:-build/pretrained-runs}
members=(recognize-robust:0 recognize-robust:1 recognize-robust:2 recognize-robust-deep:0 recognize-robust-deep:2)  # the recogniser's, in that order
declare -A preset=([recognize]="${members[*]%:*}" [denoise]=denoise-fast [compare]=compare-small)  # members' presets, seeds cut off
tasks=("$@")
[ ${#tasks[@]} -gt 0 ] || tasks=(recognize denoise compare)
for task in "${tasks[@]}"; do
  [ -n "${preset[$task]:-}" ] || { echo "unknown task $task: use recognize, denoise or compare" >&2; exit 2; }
  run="$work/$task"
  rm -rf "$run"
  if [ "$task" = recognize ]; then
    digitlab ensemble --members "${members[@]}" --set threads=1 --out "$run" --quiet
  else
    digitlab train "$task" --preset "${preset[$task]}" --seed 0 --set threads=1 --out "$run" --quiet
  fi
  python -m digitlab.pretrained.build "$run" --preset ${preset[$task]}  # unquoted: the recogniser's five names
done
