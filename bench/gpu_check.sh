#!/usr/bin/env bash
# The one-shot GPU check: each phase in its own time-boxed process (bench/gpu_check.py), so a
# failure or a timeout prints one line and the next phase runs. Every printed line starts with its
# phase's tag, so one grep reads a run:
#   ENV PROBE CONV ALICE GROUP RATE HEADS SERIAL ACC SUMMARY
#
#   bash bench/gpu_check.sh                   # on the lent GPU: DEVICE=cuda, under 8 minutes
#   DEVICE=cpu N_TRAIN=1000 N_TEST=300 SEEDS=0 HEADS=8 bash bench/gpu_check.sh    # CPU dry run
#
# Run from the repository root with the MNIST and Fashion-MNIST raw files in the git-ignored
# ./data (device tool: carry=["data"]): data/MNIST/raw/*-ubyte.gz, data/FashionMNIST/raw/(same).
# Settings are environment variables (python bench/gpu_check.py --help lists them): DEVICE,
# N_TRAIN, N_TEST, SEEDS, EPOCHS, ALICE_EPOCHS, HEADS, SERIAL_LAYERS, N_NAIVE, CONV_K, CONV_BATCH,
# CONV_ITERS, plus here PY (python), SCRATCH (/tmp/gpucheck: datasets, sweeps, compile caches;
# wiped each run except datasets/, which build-data verifies before reuse; KEEP_CACHE=1 keeps the
# compile caches too; a non-empty SCRATCH not made by this script is refused), OUT ($SCRATCH/out)
# and BOX_PCT (time boxes in percent: 100 on CUDA, 250 on the CPU).
# Uses the machine's torch as it is: never installs or upgrades it; the project imports from
# ./ (PYTHONPATH), and is pip-installed (--no-deps) only when that import fails.
#
# Files under $OUT (4): gpu_check.txt (the tagged lines), results.jsonl (every figure, one JSON
# object a line), detail.log (each phase's stderr: tracebacks, dynamo recompile logs, build-data's
# log), nvidia-smi.txt.
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1

