"""Token ids, label masks and pixels from LLaVA's own preprocessing, for the golden test.

Record the reference once under LLaVA's reference stack (transformers 4.37.2), in a throwaway venv: the
one ``tools/record_reference_run.sh`` builds (default /tmp/aligngpt-reference-4.37.2: transformers 4.37.2,
tokenizers 0.15.2, llava-torch 1.2.2.post1, .venv's torch shared) serves::

    tools/record_reference_run.sh  # builds the venv (and records llava_reference_4.37.2.json)
    PYTHONPATH=. /tmp/aligngpt-reference-4.37.2/bin/python tests/golden/llava_golden.py \
        tests/golden/reference_4.37.2.json

`tests/test_golden_tokenization.py` recomputes the same under the installed stack and compares. The
same command, run under another transformers version, writes its own file for a side-by-side diff.
Everything here is LLaVA's code (`preprocess_multimodal`, `preprocess`, `process_images`,
`expand2square`) driven as its `LazySupervisedDataset` and eval loaders drive it; the records and
images below exercise `<image>` before and after the text, multi-turn `v1`, text-only records and
non-square images.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TOKENIZER_DIR = REPO / "aligngpt_plugin" / "assets" / "llama_tokenizer"
IMAGES = ("wide.png", "tall.png", "square.png")

PLAIN_RECORDS = {
    "plain_image_first": [
        {"from": "human", "value": "<image>\nRender a clear and concise summary of the photo."},
        {"from": "gpt", "value": "A red circle in the top left of the picture."},
    ],
    "plain_image_last": [
        {"from": "human", "value": "Give a brief description of the image.\n<image>"},
        {"from": "gpt", "value": "select luxury furniture 3 - inch gel memory foam mattress topper"},
    ],
}
V1_IMAGE_RECORDS = {
    "v1_one_turn": [
        {"from": "human", "value": "<image>\nWhat colour is the shape?"},
        {"from": "gpt", "value": "It is red."},
    ],
    "v1_multi_turn_image_last": [
        {"from": "human", "value": "What shape is in the picture?\n<image>"},
        {"from": "gpt", "value": "A square, drawn in blue."},
        {"from": "human", "value": "Where is it?"},
        {"from": "gpt", "value": "In the bottom right corner.\nNothing else is there."},
        {"from": "human", "value": "Is it bigger than 10 px? Answer yes or no."},
        {"from": "gpt", "value": "Yes"},
    ],
}
V1_TEXT_RECORDS = {
    "v1_text_only": [
        {"from": "human", "value": "What is 7 plus 5?"},
        {"from": "gpt", "value": "7 plus 5 is 12."},
        {"from": "human", "value": "Écris-le en français, s'il te plaît."},
        {"from": "gpt", "value": "Sept plus cinq font douze."},
    ],
}


def make_images(folder: Path) -> None:
    """Write the three PNGs the golden file was recorded with (only if missing; PNG decodes exactly)."""
    from PIL import Image, ImageDraw

    for name, size in zip(IMAGES, ((300, 180), (160, 260), (224, 224))):
        path = folder / name
        if path.exists():
            continue
        image = Image.new("RGB", size, (240, 240, 240))
        draw = ImageDraw.Draw(image)
        w, h = size
        draw.ellipse((w * 0.1, h * 0.1, w * 0.5, h * 0.6), fill=(200, 30, 30))
        draw.rectangle((w * 0.55, h * 0.4, w * 0.9, h * 0.9), fill=(30, 60, 200))
        for x in range(0, w, 7):
            draw.line((x, 0, x, h), fill=(x % 255, 120, 90))
        image.save(path)


def load_tokenizer(folder: Path = TOKENIZER_DIR):
    """As LLaVA's train() loads Vicuna's tokenizer for the v1 and plain templates."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(
        str(folder), model_max_length=2048, padding_side="right", use_fast=False
    )
    tok.pad_token = tok.unk_token
    return tok


def tokenize_records(tokenizer) -> dict:
    from llava import conversation as conversation_lib
    from llava.train import train as llava_train

    data_args = SimpleNamespace(is_multimodal=True, mm_use_im_start_end=False)
    out = {}
    groups = (("plain", PLAIN_RECORDS, True), ("v1", V1_IMAGE_RECORDS, True), ("v1", V1_TEXT_RECORDS, False))
    for template, records, has_image in groups:
        conversation_lib.default_conversation = conversation_lib.conv_templates[template]
        for name, turns in records.items():
            sources = copy.deepcopy([turns])
            if has_image:
                sources = llava_train.preprocess_multimodal(sources, data_args)
            data = llava_train.preprocess(sources, tokenizer, has_image=has_image)
            out[name] = {"input_ids": data["input_ids"][0].tolist(), "labels": data["labels"][0].tolist()}
    return out


def digest(tensor) -> dict:
    import numpy as np

    array = np.ascontiguousarray(tensor.detach().cpu().float().numpy())
    return {"shape": list(array.shape), "sha256": hashlib.sha256(array.tobytes()).hexdigest(),
            "sum": float(array.astype("float64").sum())}


def process_pixels(image_dir: Path) -> dict:
    from llava.mm_utils import expand2square, process_images
    from llava.model.multimodal_encoder.clip_encoder import CLIPImageProcessor  # the class LLaVA's tower builds
    from PIL import Image
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    processor = CLIPImageProcessor(  # openai/clip-vit-large-patch14-336's preprocessor_config.json
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_center_crop=True,
        image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD, resample=3,
    )
    out = {}
    for name in IMAGES:
        image = Image.open(image_dir / name).convert("RGB")
        for mode in ("pad", "square"):  # the eval path (process_images)
            pixels = process_images([image], processor, SimpleNamespace(image_aspect_ratio=mode))
            out[f"{name}:eval:{mode}"] = digest(pixels[0])
        # the training path: LazySupervisedDataset pads with the processor's mean colour
        padded = expand2square(image, tuple(int(x * 255) for x in processor.image_mean))
        out[f"{name}:train:pad"] = digest(processor.preprocess(padded, return_tensors="pt")["pixel_values"][0])
    return out


def compute(image_dir: Path = HERE) -> dict:
    import tokenizers
    import transformers

    make_images(image_dir)
    return {
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "tokens": tokenize_records(load_tokenizer()),
        "pixels": process_pixels(image_dir),
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    sys.path.insert(0, str(REPO))
    try:  # the plugin's patches make llava.train importable on newer stacks; 4.37.2 needs none
        from aligngpt_plugin import patches
    except ImportError:  # not installed: the repo's patches/ folder, imported as a package of its own
        import patches
    patches._module("all_layernorm_layers").apply()
    result = compute()
    Path(argv[0]).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {argv[0]} (transformers {result['transformers']})")


if __name__ == "__main__":
    main()
