# The two commands of the README, and their helpers.
MOUNT := mnt
DATA := data
REPOFS := .venv/bin/repofs
# `make run` links PREFIX/bin/repofs to this checkout's (scripts/link-repofs),
# `make install` installs there.
PREFIX ?= /usr/local

.PHONY: run stop test bench model soak deps lint install

deps:
	@scripts/install-deps

run: deps
	@$(REPOFS) mount $(MOUNT) --data-dir $(DATA) --log-file $(DATA)/repofs.log
	@scripts/link-repofs $(PREFIX)/bin/repofs
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

# Installs repofs for mounts at boot (docs/admin.md): its own venv in LIBDIR,
# `repofs` in PREFIX/bin, the fstab helper mount.fuse.repofs in SBINDIR, the
# unit repofs@.service in UNITDIR.
LIBDIR ?= $(PREFIX)/lib/repofs
SBINDIR ?= /sbin
UNITDIR ?= /etc/systemd/system
install: deps
	python3 -m venv $(LIBDIR)
	scripts/build-pyfuse3 $(LIBDIR)
	$(LIBDIR)/bin/pip install -q --upgrade .
	mkdir -p $(PREFIX)/bin $(SBINDIR) $(UNITDIR)
	ln -sf $(LIBDIR)/bin/repofs $(PREFIX)/bin/repofs
	ln -sf $(LIBDIR)/bin/mount.fuse.repofs $(SBINDIR)/mount.fuse.repofs
	sed 's|@BINDIR@|$(PREFIX)/bin|' contrib/repofs@.service > $(UNITDIR)/repofs@.service
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

lint: deps
	.venv/bin/ruff check repofs tests scripts
	.venv/bin/ruff format --check repofs tests scripts
