"""Any LLaVA or AlignGPT checkpoint (full, or a stage-1 projector on its base LLM) with its vision tower, in
fp32, for analysis."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class LoadedModel:
    """A checkpoint loaded for analysis: the model (eval, fp32), its tokenizer and image processor, and its folder."""
    model: torch.nn.Module
    tokenizer: object
    image_processor: object
    source: str


def _is_stage1_folder(path: Path) -> bool:
    return (path / "mm_projector.bin").is_file() and not any(
        (path / f).is_file() for f in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                                       "pytorch_model.bin.index.json"))


def load_checkpoint(model_path: str | Path, model_base: str | None = None, vision_tower: str | None = None,
                    device: str = "cpu") -> LoadedModel:
    """A LLaVA/AlignGPT model with its vision tower loaded, from a full checkpoint folder or a stage-1
    folder (`mm_projector.bin`) on top of `model_base`.

    Loads through the classes LLaVA (and the plugin) register with AutoConfig / AutoModelForCausalLM, as
    LLaVA's own builder does for these two layouts, without its dispatch on folder names.

    Args:
        model_path: the checkpoint folder (config.json, weights or mm_projector.bin).
        model_base: the base LLM a stage-1 folder was trained on (required for one).
        vision_tower: a CLIP tower to use instead of the config's `mm_vision_tower`.
        device: where to put the model.
    Returns:
        The LoadedModel.
    Raises:
        FileNotFoundError: no config.json.
        ValueError: not a LLaVA checkpoint, a stage-1 folder without `model_base`, or weights that do not fit.
    """
    from aligngpt_plugin.integrations.llava.compat import prepare_llava

    prepare_llava()
    import llava.model  # noqa: F401  (registers llava_llama)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    import aligngpt_plugin.integrations.llava.model  # noqa: F401  (registers aligngpt_llava)

    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: give a LLaVA/AlignGPT checkpoint folder or a "
                                "pre-training output folder (config.json + mm_projector.bin)")
    config = AutoConfig.from_pretrained(path)
    if getattr(config, "mm_vision_tower", None) is None and vision_tower is None:
        raise ValueError(f"{path}/config.json names no vision tower (mm_vision_tower): it is not a LLaVA "
                         "checkpoint; pass --vision-tower to use one anyway")
    if vision_tower is not None:
        config.mm_vision_tower = vision_tower
    if _is_stage1_folder(path):
        base = model_base
        if not base:  # LLaVA's stage-1 config does not record the LLM it started from
            raise ValueError(f"{path} holds only mm_projector.bin: pass --model-base, the LLM it was trained on")
        model = AutoModelForCausalLM.from_pretrained(base, config=config)
        weights = torch.load(path / "mm_projector.bin", map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected:
            raise ValueError(f"{path}/mm_projector.bin has weights this model lacks: {unexpected[:4]}")
        tokenizer_from = base
    else:
        model = AutoModelForCausalLM.from_pretrained(path)
        tokenizer_from = path if (path / "tokenizer_config.json").is_file() else (model_base or path)
    tower = model.get_vision_tower()
    if vision_tower is not None:
        tower.vision_tower_name = vision_tower
    if not tower.is_loaded:
        tower.load_model()
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from, use_fast=False)
    return LoadedModel(model, tokenizer, tower.image_processor, str(path))
