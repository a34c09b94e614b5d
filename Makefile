# mmkd: one entry point per job. PRESET=tiny (default, CPU, minutes) or PRESET=full (GPU).
PRESET ?= tiny
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PRESET

.PHONY: venv img2dataset test smoke-full bench exp-shre exp-vision-kd exp-ssa exp-itc exp-teachers exp-all reference findings readme-tables compare figures clean-runs

venv: $(STAMP)

# First use creates .venv and installs the pinned requirements (torch + torchvision matched
# pair from PyPI; about 6 GB with the CUDA libraries they bring, which run fine on CPU).
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# img2dataset (CC3M as resized webdataset shards, common/data/cc3m_img2dataset.py) pins
# pandas<3 and webdataset<0.3, so it lives in its own environment and runs as a command.
I2D := .venv-img2dataset/bin/img2dataset
img2dataset: $(I2D)

$(I2D):
	test -x .venv-img2dataset/bin/python || python3 -m venv .venv-img2dataset
	.venv-img2dataset/bin/pip install -q --disable-pip-version-check img2dataset==1.47.0

test: $(STAMP) $(I2D)
	$(PY) -m pytest

# Every chapter's full preset end to end on CPU: real-format datasets and random ViT-B weights
# in the published layouts, written to a temp folder, then `make exp-<chapter> PRESET=full`
# with size overrides only and every eval CLI on the runs (common/smoke_full.py; ~6 min).
smoke-full: $(STAMP)
	$(PY) -m common.smoke_full $(ARGS)

bench: $(STAMP)
	$(PY) -m common.bench --preset $(PRESET)

# How chapter scripts run: tiny -> plain python (CPU); full -> accelerate launch with DeepSpeed
# ZeRO-2 on one GPU (ACCELERATE_CONFIG=configs/accelerate_multi_gpu.yaml for several). fit()
# turns DeepSpeed and fp16/bf16 off with one log line when there is no GPU.
# A chapter target is `exp-<name>: $(STAMP)` with the recipe `$(RUN) experiments/<folder>/run.py $(ARGS)`.
ACCELERATE_CONFIG ?= configs/accelerate_1gpu.yaml
ifeq ($(PRESET),full)
RUN = $(VENV)/bin/accelerate launch --config_file $(ACCELERATE_CONFIG)
else
RUN = $(PY)
endif

exp-shre: $(STAMP)
	$(RUN) experiments/shre/run.py $(ARGS)

exp-vision-kd: $(STAMP)
	$(RUN) experiments/unimodal_vision_kd/run.py $(ARGS)

# SEEDS=3 make exp-ssa: three seeds per variant (run.py reads SEEDS from the environment)
exp-ssa: $(STAMP)
	$(RUN) experiments/separate_self_attention/run.py $(ARGS)

exp-itc: $(STAMP)
	$(RUN) experiments/itc_ablation/run.py $(ARGS)

exp-teachers: $(STAMP)
	$(RUN) experiments/teacher_comparison/run.py $(ARGS)

# Result CSVs side by side with the published numbers (markdown; mean ± std over seeds), e.g.
# make compare ARGS="--where dataset=coco5k,flickr1k --metrics i2t_r1 t2i_r1"
compare: $(STAMP)
	$(PY) -m eval.compare $(ARGS)

# Thesis figures (PNG + PDF) from results/ and runs/*/metrics.jsonl into results/figures/
figures: $(STAMP)
	$(PY) -m eval.plot $(ARGS)

# Every chapter's runs as parallel jobs (common/run_all.py: teachers first, then one
# single-threaded process per core for tiny; JOBS=1 runs them one after another, and full
# runs one at a time unless JOBS says otherwise), then the comparison table and the figures.
# SEEDS=3 make exp-all: three seeds of every run; EXTRAS=1: the extra (comparison) rows too.
# Logs: runs/exp-all/<job>.log.
JOBS ?=
exp-all: $(STAMP)
	$(PY) -m common.run_all $(if $(JOBS),--jobs $(JOBS)) $(ARGS)
	$(MAKE) --no-print-directory compare
	$(MAKE) --no-print-directory figures

# The committed tiny reference results: three seeds of every run, the extra rows included
# (comparisons; EXTRAS=1), into results/reference/tiny/ (what the README result tables and
# make findings read), then the README tables regenerated. Runs already in runs/ are
# evaluated again, not retrained.
reference: $(STAMP)
	MMKD_RESULTS=$(CURDIR)/results/reference/tiny SEEDS=3 EXTRAS=1 $(PY) -m common.run_all $(if $(JOBS),--jobs $(JOBS)) $(ARGS)
	$(MAKE) --no-print-directory readme-tables
	$(MAKE) --no-print-directory findings

# Each thesis finding with its tiny evidence and a verdict (eval/findings.py); default: the
# committed reference CSVs, ARGS="'results/*/*.csv'" for your own runs.
findings: $(STAMP)
	$(PY) -m eval.findings $(ARGS)

# README result blocks regenerated from the committed CSVs (eval/readme_tables.py)
readme-tables: $(STAMP)
	$(PY) -m eval.readme_tables

clean-runs:
	rm -rf runs
