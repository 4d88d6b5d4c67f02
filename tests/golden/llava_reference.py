"""Greedy decoding of six different questions, recorded with LLaVA's own model class, for the reference test.

What is computed, in fp32 on the CPU, for six questions (each its own picture and its own text, prompted
as LLaVA's `model_vqa_loader` prompts: `vicuna_v1`, `<image>` first, LLaVA's slow tokenizer):

- ``llava``: LLaVA's `LlavaLlamaForCausalLM` (plain LLaVA-1.5: CLIP layer -2 patch tokens, `mlp2x_gelu`
  projector, Llama), greedy through LLaVA's own `generate` (KV cache);
- ``aligngpt``: the same weights plus AlignGPT's level table and gate. Where this file records the
  reference (transformers 4.37.2) the token is computed BY HAND from the method's equations
  (docs/method.md: t = mean of the text tokens' input embeddings without BOS and image; d = image tokens . t;
  w = softmax(Linear(256, 7)(GELU(Linear(576, 256)(d)))); token = w @ E[0:7] + E[7]), spliced into LLaVA's
  own multimodal embeddings (`prepare_inputs_labels_for_multimodal`) right after BOS, and decoded greedily
  by LLaVA's forward on the whole sequence at each step (no cache). Elsewhere (`compute(plugin=True)`,
  what the test runs) it is the plugin's `AlignGPTLlamaForCausalLM.generate`, which must agree.

For each question and model: the top-5 token ids and their logits at the first 4 decode steps, the greedy
answer (6 tokens) and, for AlignGPT, the gate's 7 weights. The weights are drawn by parameter name from
a seeded generator (`draw_weights`), not by transformers' initialisation (which changes between releases),
with scales chosen so that attention, the picture and the alignment token move the logits: every question
gets its own answer. Record it with ``tools/record_reference_run.sh`` (transformers 4.37.2, LLaVA's pin, in
a throwaway venv); `tests/test_reference_run.py` recomputes it on the installed line and compares.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import platform
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TOKENIZER_DIR = REPO / "aligngpt_plugin" / "assets" / "llama_tokenizer"

SEED = 25
TOP_K = 5
STEPS = 4  # decode steps whose top-k logits are recorded
NEW_TOKENS = 6  # length of the greedy answer
LEVELS = 8
LLM = dict(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=4, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0,
           tie_word_embeddings=False)
CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=336,
            patch_size=14)  # 24 x 24 = 576 patch tokens, the count AlignGPT's gate reads
# (picture: colour, shape, place, size, background; question text)
QUESTIONS = (
    (("red", "circle", "top left", (336, 336), (255, 255, 255)), "What colour is the shape?"),
    (("blue", "square", "bottom right", (400, 224), (20, 20, 20)), "Where is the shape in the picture?"),
    (("green", "triangle", "centre", (224, 336), (200, 200, 200)), "Describe the picture in one sentence."),
    (("yellow", "circle", "bottom left", (480, 280), (20, 20, 20)), "Is there a square? Answer yes or no."),
    (("purple", "square", "top right", (280, 400), (255, 255, 255)), "How many shapes are there?"),
    (("orange", "triangle", "top left", (336, 280), (200, 200, 200)), "Which corner is empty, and why?"),
)


# Scales of the drawn weights. With transformers' own init (std 0.02) every question got the same answer:
# the residual stream of the last prompt token (":" of "ASSISTANT:") decides the logits. Token embeddings at
# 0.5 under unit-scale layers, and the LLM's queries and keys at twice 1/sqrt(fan-in) (sharper attention),
# let the picture and the question move them: each of the six questions starts its answer with its own
# token, with LLaVA and with AlignGPT (measured over embed 0.3-1.0, qk 1-3: 0.5 / 2 is the smallest change
# that does it for both). The LM head at 3/sqrt(H) spreads the logits, so top-k neighbours stand apart.
SCALES = {"embed": 0.5, "qk": 2.0, "head": 3.0}


def _std(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) of parameter `name`: norms near 1, biases small, matrices 1/sqrt(fan-in) (unit-scale
    activations), other factors as `SCALES` says."""
    if name.endswith("bias"):
        return 0.0, 0.1
    if len(shape) == 1:  # RMSNorm / LayerNorm weights (and CLIP's class embedding, a vector like them)
        return (0.0, 1.0) if name.endswith("class_embedding") else (1.0, 0.1)
    if name.endswith(("embed_tokens.weight", "level_embeddings")):
        return 0.0, SCALES["embed"]
    if name.endswith("position_embedding.weight"):
        return 0.0, 0.5
    fan_in = math.prod(shape[1:])
    if name.endswith(("q_proj.weight", "k_proj.weight")) and "vision" not in name:
        return 0.0, SCALES["qk"] / math.sqrt(fan_in)
    return 0.0, (SCALES["head"] if name == "lm_head.weight" else 1.0) / math.sqrt(fan_in)


