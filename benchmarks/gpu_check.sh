#!/usr/bin/env bash
# The GPU check in ONE call of at most 8 minutes on an H200 (issue 19): build, prove the build, the CUDA
# tests, memcheck, a torch.compile smoke, the roofline ceilings, the core benchmarks, the training steps.
#
#   COVSEG_GIT_COMMIT=<sha> bash benchmarks/gpu_check.sh          # on the device ($OUT set by the device tool)
#   CHECK_STEPS=bench-ops,bench-train bash benchmarks/gpu_check.sh  # rerun a subset on a warm machine
#   bash benchmarks/gpu_check.sh --dry-run                         # on CPU: every step runs shortened or prints
#   python3 benchmarks/ingest_gpu.py <files_at or $OUT>            # then, on the CPU machine: results + tables
#
# Every step runs under its own cap (`timeout -s INT`: pytest-benchmark still writes the JSON of finished
# cases) and inside a whole budget (CHECK_BUDGET_S, 480 s): a step gets min(its cap, what is left minus the
# floors of the steps after it), and is skipped when what is left cannot give it its own floor. A failed
# step is logged and the later steps still run. Steps marked & run in the background, beside the steps that follow, and
# are all joined before the timed steps (ceilings, benchmarks), which run alone on the GPU.
#
# step         cap  floor  estimate on the H200 (GPU_CHECK.md's figures, ±50 %)
# env           20     5     5 s   nvidia-smi, versions, free disk -> env.json
# wheels        30     5     5 s   nibabel, pydicom, pysodmetrics from .whl/ (pip --no-index --no-deps)
# smoke &      150    30    60-90  torch.compile(fullgraph) through the 7 Triton ops, fwd+bwd, vs the reference
# warm-ops &   270     0   100-200 the op benchmarks once, untimed (COVSEG_BENCH_ROUNDS=1): fills the Triton
# warm-train & 270     0    60-110 and Inductor disk caches, so the timed steps below compile little
# build        150    60    60-90  FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 pip install -e . (nvcc 35 s of CPU)
# check         30    10     5-8   fails loudly unless the CUDA kernel is built, registered and right
# info          30     5     4-6   python3 -m covseg_fast info --json
# memcheck &   170    30    40-90  compute-sanitizer memcheck, the 62 CUDA tests of test_class_prob_pool.py
# cuda-tests   200    60   100-170 the 438 cuda tests (~474 Triton specialisations), xdist -n 12, JUnit
# ceilings      30    10     5-10  copy bandwidth, bf16 8192^3 GEMM, fp32 FMA rate (the roofline)
# bench-ops    150    60    60-100 42 op cases (fwd, fwd+bwd; eager, compile, fused; warm caches; cold 100-180)
# bench-train  100    30    25-50  MSA-UNet 16x256^2 bf16 and Ref-Net 16x352^2, fused and eager, channels_last
# (not run unless named in CHECK_STEPS) bench-train-compile 300 60: the two training steps under torch.compile
# Estimated whole: 5.2-7.4 min of the 8 (the background steps overlap the build and the tests).
#
# Outputs ($OUT, else out/gpu_check): summary.txt (one line per step: status, exit code, seconds, cap) and
# gpu_check.tar.gz (logs/<step>.log, env.json, build_check.json, info.json, cuda_tests.xml, memcheck.xml,
# smoke.json, ceilings.json, bench_ops.json, bench_train.json, steps.tsv, meta.json), both rewritten after
# every step, so a call cut short still returns what finished. Settings: CHECK_BUDGET_S, CHECK_CAP_<step>
# (e.g. CHECK_CAP_cuda_tests=240), CHECK_XDIST (12), CHECK_TEST_TIMEOUT (150 s per test), CHECK_OPS_K,
# CHECK_TRAIN_K (pytest -k selections), CHECK_WORK (work folder), TORCH_CUDA_ARCH_LIST (9.0), MAX_JOBS (16).
set -u
cd "$(dirname "$0")/.." || exit 2
REPO=$PWD
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "gpu_check.sh: unknown argument ${1} (use --dry-run or --help)" >&2; exit 2 ;;
esac

