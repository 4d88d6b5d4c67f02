"""LLaVA-original checkpoints (this plugin's AlignGPT, or plain LLaVA) <-> HF-native folders; released -> HF.

    aligngpt-convert to-hf checkpoints/aligngpt-7b runs/aligngpt-7b-hf      # CLI (aligngpt_plugin.convert)
    from aligngpt_plugin.conversion.hf import llava_to_hf
    llava_to_hf("checkpoints/aligngpt-7b", "runs/aligngpt-7b-hf")

Key mapping (transformers' `convert_llava_weights_to_hf.py`, in the `LlavaForConditionalGeneration` layout
of transformers >= 4.52):

    model.vision_tower.vision_tower.vision_model.*  -> model.vision_tower.vision_model.*
    model.mm_projector.0.* / .2.*                  -> model.multi_modal_projector.linear_1.* / linear_2.*
    model.alignment.*                              -> model.alignment.*        (AlignGPT only)
    model.* (the LLM)                               -> model.language_model.*
    lm_head.*                                       -> lm_head.*

The vocabulary grows by `<image>` (the id transformers' Llava replaces by image features) and `<pad>`, as
transformers' converter grows it for llava-hf, and, for AlignGPT, by `<align>`; the new rows of the
embedding and the LM head are the mean of the old rows (transformers' converter adds noise to the mean; a
fixed value keeps the conversion reproducible: these rows are replaced in the forward and never decoded).
LLaVA-original checkpoints usually hold no CLIP weights (LLaVA builds the tower from `mm_vision_tower`):
they are read from that folder or hub id (or `--vision-tower`).

Streams: one input weight file open at a time, one output file per input file, resumable in DST.partial/.
A released-layout checkpoint goes through the LLaVA-original layout on its way (`released_to_hf`). Back
(`hf_to_llava`), the vocabulary keeps its added rows: LLaVA splits prompts on `<image>` before tokenizing,
so the extra tokens are never produced there, and nothing is lost if the folder is converted again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from aligngpt_plugin.conversion.streaming import (
    ConversionError,
    open_weights,
    partial_folder,
    resolve,
    source_stamp,
    tensor_infos,
    weight_files,
)
from aligngpt_plugin.core.fileio import atomic_path, write_json_atomic

IMAGE_TOKEN, PAD_TOKEN, ALIGN_TOKEN = "<image>", "<pad>", "<align>"
# The chat template of the llava-hf Vicuna checkpoints (llava-1.5-*-hf): "USER: <image>\n... ASSISTANT:"
VICUNA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != "
    "'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")

FROM_HF = (
    (r"^model\.vision_tower\.", "model.vision_tower.vision_tower."),
    (r"^model\.multi_modal_projector\.linear_1\.", "model.mm_projector.0."),
    (r"^model\.multi_modal_projector\.linear_2\.", "model.mm_projector.2."),
    (r"^model\.alignment\.", "model.alignment."),
    (r"^model\.language_model\.", "model."),
    (r"^lm_head\.", "lm_head."),
)
# transformers < 4.52's Llava layout, which 4.5x's `save_pretrained` still writes (the Trainer's checkpoints and
# `aligngpt-sft`'s output on 4.57): renamed to the layout above before FROM_HF applies
LEGACY_HF = (
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^vision_tower\.", "model.vision_tower."),
    (r"^multi_modal_projector\.", "model.multi_modal_projector."),
)
TO_HF = (
    (r"^model\.vision_tower\.vision_tower\.", "model.vision_tower."),
    (r"^model\.mm_projector\.0\.", "model.multi_modal_projector.linear_1."),
    (r"^model\.mm_projector\.2\.", "model.multi_modal_projector.linear_2."),
    (r"^model\.alignment\.", "model.alignment."),
    (r"^model\.", "model.language_model."),
    (r"^lm_head\.", "lm_head."),
)
VOCAB_KEYS = ("model.embed_tokens.weight", "lm_head.weight")  # LLaVA-original names of the rows that grow


def rename(key: str, table) -> str:
    """The first matching rule of `table` applied to `key` (ConversionError if none matches)."""
    for pattern, repl in table:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key, count=1)
    raise ConversionError(f"weight {key!r} has no place in the other layout")


def grow_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """`weight` [V, H] with `rows - V` rows appended, each the mean of the existing rows: [rows, H]."""
    extra = rows - weight.shape[0]
    if extra <= 0:
        return weight
    mean = weight.float().mean(0, keepdim=True).to(weight.dtype)
    return torch.cat([weight, mean.expand(extra, -1)], dim=0)


def _vision_weights(tower: Path) -> tuple[dict, list[Path]]:
    """The CLIP vision config and weight files of a CLIP folder (a CLIPModel or CLIPVisionModel)."""
    config = json.loads((tower / "config.json").read_text())
    vision = config.get("vision_config", config)
    vision = {k: v for k, v in vision.items() if k not in ("architectures", "transformers_version")}
    vision["model_type"] = "clip_vision_model"
    return vision, weight_files(tower)


# A CLIPVisionModel saved by transformers 5.x has no `vision_model.` prefix (4.x's files and CLIPModel have it)
_BARE_CLIP_VISION = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")


def _vision_state(tower: Path, files: list[Path]) -> dict[str, torch.Tensor]:
    """The CLIP vision weights of `files` under llava-hf's names (`model.vision_tower.vision_model.*`, which
    both transformers lines load), whichever transformers line saved the CLIP folder."""
    out = {}
    for path in files:
        with open_weights(path) as state:
            for k in state:
                name = k if k.startswith("vision_model.") else \
                    f"vision_model.{k}" if k.startswith(_BARE_CLIP_VISION) else None
                if name is not None:
                    out[f"model.vision_tower.{name}"] = state[k].contiguous()
    if not out:
        raise ConversionError(f"{tower} holds no CLIP vision weights (vision_model.*)")
    return out


def _hf_config(config: dict, vision: dict, vocab: int, ids: dict[str, int], aligngpt: bool) -> dict:
    strategy = {"patch": "default", "cls_patch": "full"}.get(config.get("mm_vision_select_feature", "patch"))
    projector = config.get("mm_projector_type", "mlp2x_gelu")
    if strategy is None or projector != "mlp2x_gelu":
        raise ConversionError(f"mm_projector_type={projector!r}, mm_vision_select_feature="
                              f"{config.get('mm_vision_select_feature')!r}: transformers' Llava has the 2-layer GELU "
                              "projector (mlp2x_gelu) and patch or cls_patch features only")
    text = {k: v for k, v in config.items() if not k.startswith(("mm_", "tune_mm", "tokenizer_", "alignment"))
            and k not in ("architectures", "model_type", "transformers_version", "image_aspect_ratio",
                          "freeze_mm_mlp_adapter", "use_mm_proj", "unfreeze_mm_vision_tower", "image_grid_pinpoints",
                          "auto_map")}
    text.update(model_type="llama" if config.get("model_type") in ("aligngpt_llava", "llava_llama", "llama")
                else "mistral", vocab_size=vocab, pad_token_id=ids[PAD_TOKEN])
    tokens = (vision["image_size"] // vision["patch_size"]) ** 2
    out = {"model_type": "llava_aligngpt" if aligngpt else "llava",
           "architectures": ["AlignGPTLlavaForConditionalGeneration" if aligngpt else "LlavaForConditionalGeneration"],
           "text_config": text, "vision_config": vision, "image_token_index": ids[IMAGE_TOKEN],
           "image_seq_length": tokens if strategy == "default" else tokens + 1,
           "projector_hidden_act": "gelu", "vision_feature_select_strategy": strategy,
           "vision_feature_layer": config.get("mm_vision_select_layer", -2), "multimodal_projector_bias": True,
           "tie_word_embeddings": False, "pad_token_id": ids[PAD_TOKEN]}
    if aligngpt:
        out.update(alignment=config["alignment"], alignment_token_id=ids[ALIGN_TOKEN],
                   alignment_stage="pretrain" if config.get("tune_mm_mlp_adapter") else "finetune")
    return out


def _processor(src: Path, tower: Path, work: Path, vision: dict, strategy: str, aligngpt: bool,
               keep_pad: bool = False) -> dict[str, int]:
    """Tokenizer with the new tokens and the processor, saved in `work`; the ids of the new tokens (under
    PAD_TOKEN: the id of the tokenizer's own pad token where `keep_pad` and it has one)."""
    from transformers import AutoTokenizer, CLIPImageProcessor, LlavaProcessor

    tokenizer = AutoTokenizer.from_pretrained(src)  # the fast tokenizer, as llava-hf ships
    own_pad = keep_pad and tokenizer.pad_token is not None
    new = [IMAGE_TOKEN, PAD_TOKEN] + ([ALIGN_TOKEN] if aligngpt else [])
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in new if t != PAD_TOKEN],
                                  **({} if own_pad else {"pad_token": PAD_TOKEN})})
    image_processor = CLIPImageProcessor.from_pretrained(tower)
    # CLIP's CLS token counts in the processor's expansion, as llava-hf's processors set it
    kwargs = dict(image_processor=image_processor, tokenizer=tokenizer, patch_size=vision["patch_size"],
                  vision_feature_select_strategy=strategy, chat_template=VICUNA_CHAT_TEMPLATE,
                  num_additional_image_tokens=1)
    if aligngpt:
        from aligngpt_plugin.integrations.hf.processing_aligngpt import AlignGPTLlavaProcessor

        processor = AlignGPTLlavaProcessor(alignment_token=ALIGN_TOKEN, **kwargs)
    else:
        processor = LlavaProcessor(**kwargs)
    processor.save_pretrained(work)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in new}
    if own_pad:
        ids[PAD_TOKEN] = tokenizer.pad_token_id
    return ids