def draw_weights(model) -> str:
    """Overwrite every parameter of `model` with values drawn from a generator seeded by its name (so a
    parameter gets the same values in any model and any transformers release that names it the same).
    Returns a digest of the sorted (name, shape) list, to see that two stacks built the same model."""
    import torch

    names = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            # transformers 5 dropped CLIPVisionModel's `vision_model` level from parameter names (its
            # checkpoints keep it): one name for both, the checkpoint's, so both lines draw the same
            if ".vision_tower." in name and ".vision_model." not in name:
                name = name.replace("vision_tower.vision_tower.", "vision_tower.vision_tower.vision_model.", 1)
            mean, std = _std(name, tuple(p.shape))
            gen = torch.Generator().manual_seed(SEED * 2**32 + zlib.crc32(name.encode()))
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).mul_(std).add_(mean).to(p.dtype))
            names.append(f"{name}:{list(p.shape)}")
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()


def write_pictures(folder: Path) -> list[Path]:
    """The questions' pictures, drawn with PIL (PNG: every release decodes them to the same pixels)."""
    from PIL import Image, ImageDraw

    places = {"top left": (0.25, 0.25), "top right": (0.75, 0.25), "bottom left": (0.25, 0.75),
              "bottom right": (0.75, 0.75), "centre": (0.5, 0.5)}
    colours = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (235, 210, 30),
               "purple": (140, 40, 170), "orange": (240, 130, 20)}
    paths = []
    for i, ((colour, shape, place, size, background), _) in enumerate(QUESTIONS):
        w, h = size
        cx, cy, r = places[place][0] * w, places[place][1] * h, min(w, h) * 0.18
        box = (int(cx - r), int(cy - r), int(cx + r), int(cy + r))
        image = Image.new("RGB", size, background)
        draw = ImageDraw.Draw(image)
        if shape == "circle":
            draw.ellipse(box, fill=colours[colour])
        elif shape == "square":
            draw.rectangle(box, fill=colours[colour])
        else:
            draw.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colours[colour])
        paths.append(folder / f"question_{i}.png")
        image.save(paths[-1])
    return paths


