# mmkd: one entry point per job. PRESET=tiny (default, CPU, minutes) or PRESET=full (GPU).
PRESET ?= tiny
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PRESET

.PHONY: venv test bench exp-shre clean-runs

venv: $(STAMP)

# First use creates .venv and installs the pinned requirements (torch + torchvision matched
# pair from PyPI; about 6 GB with the CUDA libraries they bring, which run fine on CPU).
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m common.bench --preset $(PRESET)

# One GPU needs no launcher: fit() enables DeepSpeed ZeRO-2 itself when CUDA is there and the
# preset names train.deepspeed. Several GPUs: accelerate launch --config_file
# configs/accelerate_multi_gpu.yaml experiments/<chapter>/run.py preset=full
exp-shre: $(STAMP)
	$(PY) experiments/shre/run.py $(ARGS)

clean-runs:
	rm -rf runs
