#!/usr/bin/env bash
# Every CUDA target of issue 24 (docs/scaling.md#on-a-gpu): `bash perf/gpu_check.sh OUT_DIR`, from
# the project root, in one call or split by STEPS (below). Each step has its own time limit and log
# in OUT_DIR, and a failed step does not stop the next; steps.log says what each took. Where
# .gpu/setup.sh exists (../shared/gpu's bundle, for a machine with no registry and no hub), it is
# sourced first. The bundle lacks two pure-Python packages that a stock CUDA image may lack too:
# nvidia-ml-py (perf's busy share; without it that row is left out) and tabulate (the tables'
# Markdown). Unpacked into .gpu/extra, they travel and are put on the path:
#   pip download -q --no-deps nvidia-ml-py tabulate -d .gpu/wheels
#   for w in .gpu/wheels/*.whl; do unzip -qo "$w" -d .gpu/extra; done; rm -r .gpu/wheels
#
#   check    what `precision: auto` picks per encoder, and the plan's estimate
#   study    a study of CONFIG, with the GPU's SM activity sampled each second (nvidia-smi dmon):
#            busy.txt gives its mean over the study (target >= 60%), costs.csv its overhead
#   workers  trials per hour with 1 and 4 workers on the one GPU, CUDA MPS on (target: 4 in
#            <= 0.6x one worker's time)
#   perf     python -m perf.perf: throughput, the warm matmul peaks, MFU, overhead, the busy
#            share and auto's choice for BERT-base- and RoBERTa-base-size models (PERF-cuda.*)
#
# Sizes (environment): CONFIG (search_spaces/gpu.yaml), ENCODERS (minilm-l6: MPNet-base does not
# travel in the bundle), TRIALS (8 per dataset), WORKER_TRIALS (16), PERF_FLAGS (empty; --quick
# only proves the script works), and a limit per step in seconds: CHECK_S, STUDY_S, WORKERS_S, PERF_S.
# STEPS (all four: "check study workers perf") picks steps, so that the run can be split across
# calls: one call to a lent machine runs at most 10 minutes, and the four limits add up to 17.
set -uo pipefail

out=${1:?usage: bash perf/gpu_check.sh OUT_DIR}
steps=" ${STEPS:-check study workers perf} "
for name in $steps; do
    case $name in check|study|workers|perf) ;; *) echo "STEPS: unknown step $name; expected some of check study workers perf" >&2; exit 2;; esac
done
wanted() { [[ $steps == *" $1 "* ]]; }
mkdir -p "$out"
if [ -f .gpu/setup.sh ]; then
    # shellcheck disable=SC1091
    . .gpu/setup.sh || { echo ".gpu/setup.sh failed" >&2; exit 2; }
fi
[ -d .gpu/extra ] && export PYTHONPATH="$PWD/.gpu/extra${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}
config=${CONFIG:-search_spaces/gpu.yaml}
encoders=${ENCODERS:-minilm-l6}
gpu=$(command -v nvidia-smi >/dev/null 2>&1 && echo yes || echo no)

step() {  # step NAME LIMIT_S COMMAND...: its output in NAME.log, its exit code and seconds in steps.log
    local name=$1 limit=$2 started code
    shift 2
    started=$(date +%s)
    echo "== $name (limit ${limit}s): $*" | tee -a "$out/steps.log"
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    code=$?
    echo "== $name: exit $code after $(( $(date +%s) - started ))s" | tee -a "$out/steps.log"
}

# The config narrowed to the encoders that are here: every tool below reads all of a config's.
narrowed="$out/config.yaml"
"$python" - "$config" "$encoders" "$narrowed" <<'PY' || exit 2
import sys, yaml
source, keep, target = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
config = yaml.safe_load(open(source))
missing = [name for name in keep if name not in config["encoders"]]
if missing:
    sys.exit(f"ENCODERS: {', '.join(missing)} not in {source}")
config["encoders"] = {name: spec for name, spec in config["encoders"].items() if name in keep}
yaml.safe_dump(config, open(target, "w"), sort_keys=False)
PY

{ date -u; [ "$gpu" = yes ] && nvidia-smi; "$python" -c "import torch; print('torch', torch.__version__)"; } \
    > "$out/machine.txt" 2>&1

wanted check && step check "${CHECK_S:-120}" "$python" run_benchmark.py --check --config "$narrowed" \
    --results-dir "$out/check"

if wanted study; then
    [ "$gpu" = yes ] && { nvidia-smi dmon -s u -d 1 > "$out/dmon.txt" 2>&1 & dmon=$!; }
    step study "${STUDY_S:-240}" "$python" run_benchmark.py --study --config "$narrowed" --results-dir "$out/study" \
        --n-trials "${TRIALS:-8}"
    if [ "$gpu" = yes ]; then
        kill "$dmon" 2>/dev/null
        # dmon's columns: gpu sm mem enc dec ...; the mean SM activity over the study's seconds.
        awk '!/^#/ && NF > 1 { sum += $2; n++ } END { if (n) printf "GPU busy (SM activity), mean of %d one-second samples: %.1f%%\n", n, sum / n }' \
            "$out/dmon.txt" | tee "$out/busy.txt"
    fi
fi

if wanted workers; then
    [ "$gpu" = yes ] && nvidia-cuda-mps-control -d > "$out/mps.log" 2>&1
    step workers "${WORKERS_S:-300}" "$python" -m perf.workers --config "$narrowed" --workers "${WORKER_COUNTS:-1,4}" \
        --trials "${WORKER_TRIALS:-16}" --rounds 1 --out "$out/workers"
    [ "$gpu" = yes ] && { echo quit | nvidia-cuda-mps-control >> "$out/mps.log" 2>&1; }
fi

# shellcheck disable=SC2086
wanted perf && step perf "${PERF_S:-360}" "$python" -m perf.perf --config "$narrowed" --out "$out/perf" ${PERF_FLAGS:-}
echo "done: $out/steps.log"
