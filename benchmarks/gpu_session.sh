#!/usr/bin/env bash
# Everything only a GPU can show, in stages that each fit in a 10-minute call on a rented machine.
#
#   bash benchmarks/gpu_session.sh STAGE [OUTDIR]      (OUTDIR defaults to $OUT, else benchmarks/results/gpu)
#
# Stages (run `setup` first on a fresh machine; later stages reuse its build while the machine is warm):
#   setup   install (CUDA extension built for this GPU's arch), `covseg info`, the GPU tests, compute-sanitizer
#   ops     kernel benchmarks: class_prob_pool, strip_conv, cbam, attention
#   models  model benchmarks (training step and inference, batch 16) and the export latency benchmark
#   screen  screening throughput vs the model-only rate (real volumes if COVSEG_SHARED_DATA is set)
#   results the cross-validation results table (`covseg crossval`, the papers' presets) on
#           $COVSEG_SHARED_DATA/covid-semiseg/train; the study lives in runs/crossval (kept while the
#           machine stays warm) and stops after COVSEG_RESULTS_SECONDS (default 540): run the stage
#           again to continue; extra flags in COVSEG_CROSSVAL_ARGS (e.g. "--models msa_unet unet")
# Each benchmark writes OUTDIR/<suite>_<gpu>.json (e.g. strip_conv_h100.json) and OUTDIR/<stage>.log;
# copy the JSON into benchmarks/results/ and summarise it in benchmarks/README.md.
# Wheels missing on the machine (nibabel, pydicom, pysodmetrics) are taken from .whl/ when present.
# Set COVSEG_GIT_COMMIT to the commit being measured when the copy has no .git.
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: gpu_session.sh setup|ops|models|screen|results [OUTDIR]}
out=${2:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
gpu=$(python - <<'PY'
import re, torch
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
m = re.search(r"([A-Z]\d{2,3})", name)
print((m.group(1) if m else name.split()[-1]).lower())
PY
)
log="$out/$stage.log"
status=0
step() {  # step NAME COMMAND...: run, time, log; a failure is recorded and the stage goes on
  local name=$1; shift
  local t0=$SECONDS
  echo "::: $name: $*" | tee -a "$log"
  "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "::: $name exit $rc in $((SECONDS - t0)) s" | tee -a "$log"
  [ "$rc" -eq 0 ] || status=1
}
bench() {  # bench SUITE FILE [pytest args...]
  local suite=$1 file=$2; shift 2
  step "bench $suite" python -m pytest -q "$file" --benchmark-json "$out/${suite}_${gpu}.json" "$@"
}

case "$stage" in
  setup)
    if ls .whl/*.whl >/dev/null 2>&1; then
      step wheels python -m pip install -q --no-index --no-deps .whl/*.whl
    fi
    cap=$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
    step install env TORCH_CUDA_ARCH_LIST="$cap" MAX_JOBS=16 \
      python -m pip install -q --no-build-isolation --no-deps -e .
    step info covseg info
    step cuda-tests python -m pytest -q -ra -m cuda -p no:cacheprovider
    step sanitizer compute-sanitizer --tool memcheck --error-exitcode 1 \
      python -m pytest -q tests/ops/test_class_prob_pool.py -k "cuda and out_of_range"
    ;;
  ops)
    bench class_prob_pool benchmarks/ops/bench_class_prob_pool.py
    bench strip_conv benchmarks/ops/bench_strip_conv.py
    bench cbam benchmarks/ops/bench_cbam.py
    bench attention benchmarks/ops/bench_attention.py
    ;;
  models)
    bench msa_unet benchmarks/models/bench_msa_unet.py
    bench refnet benchmarks/models/bench_refnet.py
    bench export benchmarks/bench_export.py
    ;;
  screen)
    bench screening benchmarks/bench_screening.py
    ;;
  results)
    data=${COVSEG_SHARED_DATA:-../shared/data}/covid-semiseg/train
    # at the time limit SIGINT stops the study cleanly (table written, exit 124): finished folds are
    # kept and the next call continues
    # shellcheck disable=SC2086
    step crossval timeout --signal INT "${COVSEG_RESULTS_SECONDS:-540}" covseg crossval --data "$data" \
      --out runs/crossval --table "$out/results.md" ${COVSEG_CROSSVAL_ARGS:-}
    cp runs/crossval/results.json "$out/results_${gpu}.json" 2>/dev/null
    ;;
  *)
    echo "unknown stage $stage (setup|ops|models|screen|results)" >&2
    exit 2
    ;;
esac
echo "::: stage $stage done, status $status; outputs in $out" | tee -a "$log"
exit $status
