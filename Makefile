# resnext-lab: `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   ?= .venv
PY     := $(VENV)/bin/python
# unset: proxy where a GPU is visible, else cpu (said once, when a target first uses it)
SCALE  ?= $(eval SCALE := $(shell $(PY) -c 'import sys, torch; gpu = torch.cuda.is_available(); \
  gpu or print("no GPU visible here: SCALE=cpu (SCALE=proxy runs the one-GPU scale anyway)", file=sys.stderr); \
  print("proxy" if gpu else "cpu")'))$(SCALE)
# CONFIRM=1: train a table whose plan prices it above an hour on this machine (sweep.confirm=true)
CONFIRM ?=
OUT    ?= outputs
ARGS   ?=
# pip constraints: the exact versions `make install` installs; `make install LOCK=` takes the newest releases
LOCK   ?= requirements/lock.txt
SWEEP  ?= outputs/demo/cpu
# the paper's tables and figures that train
# the paper tables that train: every experiments/<name>/ with its scales, but for the demo, the design-space
# comparison (their own targets) and table4_top5 (rendered by table4's target from the same sweep)
EXPERIMENTS := $(filter-out demo design_space table4_top5,$(patsubst experiments/%/,%,$(wildcard experiments/*/)))
SCALES := $(filter-out none,$(patsubst conf/scale/%.yaml,%,$(wildcard conf/scale/*.yaml)))

.PHONY: help install lock wheelhouse install-offline settings notebook gpu-check thread-policy plan test test-all lint format demo design-space preregister v3-pilot v3 publish table1 table2 report dashboard board compare bench soak plan-check clean $(EXPERIMENTS)

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_ -]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  \033[1m%-22s\033[0m %s\n", $$1, $$2}'
	@printf "  \033[1m%-22s\033[0m %s\n" "$(EXPERIMENTS)" "" | sed 's/ *$$//'
	@echo "                         each: run that paper table's sweep at SCALE (resumable), then its report in reports/<table>/<SCALE>"
	@echo "  variables: SCALE=$(subst $(eval) ,|,$(SCALES)) (default: proxy with a GPU, else cpu)  ARGS='extra Hydra overrides'  OUT=outputs"
	@echo "             CONFIRM=1: train a table that its plan (printed first) prices above an hour on this machine"

install: ## create .venv, install the project (editable, dev tools, the versions in LOCK) and Fashion-MNIST where apt-get works
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel $(if $(LOCK),-c $(LOCK))
	$(PY) -m pip install -e '.[dev]' $(if $(LOCK),-c $(LOCK))
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "warning: apt-get could not install dataset-fashion-mnist; set data.root or data.download=true"; \
	elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then \
	  (sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist) || echo "warning: could not install dataset-fashion-mnist; set data.root or data.download=true"; \
	else echo "note: no apt-get here: set data.root=DIR (Fashion-MNIST IDX files) or data.download=true"; fi

lock: ## regenerate requirements/lock.txt: the newest releases installed into a fresh venv, then frozen
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip setuptools wheel
	.lock-venv/bin/python -m pip install -q -e '.[dev]'
	@mkdir -p requirements
	@{ echo "# The versions \`make install\` installs (pip constraints). Made by \`make lock\` from a fresh venv on $$(uname -s) $$(uname -m), Python $$(.lock-venv/bin/python -c 'import platform; print(platform.python_version())')."; \
	  echo "# Install the newest releases instead: make install LOCK="; \
	  .lock-venv/bin/python -m pip freeze --all --exclude-editable | grep -v '^resnext-lab'; } > requirements/lock.txt.tmp
	mv requirements/lock.txt.tmp requirements/lock.txt && rm -rf .lock-venv

# an air-gapped GPU node (docs/OFFLINE.md): its Python and newest platform tag, for `make wheelhouse` on a
# connected machine; where `make install-offline` puts the wheels on the node, with the node's own Python
PYTHON_VERSION ?= 3.12
PLATFORM   ?= manylinux_2_28_x86_64
WHEELHOUSE ?= .wheelhouse
SITE       ?= /tmp/resnext-site
NODE_PYTHON ?= python3

wheelhouse: ## for an offline node: the wheels its image lacks (PYTHON_VERSION=3.12 PLATFORM=manylinux_2_28_x86_64) and Fashion-MNIST, in .wheelhouse/
	$(PY) -m resnext_lab.tools.wheelhouse --python-version $(PYTHON_VERSION) --platform $(PLATFORM) --lock $(LOCK) --out $(WHEELHOUSE) $(ARGS)

install-offline: ## on the offline node: .wheelhouse/ into SITE (/tmp/resnext-site), the data into ./data; run as: eval "$(make -s install-offline)"
	@test -d $(WHEELHOUSE) || { echo "install-offline: no $(WHEELHOUSE)/ here; run make wheelhouse on a connected machine and copy it with the checkout" >&2; exit 2; }
	@$(NODE_PYTHON) -m pip install -q --no-index --no-deps --upgrade --target $(SITE) $(WHEELHOUSE)/*.whl >&2
	@mkdir -p data/FashionMNIST/raw && cp -n $(WHEELHOUSE)/fashion-mnist/*-ubyte* data/FashionMNIST/raw/
	@PYTHONPATH=$(CURDIR)/src:$(SITE) $(NODE_PYTHON) -c 'import hydra, omegaconf, submitit, wandb, resnext_lab, hydra_plugins.resnext_lab.packed_launcher' >&2
	@echo "installed into $(SITE); Fashion-MNIST in data/FashionMNIST/raw; then: make gpu-check PY=$(NODE_PYTHON)" >&2
	@echo "export PYTHONPATH=$(CURDIR)/src:$(SITE)$${PYTHONPATH:+:$$PYTHONPATH} WANDB_MODE=offline"

# the port `make board` serves TensorBoard on (localhost only)
PORT   ?= 6006

board: ## serve TensorBoard on localhost:PORT (6006) for every run below OUT that ran with logger=tensorboard
	$(VENV)/bin/tensorboard --logdir $(OUT) --host localhost --port $(PORT)

compare: ## compare the runs of every sweep below OUT (one or more folders): one row per cell, only what differs; ARGS='--by model.init'
	$(PY) -m resnext_lab.compare $(OUT) $(ARGS)

notebook: ## open notebooks/analysis.ipynb in Jupyter on the sweep SWEEP (default outputs/demo/cpu)
	RESNEXT_SWEEP=$(SWEEP) $(VENV)/bin/jupyter notebook notebooks/analysis.ipynb

# one pytest worker per core (pytest-xdist), each test file on one worker, so that a file's fixtures are built once
TEST_WORKERS ?= auto

test: ## the fast layer: unit tests and one sweep, report and resume end to end (tests/README.md), on every core
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-all: ## every test: the fast layer and the slow end-to-end tests (marked e2e); what CI runs
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m ''

settings: ## write docs/SETTINGS.md: every setting, its default and what it accepts, from the config schemas
	$(PY) -m resnext_lab.tools.settings_doc > docs/SETTINGS.md.tmp && mv docs/SETTINGS.md.tmp docs/SETTINGS.md

lint: ## ruff lint and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: ## ruff format and autofix
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

demo: ## about 3 min on 2 cores: ResNet-50 with and without shortcuts, 5 seeds each, on real Fashion-MNIST; prints the verdict table
	$(call run_table,demo,cpu)

table1: ## paper Table 1 (ResNet-50 vs ResNeXt-50 complexity) beside the library's exact counts
	$(PY) -m resnext_lab.report.complexity_tables table1 --out reports/table1

table2: ## paper Table 2 (d for each C at preserved complexity) beside the width solver's
	$(PY) -m resnext_lab.report.complexity_tables table2 --out reports/table2

# $(call run_table,EXPERIMENT,SCALE): its plan and sweep (resumable), then its table beside the paper's in
# reports/EXPERIMENT/SCALE; no report when the sweep was stopped before it ended (exit 2: a bad input, no
# CONFIRM, a full disk; 130, 143: interrupted)
define run_table
@status=0; $(PY) run.py -m experiment=$(1) scale=$(2) out_root=$(OUT) $(if $(CONFIRM),sweep.confirm=true) $(ARGS) \
  || status=$$?; \
case " $(ARGS) " in *" task=plan "*) exit $$status;; esac; \
case $$status in 2|130|143) exit $$status;; esac; \
$(PY) -m resnext_lab.report $(OUT)/$(1)/$(2) --experiment $(1) --scale $(2) --out reports/$(1)/$(2) || status=$$?; \
if [ $(1) = table4 ]; then $(PY) -m resnext_lab.report $(OUT)/$(1)/$(2) --experiment table4_top5 --scale $(2) \
  --out reports/table4_top5/$(2) || status=$$?; fi; \
exit $$status
endef

$(EXPERIMENTS): ## run a paper table's sweep at SCALE (resumable), then its report in reports/<table>/<SCALE>
	$(call run_table,$@,$(SCALE))

design-space: ## sample networks from the ResNet and ResNeXt spaces at SCALE, train each once, compare their error EDFs
	@status=0; $(PY) run.py -m experiment=design_space scale=$(SCALE) out_root=$(OUT) $(if $(CONFIRM),sweep.confirm=true) \
	  $(ARGS) || status=$$?; \
	case " $(ARGS) " in *" task=plan "*) exit $$status;; esac; \
	case $$status in 2|130|143) exit $$status;; esac; \
	$(PY) -m resnext_lab.report.design_space $(OUT)/design_space/$(SCALE) || status=$$?; exit $$status

# v3 (docs/results/gpu/v3/README.md): its pilot on seeds no confirmatory run uses, one sweep per arm, in
# $(OUT)/pilot; then the confirmatory tables, each pre-registered first (make preregister EXP=... SCALE=gpu)
V3_PILOT_SEEDS ?= 1000,1001,1002,1003,1004
V3_PILOT_ARMS  ?= base: long:trainer.max_epochs=30 augment:data.augment=true zero_gamma:model.zero_init_last_bn=true
V3_TABLES      ?= table3 table4 residual

v3-pilot: ## v3's pilot on one GPU: table3's 1x32d and 32x2d (seeds 1000-1004) at 15 and 30 epochs, with augmentation, with zero-gamma
	@for arm in $(V3_PILOT_ARMS); do name=$${arm%%:*}; set=$${arm#*:}; \
	  $(PY) run.py -m experiment=table3 scale=gpu out_root=$(OUT)/pilot/v3-$$name 'seeds="$(V3_PILOT_SEEDS)"' \
	    model.cardinality=1,32 $$set $(ARGS) || exit $$?; \
	  case " $(ARGS) " in *" task=plan "*) continue;; esac; \
	  $(PY) -m resnext_lab.report $(OUT)/pilot/v3-$$name/table3/gpu --out reports/pilot/v3-$$name || exit $$?; done

v3: ## v3 on one GPU: table3, table4 and residual at SCALE=gpu, seeds in rounds until each contrast is decided (fig5 is table3's curves)
	@for t in $(V3_TABLES); do $(MAKE) --no-print-directory $$t SCALE=gpu ARGS="hydra/sweeper=sequential $(ARGS)" || exit $$?; done

# AMEND='why': record a change as a dated amendment; PILOT='100-104': the pilots' seeds, disjoint from the sweep's
AMEND ?=
PILOT ?=
preregister: ## write experiments/EXP/SCALE.prereg.json (jobs, seeds, analysis, commit, analysis-code hash); AMEND='why' amends it
	$(PY) run.py -m task=preregister experiment=$(EXP) scale=$(SCALE) $(if $(PILOT),"pilot_seeds='$(PILOT)'") \
	  $(if $(AMEND),"amend='$(AMEND)'") $(ARGS)

publish: ## copy a finished table (EXP, SCALE) with its machine, versions, commit, wall time and regime into docs/results/SCALE/EXP
	$(PY) -m resnext_lab.tools.publish $(EXP) --scale $(SCALE) --sweep $(OUT)/$(EXP)/$(SCALE) \
	  $(if $(wildcard docs/results/$(SCALE)/$(EXP)/plan.txt),--plan docs/results/$(SCALE)/$(EXP)/plan.txt) $(ARGS)

report: ## render every paper table that has results under OUT
	@for exp in $(EXPERIMENTS); do for scale in $(SCALES); do \
	  if [ -d $(OUT)/$$exp/$$scale ]; then $(PY) -m resnext_lab.report $(OUT)/$$exp/$$scale --experiment $$exp --scale $$scale --out reports/$$exp/$$scale || exit $$?; fi; \
	done; done

dashboard: ## build the W&B report of EXP's sweep (needs credentials and network)
	$(PY) -m resnext_lab.tools.dashboard $(EXP) --scale $(SCALE)

bench: ## time training steps against torchvision, and seeds stacked against lone (DEVICE=cpu|cuda; on CPU fp32 and bf16 side by side), JSON in reports/bench
	$(PY) -m resnext_lab.tools.bench --device $(or $(DEVICE),cpu) $(if $(filter cuda,$(DEVICE)),,--precision both) $(ARGS)

gpu-check: ## check and time the GPU path in one call (bench eager+compiled, proxy epoch, stacked seeds, packed sweep vs plan)
	$(PY) -m resnext_lab.tools.gpu_check $(ARGS)

thread-policy: ## time one CPU sweep four ways: 1 job x all cores vs 2 packed jobs x 1 thread, fp32 and bf16
	$(PY) -m resnext_lab.tools.thread_policy $(ARGS)

soak: ## about 3 min: 50 tiny jobs through the packed launcher; one JSON line with the workers' RSS growth (fails above 10%)
	$(PY) -m resnext_lab.tools.soak $(ARGS)

plan-check: ## about 5 min: task=plan against the real wall time of the README's 15-job sweep, fp32 and bf16 (JSON lines)
	$(PY) -m resnext_lab.tools.plan_check --precision 32-true --precision bf16-mixed $(ARGS)

plan: ## estimate a paper table's sweep before running it: make plan EXP=table3 SCALE=cpu (ARGS=plan.device=h100)
	$(PY) run.py -m experiment=$(EXP) scale=$(SCALE) task=plan $(ARGS)

clean: ## remove outputs/ and reports/ (results of runs)
	rm -rf outputs reports
