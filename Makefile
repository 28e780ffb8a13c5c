# The two commands of the README, and their helpers.
MOUNT := mnt
DATA := data
REPOFS := .venv/bin/repofs

.PHONY: run stop test bench model soak deps lint

deps:
	@scripts/install-deps

run: deps
	@$(REPOFS) mount $(MOUNT) --data-dir $(DATA) --log-file $(DATA)/repofs.log
	@$(REPOFS) tour $(MOUNT)

stop:
	@if [ -x $(REPOFS) ]; then $(REPOFS) umount $(MOUNT); fi

test: deps
	.venv/bin/ruff check repofs tests scripts
	.venv/bin/python -m pytest -q

# Every measurement against its peer, full sizes (minutes): bench/results.json.
bench: deps
	.venv/bin/python scripts/bench.py

# The model test (tests/test_model.py) at length, a fresh seed each run.
MODEL_EXAMPLES ?= 100
MODEL_STEPS ?= 60
model: deps
	REPOFS_MODEL_EXAMPLES=$(MODEL_EXAMPLES) REPOFS_MODEL_STEPS=$(MODEL_STEPS) \
		.venv/bin/python -m pytest -q -s --timeout=0 tests/test_model.py

# The soak test (tests/test_soak.py) at length: four loops for SOAK_S seconds.
SOAK_S ?= 600
soak: deps
	REPOFS_SOAK_S=$(SOAK_S) .venv/bin/python -m pytest -q -s --timeout=0 tests/test_soak.py

lint: deps
	.venv/bin/ruff check repofs tests scripts
	.venv/bin/ruff format --check repofs tests scripts
