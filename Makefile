# Two entry points for a fresh machine (Python >= 3.11, Node.js with npm, git, make):
#   make run    a whole farm on this machine (nxfarm demo): cache, scheduler, two agents, two builds
#   make test   install everything the tests need, then run them
#   make cache  just the cache server on 127.0.0.1:3333; its generated token goes to ~/.config/nx-farm/access-token
#   make install  put `nxfarm` and `just` on your PATH (links into BINDIR, default ~/.local/bin)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NX_CLIENT := tests/nx_client

BINDIR ?= $(HOME)/.local/bin

.PHONY: run cache test bench wheels clean install

# The cache server is installed editable, so an edited module is what runs.
$(VENV)/.installed: cache_server/pyproject.toml cache_server/requirements.lock cache_server/requirements-s3.lock \
		nxfarm/pyproject.toml nxfarm/requirements.lock \
		requirements.txt requirements-dev.txt
	@echo "make: installing nx-farm and its pinned Python dependencies into $(VENV) (a minute or so the first time)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --progress-bar on -r requirements.txt -r requirements-dev.txt \
		-c cache_server/requirements.lock -c cache_server/requirements-s3.lock -c nxfarm/requirements.lock
	touch $@

$(NX_CLIENT)/node_modules/.package-lock.json: $(NX_CLIENT)/package.json $(NX_CLIENT)/package-lock.json
	cd $(NX_CLIENT) && npm ci --no-audit --no-fund --loglevel=error

run: $(VENV)/.installed
	$(VENV)/bin/nxfarm demo $(ARGS)

# Links, not copies: the venv's scripts keep running the venv's Python, and `git pull` + `make
# install` is the whole upgrade.
install: $(VENV)/.installed
	mkdir -p $(BINDIR)
	ln -sf $(abspath $(VENV))/bin/nxfarm $(abspath $(VENV))/bin/just $(BINDIR)/
	@case ":$$PATH:" in *":$(BINDIR):"*) echo "make: nxfarm and just are in $(BINDIR)";; \
	  *) echo "make: nxfarm and just are in $(BINDIR), which is not on your PATH: add it (export PATH=\"$(BINDIR):\$$PATH\" in your shell's profile)";; esac

cache: $(VENV)/.installed
	$(PY) -m cache_server $(ARGS)

$(NX_CLIENT)/nx23/node_modules/.package-lock.json: $(NX_CLIENT)/nx23/package.json $(NX_CLIENT)/nx23/package-lock.json
	cd $(NX_CLIENT)/nx23 && npm ci --no-audit --no-fund --loglevel=error

test: $(VENV)/.installed $(NX_CLIENT)/node_modules/.package-lock.json $(NX_CLIENT)/nx23/node_modules/.package-lock.json
	$(PY) -m pytest tests $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(PY) bench/cachebench.py $(ARGS)

# What `pulumi up` ships to hosts without internet: per role and per supported Python and CPU
# (dist/wheels/agent/cp313-aarch64/...), our pure-Python wheel plus every locked dependency's wheel
# for that platform. PLATFORMS=cp311-x86_64,cp313-aarch64 builds only those.
wheels: $(VENV)/.installed
	rm -rf dist/wheels
	$(PY) -m components.wheelhouse --out dist/wheels $(if $(PLATFORMS),--platforms $(PLATFORMS))

clean:
	rm -rf $(VENV) dist build $(NX_CLIENT)/node_modules $(NX_CLIENT)/nx23/node_modules
