"""An installed wheel carries what the plugin needs at run time: patches/ and the tokenizer assets."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(REPO)], check=True, capture_output=True, text=True)
    (path,) = out.glob("aligngpt_plugin-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_ships_every_patch_inside_the_package(wheel):
    from aligngpt_plugin import patches

    names = set(wheel.namelist())
    for patch in (*patches.PATCH_MODULES, "__init__"):
        assert f"aligngpt_plugin/patches/{patch}.py" in names
    assert not any(n.startswith("patches/") for n in names), "patches/ must not become a top-level package"


def test_wheel_ships_the_tokenizer(wheel):
    names = set(wheel.namelist())
    for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        assert f"aligngpt_plugin/assets/llama_tokenizer/{f}" in names


def test_wheel_does_not_depend_on_llava_torch(wheel):
    (meta,) = [n for n in wheel.namelist() if n.endswith("METADATA")]
    requires = [line for line in wheel.read(meta).decode().splitlines() if line.startswith("Requires-Dist")]
    assert not any("llava" in line for line in requires), "llava-torch's pins would break the install"
    assert any(line.startswith("Requires-Dist: transformers<6,>=4.57") for line in requires), requires


def test_wheel_ships_every_layer_and_its_data(wheel):
    names = set(wheel.namelist())
    for layer in ("core", "integrations", "integrations/llava", "integrations/hf", "conversion", "scoring",
                  "evaluation", "analysis", "devkit"):
        assert f"aligngpt_plugin/{layer}/__init__.py" in names, layer
    for data in ("evaluation/benchmarks.json", "deepspeed_configs/zero3.json"):
        assert f"aligngpt_plugin/{data}" in names, data
