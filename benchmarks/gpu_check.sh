#!/usr/bin/env bash
# Everything that needs a GPU, checked and timed in one call of at most 8 minutes (a lent H100/H200,
# or any CUDA machine), with the machine's own python3 and torch (any 2.x from 2.4; no venv, no
# internet: the package runs from this checkout). benchmarks/README.md lists the steps, their time
# on an H100 and what is written.
#   bash benchmarks/gpu_check.sh                  # on the GPU machine; results in $OUT (or /tmp/gpu_check)
#   bash benchmarks/gpu_check.sh --cpu-dry-run    # every step at tiny sizes on the CPU (make test runs it)
# Options: --out DIR (results), PYTHON=... (interpreter; default python3), GPU_CHECK_BUDGET=seconds (480).
# A failing step does not stop the others; each has a time limit inside the budget. Exit 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=gpu
out="${OUT:-/tmp/gpu_check}"
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-dry-run) mode=cpu ;;
    --out) out="$2"; shift ;;
    *) echo "error: unknown option $1 (--cpu-dry-run, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
py="${PYTHON:-python3}"
budget="${GPU_CHECK_BUDGET:-480}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1 PYTHONUNBUFFERED=1
mkdir -p "$out"
( cd "$out" && rm -f device.json tests.json resume.json ddp.json nccl.json bench_eager.json bench_compiled.json \
  timings.json summary.json nvidia-smi.txt tests.log data.log resume_reference.log resume_killed.log \
  resume_resumed.log nccl.log ddp.log bench_phantom.log bench_eager.log bench_compiled.log )
work="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$work"' EXIT
helper=("$py" -m medclip_nb.tools.gpu_check)
start=$SECONDS
failed=()
declare -A took
step() { echo; echo "=== $1 ($(date +%T), $((SECONDS - start)) s of ${budget} s)"; step_start=$SECONDS; }
done_step() { took[$1]=$((SECONDS - step_start)); }
# seconds left for a step: what the budget leaves after `reserve` seconds kept for the steps after it
left() { local s=$((budget - (SECONDS - start) - $1)); [ "$s" -lt 10 ] && s=10; echo "$s"; }

# The network and data of steps 2-3, and their sizes: tiny on the CPU, ResNet-50 at 224 px from a
# 256 px image store with bf16 and device augmentation on the GPU.
common="data_path: $work/prepared/datasets.pkl
image_store: auto
phantom_dir: $work/phantom
phantom_test_studies: 0
phantom_seed: 0
model: medclip
loss: clip
augment: seed
lr: 1.0e-3
warmup: 0.1
num_epochs: 1000  # max_steps ends the runs
log_every: 1
eval_steps: 1000
early_stopping_patience: 0
seed: 1"
if [ "$mode" = cpu ]; then
  # The GPU machine's python has no Jupyter packages: hide them here too, so the same tests skip.
  export PYTHONPATH="$PWD/benchmarks/without_jupyter:$PYTHONPATH"
  tests=(tests/test_study_outputs.py -k "notebook or progress_is_on")
  cat > "$work/check.yaml" <<EOF
$common
phantom_studies: 40
phantom_size: 64
vision_backbone: small_cnn
image_size: 32
resize_size: 36
text_layers: 1
text_width: 32
text_heads: 2
embed_dim: 32
vocab_size: 200
max_text_tokens: 32
batch_size: 4
eval_batch_size: 8
num_workers: 1
gpu_id: cpu
save_steps: 3
EOF
  steps=12; ddp_steps=4
  bench=(--config "$work/check.yaml" --phantom 24 --phantom-height 128 --steps 2)
  compile_backend=eager  # graph capture only: inductor's C++ build takes minutes on two cores
else
  tests=(tests)
  cat > "$work/check.yaml" <<EOF
$common
phantom_studies: 1200
phantom_size: 256
vision_backbone: resnet50
image_size: 224
resize_size: 256
text_layers: 2
text_width: 128
text_heads: 4
vocab_size: 1000
max_text_tokens: 64
batch_size: 64
eval_batch_size: 128
num_workers: 8
use_amp: true
save_steps: 5
EOF
  steps=40; ddp_steps=20
  # 440 full-size studies keep about 300 frontal training images: more than one batch of 256.
  bench=(--config params/full.yaml --phantom 440 --steps 12)
  compile_backend=inductor
fi
train_cfg=(--config "$work/check.yaml")

step "0. device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$out/nvidia-smi.txt"
"${helper[@]}" probe "$out/device.json" || { echo "error: this python cannot run the check"; exit 2; }
gpus=$("$py" -c "import json, sys; print(json.load(open(sys.argv[1])).get('gpus', 0))" "$out/device.json")
if [ "$mode" = gpu ] && [ "$gpus" -lt 1 ]; then echo "error: no CUDA device (try --cpu-dry-run)"; exit 2; fi
# The full-size phantom of step 4 is written meanwhile, on the CPU cores steps 1-3 leave.
timeout "$(left 60)" "$py" -m medclip_nb bench "${bench[@]}" --prepare-only > "$out/bench_phantom.log" 2>&1 &
phantom_pid=$!
done_step device

step "1. unit tests (on a GPU machine the training tests run on CUDA)"
pytest_args=(-q -p no:cacheprovider -p no:nbval)  # nbval needs Jupyter's packages
if "$py" -c "import xdist" 2>/dev/null && [ "$mode" = gpu ]; then pytest_args+=(-n 4 --dist loadfile); fi
command -v ruff >/dev/null || pytest_args+=(--deselect tests/test_architecture.py::test_ruff_is_clean)
OMP_NUM_THREADS=4 timeout "$(left 300)" "$py" -m pytest "${tests[@]}" "${pytest_args[@]}" > "$out/tests.log" 2>&1
echo "pytest exit $?"; tail -4 "$out/tests.log"
"${helper[@]}" tests "$out/tests.log" "$out/tests.json" || failed+=(tests)
done_step tests