def llava_to_hf(src: str | Path, dst: str | Path, vision_tower: str | None = None) -> Path:
    """Convert a LLaVA-original checkpoint folder (AlignGPT or plain LLaVA, Llama or Mistral) to HF-native.

    Args:
        src: the checkpoint folder (config.json with `mm_vision_tower`, weights, tokenizer).
        dst: the output folder (must not exist; DST.partial/ of a killed run is continued).
        vision_tower: a CLIP folder or hub id to read the tower from, instead of the config's `mm_vision_tower`.
    Returns:
        `dst`, loadable with `AutoModelForImageTextToText.from_pretrained` and `AutoProcessor.from_pretrained`.
    """
    src, dst = Path(src), Path(dst)
    config = json.loads((src / "config.json").read_text())
    aligngpt = "alignment" in config
    tower_id = vision_tower or config.get("mm_vision_tower")
    if not tower_id:
        raise ConversionError(f"{src}/config.json names no mm_vision_tower; give --vision-tower")
    tower = resolve(tower_id)
    vision, tower_files = _vision_weights(tower)
    files = weight_files(src)
    if not files:
        raise ConversionError(f"{src} holds no .safetensors or .bin weights")
    infos = tensor_infos(files)
    plan = {"direction": "to-hf", "sources": source_stamp(files + tower_files)}
    with partial_folder(dst, plan) as work:
        strategy = {"patch": "default", "cls_patch": "full"}.get(config.get("mm_vision_select_feature", "patch"),
                                                                 "default")
        ids = _processor(src, tower, work, vision, strategy, aligngpt)
        vocab = max(max(ids.values()) + 1, infos["lm_head.weight"].shape[0])
        hf_config = dict(_hf_config(config, vision, vocab, ids, aligngpt), mm_vision_tower=str(tower_id))
        weight_map = {}
        for i, path in enumerate(files, 1):
            name = f"model-{i:05d}-of-{len(files) + 1:05d}.safetensors"
            with open_weights(path) as state:
                keys = [k for k in state if not k.startswith("model.vision_tower.")]  # the tower comes from CLIP
                if not (work / name).is_file():
                    tensors = {rename(k, TO_HF): grow_rows(state[k], vocab) if k in VOCAB_KEYS else
                               state[k].contiguous() for k in keys}
                    with atomic_path(work / name) as tmp:
                        save_file(tensors, str(tmp), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys((rename(k, TO_HF) for k in keys), name))
        name = f"model-{len(files) + 1:05d}-of-{len(files) + 1:05d}.safetensors"
        vision_keys = _vision_state(tower, tower_files)
        if not (work / name).is_file():
            with atomic_path(work / name) as tmp:
                save_file(vision_keys, str(tmp), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(vision_keys, name))
        write_json_atomic(work / "model.safetensors.index.json", {"metadata": {}, "weight_map": dict(sorted(
            weight_map.items()))})
        # `mm_vision_tower` stays in the config: where the tower came from, for the way back to LLaVA's layout
        write_json_atomic(work / "config.json", hf_config)
        if (src / "generation_config.json").is_file():
            write_json_atomic(work / "generation_config.json",
                              json.loads((src / "generation_config.json").read_text()))
    return dst


