"""Make LLaVA's `load_pretrained_model` recognise AlignGPT checkpoints by their config.

LLaVA's loader picks its code path from the folder's *name* ('llava' in it: a multimodal model; 'lora':
merge an adapter onto `model_base`) and always builds `LlavaLlamaForCausalLM`. An AlignGPT checkpoint
named `aligngpt-7b` would load as a plain language model, and one named `llava-...` would lose its
alignment module. `enable_aligngpt_loading()` wraps the loader so that the folder's `config.json`
decides instead:

- `model_type: aligngpt_llava` / `aligngpt_mistral` (this plugin): LLaVA's multimodal path with the
  AlignGPT class of that backbone, for a full checkpoint, a LoRA checkpoint (`adapter_config.json` +
  `non_lora_trainables.bin`, with `model_base`) and a projector-only checkpoint (`mm_projector.bin`,
  with `model_base`);
- `model_type: llava_llama`: LLaVA's multimodal path whatever the folder is called;
- `model_type: aligngpt` (the released checkpoints, local or on the hub): a clear error pointing at
  `aligngpt-convert`;
- anything else: LLaVA's loader unchanged.

A projector-only AlignGPT checkpoint (stage 1: `mm_projector.bin` with `--model-base`) has no trained
gate; it generates with the alignment token of one level, as in pre-training: the highest (the best
aligned captions), or `ALIGNGPT_EVAL_LEVEL=k`.

Everything else (tokenizer, image processor, dtype, devices, quantisation) is LLaVA's own code. With
`ALIGNGPT_GATE_DUMP=FILE` set, every `generate` of a loaded AlignGPT model appends the gate's weights
of each sample to FILE (one JSON line per sample, in call order), which `aligngpt-eval gates` joins
with the answers file.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from pathlib import Path

from aligngpt_plugin.integrations.llava.configuration import MODEL_TYPES, RELEASED_MODEL_TYPE, convert_hint

GATE_DUMP_ENV = "ALIGNGPT_GATE_DUMP"
EVAL_LEVEL_ENV = "ALIGNGPT_EVAL_LEVEL"


def checkpoint_model_type(model_path: str) -> str | None:
    """The `model_type` in a checkpoint's config.json (local folder or hub id); None if unreadable."""
    config = Path(model_path) / "config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("model_type")
    if Path(model_path).exists():
        return None
    try:  # a hub id: the raw config (no class lookup, so unregistered model types are read too)
        from transformers import PretrainedConfig

        return PretrainedConfig.get_config_dict(model_path)[0].get("model_type")
    except Exception:  # noqa: BLE001 - unknown or unreachable: LLaVA's own loader decides
        return None


def routed_model_name(model_name: str, model_path: str) -> str:
    """A name that sends LLaVA's loader down the multimodal Llama path, LoRA only when it is one."""
    is_lora = (Path(model_path) / "adapter_config.json").is_file()
    name = re.sub("lora|mpt|mistral", "", model_name, flags=re.IGNORECASE)  # name words LLaVA dispatches on
    if "llava" not in name.lower():
        name = f"{name}-llava"
    return f"{name}-lora" if is_lora else name


@contextlib.contextmanager
def _llava_class(builder, cls, loaded_after: list[str]):
    """LLaVA's builder with `cls` as its model class; weights in `loaded_after` are not reported missing
    while the base LLM loads (LLaVA loads them from the checkpoint's mm_projector.bin right after)."""
    saved, ignored = builder.LlavaLlamaForCausalLM, cls._keys_to_ignore_on_load_missing
    builder.LlavaLlamaForCausalLM = cls
    cls._keys_to_ignore_on_load_missing = [*(ignored or []), *(f"^{re.escape(k)}$" for k in loaded_after)]
    try:
        yield
    finally:
        builder.LlavaLlamaForCausalLM, cls._keys_to_ignore_on_load_missing = saved, ignored