if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export DEVICE=${DEVICE:-cuda} N_TRAIN=${N_TRAIN:-all} N_TEST=${N_TEST:-all} SEEDS=${SEEDS:-0,1,2}
export EPOCHS=${EPOCHS:-1} ALICE_EPOCHS=${ALICE_EPOCHS:-1} HEADS=${HEADS:-128,512}
export SCRATCH=${SCRATCH:-/tmp/gpucheck}
export OUT=${OUT:-$SCRATCH/out}
[ "$DEVICE" = cuda ] && BOX_PCT=${BOX_PCT:-100} || BOX_PCT=${BOX_PCT:-250}  # 2-core CPU: slower
# The engine imports from ./ through a tree of links: its package maps kernels/ and datasets/ to
# engine.kernels and engine.datasets (setup.cfg), which plain PYTHONPATH=./ cannot (the first run
# on an H200 spent its install box on `pip install -e .` for that).
SHIM=${SCRATCH:-/tmp/gpucheck}.pkg/engine
rm -rf "$(dirname "$SHIM")" && mkdir -p "$SHIM" \
  && for f in "$PWD"/engine/*; do ln -s "$f" "$SHIM/"; done \
  && ln -s "$PWD/kernels" "$SHIM/kernels" && ln -s "$PWD/datasets" "$SHIM/datasets"
# PYTHONSAFEPATH: `python -c`/`-m` would put ./ (the plain engine/, without its kernels) first.
export PYTHONPATH=$(dirname "$SHIM"):$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONSAFEPATH=1
export PYTHONUNBUFFERED=1 ENGINE_OFFLINE=1
export ENGINE_DATA_ROOT=${ENGINE_DATA_ROOT:-$PWD/data} ENGINE_CACHE_DIR=$SCRATCH/cache
# Compiled graphs shared between the phases' processes (SERIAL/HEADS reuse GROUP's programs).
export TORCHINDUCTOR_CACHE_DIR=$SCRATCH/inductor TRITON_CACHE_DIR=$SCRATCH/triton
export TORCHINDUCTOR_FX_GRAPH_CACHE=1 TORCHINDUCTOR_AUTOGRAD_CACHE=1
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_INDEX=1  # a throw-away machine, no internet

if [ -d "$SCRATCH" ] && [ -n "$(ls -A "$SCRATCH")" ] && [ ! -e "$SCRATCH/.gpucheck" ]; then
  echo "ENV refusing to wipe $SCRATCH: not a gpu_check scratch (no .gpucheck); set SCRATCH"
  exit 1
fi
mkdir -p "$SCRATCH" "$OUT" && touch "$SCRATCH/.gpucheck"
for p in "$SCRATCH"/*; do  # fresh state; $OUT may lie under $SCRATCH
  case "$p" in "$SCRATCH/datasets"|"$OUT") ;;
    "$SCRATCH/inductor"|"$SCRATCH/triton"|"$SCRATCH/cache")
      [ "${KEEP_CACHE:-0}" = 1 ] || rm -rf "$p" ;;
    *) rm -rf "$p" ;; esac
done
LOG=$OUT/gpu_check.txt DETAIL=$OUT/detail.log RESULTS=$OUT/results.jsonl
: > "$LOG"; : > "$DETAIL"; : > "$RESULTS"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

TAGS='^(ENV|PROBE|CONV|GROUP|RATE|HEADS|SERIAL|ACC|ALICE|SUMMARY)( |$)'
OUTPUT_CAP=11800     # characters: the device tool returns the last 12,000 of the output
SUMMARY_RESERVE=1800 # of them kept for SUMMARY's lines
BANK=0               # seconds earlier phases left unused; phases with a draw may spend them

emit() { echo "$*" | tee -a "$LOG"; }

# Tagged, at most 240 characters a line, within `cap` characters (the rest to detail.log).
tagged() {
  awk -v tag="$1" -v cap="$2" -v detail="$DETAIL" -v re="$TAGS" '
    { line = $0; if (line !~ re) line = tag " " line; line = substr(line, 1, 240)
      n += length(line) + 1
      if (n <= cap) { print line; fflush() }
      else { print line >> detail
             if (!cut) { print tag " (output cap: more in detail.log)"; cut = 1 } } }' \
    | tee -a "$LOG"
}

# phase TAG NAME BOX DRAW CMD...: run CMD for at most BOX (+ up to DRAW banked) seconds, scaled
# by BOX_PCT. The boxes add up to 445 s, and a phase spends banked time only, so the whole run
# stays under 445 s (+ 5 s of kill grace per timed-out phase) on CUDA. PHASES (names, comma-
# separated; default all) runs a subset, e.g. PHASES=env,install,data,group,rate,summary.
phase() {
  if [ -n "${PHASES:-}" ] && [[ ",$PHASES," != *",$2,"* ]]; then return 0; fi
  local tag=$1 name=$2 box=$(( $3 * BOX_PCT / 100 )) draw=$(( $4 * BOX_PCT / 100 )); shift 4
  local extra=$(( BANK < draw ? BANK : draw ))
  local limit=$(( box + extra )) t0=$SECONDS used cap rc
  used=$(wc -c < "$LOG")
  if [ "$tag" = SUMMARY ]; then cap=$(( OUTPUT_CAP - used )); else
    cap=$(( OUTPUT_CAP - SUMMARY_RESERVE - used - 150 )); fi
  (( cap < 0 )) && cap=0
  echo "=== $name ($tag): limit ${limit}s" >> "$DETAIL"
  PHASE_TIMEOUT=$limit timeout -k 5 "$limit" "$@" 2> "$SCRATCH/$name.err" | tagged "$tag" "$cap"
  rc=${PIPESTATUS[0]}
  local dt=$(( SECONDS - t0 ))
  cat "$SCRATCH/$name.err" >> "$DETAIL"
  BANK=$(( BANK + box - dt )); (( BANK < 0 )) && BANK=0
  if (( rc == 124 || rc == 137 )); then
    emit "$tag $name: stopped by its time box after ${dt}s (limit ${limit}s)"
  elif (( rc != 0 )); then
    local err
    err=$(grep -E 'Error|error|Exception' "$SCRATCH/$name.err" | tail -n 1 | cut -c1-200)
    emit "$tag $name: exit $rc after ${dt}s${err:+: $err}"
  fi
  echo "{\"phase\": \"status\", \"name\": \"$name\", \"rc\": $rc, \"s\": $dt, \"limit\": $limit}" \
    >> "$RESULTS"
}

G="$PY bench/gpu_check.py"
install_engine() {  # only when the engine does not import from ./ as it is
  local torch_before
  torch_before=$("$PY" -c "import torch; print(torch.__version__)") \
    || { echo "ENV no torch"; return 1; }
  if "$PY" -c "import engine.sweep.driver, engine.train.batched, engine.cli" 2>/dev/null; then
    echo "ENV install: not needed (engine imports from ./, torch $torch_before)"; return 0
  fi
  "$PY" -c "import engine.sweep.driver, engine.train.batched, engine.cli" 2>&1 | tail -n 1
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . >&2 || echo "ENV pip install failed"
  [ "$("$PY" -c "import torch; print(torch.__version__)")" = "$torch_before" ] \
    || echo "ENV torch changed by the install!"
  "$PY" -c "import engine.sweep.driver, engine.train.batched, engine.cli" \
    && echo "ENV install: done, engine imports"
}

export PY; export -f install_engine
emit "ENV gpu_check: boxes sum to $(( 445 * BOX_PCT / 100 ))s; scratch $SCRATCH, logs $OUT"
#     TAG     NAME    BOX DRAW
phase ENV     env      20   0 $G env
phase ENV     install  40   0 bash -c install_engine
phase ENV     data     45   0 $G data
phase PROBE   probe    45  20 $G probe
phase CONV    conv     25  10 $G conv
phase ALICE   alice    45  30 $G alice
phase GROUP   group   115 999 $G group
phase RATE    rate     10   0 $G rate
phase HEADS   heads    30  30 $G heads
phase SERIAL  serial   40  40 $G serial
phase SERIAL  naive    20  20 $G naive
phase SUMMARY summary  10   0 $G summary
emit "SUMMARY done in ${SECONDS}s; figures in $RESULTS, logs in $DETAIL"