ORDER=(env wheels smoke warm-ops warm-train build check info memcheck cuda-tests JOIN ceilings bench-ops
       bench-train bench-train-compile)
DEFAULT_STEPS="env,wheels,smoke,warm-ops,warm-train,build,check,info,memcheck,cuda-tests,ceilings,bench-ops,bench-train"
declare -A CAP=([env]=20 [wheels]=30 [smoke]=150 [warm-ops]=270 [warm-train]=270 [build]=150 [check]=30 [info]=30
                [memcheck]=170 [cuda-tests]=200 [ceilings]=30 [bench-ops]=150 [bench-train]=100
                [bench-train-compile]=300)
declare -A FLOOR=([env]=5 [wheels]=5 [smoke]=30 [warm-ops]=0 [warm-train]=0 [build]=60 [check]=10 [info]=5
                  [memcheck]=30 [cuda-tests]=60 [ceilings]=10 [bench-ops]=60 [bench-train]=30
                  [bench-train-compile]=60)
declare -A BACKGROUND=([smoke]=1 [warm-ops]=1 [warm-train]=1 [memcheck]=1)
PACK_FLOOR=5

STEPS=",${CHECK_STEPS:-$DEFAULT_STEPS},"
for s in ${STEPS//,/ }; do
  [ -n "${CAP[$s]:-}" ] || { echo "gpu_check.sh: unknown step '$s' in CHECK_STEPS (steps: ${ORDER[*]/JOIN/})" >&2; exit 2; }
done
for s in "${!CAP[@]}"; do  # CHECK_CAP_<step>, '-' written '_'
  var="CHECK_CAP_${s//-/_}"
  [ -n "${!var:-}" ] && CAP[$s]=${!var}
done
selected() { [[ $STEPS == *",$1,"* ]]; }

BUDGET=${CHECK_BUDGET_S:-480}
OUT=${OUT:-$REPO/out/gpu_check}
W=${CHECK_WORK:-${TMPDIR:-/tmp}/covseg_gpu_check}
SITE=${CHECK_SITE:-${TMPDIR:-/tmp}/covseg_site}
if [ -d "$W" ] && [ -n "$(ls -A "$W")" ] && [ ! -f "$W/meta.json" ]; then
  echo "gpu_check.sh: CHECK_WORK=$W is not empty and not a gpu_check work folder: name an empty or new folder" >&2
  exit 2
fi
# a call starts clean: the outputs of an earlier call came back with it (ingest_gpu.py takes both calls' outputs)
rm -rf "$W/logs" "$W/pids" && rm -f "$W"/*.json "$W"/*.xml "$W/steps.tsv" "$W/console.log"
mkdir -p "$OUT" "$W/logs" "$W/pids" || exit 2
if [ -z "${COVSEG_GIT_COMMIT:-}" ]; then
  COVSEG_GIT_COMMIT=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
fi
export COVSEG_GIT_COMMIT PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
START=$SECONDS
OPS_FILES="benchmarks/ops/bench_class_prob_pool.py benchmarks/ops/bench_strip_conv.py benchmarks/ops/bench_cbam.py benchmarks/ops/bench_attention.py"
# 42 cases: class_prob_pool int64 (eager, compile, cuda) at the three model shapes; strip_conv and CBAM at msa_l0
# (fwd NCHW, fwd+bwd NCHW and channels_last); position attention at msa_64 (+ the fused fwd+bwd at N = 16384,
# the 1 GB goal); channel attention at refnet_f5 (pfnet)
OPS_K=${CHECK_OPS_K:-"(test_class_prob_pool and int64 and not cpp) or (test_strip_conv and msa_l0 and not triton_split and (nchw or bwd)) or (test_cbam and msa_l0 and (nchw or bwd)) or (test_position_attention and (msa_64 or (f2_128 and fused and bwd))) or (test_channel_attention and refnet_f5 and pfnet and not sdpa and not fused_)"}
TRAIN_FILES="benchmarks/models/bench_msa_unet.py benchmarks/models/bench_refnet.py"
TRAIN_K=${CHECK_TRAIN_K:-"(test_msa_unet and gpu_b16_256-channels_last and train and not compile) or (test_train_step and b16_352-channels_last and not compile)"}
TRAIN_COMPILE_K="(test_msa_unet and gpu_b16_256-channels_last and train and compile) or (test_train_step and b16_352-channels_last and compile)"
BENCH_ARGS=(-p no:cacheprovider -q -rfEs -m "not cpu_case" --benchmark-max-time=0.5 --benchmark-columns=min,median,iqr,rounds)

py() { python3 "$@"; }
say() { echo "$*" | tee -a "$W/console.log"; }

pack() {  # everything so far into $OUT, atomically (background steps pack too), so a call cut short brings it back
  local tmp="$OUT/.pack.$BASHPID"
  summary > "$tmp.txt" && mv -f "$tmp.txt" "$OUT/summary.txt"
  tar -czf "$tmp.tgz" -C "$W" . 2>/dev/null
  if [ $? -le 1 ]; then mv -f "$tmp.tgz" "$OUT/gpu_check.tar.gz"; else rm -f "$tmp.tgz"; fi  # 1: a file changed
}

summary() {
  echo "gpu_check $([ $DRY = 1 ] && echo DRY RUN on CPU || echo on the device) | commit $COVSEG_GIT_COMMIT | budget $BUDGET s | $((SECONDS - START)) s so far"
  printf '%-20s %-34s %5s %7s %5s\n' step status rc seconds cap
  [ -f "$W/steps.tsv" ] && while IFS=$'\t' read -r name status rc secs cap; do
    printf '%-20s %-34s %5s %7s %5s\n' "$name" "$status" "$rc" "$secs" "$cap"
  done < "$W/steps.tsv"
}

reserve_after() {  # floors of the selected steps after $1 that cannot overlap it (+ packing)
  local name=$1 after=0 past_join=0 total=$PACK_FLOOR s
  for s in "${ORDER[@]}"; do
    if [ "$s" = "$name" ]; then after=1; continue; fi
    [ "$s" = JOIN ] && { past_join=1; continue; }
    [ $after = 1 ] && selected "$s" || continue
    [ -n "${BACKGROUND[$s]:-}" ] && continue
    [ -n "${BACKGROUND[$name]:-}" ] && [ $past_join = 0 ] && continue  # runs beside a background step
    total=$((total + FLOOR[$s]))
  done
  echo $total
}

record() {  # record NAME STATUS RC SECONDS CAP
  printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$W/steps.tsv"
  say "::: $1: $2 (exit $3) in $4 s, cap $5 s"
}

execute() {  # execute NAME CAP COMMAND...: run under the cap, log, record
  local name=$1 cap=$2 t0=$SECONDS rc status
  shift 2
  { [ -n "$DEVICE_LINE" ] && echo "::: $name on the device:$DEVICE_LINE"
    echo "::: $name: $*"; echo; } > "$W/logs/$name.log"
  DEVICE_LINE=
  timeout -s INT -k 15 "$cap" "$@" >> "$W/logs/$name.log" 2>&1 &
  echo $! > "$W/pids/$name"
  wait $!
  rc=$?
  rm -f "$W/pids/$name"
  case $rc in
    0) status=ok ;;
    124) status="TIMED OUT at the cap" ;;
    137) status="KILLED (cap + 15 s grace, or memory)" ;;
    *) status=FAILED ;;
  esac
  record "$name" "$status" "$rc" "$((SECONDS - t0))" "$cap"
  if [ $rc -ne 0 ]; then tail -n 15 "$W/logs/$name.log" | sed "s/^/    $name| /" | tee -a "$W/console.log"; fi
  pack
}

step() {  # step NAME COMMAND...: foreground (background when NAME is marked so), within the budget
  local name=$1 left cap
  shift
  selected "$name" || return 0
  left=$((BUDGET - (SECONDS - START) - $(reserve_after "$name")))
  cap=$(( CAP[$name] < left ? CAP[$name] : left ))
  if [ "$left" -lt "${FLOOR[$name]}" ] || [ "$cap" -le 0 ]; then  # the budget cannot give it its floor
    DEVICE_LINE=
    record "$name" "skipped: budget left ${left} s" - 0 "${CAP[$name]}"
    pack
    return 0
  fi
  if [ -n "${BACKGROUND[$name]:-}" ]; then
    say "::: $name: started in the background (cap $cap s)"
    execute "$name" "$cap" "$@" &
    DEVICE_LINE=  # the background copy took it
  else
    execute "$name" "$cap" "$@"
  fi
}

DEVICE_LINE=
show() {  # show COMMAND...: the device's command, written at the head of the next step's log (dry run)
  DEVICE_LINE=$(printf ' %q' "$@")
}

dry() {  # dry NAME COMMAND...: what the device would run (recorded, not run)
  local name=$1
  shift
  selected "$name" || return 0
  { echo "::: $name (dry run: printed, not run)"; printf ' %q' "$@"; echo; } > "$W/logs/$name.log"
  record "$name" "dry run: printed only" - 0 "${CAP[$name]}"
  DEVICE_LINE=
  sed -n '2p' "$W/logs/$name.log" | cut -c1-300 | sed "s/^/    $name| /"
}

join_background() {
  wait
  pack
}

on_signal() {  # the call is being stopped: stop the steps (each is its own process group), keep the outputs
  local f
  for f in "$W"/pids/*; do [ -f "$f" ] && kill -INT -- "-$(cat "$f")" 2>/dev/null; done
  sleep 2
  record interrupted "stopped by a signal" - $((SECONDS - START)) -
  pack
  exit 130
}
trap on_signal INT TERM

STEPS_LIST=${STEPS:1:${#STEPS}-2}
META_DRY=$DRY META_BUDGET=$BUDGET META_STEPS=$STEPS_LIST META_OPS_K=$OPS_K META_TRAIN_K=$TRAIN_K \
  META_XDIST=${CHECK_XDIST:-12} META_TIMEOUT=${CHECK_TEST_TIMEOUT:-150} python3 -c '
import datetime, json, os, sys
e = os.environ
json.dump({"commit": e["COVSEG_GIT_COMMIT"], "dry_run": e["META_DRY"] == "1", "budget_s": int(e["META_BUDGET"]),
           "steps": e["META_STEPS"].split(","), "ops_k": e["META_OPS_K"], "train_k": e["META_TRAIN_K"],
           "xdist": int(e["META_XDIST"]), "test_timeout_s": int(e["META_TIMEOUT"]),
           "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
          open(sys.argv[1], "w"), indent=1)' "$W/meta.json"
[ "$COVSEG_GIT_COMMIT" = unknown ] && say "WARNING: COVSEG_GIT_COMMIT is not set and there is no .git: results will say commit unknown"
say "gpu_check: steps $STEPS_LIST; budget $BUDGET s; work folder $W; outputs to $OUT"

# What the device runs, one array per step (the dry run prints these, or runs a CPU variant beside them)
XDIST=${CHECK_XDIST:-12}
DIST=$(py -c "import xdist.scheduler as s; print('worksteal' if hasattr(s, 'WorkStealingScheduling') else 'load')" 2>/dev/null || echo load)
ENV_CMD=(bash -c 'nvidia-smi; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv; nvcc --version | tail -2; compute-sanitizer --version | head -2; df -h . /tmp; free -g; nproc; python3 benchmarks/gpu_env.py --json "$0/env.json"' "$W")
WHEELS_CMD=(bash -c 'ls .whl/*.whl || { echo "no wheels in .whl/: nibabel is required (see benchmarks/README.md)"; exit 1; }; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$0" .whl/*.whl && python3 -c "import nibabel, pydicom; print(\"nibabel\", nibabel.__version__, \"pydicom\", pydicom.__version__)" && { python3 -c "import py_sod_metrics" || echo "pysodmetrics not importable: its tests skip"; }' "$SITE")
SMOKE_CMD=(env COVSEG_DISABLE_EXT=1 python3 benchmarks/compile_smoke.py --json "$W/smoke.json")
WARM_OPS_CMD=(env COVSEG_DISABLE_EXT=1 COVSEG_BENCH_ROUNDS=1 python3 -m pytest $OPS_FILES "${BENCH_ARGS[@]}" -k "($OPS_K) and not cuda" --benchmark-max-time=0.01 --benchmark-min-rounds=1)
WARM_TRAIN_CMD=(env COVSEG_DISABLE_EXT=1 COVSEG_BENCH_ROUNDS=1 python3 -m pytest $TRAIN_FILES "${BENCH_ARGS[@]}" -k "$TRAIN_K")
BUILD_CMD=(env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}" python3 -m pip install -v --no-index --no-build-isolation --no-deps -e .)
CHECK_CMD=(python3 benchmarks/gpu_build_check.py --expect-cuda --json "$W/build_check.json")
INFO_CMD=(bash -c 'python3 -m covseg_fast info --json > "$0/info.json" && python3 -c "import json, sys; json.load(open(sys.argv[1])); print(\"info.json parses\")" "$0/info.json"' "$W")
MEMCHECK_TESTS=(python3 -m pytest tests/ops/test_class_prob_pool.py -m cuda -q -rfE -p no:cacheprovider --junitxml="$W/memcheck.xml")
MEMCHECK_CMD=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --kernel-name kns=class_prob_pool --report-api-errors no --error-exitcode 1 "${MEMCHECK_TESTS[@]}")
cuda_tests_cmd() {  # cuda_tests_cmd PATHS...: sets CUDA_TESTS_CMD
  CUDA_TESTS_CMD=(python3 -m pytest "$@" -m cuda -n "$XDIST" --dist "$DIST" --timeout "${CHECK_TEST_TIMEOUT:-150}"
                  --timeout-method=thread -v --tb=short -rfE -p no:cacheprovider --durations=20 --junitxml="$W/cuda_tests.xml")
}
cuda_tests_cmd tests
CEILINGS_CMD=(python3 benchmarks/roofline_ceilings.py --json "$W/ceilings.json")
BENCH_OPS_CMD=(python3 -m pytest $OPS_FILES "${BENCH_ARGS[@]}" -k "$OPS_K" --benchmark-json "$W/bench_ops.json")
BENCH_TRAIN_CMD=(python3 -m pytest $TRAIN_FILES "${BENCH_ARGS[@]}" -k "$TRAIN_K" --benchmark-json "$W/bench_train.json")
BENCH_TRAIN_COMPILE_CMD=(python3 -m pytest $TRAIN_FILES "${BENCH_ARGS[@]}" -k "$TRAIN_COMPILE_K" --benchmark-json "$W/bench_train_compile.json")

if [ $DRY = 0 ]; then
  step env "${ENV_CMD[@]}"
  step wheels "${WHEELS_CMD[@]}"
  step smoke "${SMOKE_CMD[@]}"
  step warm-ops "${WARM_OPS_CMD[@]}"
  step warm-train "${WARM_TRAIN_CMD[@]}"
  step build "${BUILD_CMD[@]}"
  cp covseg_fast/_build_config.json "$W/" 2>/dev/null
  step check "${CHECK_CMD[@]}"
  step info "${INFO_CMD[@]}"
  step memcheck "${MEMCHECK_CMD[@]}"
  step cuda-tests "${CUDA_TESTS_CMD[@]}"
  join_background
  step ceilings "${CEILINGS_CMD[@]}"
  step bench-ops "${BENCH_OPS_CMD[@]}"
  step bench-train "${BENCH_TRAIN_CMD[@]}"
  step bench-train-compile "${BENCH_TRAIN_COMPILE_CMD[@]}"
else
  # On CPU: steps that can run do, shortened (their log starts with the device's command); the rest print it.
  # The selections are collected to prove they pick what the device would run.
  CPU_OPS_K="(test_class_prob_pool and (eager or cpp) and msa_k2 and int64) or ((test_cbam or test_strip_conv) and cpu_tiny and (eager or fused) and nchw and not bwd) or ((test_position_attention or test_channel_attention) and tiny_cpu and (eager or fused-) and not bwd and not danet)"
  CPU_TRAIN_K="test_msa_unet and cpu_tiny and train and reference"
  show "${ENV_CMD[@]}"
  step env bash -c 'nvidia-smi 2>&1 | head -1; df -h . | tail -1; nproc; python3 benchmarks/gpu_env.py --json "$0/env.json"' "$W"
  if ls .whl/*.whl > /dev/null 2>&1; then step wheels "${WHEELS_CMD[@]}"; else dry wheels "${WHEELS_CMD[@]}"; fi
  show "${SMOKE_CMD[@]}"
  step smoke python3 benchmarks/compile_smoke.py --device cpu --json "$W/smoke.json"
  dry warm-ops "${WARM_OPS_CMD[@]}"
  dry warm-train "${WARM_TRAIN_CMD[@]}"
  dry build "${BUILD_CMD[@]}"
  show "${CHECK_CMD[@]}"
  step check python3 benchmarks/gpu_build_check.py --json "$W/build_check.json"
  step info "${INFO_CMD[@]}"
  dry memcheck "${MEMCHECK_CMD[@]}"  # its test selection runs in the cuda-tests step below
  show "${CUDA_TESTS_CMD[@]}"
  XDIST=1
  cuda_tests_cmd tests/ops/test_class_prob_pool.py
  step cuda-tests "${CUDA_TESTS_CMD[@]}"
  join_background
  show "${CEILINGS_CMD[@]}"
  step ceilings python3 benchmarks/roofline_ceilings.py --device cpu --json "$W/ceilings.json"
  show "${BENCH_OPS_CMD[@]}"
  step bench-ops bash -c 'python3 -m pytest --collect-only -q -p no:cacheprovider -m "not cpu_case" -k "$1" $0 | tail -1 && COVSEG_BENCH_ROUNDS=2 python3 -m pytest -p no:cacheprovider -q -rfEs -k "$2" $0 --benchmark-json "$3"' "$OPS_FILES" "$OPS_K" "$CPU_OPS_K" "$W/bench_ops.json"
  show "${BENCH_TRAIN_CMD[@]}"
  step bench-train bash -c 'python3 -m pytest --collect-only -q -p no:cacheprovider -m "not cpu_case" -k "$1" $0 | tail -1 && COVSEG_BENCH_ROUNDS=2 python3 -m pytest -p no:cacheprovider -q -rfEs -m cpu_case -k "$2" $0 --benchmark-json "$3"' "$TRAIN_FILES" "$TRAIN_K" "$CPU_TRAIN_K" "$W/bench_train.json"
  dry bench-train-compile "${BENCH_TRAIN_COMPILE_CMD[@]}"
fi
join_background

failed=$(awk -F'\t' '$2 != "ok" && $2 !~ /^dry run/ && $2 !~ /^ran on CPU/' "$W/steps.tsv" 2>/dev/null | wc -l)
record total "$([ "$failed" = 0 ] && echo "all steps ok" || echo "$failed step(s) not ok")" - $((SECONDS - START)) "$BUDGET"
pack
say ""
summary | tee -a "$W/console.log"
pack
say "outputs: $OUT/summary.txt and $OUT/gpu_check.tar.gz; ingest with: python3 benchmarks/ingest_gpu.py <that folder>"
[ "$failed" = 0 ]
