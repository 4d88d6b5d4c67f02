"""A LoRA/QLoRA output of LLaVA's train() (adapter + `non_lora_trainables.bin`) rebuilt on its base LLM, and
merged into a full checkpoint (`python -m aligngpt_plugin.lora merge`).

`merge_lora` rebuilds the model from the base LLM, `non_lora_trainables.bin` and the adapter (unquantised,
also for a QLoRA adapter), merges the LoRA weights in and saves a full checkpoint that
`AutoModelForCausalLM.from_pretrained` loads as `AlignGPTLlamaForCausalLM`.
"""

from __future__ import annotations

from pathlib import Path

from aligngpt_plugin.integrations.llava.lora_training import ALIGNMENT_MODULE, NON_LORA_FILE, PEFT_PREFIX


def read_non_lora_weights(adapter_dir: str | Path) -> dict:
    """`non_lora_trainables.bin` with peft's `base_model.model.` prefix removed (model-level keys).

    Args:
        adapter_dir: a LoRA output folder of LLaVA's train().
    Returns:
        {weight name: tensor} (projector and alignment weights).
    Raises:
        FileNotFoundError: the file is not there.
    """
    import torch

    path = Path(adapter_dir) / NON_LORA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {adapter_dir} is not a LoRA output of LLaVA's train() "
                                "(expected adapter_config.json, adapter_model.safetensors and non_lora_trainables.bin)")
    weights = torch.load(path, map_location="cpu", weights_only=True)
    return {k.removeprefix(PEFT_PREFIX): v for k, v in weights.items()}


def load_lora_model(adapter_dir: str | Path, base: str | Path, torch_dtype=None):
    """The LoRA model as trained (a peft `PeftModel`, not merged) on the unquantised base LLM.

    The architecture comes from the adapter folder's `config.json` (AlignGPT or LLaVA), the LLM weights
    from `base`, the projector and alignment weights from `non_lora_trainables.bin`, the LoRA weights
    from the adapter. The vision tower is loaded from the path in the config.

    Args:
        adapter_dir: the LoRA output folder.
        base: the base LLM it was trained on (folder or hub id).
        torch_dtype: the dtype to load in (None: the checkpoint's default).
    Returns:
        The PeftModel.
    Raises:
        ValueError: the non-LoRA weights do not fit the model, or lack the projector or alignment weights.
    """
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    import aligngpt_plugin.integrations.llava.model  # noqa: F401  registers the AlignGPT config and model

    adapter_dir = Path(adapter_dir)
    config = AutoConfig.from_pretrained(adapter_dir)
    if hasattr(config, "quantization_config"):  # a QLoRA run: merge into the full-precision LLM
        del config.quantization_config
    model = AutoModelForCausalLM.from_pretrained(base, config=config, torch_dtype=torch_dtype)
    weights = read_non_lora_weights(adapter_dir)
    own = model.state_dict()
    unknown = sorted(k for k in weights if k not in own)
    if unknown:
        raise ValueError(f"{adapter_dir / NON_LORA_FILE} has weights this model lacks: {unknown[:4]}; was it "
                         f"trained with the same --align_levels and projector as {adapter_dir / 'config.json'}?")
    needed = [k for k in own if k.startswith(("model.mm_projector.", f"model.{ALIGNMENT_MODULE}."))]
    missing = [k for k in needed if k not in weights]
    if missing:
        raise ValueError(f"{adapter_dir / NON_LORA_FILE} lacks {missing[:4]}: without them the merged model "
                         "would keep random weights; retrain with the plugin's train entry point")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()}, strict=False)
    vision = model.get_vision_tower() if hasattr(model, "get_vision_tower") else None
    if vision is not None and not vision.is_loaded:
        vision.load_model()
        vision.to(dtype=model.dtype)
    return PeftModel.from_pretrained(model, adapter_dir)


def merge_lora(adapter_dir: str | Path, base: str | Path, out: str | Path, torch_dtype=None) -> Path:
    """Merge a LoRA/QLoRA output of LLaVA's train() into a full checkpoint in `out`.

    Args:
        adapter_dir: the LoRA output folder.
        base: the base LLM it was trained on.
        out: the folder to write (safetensors and the base's tokenizer).
        torch_dtype: the dtype to merge in.
    Returns:
        `out`.
    """
    from transformers import AutoTokenizer

    merged = load_lora_model(adapter_dir, base, torch_dtype).merge_and_unload()
    out = Path(out)
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base, use_fast=False).save_pretrained(out)
    return out
