# onitufs: `make demo` mounts a working example at ./Cloud, `make test` runs every test,
# `make install` installs the command, its man pages, the systemd user unit and the shell
# completions under PREFIX (/usr/local; DESTDIR stages them elsewhere), `make uninstall`
# removes them. Each installs what it needs (Debian packages, a virtualenv) and is safe to
# run twice.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# What building onitufs needs (pyfuse3 is compiled against libfuse3) and running it.
PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv openssh-client
# What the tests and the demo need besides.
# systemd for systemd-analyze; libsystemd-dev to build systemd-python (the journal extra);
# zsh to check its completion; e2fsprogs (mkfs.ext4) for a remote on a disk of its own, to rot;
# exfat-fuse and exfatprogs for one on exFAT, which ignores case, as USB disks do;
# git (git-annex brings it) and vim to be run in a mount.
DEV_PACKAGES := attr man-db rsync openssh-server sshfs systemd libsystemd-dev zsh git-annex \
	e2fsprogs exfat-fuse exfatprogs vim
DEMO_MOUNT := Cloud

PREFIX ?= /usr/local
DESTDIR ?=
# DESTDIR made absolute, so that it can be taken out of the paths the installed files hold.
ROOT := $(if $(DESTDIR),$(abspath $(DESTDIR)))
# The command gets a virtualenv of its own, as pipx gives one, linked into PREFIX/bin:
# Debian's Python is externally managed, its site-packages are not pip's to change.
APP := $(PREFIX)/lib/onitufs
MAN_PAGES := $(wildcard man/*.1 man/*.5 man/*.7)
# The programs linked into PREFIX/bin: git-annex finds its special remote on PATH.
COMMANDS := onitufs git-annex-remote-onitufs
UNIT := systemd/onitufs@.service
UNIT_DIR := $(PREFIX)/lib/systemd/user
BASH_COMPLETION := $(PREFIX)/share/bash-completion/completions/onitufs
ZSH_COMPLETION := $(PREFIX)/share/zsh/site-functions/_onitufs
# The installed command, run where it is now (staged, its #! names where it will be).
INSTALLED := $(ROOT)$(APP)/bin/python $(ROOT)$(APP)/bin/onitufs
# Where the man page man/NAME.N goes.
man_path = $(PREFIX)/share/man/man$(subst .,,$(suffix $(1)))/$(notdir $(1))

.PHONY: deps venv demo demo-stop test slow lint bench clean install uninstall

# Installs those of the Debian packages $(1) that are missing.
define apt_get
@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
if [ -n "$$missing" ]; then \
	echo "installing Debian packages: $$missing"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
fi
endef

deps:
	$(call apt_get,$(PACKAGES) $(DEV_PACKAGES))

$(BIN)/.installed: pyproject.toml
	$(MAKE) deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,journal]'
	touch $@

# Bytecode for the tree, as pip writes it for an installed package: where Python may not
# write it (PYTHONDONTWRITEBYTECODE), every command and daemon would compile each module
# it imports again, a tenth of a second at each start. Kept current: compileall redoes
# only what changed.
venv: deps $(BIN)/.installed
	$(BIN)/python -m compileall -q -j 0 onitufs drivers bench tests

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

# The tests marked slow (minutes each), which `make test` leaves out; one at a time.
slow: venv
	$(BIN)/pytest -m slow -n 0

bench: venv
	$(BIN)/python -m bench

install:
	$(call apt_get,$(PACKAGES))
	$(PYTHON) -m venv $(ROOT)$(APP)
# setuptools builds in ./build, and would ship what an earlier build left there
	rm -rf build
	$(ROOT)$(APP)/bin/python -m pip install -q --disable-pip-version-check --no-compile '.[dropbox]'
# staged: the scripts name the virtualenv where it will be, not where it is now
	$(if $(ROOT),grep -rlIF '$(ROOT)$(APP)' $(ROOT)$(APP)/bin $(ROOT)$(APP)/pyvenv.cfg \
		| xargs -r sed -i 's|$(ROOT)$(APP)|$(APP)|g')
	$(ROOT)$(APP)/bin/python -m compileall -q -j 0 $(if $(ROOT),-s $(ROOT) -p /) $(ROOT)$(APP)/lib
	install -d $(ROOT)$(PREFIX)/bin
	$(foreach command,$(COMMANDS),ln -sfn ../lib/onitufs/bin/$(command) $(ROOT)$(PREFIX)/bin/$(command) &&) true
	$(foreach page,$(MAN_PAGES),install -D -m 644 $(page) $(ROOT)$(call man_path,$(page)) &&) true
# systemd looks for the command only in its own folders (/usr/local/bin, /usr/bin, ...)
	install -D -m 644 $(UNIT) $(ROOT)$(UNIT_DIR)/$(notdir $(UNIT))
	sed -i 's|^ExecStart=onitufs |ExecStart=$(PREFIX)/bin/onitufs |' $(ROOT)$(UNIT_DIR)/$(notdir $(UNIT))
# the completions come from the command installed above, so that they match it
	install -d $(dir $(ROOT)$(BASH_COMPLETION)) $(dir $(ROOT)$(ZSH_COMPLETION))
	$(INSTALLED) completion bash > $(ROOT)$(BASH_COMPLETION)
	$(INSTALLED) completion zsh > $(ROOT)$(ZSH_COMPLETION)

uninstall:
	rm -rf $(ROOT)$(APP)
	rm -f $(foreach command,$(COMMANDS),$(ROOT)$(PREFIX)/bin/$(command)) $(foreach page,$(MAN_PAGES),$(ROOT)$(call man_path,$(page))) \
		$(ROOT)$(UNIT_DIR)/$(notdir $(UNIT)) $(ROOT)$(BASH_COMPLETION) $(ROOT)$(ZSH_COMPLETION)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