def write_clip(folder: Path) -> Path:
    """A CLIP vision tower folder for LLaVA's CLIPVisionTower to load (its weights are redrawn after)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    CLIPVisionModel(CLIPVisionConfig(**CLIP)).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_center_crop=True,
                       image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD, resample=3).save_pretrained(folder)
    return folder


def finish(model, clip: Path):
    """What LLaVA's training sets up (`initialize_vision_modules`, LLaVA-1.5's flags) and its eval reads."""
    args = SimpleNamespace(vision_tower=str(clip.resolve()), mm_vision_select_layer=-2,
                           mm_vision_select_feature="patch", pretrain_mm_mlp_adapter=None,
                           mm_patch_merge_type="flat", mm_projector_type="mlp2x_gelu")
    model.get_model().initialize_vision_modules(args)
    model.config.image_aspect_ratio = "pad"
    model.config.mm_use_im_start_end = False
    model.config.tokenizer_padding_side = "right"
    model.config.tokenizer_model_max_length = 2048
    digest = draw_weights(model)
    return model.float().eval(), digest


def prompts(tokenizer, image_processor, config, pictures: list[Path]) -> list[dict]:
    """Each question as `model_vqa_loader` prepares it: ids [1, L] (with IMAGE_TOKEN_INDEX), pixels
    [1, 3, 336, 336] (`process_images`, padded to square) and the picture's size."""
    from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token
    from PIL import Image

    out = []
    for (_, text), path in zip(QUESTIONS, pictures):
        conv = conv_templates["vicuna_v1"].copy()
        conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\n" + text)
        conv.append_message(conv.roles[1], None)
        ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
        image = Image.open(path).convert("RGB")
        pixels = process_images([image], image_processor, config)
        out.append({"ids": ids.unsqueeze(0), "pixels": pixels.float(), "size": image.size})
    return out


def top_k(logits) -> dict:
    """logits [vocab] -> the k best ids and their logits, and the smallest gap among the k+1 best (what
    decides whether float noise could reorder them)."""
    values, ids = logits.float().topk(TOP_K + 1)
    gaps = (values[:-1] - values[1:]).tolist()
    return {"ids": ids[:TOP_K].tolist(), "logits": values[:TOP_K].tolist(), "gap": min(gaps)}


def decoded(steps: list, answer_ids: list[int], tokenizer, gate=None) -> dict:
    out = {"top_ids": [s["ids"] for s in steps[:STEPS]], "top_logits": [s["logits"] for s in steps[:STEPS]],
           "min_gap": min(s["gap"] for s in steps[:STEPS]), "answer_ids": answer_ids,
           "answer": tokenizer.decode(answer_ids, skip_special_tokens=True)}
    if gate is not None:
        out["gate_weights"] = [float(x) for x in gate]
    return out


def greedy_generate(model, question: dict, tokenizer) -> dict:
    """`model.generate` as LLaVA's eval calls it (greedy, KV cache), with the scores of each step."""
    import torch

    with torch.inference_mode():
        out = model.generate(question["ids"], images=question["pixels"], image_sizes=[question["size"]],
                             do_sample=False, num_beams=1, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             use_cache=True, output_scores=True, return_dict_in_generate=True,
                             pad_token_id=tokenizer.pad_token_id)
    steps = [top_k(s[0]) for s in out.scores]
    answer = [int(s[0].argmax()) for s in out.scores]
    gate = getattr(model, "last_gate_weights", None)
    return decoded(steps, answer, tokenizer, None if gate is None else gate[0])


def aligngpt_by_hand(llava, alignment: dict, question: dict, tokenizer) -> dict:
    """AlignGPT's token from the method's equations on LLaVA's own embeddings, then greedy decoding by
    LLaVA's forward over the whole sequence at every step (no cache).

    alignment: {"level_embeddings": [8, H], "gate.0.weight": [256, 576], "gate.0.bias": [256],
    "gate.2.weight": [7, 256], "gate.2.bias": [7]}."""
    import torch
    from llava.constants import IMAGE_TOKEN_INDEX

    ids = question["ids"]
    with torch.inference_mode():
        _, _, _, _, embeds, _ = llava.prepare_inputs_labels_for_multimodal(
            ids, None, None, None, None, question["pixels"], [question["size"]])
        image_tokens = llava.encode_images(question["pixels"])[0]  # [576, H], what LLaVA put in `embeds`
        text = ids[0][1:][ids[0][1:] != IMAGE_TOKEN_INDEX]  # without BOS and the image placeholder
        t = llava.get_model().embed_tokens(text).mean(0)
        d = image_tokens @ t  # [576]
        hidden = torch.nn.functional.gelu(alignment["gate.0.weight"] @ d + alignment["gate.0.bias"])
        w = torch.softmax(alignment["gate.2.weight"] @ hidden + alignment["gate.2.bias"], dim=-1)
        e = alignment["level_embeddings"]
        token = w @ e[:-1] + e[-1]
        seq = torch.cat([embeds[:, :1], token[None, None].to(embeds.dtype), embeds[:, 1:]], dim=1)
        steps, answer = [], []
        for _ in range(NEW_TOKENS):
            logits = llava(inputs_embeds=seq, use_cache=False).logits[0, -1]
            steps.append(top_k(logits))
            answer.append(int(logits.argmax()))
            nxt = llava.get_model().embed_tokens(torch.tensor([[answer[-1]]]))
            seq = torch.cat([seq, nxt], dim=1)
    return decoded(steps, answer, tokenizer, w)