def released_to_hf(src: str | Path, dst: str | Path, vision_tower: str | None = None) -> Path:
    """A released AlignGPT checkpoint (the public code's layout, e.g. `nlpzhaof/aligngpt-7b`) -> HF-native.

    Goes through the LLaVA-original layout in `DST.llava/` (kept until the HF folder is complete, so a killed
    run continues from whichever step it reached).

    Args:
        src: the released folder or hub id; dst: the output folder (must not exist).
        vision_tower: CLIP folder or hub id, instead of the config's `mm_vision_tower`.
    Returns:
        `dst`.
    """
    import shutil

    from aligngpt_plugin.conversion.released import convert

    dst = Path(dst)
    if dst.exists():
        raise ConversionError(f"{dst} already exists; remove it or choose another output")
    middle = dst.with_name(dst.name + ".llava")
    if not middle.exists():
        convert(src, middle, to_plugin=True, vision_tower=vision_tower)
    llava_to_hf(middle, dst, vision_tower=vision_tower)
    shutil.rmtree(middle)
    return dst


def hf_to_llava(src: str | Path, dst: str | Path, vision_tower: str | None = None) -> Path:
    """An HF-native AlignGPT (or llava-hf) folder -> the LLaVA-original layout, for LLaVA's eval scripts.

    Args:
        src: the HF-native folder; dst: the output folder (must not exist).
        vision_tower: the CLIP folder or hub id that the LLaVA-original config names as `mm_vision_tower`
            (LLaVA builds its tower from it); default: `mm_vision_tower` recorded at conversion, else required.
    Returns:
        `dst`, loadable with `AutoModelForCausalLM` (AlignGPT) or LLaVA's `load_pretrained_model`.
    """
    from transformers import AutoTokenizer

    src, dst = Path(src), Path(dst)
    config = json.loads((src / "config.json").read_text())
    if config.get("model_type") not in ("llava_aligngpt", "llava"):
        raise ConversionError(f"{src}/config.json: model_type {config.get('model_type')!r} is not transformers' "
                              "Llava or the HF-native AlignGPT")
    tower = vision_tower or config.get("mm_vision_tower")
    if not tower:
        raise ConversionError(f"{src} does not record the CLIP it was built from; give --vision-tower")
    files = weight_files(src)
    text, vision = dict(config["text_config"]), config["vision_config"]
    aligngpt = config["model_type"] == "llava_aligngpt"
    mistral = text.get("model_type") == "mistral"
    layers = config.get("vision_feature_layer", -2)
    if not isinstance(layers, int):
        raise ConversionError(f"{src}: vision_feature_layer={layers}: LLaVA's tower reads one layer")
    plan = {"direction": "from-hf", "sources": source_stamp(files)}
    with partial_folder(dst, plan) as work:
        weight_map = {}
        for i, path in enumerate(files, 1):
            name = f"model-{i:05d}-of-{len(files):05d}.safetensors"
            with open_weights(path) as state:
                keys = {k: rename(rename(k, LEGACY_HF) if not k.startswith(("model.", "lm_head.")) else k, FROM_HF)
                        for k in state}
                if not (work / name).is_file():
                    with atomic_path(work / name) as tmp:
                        save_file({new: state[k].contiguous() for k, new in keys.items()}, str(tmp),
                                  metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(keys.values(), name))
        write_json_atomic(work / "model.safetensors.index.json", {"metadata": {}, "weight_map": dict(sorted(
            weight_map.items()))})
        llava = {k: v for k, v in text.items() if k not in ("model_type", "architectures", "_name_or_path")}
        llava.update(mm_vision_tower=str(tower), mm_projector_type="mlp2x_gelu", mm_hidden_size=vision["hidden_size"],
                     mm_vision_select_layer=layers,
                     mm_vision_select_feature="patch" if config.get("vision_feature_select_strategy",
                                                                    "default") == "default" else "cls_patch",
                     mm_patch_merge_type="flat", mm_use_im_start_end=False, mm_use_im_patch_token=False,
                     image_aspect_ratio="pad", tokenizer_padding_side="right", use_mm_proj=True,
                     tune_mm_mlp_adapter=config.get("alignment_stage") == "pretrain")
        if aligngpt:
            llava.update(model_type="aligngpt_mistral" if mistral else "aligngpt_llava", alignment=config["alignment"],
                         architectures=["AlignGPTMistralForCausalLM" if mistral else "AlignGPTLlamaForCausalLM"])
        else:
            llava.update(model_type="llava_mistral" if mistral else "llava_llama",
                         architectures=["LlavaMistralForCausalLM" if mistral else "LlavaLlamaForCausalLM"])
        write_json_atomic(work / "config.json", llava)
        AutoTokenizer.from_pretrained(src).save_pretrained(work)
        if (src / "generation_config.json").is_file():
            write_json_atomic(work / "generation_config.json",
                              json.loads((src / "generation_config.json").read_text()))
    return dst


