# Two commands a newcomer needs:   make demo   (the main job on the built-in tiny default)
#                                  make test   (the test suite)
# Each creates .venv if missing and installs the tested set (constraints.txt) first.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.aligngpt-installed
LLAVA  := llava-torch==1.2.2.post1
# lmms-eval's CLI and what it imports to run a task (the full package also pulls wandb, opencv, yt-dlp, ...
# for its other tasks); in their own folder, put on the path only by tests/test_lmms.py.
LMMS   := lmms-eval loguru pytz evaluate datasets multiprocess pyarrow dill xxhash httpx \
          aiohappyeyeballs aiohttp aiosignal attrs chardet colorama dataproperty frozenlist lxml mbstrdecoder multidict \
          pathvalidate portalocker propcache pytablewriter sacrebleu tabledata tabulate tcolorpy tenacity typepy yarl

.PHONY: install test lint demo clean

install: $(STAMP)

# torch 2.14.1 + torchvision 0.29.1 are pinned in constraints.txt, so pip never pulls another torch.
# llava-torch goes in with --no-deps: its metadata pins 2024 releases that cannot install today;
# pyproject.toml declares what it really needs.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch torchvision
	$(PIP) install -q -c constraints.txt -e '.[dev,qlora]'
	# DeepSpeed is an sdist that imports torch to build: build it against the venv's torch, with its CPU
	# shared-memory op compiled now rather than at the first run (the scripts' tests run it on the CPU).
	$(PIP) install -q setuptools wheel
	DS_BUILD_SHM_COMM=1 $(PIP) install -q --no-build-isolation -c constraints.txt deepspeed
	$(PIP) install -q --no-deps -c constraints.txt $(LLAVA)
	rm -rf $(VENV)/lmms-eval
	$(PIP) install -q --no-deps -c constraints.txt --target $(VENV)/lmms-eval $(LMMS)
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m aligngpt_plugin.demo --out runs/demo

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
