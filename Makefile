# Two commands a newcomer needs:   make demo   (the main job on the built-in tiny default)
#                                  make test   (the test suite, on both tested transformers lines)
# Each creates .venv if missing and installs the tested set (constraints.txt) first.
# make test-4 / make test-5 run the suite on one line: .venv (transformers 4.57) or .venv-tf5 (5.x).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.aligngpt-installed
# The transformers 5.x line: a second venv that holds only what differs from .venv (transformers,
# tokenizers, huggingface_hub and their new dependencies: the `#tf5 ` lines of constraints.txt) and sees
# everything else, torch included, through a .pth that adds .venv's site-packages after its own.
VENV5  ?= .venv-tf5
PY5    := $(VENV5)/bin/python
STAMP5 := $(VENV5)/.aligngpt-installed
LLAVA  := llava-torch==1.2.2.post1
# lmms-eval's CLI and what it imports to run a task (the full package also pulls wandb, opencv, yt-dlp, ...
# for its other tasks); in their own folder, put on the path only by tests/test_lmms.py.
LMMS   := lmms-eval loguru pytz evaluate multiprocess pyarrow dill xxhash httpx \
          aiohappyeyeballs aiohttp aiosignal attrs chardet colorama dataproperty frozenlist lxml mbstrdecoder multidict \
          pathvalidate portalocker propcache pytablewriter sacrebleu tabledata tabulate tcolorpy tenacity typepy yarl

.PHONY: install install-5 test test-4 test-5 lint demo clean

install: $(STAMP)

install-5: $(STAMP5)

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

# Console scripts (aligngpt-*, deepspeed, torchrun, ...) are copied from .venv/bin with this venv's
# interpreter, so a test that runs `aligngpt-score` or `deepspeed` beside sys.executable gets the 5.x line.
$(STAMP5): $(STAMP) constraints.txt
	test -x $(PY5) || $(PYTHON) -m venv $(VENV5)
	rm -f $(VENV5)/lib/python*/site-packages/zz_aligngpt_base_venv.pth
	sed -n 's/^#tf5 //p' constraints.txt > $(VENV5)/constraints.txt
	$(PY5) -m pip install -q --no-deps -r $(VENV5)/constraints.txt
	base=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	own=$$($(PY5) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	echo "import site; site.addsitedir('$$base')" > $$own/zz_aligngpt_base_venv.pth
	ln -sfn $(abspath $(VENV))/lmms-eval $(VENV5)/lmms-eval
	for f in $(VENV)/bin/*; do \
	  head -c 2 $$f | grep -q '#!' && head -1 $$f | grep -q "$(abspath $(VENV))/bin/python" || continue; \
	  test -e $(VENV5)/bin/$$(basename $$f) && continue; \
	  sed "1s|.*|#!$(abspath $(PY5))|" $$f > $(VENV5)/bin/$$(basename $$f) && chmod +x $(VENV5)/bin/$$(basename $$f); \
	done
	$(PY5) -c 'import transformers, torch, llava; print("transformers", transformers.__version__, "torch", torch.__version__)'
	touch $(STAMP5)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The two lines run at once, one per core (the suite is mostly single-threaded subprocesses): the 4.57 line
# reports as it goes, the 5.x line into runs/test-5.log, printed when both are done.
test: lint $(STAMP5)
	@mkdir -p runs
	@echo "transformers 5.x line: running beside this one, report in runs/test-5.log (printed at the end)"
	@$(PY5) -m pytest -q -p no:cacheprovider > runs/test-5.log 2>&1 & five=$$!; \
	$(PY) -m pytest -q; four=$$?; \
	wait $$five; rc5=$$?; \
	echo; echo "==== transformers 5.x line (runs/test-5.log) ===="; cat runs/test-5.log; \
	echo "4.57 line: exit $$four; 5.x line: exit $$rc5"; \
	test $$four -eq 0 && test $$rc5 -eq 0

test-4: $(STAMP)
	$(PY) -m pytest -q

test-5: $(STAMP5)
	$(PY5) -m pytest -q -p no:cacheprovider

demo: $(STAMP)
	$(PY) -m aligngpt_plugin.demo --out runs/demo

clean:
	rm -rf $(VENV) $(VENV5) runs .pytest_cache .ruff_cache *.egg-info