# ------------------------------------------------------------------------------ stage 1 from an LLM and a CLIP

LLM_SET_ASIDE = re.compile(r"(^|\.)rotary_emb\.inv_freq$")  # buffers of old checkpoints; transformers recomputes them


def _llm_config(llm: Path) -> dict:
    """The causal LM's config.json, checked to be one (ConversionError naming the file otherwise)."""
    from aligngpt_plugin.conversion.streaming import read_json

    if not (llm / "config.json").is_file():
        raise ConversionError(f"{llm} has no config.json: give a causal language model folder or hub id "
                              "(e.g. lmsys/vicuna-7b-v1.5)")
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = read_json(llm / "config.json")
    if (config.get("model_type") not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or "mm_vision_tower" in config
            or "hidden_size" not in config):
        raise ConversionError(f"{llm}/config.json is not a text-only causal language model's config (model_type "
                              f"{config.get('model_type')!r}); build-hf starts from an LLM and a CLIP")
    return config


def _clip_processor(tower: Path):
    from transformers import CLIPImageProcessor

    if not (tower / "preprocessor_config.json").is_file():
        raise ConversionError(f"{tower} has no preprocessor_config.json: the CLIP folder must hold its image "
                              "processor (as openai/clip-vit-large-patch14-336 does)")
    return CLIPImageProcessor.from_pretrained(tower)


