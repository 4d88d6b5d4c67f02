"""LLaVA's preprocessing on the installed stack equals LLaVA's reference stack (transformers 4.37.2).

The reference file was recorded once in a throwaway venv (see tests/golden/llava_golden.py); this
recomputes token ids, label masks (`plain` and `v1`, image and text-only records) and pixels of
`process_images` / the training-time padding, and requires every one to match exactly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(GOLDEN))

import llava_golden  # noqa: E402

REFERENCE = json.loads((GOLDEN / "reference_4.37.2.json").read_text())


@pytest.fixture(scope="module")
def current(llava_ready):
    return llava_golden.compute(GOLDEN)


def test_reference_is_llava_reference_stack():
    assert REFERENCE["transformers"] == "4.37.2"
    assert set(REFERENCE["tokens"]) == {"plain_image_first", "plain_image_last", "v1_one_turn",
                                        "v1_multi_turn_image_last", "v1_text_only"}


@pytest.mark.parametrize("case", sorted(REFERENCE["tokens"]))
def test_token_ids_and_labels_match_reference(current, case):
    want, got = REFERENCE["tokens"][case], current["tokens"][case]
    assert got["input_ids"] == want["input_ids"]
    assert got["labels"] == want["labels"]


@pytest.mark.parametrize("case", sorted(REFERENCE["tokens"]))
def test_reference_labels_are_not_the_mismatch_fallback(case):
    # LLaVA masks a whole record (all -100) when its own length bookkeeping disagrees; a golden file
    # recorded in that state would prove nothing.
    labels = REFERENCE["tokens"][case]["labels"]
    assert any(label != -100 for label in labels)


def test_image_token_and_bos_are_where_llava_puts_them():
    ids = REFERENCE["tokens"]["plain_image_first"]["input_ids"]
    assert ids[:2] == [1, -200]  # BOS, then IMAGE_TOKEN_INDEX
    assert ids[-1] == 13  # `plain` ends with the "\n" separator, Llama's <0x0A>


@pytest.mark.parametrize("case", sorted(REFERENCE["pixels"]))
def test_pixels_match_reference(current, case):
    assert current["pixels"][case] == REFERENCE["pixels"][case]


def test_mistral_backbone_folder_gives_the_same_targets(tmp_path, llava_ready):
    """The same tokenizer files in a checkpoint whose config says `model_type: mistral` (LLaVA's Mistral
    backbone): transformers 5 maps that model type to another tokenizer class unless patched."""
    import shutil

    for f in llava_golden.TOKENIZER_DIR.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    got = llava_golden.tokenize_records(llava_golden.load_tokenizer(tmp_path))
    assert got == REFERENCE["tokens"]
