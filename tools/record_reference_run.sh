#!/usr/bin/env bash
# Record tests/golden/llava_reference_4.37.2.json with LLaVA's own code on LLaVA's pinned stack.
#
#   tools/record_reference_run.sh [VENV] [OUT]
#
# VENV (default /tmp/aligngpt-reference-4.37.2) is a THROWAWAY venv this script builds once and reuses:
# transformers 4.37.2 and tokenizers 0.15.2 (llava-torch 1.2.2.post1's pins), llava-torch 1.2.2.post1 with
# --no-deps (as the Makefile installs it), and the rest from constraints.txt (the Makefile's pins, through
# the same pip configuration and indexes). torch is never installed there: a .pth puts a folder of links to
# .venv's torch and what torch itself requires (its dependency closure, nothing else) after the venv's own
# site-packages, the way the Makefile's .venv-tf5 shares .venv's torch. .venv itself is only read.
#
# It then runs tests/golden/llava_reference.py there, which writes OUT (default the golden file) from
# LLaVA's LlavaLlamaForCausalLM (plain LLaVA, and AlignGPT's token spliced in by hand after BOS) and, beside
# it for the record, from the plugin's AlignGPT model on the same stack. tests/test_reference_run.py
# compares the installed transformers line with that file; the test never builds this venv.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${1:-/tmp/aligngpt-reference-4.37.2}
OUT=${2:-$REPO/tests/golden/llava_reference_4.37.2.json}
BASE=$REPO/.venv

VENV=$(realpath -m "$VENV")
case "$VENV" in
  "$REPO"/.venv*|"$(realpath -m "$BASE")")
    echo "error: $VENV is one of the project's venvs; give a throwaway path (default /tmp/aligngpt-reference-4.37.2)" >&2
    exit 2 ;;
esac
if [ ! -x "$BASE/bin/python" ]; then
  echo "error: $BASE/bin/python not found: run 'make install' first (its torch is shared, not reinstalled)" >&2
  exit 2
fi

if [ ! -e "$VENV/.reference-installed" ]; then
  # the interpreter .venv was made from (same Python 3.11)
  "$("$BASE/bin/python" -c 'import sys; print(sys._base_executable)')" -m venv "$VENV"
  TORCH_SITE=$VENV/torch-from-base-venv
  rm -rf "$TORCH_SITE" && mkdir -p "$TORCH_SITE"
  # Links to torch's own files and those of the distributions torch requires (recursively), from .venv.
  "$BASE/bin/python" - "$TORCH_SITE" <<'EOF'
import importlib.metadata as md
import os
import re
import sys

from packaging.requirements import Requirement

target, todo, seen, tops = sys.argv[1], ["torch"], set(), set()
while todo:
    name = todo.pop()
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
        continue
    seen.add(key)
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        continue  # an optional dependency .venv does not have
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(req.name)
    root = dist.locate_file("")
    for f in dist.files or []:
        if f.parts[0] != ".." and not f.parts[0].endswith(".pth") and f.parts[0] != "__pycache__":
            tops.add(os.path.join(root, f.parts[0]))
for path in sorted(tops):
    if os.path.exists(path):
        os.symlink(path, os.path.join(target, os.path.basename(path)))
print(f"linked {len(tops)} entries of {len(seen)} distributions (torch and its requirements) from .venv")
EOF
  SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$TORCH_SITE" > "$SITE/zz_torch_from_base_venv.pth"  # after the venv's own packages
  # The Makefile's pins, except the transformers line's own three (this venv holds LLaVA's 4.37.2 line)
  grep -v -E '^(#|transformers==|tokenizers==|huggingface_hub==)' "$REPO/constraints.txt" | grep -v '^$' \
    > "$VENV/constraints.txt"
  "$VENV/bin/python" -m pip install -q -c "$VENV/constraints.txt" \
    transformers==4.37.2 tokenizers==0.15.2 'huggingface_hub>=0.19.3,<0.26' \
    numpy pillow sentencepiece protobuf safetensors einops shortuuid requests packaging
  "$VENV/bin/python" -m pip install -q --no-deps -c "$VENV/constraints.txt" llava-torch==1.2.2.post1
  "$VENV/bin/python" -c 'import torch, transformers, llava; print("torch", torch.__version__, torch.__file__); print("transformers", transformers.__version__)'
  touch "$VENV/.reference-installed"
fi

cd "$REPO"
PYTHONPATH=$REPO "$VENV/bin/python" tests/golden/llava_reference.py "$OUT"
