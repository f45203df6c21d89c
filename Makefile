# xtalloop: two commands do all the set-up.
#   make demo   install everything, then predict the quickstart structures
#   make test   install everything, then run the default test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.xtalloop-installed
APT_PACKAGES := libxc-dev libopenblas-dev
# a one-node SLURM for the cluster tests (scripts/slurm-local.sh); they skip without it
APT_TEST_PACKAGES := slurm-wlm

.PHONY: demo test test-slow install system-packages clean

demo: $(STAMP)
	$(BIN)/xtalloop run configs/quickstart.yaml
	$(BIN)/xtalloop query --formula NaCl

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow" -v

install: $(STAMP)

# GPAW compiles against libxc and OpenBLAS; the cluster tests need SLURM. As root
# they are installed here; otherwise a message says what to install (without
# SLURM the install goes on and its tests are skipped).
system-packages:
	@if dpkg -s $(APT_PACKAGES) $(APT_TEST_PACKAGES) >/dev/null 2>&1; then \
		echo "system packages present: $(APT_PACKAGES) $(APT_TEST_PACKAGES)"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		echo "installing $(APT_PACKAGES) $(APT_TEST_PACKAGES) with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			$(APT_PACKAGES) $(APT_TEST_PACKAGES); \
	elif dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		echo "SLURM is not installed: its tests will be skipped ('sudo apt-get install $(APT_TEST_PACKAGES)' runs them)"; \
	else \
		echo "GPAW needs $(APT_PACKAGES): run 'sudo apt-get install $(APT_PACKAGES)' (or your system's equivalent), then 'make demo' again"; \
		exit 1; \
	fi

$(STAMP): pyproject.toml
	$(MAKE) system-packages
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: a looser spec pulls a multi-GB CUDA build
	$(BIN)/python -m pip install -q "torch==2.13.0"
	# GPAW's extension has C++ sources: compile it with g++
	CC=g++ $(BIN)/python -m pip install -q -e ".[dft,hpc,potentials,test]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs xtalloop-data
