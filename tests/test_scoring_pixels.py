"""The scorer's model inputs are the same on every transformers line: recorded on 4.57 with the PIL
`CLIPImageProcessor` (tests/golden/scoring_pixels.py) and compared here, on 4.57 and on 5.x, for
`--model hf:...` and for open_clip's path."""

from __future__ import annotations

import numpy as np
import pytest
from golden import scoring_pixels
from scoring_helpers import write_tiny_open_clip

from aligngpt_plugin.scoring.backends import load_scorer, transformers_preprocess

# PIL's and torchvision's bicubic differ by whole levels of 255 at edges: 1/255/0.27 = 0.0145 after
# normalising; float arithmetic of the same resize differs by ~1e-7
ATOL = 1e-5


@pytest.fixture(scope="module")
def golden():
    return np.load(scoring_pixels.GOLDEN)


def test_transformers_clip_pixels_equal_those_of_the_4x_pil_processor(golden, tmp_path):
    folder = scoring_pixels.write_processor(tmp_path / "processor")
    got = scoring_pixels.transformers_pixels(transformers_preprocess(folder))
    assert got.shape == golden["transformers"].shape == (len(scoring_pixels.SIZES), 3, 32, 32)
    np.testing.assert_allclose(got, golden["transformers"], atol=ATOL, rtol=0)


def test_a_transformers_clip_folder_scores_with_those_pixels(golden, tmp_path):
    """The whole `--model hf:FOLDER` load, on a tiny CLIPModel saved with the recorded processor settings."""
    import transformers

    config = transformers.CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 49408, "max_position_embeddings": 32},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 16}, projection_dim=8)
    folder = tmp_path / "clip"
    transformers.CLIPModel(config).save_pretrained(folder)
    scoring_pixels.write_processor(folder)
    scorer = load_scorer(f"hf:{folder}")
    np.testing.assert_allclose(scoring_pixels.transformers_pixels(scorer.preprocess), golden["transformers"],
                               atol=ATOL, rtol=0)


def test_open_clip_pixels_equal_the_recorded_ones(golden, tmp_path):
    config, checkpoint = write_tiny_open_clip(tmp_path / "model")
    got = scoring_pixels.open_clip_pixels(load_scorer(str(config), str(checkpoint)))
    np.testing.assert_allclose(got, golden["open_clip"], atol=ATOL, rtol=0)
