#!/usr/bin/env bash
# The prepared GPU check (one short session on a lent H100/H200): the same sweep with the naive
# loop, the serial executor and the batched executor on CUDA, plus 100 head-only runs serial vs
# batched. Prints fine-tunes/hour, ratios, dynamo recompiles, graph breaks / eager fallbacks and
# peak GPU memory; the summary is the last lines and $OUT/summary.txt. Run from the repository root:
#
#   bash bench/gpu_check.sh                        # DEVICE=cuda, in under 8 minutes on an H100/H200
#   DEVICE=cpu N_TRAIN=1000 N_TEST=300 SEEDS=0 HEADS=8 bash bench/gpu_check.sh    # dry run on a CPU
#
# Needs the MNIST and Fashion-MNIST raw files in the git-ignored folder ./data (carry it):
#   data/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz, data/FashionMNIST/raw/(same)
# Uses the machine's python and torch as they are (never installs or upgrades torch; FFCV is not
# needed). Everything it writes goes under $OUT (default: a new temporary directory).
set -u -o pipefail

PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
N_TRAIN=${N_TRAIN:-20000}  # training samples per dataset
N_TEST=${N_TEST:-5000}
EPOCHS=${EPOCHS:-2}        # Bob's epochs; >= 2 turns the serial trainer's feature cache on
SEEDS=${SEEDS:-0,1}        # the sweep mix: 15 runs per seed (cnn, --layers all, default modes)
HEADS=${HEADS:-100}        # head-only runs (l = L, seeds 0..HEADS-1, one Alice)
OUT=${OUT:-$(mktemp -d)}
export ENGINE_DATA_ROOT=${ENGINE_DATA_ROOT:-$PWD/data}
export ENGINE_CACHE_DIR=$OUT/cache ENGINE_OFFLINE=1 PYTHONUNBUFFERED=1
export PIP_BREAK_SYSTEM_PACKAGES=1  # a throw-away machine whose python may be "externally managed"
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

