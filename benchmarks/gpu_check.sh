#!/usr/bin/env bash
# Everything that needs a GPU, checked and timed in one call (for a lent H100/H200 or any CUDA box).
#   bash benchmarks/gpu_check.sh            # logs and JSON results go to $OUT (or /tmp/gpu_check)
# Uses the machine's own python3 with torch/torchvision (no venv: the package runs from the checkout).
# Steps: (1) the unit tests, CUDA variants included; (2) a bf16 training run from the image store
# with device augmentation, killed and resumed; (3) the same through torchrun (NCCL);
# (4) the issue-#6 benchmark, ResNet-50 + 6x512 text at batch 256, eager then compiled, on a
# full-size phantom. Each step prints its figures; a failing step does not stop the others.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1
out="${OUT:-/tmp/gpu_check}"
mkdir -p "$out"
py=python3
status=0
step() { echo; echo "=== $1 ($(date +%T))"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
$py -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())" | tee -a "$out/device.txt"

step "1. unit tests (CUDA variants run where a test has them)"
$py -m pytest tests -q -x -p no:cacheprovider 2>&1 | tail -15 | tee "$out/tests.txt" || status=1

step "2. bf16 training from the store with device augmentation, SIGKILL mid-run and resume"
run=/tmp/gpu_check_run
rm -rf "$run"
$py -m medclip_nb data --config params/debug.yaml || status=1
common=(--config params/debug.yaml --model_save_path "$run" --vision_backbone resnet50 --image_size 224
        --resize_size 256 --batch_size 64 --num_epochs 2 --save_steps 5 --num_workers 8)
# the store of params/debug.yaml is at 108 px; build the 256 px one this run reads
$py -m medclip_nb cache --data_path data/phantom/datasets.pkl --size 256 || status=1
timeout -s KILL 60 $py -m medclip_nb train "${common[@]}" 2>&1 | tail -20
$py -m medclip_nb train "${common[@]}" --resume_from latest 2>&1 | tail -12 | tee "$out/train.txt" || status=1

step "3. torchrun (DDP, NCCL) on every GPU of this machine"
ngpu=$($py -c "import torch; print(torch.cuda.device_count())")
torchrun --standalone --nproc_per_node="$ngpu" -m medclip_nb train "${common[@]}" \
    --model_save_path "$run-ddp" --num_epochs 1 2>&1 | tail -8 | tee "$out/torchrun.txt" || status=1

step "4. benchmark: full config, eager and compiled, full-size phantom"
$py -m medclip_nb bench --config params/full.yaml --phantom 256 --steps 30 2>&1 | tee "$out/bench_eager.txt" || status=1
$py -m medclip_nb bench --config params/full.yaml --phantom 256 --steps 30 --compile 2>&1 | tee "$out/bench_compiled.txt" || status=1
cp benchmarks/results-*.json "$out/" 2>/dev/null

echo
echo "gpu_check finished with status $status; logs in $out"
exit $status
