"""Recorded model inputs of aligngpt-score's two image paths, made once on transformers 4.57 (the PIL
`CLIPImageProcessor`) and checked on every transformers line by tests/test_scoring_pixels.py.

    .venv/bin/python tests/golden/scoring_pixels.py    # writes tests/golden/scoring_pixels_4.57.npz

The pictures are computed (no files, no random generator): a gradient with stripes and a square, in sizes
below and above the crop (the processor up- and downsamples). The transformers inputs are those of a
processor folder with OpenAI CLIP's settings (bicubic shortest-edge resize, centre crop, its mean and std) at
32 pixels; the open_clip inputs are those of the tests' tiny open_clip model (image_size 32), the scorer's
uint8 worker output normalised as on the device.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "scoring_pixels_4.57.npz"
SIZES = [(20, 30), (64, 48), (100, 75), (37, 37)]  # (width, height)
PROCESSOR = {
    "crop_size": {"height": 32, "width": 32}, "do_center_crop": True, "do_convert_rgb": True,
    "do_normalize": True, "do_rescale": True, "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "CLIPImageProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 32},
}


def picture(width: int, height: int):
    """An RGB picture with edges and gradients (what resampling filters disagree on)."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x * 255) // max(1, width - 1), (y * 255) // max(1, height - 1),
                    np.where((x // 3 + y // 5) % 2 == 0, 230, 20)], axis=-1)
    rgb[height // 4: height // 2, width // 3: width // 2] = (250, 40, 40)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def write_processor(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(PROCESSOR, indent=1))
    return folder


def transformers_pixels(preprocess) -> np.ndarray:
    """[pictures, 3, 32, 32] float32 from a PIL -> tensor preprocess."""
    return np.stack([preprocess(picture(w, h)).numpy() for w, h in SIZES]).astype(np.float32)


def open_clip_pixels(scorer) -> np.ndarray:
    """[pictures, 3, 32, 32] float32: the scorer's worker output (uint8) normalised as on the device."""
    import torch

    batch = torch.stack([scorer.preprocess(picture(w, h)) for w, h in SIZES])
    return scorer.pixels(batch, torch.device("cpu")).numpy().astype(np.float32)


def main() -> int:
    import tempfile

    import transformers

    if hasattr(transformers, "CLIPImageProcessorPil"):
        print("record on transformers 4.x (.venv): its CLIPImageProcessor is the PIL implementation")
        return 2
    sys.path.insert(0, str(HERE.parent))
    from scoring_helpers import write_tiny_open_clip

    from aligngpt_plugin.scoring.backends import load_scorer

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_processor(Path(tmp) / "processor")
        reference = transformers.CLIPImageProcessor.from_pretrained(folder)  # 4.x: PIL and numpy
        hf = transformers_pixels(lambda image: reference(images=image, return_tensors="pt")["pixel_values"][0])
        config, checkpoint = write_tiny_open_clip(Path(tmp) / "model")
        oc = open_clip_pixels(load_scorer(str(config), str(checkpoint)))
    np.savez_compressed(GOLDEN, transformers=hf, open_clip=oc, sizes=np.array(SIZES),
                        transformers_version=np.array(transformers.__version__))
    print(f"wrote {GOLDEN}: transformers {hf.shape}, open_clip {oc.shape} on {transformers.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
