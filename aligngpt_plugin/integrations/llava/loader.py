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
of each sample to FILE, one JSON line per sample, each carrying the id of the sample it belongs to:
`{"question_id": ..., "gate_weights": [...]}` under LLaVA's eval modules (plus `round_id` for
model_vqa_mmbench, as its answers have), `{"task": ..., "doc_id": ..., "gate_weights": [...]}` under
lmms-eval (`aligngpt_plugin.evaluation.lmms_model`), which reorders requests by context length.
`aligngpt_plugin.evaluation.gates.join_gates` joins the lines with the answers on those ids.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

from aligngpt_plugin.integrations.llava.configuration import MODEL_TYPES, RELEASED_MODEL_TYPE, convert_hint

GATE_DUMP_ENV = "ALIGNGPT_GATE_DUMP"
EVAL_LEVEL_ENV = "ALIGNGPT_EVAL_LEVEL"


def checkpoint_model_type(model_path: str) -> str | None:
    """The `model_type` in a checkpoint's config.json (local folder or hub id).

    Args:
        model_path: a local checkpoint folder or a hub id.
    Returns:
        The model type, or None when the config cannot be read.
    """
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
    """A name that sends LLaVA's loader down the multimodal Llama path, LoRA only when it is one.

    Args:
        model_name: the name LLaVA's loader was given (it dispatches on words in it).
        model_path: the checkpoint folder (an `adapter_config.json` there makes it a LoRA checkpoint).
    Returns:
        The name with 'lora', 'mpt' and 'mistral' removed, 'llava' added if missing, '-lora' for a LoRA folder.
    """
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
    gate too, whether there or not: a stage-1 model generates without one (see `aligngpt_aware`).

    Args:
        model_path: the checkpoint folder.
        model_base: the base LLM LLaVA's loader is given (None: a full checkpoint).
    Returns:
        The weight names LLaVA loads after the base LLM (empty unless a projector-only checkpoint).
    """
    path = Path(model_path)
    if model_base is None or not (path / "mm_projector.bin").is_file() or (path / "adapter_config.json").is_file():
        return []
    import torch

    keys = list(torch.load(path / "mm_projector.bin", map_location="cpu", weights_only=True, mmap=True))
    return keys + [f"model.alignment.gate.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]


def gate_rows(model, batch: int) -> list[list[float] | None]:
    """The gate's weights of each sample of the last batch `model` generated for, in batch order.

    Args:
        model: an AlignGPT model after `generate` (its `last_gate_weights` [K, N-1] and `last_gate_samples` [B]).
        batch: B, the number of samples of that generate.
    Returns:
        B rows: N-1 floats per image sample, None for samples without an image (the gate weighs image samples only).
    """
    rows: list[list[float] | None] = [None] * batch
    if model.last_gate_weights is not None:
        chosen = model.last_gate_samples.nonzero().flatten().tolist()
        for k, row in zip(chosen, model.last_gate_weights.float().cpu().tolist()):
            rows[k] = row
    return rows


# Which samples the next `generate` answers: called with the batch size, it returns one dict of id
# fields per sample, in batch order ({"question_id": ...} or {"task": ..., "doc_id": ...}), or None
# when it cannot tell.
SampleIds = Callable[[int], "list[dict] | None"]
_IDS_ATTR = "_aligngpt_gate_sample_ids"


def set_gate_sample_ids(model, ids: SampleIds | None) -> None:
    """Tell the gate dump of `model` where to learn the ids of the samples each `generate` answers.

    Args:
        model: the model whose `generate` is dumped.
        ids: called with the batch size, gives one dict of id fields per sample (None: lines carry no ids).
    """
    object.__setattr__(model, _IDS_ATTR, ids)


def sample_ids_in_order(keys: Iterable[dict]) -> SampleIds:
    """Ids for a caller that generates for `keys` one after another, in their order (LLaVA's modules).

    Args:
        keys: one dict of id fields per sample (e.g. {"question_id": 3}), in the order they are answered.
    Returns:
        A SampleIds that hands out the next `batch` keys on each call (None once they run short).
    """
    pending = iter(list(keys))

    def take(batch: int) -> list[dict] | None:
        taken = [k for _, k in zip(range(batch), pending)]
        return taken if len(taken) == batch else None

    return take


def _plain(value):
    return value.item() if hasattr(value, "item") else value  # numpy scalars from pandas rows


def llava_module_sample_ids(argv: list[str]) -> SampleIds | None:
    """The ids of the questions one of LLaVA's eval modules answers, read as the module reads them.

    Each module answers its chunk of `--question-file` (its own `get_chunk`) one question per `generate`, in
    file order, and writes each answer with the question's id; model_vqa_mmbench generates once per round
    (`--all-rounds`: one per option) and writes `round_id` too.

    Args:
        argv: the module's command line (`sys.argv` while `aligngpt_plugin.llava_eval` runs it, argv[0] the
            module's file).
    Returns:
        The SampleIds, or None for any other module or an unreadable question file (the dump then writes lines
        without ids and warns).
    """
    name = Path(argv[0]).stem if argv else ""
    if name not in ("model_vqa_loader", "model_vqa", "model_vqa_science", "model_vqa_mmbench"):
        return None
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--question-file")
    parser.add_argument("--num-chunks", type=int, default=1)
    parser.add_argument("--chunk-idx", type=int, default=0)
    parser.add_argument("--all-rounds", action="store_true")
    args, _ = parser.parse_known_args(argv[1:])
    if not args.question_file or not Path(args.question_file).expanduser().is_file():
        return None
    module = importlib.import_module(f"llava.eval.{name}")
    question_file = Path(args.question_file).expanduser()
    if name == "model_vqa_mmbench":
        import pandas as pd

        chunk = module.get_chunk(pd.read_table(question_file), args.num_chunks, args.chunk_idx)
        keys = [{"question_id": _plain(row["index"]), "round_id": r} for _, row in chunk.iterrows()
                for r in range(len(module.get_options(row, module.all_options)) if args.all_rounds else 1)]
    elif name == "model_vqa_science":  # a JSON list; the id is "id"
        chunk = module.get_chunk(json.loads(question_file.read_text()), args.num_chunks, args.chunk_idx)
        keys = [{"question_id": q["id"]} for q in chunk]
    else:
        questions = [json.loads(line) for line in question_file.read_text().splitlines() if line.strip()]
        keys = [{"question_id": q["question_id"]} for q in module.get_chunk(questions, args.num_chunks,
                                                                             args.chunk_idx)]
    return sample_ids_in_order(keys)


def dump_gate_weights(model, path: str | Path, ids: SampleIds | None = None) -> None:
    """Append each sample's gate weights to `path` after every `generate` of `model`.

    Writes one JSON line per sample, `{**ids, "gate_weights": [N-1 floats] or null}`, with its ids (from `ids`,
    or from `set_gate_sample_ids` later; lines without ids and a warning where none is known).

    Args:
        model: an AlignGPT model; its `generate` is wrapped in place.
        path: the JSON-lines file (appended to; its folder is created).
        ids: where the samples' ids come from (see `SampleIds`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    generate = model.generate
    if ids is not None:
        set_gate_sample_ids(model, ids)
    warned = []

    @functools.wraps(generate)
    def generate_and_dump(*args, **kwargs):
        out = generate(*args, **kwargs)
        sequences = out.sequences if hasattr(out, "sequences") else out
        batch = sequences.shape[0]
        source = getattr(model, _IDS_ATTR, None)
        keys = source(batch) if source is not None else None
        if keys is None or len(keys) != batch:
            if not warned:
                warnings.warn(f"{path}: the gate dump does not know which samples this generate answered; its "
                              "lines carry no id and can only be joined with the answers by order", stacklevel=2)
                warned.append(True)
            keys = [{}] * batch
        with path.open("a") as f:
            for key, row in zip(keys, gate_rows(model, batch)):
                f.write(json.dumps({**key, "gate_weights": row}) + "\n")
        return out

    model.generate = generate_and_dump


def aligngpt_aware(load):
    """LLaVA's `load_pretrained_model`, dispatching on the checkpoint's config.

    Args:
        load: LLaVA's `load_pretrained_model(model_path, model_base, model_name, ...)`.
    Returns:
        A function of the same signature and result (tokenizer, model, image processor, context length) that
        loads AlignGPT checkpoints as their backbone's AlignGPT class, refuses released ones with the conversion
        command, sets a stage-1 checkpoint to a fixed level and dumps gates when `ALIGNGPT_GATE_DUMP` is set.
    """

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
            import sys

            # under one of LLaVA's eval modules its command line names the questions; lmms-eval's model class
            # sets its own ids after loading
            dump_gate_weights(model, os.environ[GATE_DUMP_ENV], llava_module_sample_ids(sys.argv))
        return tokenizer, model, processor, context_len

    load_pretrained_model.__aligngpt__ = True
    return load_pretrained_model


def enable_aligngpt_loading() -> None:
    """Wrap `llava.model.builder.load_pretrained_model` (idempotent). LLaVA's eval modules import the
    name from the builder when they start, so call this before running one."""
    from llava.model import builder

    if not getattr(builder.load_pretrained_model, "__aligngpt__", False):
        builder.load_pretrained_model = aligngpt_aware(builder.load_pretrained_model)
