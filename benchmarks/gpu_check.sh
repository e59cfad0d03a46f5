#!/usr/bin/env bash
# One-shot GPU check: bash benchmarks/gpu_check.sh OUTDIR
#
# Needs: one CUDA GPU; this repository (copied, run from anywhere); a Python with the project's
# dependencies already installed (torch with CUDA, ray, deap, faiss-cpu, numpy, pillow, torchvision,
# pydantic, pyyaml, scikit-learn, pytest), e.g. from `pip install ".[gpu,test]"` done beforehand or
# from wheels. It installs nothing and reaches no package index or network: the search runs the
# embedded default (scikit-learn's bundled digits); the throughput benchmark reads CIFAR-10 from
# ../shared/data when it is there, else it generates images (benchmarks/_cifar.py says which).
# Takes about 5 minutes on one H100/H200-class GPU (each step has its own timeout; total under 8).
#
# Writes into OUTDIR, every figure as JSON:
#   env.json            GPU, driver, torch and CUDA versions
#   tests.json          the device-path tests (pytest exit code and summary line)
#   device_check.json   CPU vs CUDA batches and losses, dedup vs duplicated on CUDA, the memory model
#                       against torch.cuda.max_memory_allocated at K = 8 and 32, auto K, precisions
#   throughput.json     benchmarks/throughput.py --device cuda: plain, resident, dedup, packed K in
#                       {8, 32, 128} with and without dedup
#   throughput_bf16.json  the same benchmark's resident bf16 + channels_last variant
#   search.json         a short real search (embedded default, run.pack auto): evaluations, seconds,
#                       the devices and K used
# and the raw logs beside them (*.log).
set -u
OUT=${1:?usage: gpu_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PIP_NO_INDEX=1
PY=${PYTHON:-python}
start=$(date +%s)

step() {  # step NAME TIMEOUT CMD...: run CMD with a timeout, log to OUT/NAME.log, never abort the script
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit}s)"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "   exit $rc after $(( $(date +%s) - start ))s in total"
  return $rc
}

last_json() {  # last_json LOG OUTFILE: the log's last line that is a JSON object, or an error object
  "$PY" - "$1" "$2" <<'EOF'
import json, sys
lines = [l for l in open(sys.argv[1], errors="replace").read().splitlines() if l.startswith("{")]
obj = None
for line in reversed(lines):
    try:
        obj = json.loads(line)
        break
    except ValueError:
        pass
if obj is None:
    obj = {"error": "no JSON line in " + sys.argv[1]}
json.dump(obj, open(sys.argv[2], "w"), indent=1)
EOF
}

"$PY" - "$OUT/env.json" <<'EOF'
import json, subprocess, sys
import torch
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}
try:
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                         "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
except OSError:
    info["nvidia_smi"] = None
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(info)
EOF

# 1. The tests of the device path (they run on the CPU too; here they also see the GPU's torch build).
step tests 150 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_execution.py tests/test_dedup.py
rc=$?
"$PY" - "$OUT/tests.log" "$OUT/tests.json" "$rc" <<'EOF'
import json, sys
lines = [l for l in open(sys.argv[1], errors="replace").read().splitlines() if l.strip()]
json.dump({"exit": int(sys.argv[3]), "summary": lines[-1] if lines else ""}, open(sys.argv[2], "w"), indent=1)
EOF

# 2. CUDA-only checks: batches, dedup, memory model, precisions.
step device_check 120 "$PY" benchmarks/gpu_device_check.py
last_json "$OUT/device_check.log" "$OUT/device_check.json"

# 3. Throughput on CUDA: plain, resident, dedup, packed K in {8, 32, 128}; then bf16 + channels_last.
step throughput 150 "$PY" benchmarks/throughput.py --device cuda --packs 8 32 128 --rounds 2
last_json "$OUT/throughput.log" "$OUT/throughput.json"
step throughput_bf16 60 "$PY" benchmarks/throughput.py --device cuda --precision bf16 --channels-last --rounds 2
last_json "$OUT/throughput_bf16.log" "$OUT/throughput_bf16.json"

# 4. A short real search with packing sized by the workers (run.pack auto, one worker per GPU).
step search 150 "$PY" oesearch/run.py --address local --no-progress --out "$OUT/runs" --seed 0 \
  --set run.pack=auto --set search.generations=3
rc=$?
"$PY" - "$OUT/runs" "$OUT/search.json" "$rc" <<'EOF'
import json, sys
from pathlib import Path
runs = sorted(Path(sys.argv[1]).glob("*/"), key=lambda p: p.stat().st_mtime) if Path(sys.argv[1]).exists() else []
out = {"exit": int(sys.argv[3])}
if runs:
    journal = runs[-1] / "journal.jsonl" if (runs[-1] / "journal.jsonl").exists() else None
    rows = [json.loads(l) for l in journal.read_text().splitlines() if l.strip()] if journal else []
    ok = [r for r in rows if r.get("status") == "ok"]
    secs = [r["seconds"] for r in ok if r.get("seconds") is not None]
    out.update(run=str(runs[-1]), evaluations=len(rows), ok=len(ok), devices=sorted({str(r.get("device")) for r in rows}),
               mean_seconds_per_evaluation=sum(secs) / len(secs) if secs else None,
               evaluations_per_hour_per_worker=3600 * len(secs) / sum(secs) if secs and sum(secs) else None)
json.dump(out, open(sys.argv[2], "w"), indent=1)
print(out)
EOF

echo "done in $(( $(date +%s) - start ))s; figures in $OUT:"
ls "$OUT"