def load_tokenizer():
    """As LLaVA's `load_pretrained_model` loads Vicuna's tokenizer (slow)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR), use_fast=False)


def build_llava(clip: Path):
    from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM

    return finish(LlavaLlamaForCausalLM(LlavaConfig(**LLM)), clip)


def build_plugin_aligngpt(clip: Path):
    from aligngpt_plugin.core.alignment import AlignmentConfig
    from aligngpt_plugin.integrations.llava.model import AlignGPTConfig, AlignGPTLlamaForCausalLM

    config = AlignGPTConfig(alignment=AlignmentConfig(num_levels=LEVELS), **LLM)
    return finish(AlignGPTLlamaForCausalLM(config), clip)


def alignment_weights(hidden: int) -> dict:
    """The alignment module's weights as the plugin names them under `model.alignment.` (drawn by name)."""
    import torch

    shapes = {"level_embeddings": (LEVELS, hidden), "gate.0.weight": (256, 576), "gate.0.bias": (256,),
              "gate.2.weight": (LEVELS - 1, 256), "gate.2.bias": (LEVELS - 1,)}
    holder = torch.nn.Module()
    for key, shape in shapes.items():
        *path, leaf = key.split(".")
        module = holder
        for part in ["model", "alignment", *path]:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, torch.nn.Parameter(torch.empty(shape)))
    draw_weights(holder)
    return {k[len("model.alignment."):]: v.detach() for k, v in holder.named_parameters()}


def compute(workdir: Path, plugin: bool, models: tuple[str, ...] = ("llava", "aligngpt"), perturb=None,
            n_questions: int | None = None) -> dict:
    """Build the fixtures under `workdir` and decode every question.

    Args:
        workdir: an empty folder (the CLIP folder and the pictures go there).
        plugin: True: AlignGPT through the plugin's model (the line under test); False: by hand on LLaVA's
            model (the reference).
        models: which of "llava" and "aligngpt" to decode.
        perturb: optional callable(model) run after the weights are drawn (the tests' planted faults).
        n_questions: decode only the first n questions (the planted-fault tests: cheaper), else all.

    Returns:
        {"questions": [...], "parameters": digest, "llava": [...], "aligngpt": [...]} (see the module doc);
        one entry per question in each list.
    """
    import torch

    torch.manual_seed(SEED)
    clip = write_clip(workdir / "clip")
    pictures = write_pictures(workdir)
    tokenizer = load_tokenizer()
    llava, digest = build_llava(clip)
    if perturb is not None:
        perturb(llava)
    questions = prompts(tokenizer, llava.get_vision_tower().image_processor, llava.config, pictures)[:n_questions]
    result = {
        "questions": [{"text": text, "picture": list(map(str, picture)), "input_ids": q["ids"][0].tolist(),
                       "pixel_sum": float(q["pixels"].double().sum())}
                      for (picture, text), q in zip(QUESTIONS, questions)],
        "parameters": digest,
    }
    if "llava" in models:
        result["llava"] = [greedy_generate(llava, q, tokenizer) for q in questions]
    if "aligngpt" in models and plugin:
        del llava
        model, _ = build_plugin_aligngpt(clip)
        if perturb is not None:
            perturb(model)
        result["aligngpt"] = [greedy_generate(model, q, tokenizer) for q in questions]
    elif "aligngpt" in models:
        alignment = alignment_weights(LLM["hidden_size"])
        result["aligngpt"] = [aligngpt_by_hand(llava, alignment, q, tokenizer) for q in questions]
    return result


