# medclip-nb: `make study` runs the whole study headless on the phantom data (CPU);
# `make test` runs the unit tests and nbval on the notebooks. Both create .venv when missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The torch/torchvision builds this project is tested with (they install from local disk on the
# project's machines). Override for another platform, e.g. TORCH_SPEC="torch torchvision".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PARAMS ?= params/debug.yaml
NOTEBOOKS := $(sort $(wildcard notebooks/0*.ipynb))
# Seconds between plain progress lines in logs (make study: at least one line per 20 s of work).
TQDM_MININTERVAL ?= 20
export TQDM_MININTERVAL

.PHONY: study test lab unit nbval ablation bench bench-train bench-data gpu-check-dry clean-study help
help:
	@echo "make study   - the whole study on the phantom data, headless (CPU): reports/"
	@echo "make study PARAMS=params/iu.yaml - the study on the Open-i reports (extra [iu]): reports/iu/"
	@echo "make test    - unit tests + nbval on notebooks/"
	@echo "make lab     - JupyterLab from .venv"
	@echo "make bench   - our step vs open_clip's and vs this machine's GEMM rate (make bench-train, bench-data too)"
	@echo "make ablation - see README.md and docs/"

# The default torch build is a CUDA one: the finished .venv takes about 6.7 GB, so the install stops
# first, with one line, when the disk has less than VENV_MIN_FREE_GB free (a full disk midway leaves
# pip's "No space left on device" and a half-built .venv).
VENV_MIN_FREE_GB ?= 8
$(STAMP): pyproject.toml
	@test -x $(PY) || { free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	  if [ "$$free" -lt $(VENV_MIN_FREE_GB) ]; then \
	    echo "error: $(CURDIR)/$(VENV): the install needs about $(VENV_MIN_FREE_GB) GB free and the disk has $$free GB (set VENV_MIN_FREE_GB to override)" >&2; exit 2; fi; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e '.[dev,transformers]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (medclip-nb)"
	touch $(STAMP)

venv: $(STAMP)

# Headless runs turn progress bars off from outside the notebooks (TQDM_DISABLE), so stored and
# executed outputs hold no bar; long steps still print a plain line every TQDM_MININTERVAL seconds
# (medclip_nb/progress.py). Interactive runs (make lab, a terminal) keep the bars. nbval compares
# stored outputs, so its runs print no progress line at all (TQDM_MININTERVAL=inf).
HEADLESS := TQDM_DISABLE=1
NBVAL := TQDM_MININTERVAL=inf $(PY) -m pytest --nbval --nbval-current-env notebooks -q -p no:cacheprovider
# Two messages every run would print are filtered out of the log, nothing else: the papermill
# kernel's "running over TCP without encryption" (it listens on 127.0.0.1 only, for one notebook)
# and nbconvert's "alternative text is missing" (its HTML template has no place for an image's alt
# text; each figure's caption is the text beside it in the notebook).
QUIET := 2> >(grep -v --line-buffered -e 'Kernel is running over TCP without encryption' \
                                      -e 'Alternative text is missing' >&2)

# Results go to the reports_dir of $(PARAMS) (reports/ for params/debug.yaml, reports/iu/ for params/iu.yaml).
# Phase times (phantom, prepare, image store, each notebook) go to <reports_dir>/phase_times.tsv and into
# summary.md's "Where the time went".
study: $(STAMP)
	@date +%s > .study-start
	@set -e; rd=$$($(PY) -c "from medclip_nb.config_load import load_config; print(load_config('$(PARAMS)').reports_dir)"); \
	mkdir -p $$rd/figures; rm -f $$rd/phase_times.tsv; \
	echo "make study with $(PARAMS): the data, then notebooks 01-04 headless; results in $$rd/"; \
	$(PY) -m medclip_nb data --config $(PARAMS) --phase-times $$rd/phase_times.tsv; \
	for nb in $(NOTEBOOKS); do \
	  echo "== papermill $$nb -f $(PARAMS) -> $$rd"; start=$$(date +%s.%N); \
	  $(HEADLESS) $(VENV)/bin/papermill $$nb $$rd/$$(basename $$nb) -f $(PARAMS) --cwd . -k python3 --log-output --no-progress-bar $(QUIET); \
	  awk -v name=$$(basename $$nb .ipynb) -v a=$$(date +%s.%N) -v b=$$start 'BEGIN {printf "%s\t%.1f\n", name, a - b}' \
	    >> $$rd/phase_times.tsv; \
	done; \
	$(VENV)/bin/jupyter nbconvert --to html --output-dir $$rd $$rd/0*.ipynb $(QUIET); \
	$(PY) -m medclip_nb summary --metrics $$rd/metrics.json --out $$rd/summary.md \
	  --params $(PARAMS) --wall-seconds $$(( $$(date +%s) - $$(cat .study-start) )) --phase-times $$rd/phase_times.tsv; \
	rm -f .study-start; \
	echo; \
	echo "Where the time went (seconds):"; cat $$rd/phase_times.tsv; \
	echo; \
	echo "Study finished. Results:"; \
	echo "  summary:            $$rd/summary.md (tables from metrics.json, machine, wall time, phase times)"; \
	echo "  executed notebooks: $$rd/0*.ipynb (HTML copies: $$rd/0*.html)"; \
	echo "  figures:            $$rd/figures/"; \
	echo "  numbers:            $$rd/metrics.json"

unit: $(STAMP)
	$(PY) -m pytest tests -q

# nbval twice: on this CPU's kernels, then on PyTorch's unvectorised ones (a stand-in for another
# CPU). Stored outputs compare only what every machine computes the same; both passes must pass.
nbval: $(STAMP)
	$(HEADLESS) $(NBVAL)
	$(HEADLESS) ATEN_CPU_CAPABILITY=default $(NBVAL)

# The GPU check's every step at tiny sizes on the CPU, Jupyter's packages hidden as on a GPU machine
# (benchmarks/README.md): the script cannot rot before a GPU is lent.
GPU_CHECK_DRY := $${TMPDIR:-/tmp}/medclip_nb_gpu_check_dry
test: $(STAMP)
	$(HEADLESS) $(PY) -m pytest tests -q
	$(HEADLESS) $(NBVAL)
	$(HEADLESS) ATEN_CPU_CAPABILITY=default $(NBVAL)
	PYTHON=$(PY) bash benchmarks/gpu_check.sh --cpu-dry-run --out $(GPU_CHECK_DRY)

gpu-check-dry: $(STAMP)
	PYTHON=$(PY) bash benchmarks/gpu_check.sh --cpu-dry-run --out $(GPU_CHECK_DRY)

# JupyterLab refuses to start as root without --allow-root (containers, these machines).
lab: $(STAMP)
	@echo "Starting JupyterLab on the notebooks (kernel 'Python 3 (medclip-nb)' = .venv); open the URL it prints."
	$(VENV)/bin/jupyter lab --notebook-dir=. $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

# The ablation (issues 12, 13 and 23): one step budget, five seeds, the data-efficiency grid with decoupled
# arms and learning curves; notebook 04 stores the entries `ablation` and `data_efficiency`, and the
# tables (Holm-corrected comparisons, smallest resolvable differences) and readings are printed from them.
ablation: $(STAMP)
	@date +%s > .ablation-start
	$(PY) -m medclip_nb data --config params/ablation.yaml
	mkdir -p reports
	set -e; for nb in notebooks/03_pretrain.ipynb notebooks/04_analysis.ipynb; do \
	  echo "== papermill $$nb -f params/ablation.yaml"; \
	  $(HEADLESS) $(VENV)/bin/papermill $$nb reports/ablation_$$(basename $$nb) -f params/ablation.yaml --cwd . -k python3 --log-output --no-progress-bar $(QUIET); \
	done
	set -e; for key in ablation data_efficiency; do \
	  $(PY) -c "from medclip_nb.study import copy_metrics_entry as c; c('reports/ablation/metrics.json', 'reports/metrics.json', '$$key')"; \
	done
	$(PY) -m medclip_nb summary --metrics reports/metrics.json --out reports/summary.md --params "$(PARAMS) + params/ablation.yaml"
	@echo
	$(PY) -c "from medclip_nb.study import print_ablation; print_ablation('reports/ablation/metrics.json')"
	@echo "make ablation: $$(( $$(date +%s) - $$(cat .ablation-start) )) s wall time; tables also in reports/summary.md," \
	  "reports/ablation_04_analysis.ipynb and reports/metrics.json (keys 'ablation', 'data_efficiency')"
	@rm -f .ablation-start

# MedCLIP's protocol on CheXpert-5x200 and MIMIC-5x200 (chexpert_root / mimic_root in the params file, else the
# phantom's trees), a small model trained with MedCLIP's choices, our numbers beside the paper's (docs/fidelity.md).
PAPER_PARAMS ?= params/paper.yaml
.PHONY: paper fidelity
paper: $(STAMP)
	$(HEADLESS) $(PY) -m medclip_nb paper --config $(PAPER_PARAMS)

# docs/fidelity.md is written from the table in medclip_nb/study/fidelity.py (a test checks it is current).
fidelity: $(STAMP)
	$(PY) -c "from medclip_nb.study import write_fidelity; write_fidelity()"

# Our training step against open_clip's on the same network (one thread) and against this machine's
# fp32 GEMM rate (benchmarks/README.md); open_clip comes with the optional `bench` extra.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) -m medclip_nb bench-step --config params/bench_step.yaml --study $(PARAMS)

# Training pairs/s of $(PARAMS) before issue 29 (old) and now (new), interleaved in one run.
BENCH_TRAIN_SETTINGS ?= old;new;new:num_workers=0
bench-train: $(STAMP)
	$(PY) -m medclip_nb data --config $(PARAMS)
	$(HEADLESS) $(PY) -m medclip_nb bench-train --config $(PARAMS) --settings "$(BENCH_TRAIN_SETTINGS)"

# The data pipeline: model-only vs end to end from the image store and from full-size JPEGs.
bench-data: $(STAMP)
	$(PY) -m medclip_nb bench --config params/bench_cpu.yaml --phantom 48

clean-study:
	rm -rf data/phantom checkpoints/debug reports/*.ipynb reports/*.html reports/figures/*.png reports/metrics.json reports/phase_times.tsv

# Data steps at MIMIC-CXR scale on synthetic trees (benchmarks/README.md); BENCH_SCALE_SIZES to change.
BENCH_SCALE_SIZES ?= 5000,60000,227827
.PHONY: bench-scale
bench-scale: $(STAMP)
	$(PY) -m medclip_nb bench-scale --sizes $(BENCH_SCALE_SIZES)

# One run of each kind in `make ablation`'s plan (train + scoring), side by side, and the plan's total
# (docs/data_efficiency.md); time the whole of it from an empty data/ with `make ablation-timed`.
.PHONY: bench-ablation ablation-timed
bench-ablation: $(STAMP)
	$(PY) -m medclip_nb data --config params/ablation.yaml
	$(HEADLESS) $(PY) -m medclip_nb bench-ablation --config params/ablation.yaml --workers 0 --rounds 2

# `make ablation` from an empty data/phantom_ablation and checkpoints/ablation, wall time printed at its end
# (the 45-minute target of issue 23 is for 2 quiet cores).
ablation-timed:
	rm -rf data/phantom_ablation checkpoints/ablation reports/ablation
	$(MAKE) ablation

# Seeded mutations of the eight kinds of input (datasets.pkl, JSON Lines and CSV manifests, a YAML
# config, checkpoints, an export folder, images, a prompts file) through the CLI (issues 14, 26):
# prints outcomes and peak memory per kind; exits 1 on a traceback, signal, hang, a case over 1 GiB
# above its baseline or a silent wrong result (docs/failures.md). A few minutes at the default N.
FUZZ_N ?= 100
.PHONY: fuzz
fuzz: $(STAMP)
	TQDM_DISABLE=1 $(PY) -m medclip_nb.tools.fuzz --n $(FUZZ_N)