def build_hf(llm: str | Path, vision_tower: str | Path, dst: str | Path, align_levels: int = 8,
             seed: int = 0) -> Path:
    """A stage-1 HF-native AlignGPT from a causal LM and a CLIP, as the paper's stage 1 starts (LLaVA-1.5).

    The LLM's and the CLIP's weights are copied unchanged (one input file open at a time); the vocabulary
    grows by `<image>`, `<pad>` (only if the tokenizer has no pad token) and `<align>`, the new rows of the
    embedding and the LM head being the mean of the old rows (`grow_rows`, as the converters); an LLM with
    tied embeddings gets its LM head written out. A new token whose id falls inside the LLM's matrix (a
    tokenizer smaller than its model's embedding, as Qwen2's) keeps that row: the LLM stays as it was.
    Fresh: the 2-layer GELU projector (LLaVA-1.5's mlp2x_gelu: vision hidden -> text hidden -> text hidden,
    torch's Linear init as LLaVA builds it) and the level embeddings and gate
    (`AlignmentModule.reset_parameters`). CLIP features from layer -2, patch tokens (`default`),
    `alignment_stage` "pretrain", the processor with llava-hf's Vicuna chat template (LLaVA-1.5's prompt
    format, whatever the LLM). Stage 2 starts from stage 1's saved output with `from_pretrained` and
    `set_stage("finetune")`.

    Args:
        llm: causal LM folder or hub id with its tokenizer (`lmsys/vicuna-7b-v1.5`; Llama, Mistral, Qwen2, ...).
        vision_tower: CLIP folder or hub id (CLIPModel or CLIPVisionModel with its image processor).
        dst: the output folder (must not exist; DST.partial/ of a killed run is continued).
        align_levels: N, the number of alignment levels (the paper: 8).
        seed: seeds the fresh projector, level embeddings and gate.
    Returns:
        `dst`, loadable with `AutoModelForImageTextToText.from_pretrained` and `AutoProcessor.from_pretrained`.
    Raises:
        ConversionError: a folder is missing or is not what it should be (no tokenizer, no CLIP vision weights,
            no image processor, a vision tower too shallow for layer -2), or `dst` exists.
    """
    from aligngpt_plugin.core.alignment import AlignmentConfig, AlignmentModule

    dst = Path(dst)
    if dst.exists():
        raise ConversionError(f"{dst} already exists; remove it or choose another output")
    if align_levels < 2:
        raise ConversionError(f"--align-levels {align_levels}: AlignGPT needs at least 2 levels (local and global)")
    llm_path, tower = resolve(str(llm)), resolve(str(vision_tower))
    config = _llm_config(llm_path)
    files = weight_files(llm_path)
    if not files:
        raise ConversionError(f"{llm_path} holds no .safetensors or .bin weights")
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(llm_path)
    except Exception as e:  # noqa: BLE001 - a missing or broken tokenizer raises many kinds
        raise ConversionError(f"{llm_path} has no usable tokenizer ({type(e).__name__}: {str(e)[:200]}); the LLM "
                              "folder must hold one (tokenizer.json or tokenizer.model with tokenizer_config.json)"
                              ) from None
    if not (tower / "config.json").is_file():
        raise ConversionError(f"{tower} has no config.json: give a CLIP folder or hub id "
                              "(e.g. openai/clip-vit-large-patch14-336)")
    vision, tower_files = _vision_weights(tower)
    if vision.get("num_hidden_layers", 0) < 2 or "image_size" not in vision:
        raise ConversionError(f"{tower}/config.json: not a CLIP vision config with >= 2 layers (LLaVA-1.5 reads "
                              "the second-last layer)")
    _clip_processor(tower)
    infos = tensor_infos(files)
    embed_key, head_key = "model.embed_tokens.weight", "lm_head.weight"
    if embed_key not in infos:
        raise ConversionError(f"{llm_path}: no {embed_key} among the weights; build-hf takes a causal LM whose "
                              "decoder is `model.*` (Llama, Mistral, Qwen2, ...)")
    tied = head_key not in infos
    old_rows, text_hidden = infos[embed_key].shape
    if text_hidden != config["hidden_size"]:
        raise ConversionError(f"{llm_path}: {embed_key} is {list(infos[embed_key].shape)} but hidden_size is "
                              f"{config['hidden_size']}")
    tokens = (vision["image_size"] // vision["patch_size"]) ** 2
    alignment = AlignmentConfig(num_levels=align_levels, gate_tokens=tokens)
    plan = {"direction": "build-hf", "sources": source_stamp(files + tower_files), "levels": align_levels,
            "seed": seed}
    with partial_folder(dst, plan) as work:
        ids = _processor(llm_path, tower, work, vision, "default", aligngpt=True, keep_pad=True)
        vocab = max(max(ids.values()) + 1, old_rows)
        weight_map, dtype = {}, None
        count = len(files) + 2  # the LLM's files, the vision tower, the fresh modules
        for i, path in enumerate(files, 1):
            name = f"model-{i:05d}-of-{count:05d}.safetensors"
            with open_weights(path) as state:
                keys = [k for k in state if not LLM_SET_ASIDE.search(k)]
                tensors = {}
                for k in keys:
                    if not (k.startswith("model.") or k == head_key):
                        raise ConversionError(f"{path}: weight {k!r} is not a causal LM's (model.* or lm_head)")
                    if k == embed_key:
                        dtype = state[k].dtype
                        if tied:  # the head is the embedding; Llava's config here unties it
                            tensors[head_key] = grow_rows(state[k], vocab).contiguous()
                    tensors[rename(k, TO_HF)] = grow_rows(state[k], vocab) if k in VOCAB_KEYS else state[k].contiguous()
                if not (work / name).is_file():
                    with atomic_path(work / name) as tmp:
                        save_file(tensors, str(tmp), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(tensors, name))
                del tensors
        vision_keys = _vision_state(tower, tower_files)
        name = f"model-{count - 1:05d}-of-{count:05d}.safetensors"
        if not (work / name).is_file():
            with atomic_path(work / name) as tmp:
                save_file(vision_keys, str(tmp), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(vision_keys, name))
        torch.manual_seed(seed)
        fresh = {"model.multi_modal_projector.linear_1": torch.nn.Linear(vision["hidden_size"], text_hidden),
                 "model.multi_modal_projector.linear_2": torch.nn.Linear(text_hidden, text_hidden)}
        tensors = {f"{prefix}.{k}": v for prefix, module in fresh.items() for k, v in module.state_dict().items()}
        module = AlignmentModule(alignment, text_hidden)
        module.reset_parameters()
        tensors.update({f"model.alignment.{k}": v for k, v in module.state_dict().items()})
        tensors = {k: v.to(dtype).contiguous() for k, v in tensors.items()}
        name = f"model-{count:05d}-of-{count:05d}.safetensors"
        if not (work / name).is_file():
            with atomic_path(work / name) as tmp:
                save_file(tensors, str(tmp), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        write_json_atomic(work / "model.safetensors.index.json", {"metadata": {}, "weight_map": dict(sorted(
            weight_map.items()))})
        text = {k: v for k, v in config.items()
                if k not in ("architectures", "_name_or_path", "transformers_version", "auto_map")}
        text.update(vocab_size=vocab, pad_token_id=ids[PAD_TOKEN], tie_word_embeddings=False)
        hf_config = {
            "model_type": "llava_aligngpt", "architectures": ["AlignGPTLlavaForConditionalGeneration"],
            "text_config": text, "vision_config": vision, "image_token_index": ids[IMAGE_TOKEN],
            "image_seq_length": tokens, "projector_hidden_act": "gelu", "vision_feature_select_strategy": "default",
            "vision_feature_layer": -2, "multimodal_projector_bias": True, "tie_word_embeddings": False,
            "pad_token_id": ids[PAD_TOKEN], "alignment": alignment.to_dict(), "alignment_token_id": ids[ALIGN_TOKEN],
            "alignment_stage": "pretrain", "mm_vision_tower": str(vision_tower), "llm": str(llm)}
        for key in ("torch_dtype", "dtype"):  # `dtype="auto"` loads what the LLM's weights are
            if key in config:
                hf_config[key] = config[key]
        write_json_atomic(work / "config.json", hf_config)
        if (llm_path / "generation_config.json").is_file():
            write_json_atomic(work / "generation_config.json",
                              json.loads((llm_path / "generation_config.json").read_text()))
    return dst