def versions() -> dict:
    import importlib.metadata as md

    import tokenizers
    import torch
    import transformers

    return {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "torch": torch.__version__, "llava-torch": md.version("llava-torch"),
            "python": platform.python_version()}


def main(argv: list[str] | None = None) -> None:
    """Record the reference: LLaVA's own code, unpatched; then, for the record only, the plugin's AlignGPT
    model on the same stack (with the plugin's patches, as its entry points apply them)."""
    import tempfile

    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        reference = compute(Path(tmp), plugin=False)
    for key in ("llava", "aligngpt"):
        firsts = [r["top_ids"][0][0] for r in reference[key]]
        if len(set(firsts)) < len(QUESTIONS):
            raise SystemExit(f"{key}: the questions' answers do not start with distinct tokens ({firsts}): the "
                             "reference would not discriminate; change SCALES or the questions")
    plugin_note: dict
    try:
        import aligngpt_plugin

        if importlib.util.find_spec("aligngpt_plugin.patches") is None:
            # run from the repository, not installed: patches/ is the package's `patches` (pyproject.toml)
            aligngpt_plugin.__path__.append(str(REPO))
        from aligngpt_plugin.integrations.llava.compat import prepare_llava

        prepare_llava()
        with tempfile.TemporaryDirectory() as tmp:
            ours = compute(Path(tmp), plugin=True)
        diffs = [abs(a - b) for r, o in zip(reference["aligngpt"], ours["aligngpt"])
                 for ra, oa in zip(r["top_logits"], o["top_logits"]) for a, b in zip(ra, oa)]
        gates = [abs(a - b) for r, o in zip(reference["aligngpt"], ours["aligngpt"])
                 for a, b in zip(r["gate_weights"], o["gate_weights"])]
        plugin_note = {
            "ran": True,
            "same_top_ids": all(r["top_ids"] == o["top_ids"] for r, o in zip(reference["aligngpt"], ours["aligngpt"])),
            "same_answers": all(r["answer_ids"] == o["answer_ids"]
                                for r, o in zip(reference["aligngpt"], ours["aligngpt"])),
            "max_abs_logit_diff": max(diffs), "max_abs_gate_diff": max(gates),
            "llava_unchanged_by_patches": ours["llava"] == reference["llava"],
        }
    except Exception as e:  # noqa: BLE001 - recorded as what happened, the reference stands without it
        plugin_note = {"ran": False, "error": f"{type(e).__name__}: {e}"}
    record = {
        "recorded_with": versions(),
        "what": (
            "llava: LLaVA's own LlavaLlamaForCausalLM.generate (greedy, KV cache), unpatched. aligngpt: the same "
            "LLaVA class and weights, AlignGPT's token computed by hand from the method's equations, spliced "
            "after BOS into LLaVA's prepare_inputs_labels_for_multimodal output, greedy by full forwards (no "
            "cache). plugin_aligngpt_on_this_line: the plugin's AlignGPTLlamaForCausalLM.generate on the same "
            "stack, compared with the by-hand aligngpt (not used by the test)."),
        "settings": {"seed": SEED, "top_k": TOP_K, "steps": STEPS, "new_tokens": NEW_TOKENS, "levels": LEVELS,
                     "llm": LLM, "clip": CLIP, "dtype": "float32", "device": "cpu"},
        **reference,
        "plugin_aligngpt_on_this_line": plugin_note,
    }
    Path(argv[0]).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("recorded_with", "plugin_aligngpt_on_this_line")}, indent=1))
    print("answers:", [r["answer"] for r in record["llava"]], [r["answer"] for r in record["aligngpt"]])
    print(f"wrote {argv[0]}")


if __name__ == "__main__":
    main()
