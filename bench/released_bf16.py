"""A converted released checkpoint in bf16 on the accelerator against the same model in fp32 on the CPU.

    python bench/released_bf16.py                       # CUDA if present, else the CPU in bf16
    python bench/released_bf16.py --device cuda --json bench/results/gpu/released_bf16.json

Builds the tiny released-layout checkpoint of the parity tests (tests/released_layout.py: the public
code's attribute names, the fixture LLM and CLIP), converts it with `aligngpt-convert to-plugin`, and runs
one fine-tuning batch that mixes image and text-only rows plus a greedy generation: fp32 on the CPU is the
reference (it matches the public code's forward to 5e-5, tests/test_released_checkpoints.py). Reports the
largest absolute logit difference over real positions, relative to the largest fp32 logit, the largest
gate-weight difference, and whether the greedy tokens agree.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)

    import aligngpt_plugin  # noqa: F401
    from aligngpt_plugin.integrations.llava.compat import prepare_llava

    prepare_llava()
    from llava.mm_utils import tokenizer_image_token
    from PIL import Image
    from released_layout import released_state, write_released
    from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor

    from aligngpt_plugin.conversion.released import convert
    from aligngpt_plugin.devkit.tiny_checkpoints import write_fixtures

    work = Path(tempfile.mkdtemp(prefix="released-bf16-"))
    tiny = write_fixtures(work / "fixtures")
    state, config = released_state(tiny)
    convert(write_released(work / "released", state, config, tiny.llm), work / "plugin")

    tok = AutoTokenizer.from_pretrained(tiny.llm, use_fast=False)
    processor = CLIPImageProcessor.from_pretrained(tiny.clip)
    pixels = [processor.preprocess(Image.open(f).convert("RGB"), return_tensors="pt")["pixel_values"][0]
              for f in sorted(tiny.images.glob("question_*"))[:2]]
    prompts = ["USER: <image>\nWhat colour is the shape? ASSISTANT: red", "USER: Name a colour. ASSISTANT: Blue",
               "USER: <image>\nWhere is the shape in the picture? ASSISTANT: top left"]
    rows = [tokenizer_image_token(p, tok, return_tensors="pt") for p in prompts]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for r, row in enumerate(rows):
        ids[r, :len(row)], mask[r, :len(row)] = row, True
    images = torch.stack([pixels[0], torch.zeros_like(pixels[0]), pixels[1]])

    def run(device: str, dtype: torch.dtype):
        model = AutoModelForCausalLM.from_pretrained(work / "plugin", dtype=dtype).to(device).eval()
        model.get_vision_tower().load_model()
        model.get_vision_tower().to(device=device, dtype=dtype)
        with torch.no_grad():
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), images=images.to(device, dtype))
            gen = model.generate(rows[0][None].to(device), images=pixels[0][None].to(device, dtype),
                                 max_new_tokens=8, min_new_tokens=8, do_sample=False)
        logits = [out.logits[r, :len(row)].float().cpu() for r, row in enumerate(rows)]
        return logits, out.gate_weights.float().cpu(), gen[0].tolist()

    ref_logits, ref_gates, ref_tokens = run("cpu", torch.float32)
    logits, gates, tokens = run(args.device, torch.bfloat16)
    diff = max(float((a - b).abs().max()) for a, b in zip(logits, ref_logits))
    scale = max(float(a.abs().max()) for a in ref_logits)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    result = {"device": device_name, "torch": torch.__version__, "dtype": "bfloat16",
              "max_abs_logit_diff": diff, "max_abs_fp32_logit": scale, "relative": diff / scale,
              "max_gate_weight_diff": float((gates - ref_gates).abs().max()),
              "greedy_tokens_equal": tokens == ref_tokens, "tokens_fp32": ref_tokens, "tokens_bf16": tokens}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
