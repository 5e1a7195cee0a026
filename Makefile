# onitufs: `make demo` mounts a working example at ./Cloud, `make test` runs every test.
# Both install what they need (Debian packages, a virtualenv) and are safe to run twice.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv attr man-db rsync \
	openssh-server openssh-client sshfs
DEMO_MOUNT := Cloud

.PHONY: deps venv demo demo-stop test lint bench clean

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(BIN)/.installed: pyproject.toml drivers/local/pyproject.toml drivers/ssh/pyproject.toml
	$(MAKE) deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]' -e drivers/local -e 'drivers/ssh[dev]'
	touch $@

venv: deps $(BIN)/.installed

demo: venv
	@mkdir -p demo/home demo/backup demo/usb $(DEMO_MOUNT)
	@[ -e demo/home/welcome.txt ] || printf 'Hello from onitufs.\nEverything you put in ./Cloud lands in demo/home, demo/backup and demo/usb.\n' > demo/home/welcome.txt
	@if mountpoint -q $(DEMO_MOUNT); then \
		echo "already mounted at ./$(DEMO_MOUNT)"; \
	else \
		$(BIN)/onitufs mount $(DEMO_MOUNT) examples/demo.toml && echo "mounted at ./$(DEMO_MOUNT)"; \
	fi
	@echo "try: ls $(DEMO_MOUNT); $(BIN)/onitufs status $(DEMO_MOUNT); make demo-stop"

demo-stop: venv
	@if mountpoint -q $(DEMO_MOUNT); then $(BIN)/onitufs umount $(DEMO_MOUNT); fi

lint: venv
	$(BIN)/ruff check onitufs drivers tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: venv
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info drivers/*/*.egg-info .mypy_cache .ruff_cache .pytest_cache
