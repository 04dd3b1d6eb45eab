# One-command setup, run and test. See README.md.
#   make run   - create .venv if missing, install, generate the synthetic data,
#                execute every notebook in place at the tutorial profile
#   make test  - same setup, then pytest over tests/ and nbval over notebooks/ (smoke profile)
#   make lab   - open JupyterLab on notebooks/

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PROFILE ?= tutorial
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
export PYTHONHASHSEED := 0

.PHONY: setup data run test unit nbval lab bench results verify rounding-check clean-cache help

help:
	@echo "make run | make test | make results | make verify | make rounding-check | make lab | make bench | make clean-cache"

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

data: setup
	FIREARM_PROFILE=$(PROFILE) $(PY) -c "from helpers import config, data; print(data.load_active_release(config.active_profile()))"

run: data
	FIREARM_PROFILE=$(PROFILE) $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.timeout=3600 $(NOTEBOOKS)
	$(PY) -m helpers.machinery.finish $(NOTEBOOKS)
	$(VENV)/bin/nbstripout --keep-output --keep-count $(NOTEBOOKS)

unit: setup
	$(PY) -m pytest tests

nbval: setup
	FIREARM_PROFILE=smoke $(PY) -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=900 -p no:cacheprovider notebooks/

test: unit nbval

lab: setup
	$(PY) -m jupyter lab notebooks/

# make results: the fair comparison (tuning, seeds, test) behind notebooks 03-04, written to results/
# (58 min at the tutorial profile when last run; cached runs are loaded, not retrained)
results: data
	FIREARM_PROFILE=$(PROFILE) $(PY) benchmarks/results_table.py --profile $(PROFILE)

# make verify: re-execute every notebook from an empty run cache into a temporary folder and diff
# its text outputs with the committed ones (timings masked); as long as make run
verify: data
	FIREARM_PROFILE=$(PROFILE) $(PY) -m helpers.machinery.verify $(NOTEBOOKS)

# make rounding-check: retrain seed 0's stage 1 and double margin runs with oneDNN off (another rounding, as on
# another processor) and check the committed numbers within their tolerance and the verdicts exactly
rounding-check: data
	FIREARM_PROFILE=$(PROFILE) $(PY) benchmarks/rounding_check.py --profile $(PROFILE)

# make bench: every benchmark at the smoke profile (a quick check that they run);
# make bench PROFILE=tutorial: at full size (long)
BENCH_PROFILE := $(if $(filter command line,$(origin PROFILE)),$(PROFILE),smoke)
bench: setup
	$(PY) benchmarks/run_all.py --profile $(BENCH_PROFILE)

clean-cache:
	rm -rf cache