step "2. training killed at its first last.pth, resumed, against an uninterrupted run"
"$py" -m medclip_nb data --config "$work/check.yaml" > "$out/data.log" 2>&1 \
  || { tail -3 "$out/data.log"; failed+=(data); }
train() { timeout "$(left 180)" "$py" -m medclip_nb train "${train_cfg[@]}" --max_steps "$steps" "$@"; }
train --model_save_path "$work/reference" > "$out/resume_reference.log" 2>&1
# No `timeout` around the run to kill: SIGKILL must reach python itself.
"$py" -m medclip_nb train "${train_cfg[@]}" --max_steps "$steps" --model_save_path "$work/resumed" \
  > "$out/resume_killed.log" 2>&1 &
pid=$!
deadline=$((SECONDS + $(left 180)))
while kill -0 "$pid" 2>/dev/null && [ ! -e "$work/resumed/last.pth" ] && [ $SECONDS -lt $deadline ]; do
  sleep 0.02
done
kill -KILL "$pid" 2>/dev/null; wait "$pid"; killed_rc=$?
cp "$work/resumed/metrics.jsonl" "$work/killed_metrics.jsonl" 2>/dev/null
train --model_save_path "$work/resumed" --resume_from latest > "$out/resume_resumed.log" 2>&1
"${helper[@]}" resume "$work/reference" "$work/resumed" "$work/killed_metrics.jsonl" "$out/resume_resumed.log" \
  "$out/resume.json" "$killed_rc" "$([ "$mode" = cpu ] && echo exact || echo tolerant)" || failed+=(resume)
done_step resume

step "3. DDP under torchrun: 2 processes"
if [ "$mode" = gpu ] && [ "$gpus" -lt 2 ]; then
  # NCCL refuses two ranks on one GPU ('Duplicate GPU detected'): check NCCL on one rank, and DDP
  # (gradient all-reduce, feature gathering, sampler shards, rank-0 checkpoints) over gloo on the GPU.
  backend=gloo; note="one GPU: NCCL refuses two ranks on one device, so DDP ran over gloo with both on cuda:0"
  timeout 60 "$py" -c "
import os, torch, torch.distributed as dist
os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT='29533')
dist.init_process_group('nccl', rank=0, world_size=1, device_id=torch.device('cuda:0'))
x = torch.ones(4, device='cuda'); dist.all_reduce(x); parts = [torch.zeros(4, device='cuda')]
dist.all_gather(parts, x); torch.cuda.synchronize(); dist.destroy_process_group()
print('nccl', torch.cuda.nccl.version(), 'one rank: all_reduce and all_gather ok')" > "$out/nccl.log" 2>&1
  nccl_rc=$?; tail -2 "$out/nccl.log"
  printf '{"ok": %s, "rc": %s, "note": "NCCL on one rank (all_reduce, all_gather)"}\n' \
    "$([ $nccl_rc = 0 ] && echo true || echo false)" "$nccl_rc" > "$out/nccl.json"
  [ $nccl_rc = 0 ] || failed+=(nccl)
elif [ "$mode" = gpu ]; then
  backend=nccl; note="NCCL, one GPU per process"
else
  backend=gloo; note="CPU dry run: gloo"
fi
timeout "$(left 140)" "$py" -m torch.distributed.run --standalone --nproc_per_node=2 -m medclip_nb train \
  "${train_cfg[@]}" --dist_backend "$backend" --max_steps "$ddp_steps" --model_save_path "$work/ddp" \
  > "$out/ddp.log" 2>&1
ddp_rc=$?; tail -3 "$out/ddp.log"
"${helper[@]}" ddp "$work/ddp" "$out/ddp.json" "$ddp_rc" "$backend" 2 "$note" || failed+=(ddp)
done_step ddp

step "4. benchmark: eager, then compiled (model-only and the store path), separate JSON files"
wait "$phantom_pid" || { tail -3 "$out/bench_phantom.log"; failed+=(bench_phantom); }
timeout "$(left 90)" "$py" -m medclip_nb bench "${bench[@]}" --skip jpeg_data_only \
  --json "$out/bench_eager.json" > "$out/bench_eager.log" 2>&1 || failed+=(bench_eager)
tail -14 "$out/bench_eager.log"
timeout "$(left 5)" "$py" -m medclip_nb bench "${bench[@]}" --compile --compile_backend "$compile_backend" \
  --skip store_data_only,jpeg_end_to_end,jpeg_data_only,device_augment_only \
  --json "$out/bench_compiled.json" > "$out/bench_compiled.log" 2>&1 || failed+=(bench_compiled)
tail -5 "$out/bench_compiled.log"
done_step bench

took[total]=$((SECONDS - start))
{ echo "{"; sep=""; for k in "${!took[@]}"; do printf '%s"%s": %s' "$sep" "$k" "${took[$k]}"; sep=", "; done; echo "}"; } \
  > "$out/timings.json"
echo
"${helper[@]}" summary "$out" > /dev/null
cat "$out/summary.json"
echo "gpu_check ($mode) finished in $((SECONDS - start)) s; failed: ${failed[*]:-none}; logs and JSON in $out"
[ ${#failed[@]} -eq 0 ]
