"""Make LLaVA's `load_pretrained_model` recognise AlignGPT checkpoints by their config.

LLaVA's loader picks its code path from the folder's *name* ('llava' in it: a multimodal model; 'lora':
merge an adapter onto `model_base`) and always builds `LlavaLlamaForCausalLM`. An AlignGPT checkpoint
named `aligngpt-7b` would load as a plain language model, and one named `llava-...` would lose its
alignment module. `enable_aligngpt_loading()` wraps the loader so that the folder's `config.json`
decides instead:

- `model_type: aligngpt_llava` (this plugin): LLaVA's multimodal path with the AlignGPT class, for a
  full checkpoint, a LoRA checkpoint (`adapter_config.json` + `non_lora_trainables.bin`, with
  `model_base`) and a projector-only checkpoint (`mm_projector.bin`, with `model_base`);
- `model_type: llava_llama`: LLaVA's multimodal path whatever the folder is called;
- `model_type: aligngpt` (the released checkpoints): a clear error pointing at `aligngpt-convert`;
- anything else: LLaVA's loader unchanged.

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

GATE_DUMP_ENV = "ALIGNGPT_GATE_DUMP"
RELEASED_MODEL_TYPE = "aligngpt"


def checkpoint_model_type(model_path: str) -> str | None:
    """The `model_type` in a checkpoint's config.json (local folder or hub id); None if unreadable."""
    config = Path(model_path) / "config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("model_type")
    if Path(model_path).exists():
        return None
    try:  # a hub id: the config is small and cached like every other file LLaVA loads
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model_path).model_type
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
def _llava_class(builder, cls):
    saved = builder.LlavaLlamaForCausalLM
    builder.LlavaLlamaForCausalLM = cls
    try:
        yield
    finally:
        builder.LlavaLlamaForCausalLM = saved


def dump_gate_weights(model, path: str | Path) -> None:
    """Append each sample's gate weights to `path` after every `generate` of `model`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    generate = model.generate

    @functools.wraps(generate)
    def generate_and_dump(*args, **kwargs):
        out = generate(*args, **kwargs)
        weights = model.last_gate_weights
        rows = [None] * out.shape[0] if weights is None else weights.float().cpu().tolist()
        with path.open("a") as f:
            for row in rows:
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
            raise ValueError(
                f"{model_path} is a released AlignGPT checkpoint (model_type 'aligngpt'); convert it once with "
                f"`aligngpt-convert to-plugin {model_path} OUT_DIR` and load OUT_DIR")
        if model_type not in ("aligngpt_llava", "llava_llama"):
            return load(model_path, model_base, model_name, *args, **kwargs)
        name = routed_model_name(model_name, model_path)
        if model_type == "llava_llama":
            return load(model_path, model_base, name, *args, **kwargs)
        from aligngpt_plugin.model import AlignGPTLlamaForCausalLM

        with _llava_class(builder, AlignGPTLlamaForCausalLM):
            tokenizer, model, processor, context_len = load(model_path, model_base, name, *args, **kwargs)
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