# 0. Versions ----------------------------------------------------------------------------------
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee -a "$SUMMARY"
"$PY" - <<'EOF' | tee -a "$SUMMARY"
import os, platform, sys, torch
print("python", sys.version.split()[0], platform.machine(), "cpus", os.cpu_count(), "torch",
      torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
EOF

# 1. Install the project without touching torch (no FFCV: the engine's own reader is used) -----
TORCH_VER=$("$PY" -c "import torch; print(torch.__version__)")
missing=()
for spec in numpy numba scipy pillow:PIL pyarrow pandas safetensors matplotlib filelock xxhash; do
  mod=${spec#*:}; pkg=${spec%%:*}
  "$PY" -c "import $mod" 2>/dev/null || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] || timeout 300 "$PY" -m pip install -q "${missing[@]}"
timeout 300 "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
  || timeout 300 "$PY" -m pip install -q --no-deps . || { say "install failed"; exit 1; }
"$PY" -c "import torch; assert torch.__version__ == '$TORCH_VER', 'torch changed'; import engine.sweep.driver" \
  || { say "engine does not import"; exit 1; }

# 2. One mnist:fashion dataset ------------------------------------------------------------------
DATASET=$(timeout 300 "$PY" -m engine build-data --pair mnist:fashion --beta 0.75 \
          --n-train "$N_TRAIN" --n-test "$N_TEST" --out "$OUT/datasets" | tail -n 1)
[ -d "$DATASET" ] || { say "dataset build failed"; exit 1; }

# 3. Engine: serial and batched executors, same runs, same Alices ------------------------------
cat > "$OUT/engine_check.py" <<'EOF'
import json, os, shutil, sys, time
from pathlib import Path
import torch
import torch._dynamo
from torch._dynamo.utils import counters
from engine.spec import BobSpec, Training, n_layers
from engine.sweep.driver import execute
from engine.sweep.expand import alice_spec, expand_sweep
from engine.train.alice import pretrain

dataset, out = Path(sys.argv[1]), Path(sys.argv[2])
device = torch.device(os.environ["DEVICE"])
epochs, seeds = int(os.environ["EPOCHS"]), [int(s) for s in os.environ["SEEDS"].split(",")]
heads = int(os.environ["HEADS"])
dirs = {dataset.name: dataset}
alice_t, bob_t = Training(epochs=1), Training(epochs=epochs)
alices = [alice_spec(dataset.name, "cnn", s, alice_t) for s in sorted(set(seeds) | {0})]
mix = expand_sweep([0.75], ["cnn"], seeds, datasets={0.75: dataset.name}, bob=bob_t, alice=alice_t)
L = n_layers("cnn")
head_only = [BobSpec(alice_id=alices[0].id, dataset=dataset.name, arch="cnn", retrain_from=L,
                     mode="finetune", seed=s, epochs=epochs) for s in range(heads)]
quiet = open(os.devnull, "w")

def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()

base = out / "base"
for a in alices:  # once, shared by every timed run below
    path = pretrain(dataset, a, base, device=device)
    print("ALICE", json.dumps({"seed": a.seed, "path": str(path)}))

def timed(name, specs, executor, warm=True):
    """Seconds for `specs` through `executor`, after an untimed warm-up on 256 samples."""
    root = out / f"{name}-{executor}"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(base / "alice", root / "alice")
    if warm:
        small = [BobSpec(**{**s.to_dict(), "n_bob": 256}) for s in specs]
        execute(root / "warm", small, alices, dirs, executor=executor, device=device, stderr=quiet)
    graphs0 = counters["stats"].get("unique_graphs", 0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(); t = time.perf_counter()
    counts = execute(root, specs, alices, dirs, executor=executor, device=device, stderr=quiet)
    sync(); seconds = time.perf_counter() - t
    import pandas as pd
    df = pd.read_parquet(root / "results")
    res = {"workload": name, "executor": executor, "runs": len(specs), "ran": counts["ran"],
           "seconds": round(seconds, 2), "finetunes_per_hour": round(len(specs) * 3600 / seconds, 1),
           "new_graphs_in_timed_run": counters["stats"].get("unique_graphs", 0) - graphs0,
           "graph_breaks": sum(counters["graph_break"].values()),
           "eager_fallbacks": sum(v for k, v in counters["unimplemented"].items()),
           "max_mem_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
           "test_acc": {f"{r.retrain_from}:{r.mode}:{r.seed}": round(r.test_acc, 4) for r in df.itertuples()}}
    print("RESULT " + json.dumps(res), flush=True)

for executor in ("serial", "batched"):
    timed("mix", mix, executor)
for executor in ("serial", "batched"):
    timed("heads", head_only, executor)
EOF
export DEVICE EPOCHS SEEDS HEADS
TORCH_LOGS=recompiles,graph_breaks timeout 330 "$PY" "$OUT/engine_check.py" "$DATASET" "$OUT" \
  > "$OUT/engine.log" 2>&1
say "engine: exit $?, $(grep -c 'Recompiling function' "$OUT/engine.log") recompiles logged," \
    "$(grep -ci 'graph break' "$OUT/engine.log") graph-break lines"
grep -E "Error|error:" "$OUT/engine.log" | tail -n 5 | tee -a "$SUMMARY"

# 4. Naive baseline on the same device for the sweep mix, one process per seed ----------------
RUNS=$("$PY" -c "
from engine.sweep.expand import expand_sweep
print(','.join(f'{s.retrain_from}:{s.mode}' for s in expand_sweep([0.75], ['cnn'], [0], datasets={0.75: 'd'})))")
: > "$OUT/naive.log"
for seed in ${SEEDS//,/ }; do
  ALICE=$(grep '^ALICE' "$OUT/engine.log" | grep "\"seed\": $seed," | head -n 1 | sed 's/.*"path": "\([^"]*\)".*/\1/')
  [ -n "$ALICE" ] || continue
  timeout 240 "$PY" bench/naive_baseline.py "$DATASET" "$ALICE" "$RUNS" --epochs "$EPOCHS" \
      --seed "$seed" --device "$DEVICE" >> "$OUT/naive.log" 2>> "$OUT/naive.err"
  say "naive seed $seed: exit $?"
done

# 5. Summary -------------------------------------------------------------------------------------
"$PY" - "$OUT" <<'EOF' | tee -a "$SUMMARY"
import json, sys
out = sys.argv[1]
naive = [json.loads(l) for l in open(f"{out}/naive.log") if l.startswith("{")]
res = [json.loads(l[7:]) for l in open(f"{out}/engine.log") if l.startswith("RESULT ")]
by = {(r["workload"], r["executor"]): r for r in res}
if naive:
    n_s = sum(r["seconds"] for r in naive)
    print(f"naive mix: {len(naive)} fine-tunes in {n_s:.1f}s = {len(naive) * 3600 / n_s:.0f}/h")
for r in res:
    line = (f"{r['workload']} {r['executor']}: {r['finetunes_per_hour']}/h ({r['seconds']}s, "
            f"{r['runs']} runs); new graphs in timed run {r['new_graphs_in_timed_run']}, graph "
            f"breaks {r['graph_breaks']}, eager fallbacks {r['eager_fallbacks']}, max mem {r['max_mem_GiB']} GiB")
    if r["workload"] == "mix" and naive:
        line += f"; {r['finetunes_per_hour'] / (len(naive) * 3600 / n_s):.2f}x naive"
    print(line)
for w in ("mix", "heads"):
    if (w, "serial") in by and (w, "batched") in by:
        s, b = by[w, "serial"], by[w, "batched"]
        print(f"{w}: batched {b['finetunes_per_hour'] / s['finetunes_per_hour']:.2f}x serial")
        worst = max(abs(s["test_acc"][k] - b["test_acc"][k]) for k in s["test_acc"])
        print(f"{w}: largest |test acc serial - batched| = {worst:.4f}")
EOF
echo "summary: $SUMMARY"