def projector_file_keys(model_path: str, model_base: str | None) -> list[str]:
    """What a projector-only checkpoint (stage 1: mm_projector.bin, loaded with a base LLM) brings; its
    gate too, whether there or not: a stage-1 model generates without one (see `aligngpt_aware`)."""
    path = Path(model_path)
    if model_base is None or not (path / "mm_projector.bin").is_file() or (path / "adapter_config.json").is_file():
        return []
    import torch

    keys = list(torch.load(path / "mm_projector.bin", map_location="cpu", weights_only=True, mmap=True))
    return keys + [f"model.alignment.gate.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]


def gate_rows(model, batch: int) -> list[list[float] | None]:
    """The gate's weights of each sample of the last batch `model` generated for, in batch order; None
    for samples without an image (the gate weighs image samples only)."""
    rows: list[list[float] | None] = [None] * batch
    if model.last_gate_weights is not None:
        chosen = model.last_gate_samples.nonzero().flatten().tolist()
        for k, row in zip(chosen, model.last_gate_weights.float().cpu().tolist()):
            rows[k] = row
    return rows


def dump_gate_weights(model, path: str | Path) -> None:
    """Append each sample's gate weights to `path` after every `generate` of `model`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    generate = model.generate

    @functools.wraps(generate)
    def generate_and_dump(*args, **kwargs):
        out = generate(*args, **kwargs)
        sequences = out.sequences if hasattr(out, "sequences") else out
        with path.open("a") as f:
            for row in gate_rows(model, sequences.shape[0]):
                f.write(json.dumps({"gate_weights": row}) + "\n")
        return out

    model.generate = generate_and_dump


def aligngpt_aware(load):
    """LLaVA's `load_pretrained_model`, dispatching on the checkpoint's config."""

    @functools.wraps(load)
    def load_pretrained_model(model_path, model_base, model_name, *args, **kwargs):
        from llava.model import builder

        model_type = checkpoint_model_type(model_path)
        if model_type == RELEASED_MODEL_TYPE:
            raise ValueError(convert_hint(model_path))
        if model_type not in (*MODEL_TYPES, "llava_llama"):
            return load(model_path, model_base, model_name, *args, **kwargs)
        name = routed_model_name(model_name, model_path)
        if model_type == "llava_llama":
            return load(model_path, model_base, name, *args, **kwargs)
        from aligngpt_plugin.integrations.llava.model import MODEL_CLASS_BY_TYPE

        # LLaVA's builder then takes its Llama path (the routed name), with the class of the checkpoint's backbone
        model_class = MODEL_CLASS_BY_TYPE[model_type]
        with _llava_class(builder, model_class, projector_file_keys(model_path, model_base)):
            tokenizer, model, processor, context_len = load(model_path, model_base, name, *args, **kwargs)
        if model.stage == "pretrain":
            level = int(os.environ.get(EVAL_LEVEL_ENV, model.alignment.num_levels - 1))
            model.use_fixed_level(level)
            print(f"[aligngpt] {model_path} is a pre-training (stage 1) checkpoint, which has no trained gate: "
                  f"it generates with the token of level {level} of 0..{model.alignment.num_levels - 1} "
                  f"({EVAL_LEVEL_ENV}=k for another)", flush=True)
        if os.environ.get(GATE_DUMP_ENV):
            dump_gate_weights(model, os.environ[GATE_DUMP_ENV])
        return tokenizer, model, processor, context_len

    load_pretrained_model.__aligngpt__ = True
    return load_pretrained_model


def enable_aligngpt_loading() -> None:
    """Wrap `llava.model.builder.load_pretrained_model` (idempotent). LLaVA's eval modules import the
    name from the builder when they start, so call this before running one."""
    from llava.model import builder

    if not getattr(builder.load_pretrained_model, "__aligngpt__", False):
        builder.load_pretrained_model = aligngpt_aware(builder.load_pretrained_model)
