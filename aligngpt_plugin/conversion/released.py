"""The released AlignGPT checkpoints in this plugin's layout, and back (`aligngpt-convert`'s API).

Released layout (docs/method.md#released-checkpoints; the public code's `AlignGPTForCausalLM` holds the projector, the
level table and the gate itself, so their keys are at the top of the state dict): `mm_projector.*`,
`align_indicators.indicator_embs` [8, hidden], `gated_weight_layer.mlp.{0,2}.*`, the Llama under `model.*`,
`lm_head.weight`, and in full checkpoints the CLIP tower under `vision_tower.vision_tower.*` (and, from
transformers 4.31, `model.layers.*.self_attn.rotary_emb.inv_freq` buffers). Plugin layout: LLaVA's, with
everything multimodal inside the inner model: `model.mm_projector.*`, `model.alignment.level_embeddings`,
`model.alignment.gate.{0,2}.*`; `model_type: "aligngpt_llava"` with an `alignment` entry whose sizes are
read off the weights.

The tower keeps its weights, under LLaVA's name (`model.vision_tower.vision_tower.*`, where a checkpoint
trained with LLaVA has them too; the model loads them when it builds the tower, else the tower comes from
`mm_vision_tower`, as LLaVA does). The rotary buffers have no place in today's Llama (transformers
recomputes them): they are set aside in `released/` beside the converted weights, where no loader reads
them, with the original config.json; `from-plugin` puts them back, so released -> plugin -> released
gives the same tensors, byte for byte.

Conversion streams: one input shard is open at a time and output shards hold at most `--max-shard-size`
bytes, so a 26 GB 13B checkpoint converts in a few GB of memory. A killed conversion continues where it
stopped when run again (finished shards are kept in DST.partial/).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers  # noqa: F401  - before the integration: the package registers its types on this import

from aligngpt_plugin.conversion.streaming import (
    ADAPTER_NAMES,
    ConversionError,
    TensorInfo,
    copy_other_files,
    open_weights,
    partial_folder,
    plan_shards,
    read_json,
    resolve,
    source_stamp,
    tensor_infos,
    weight_files,
    write_index,
    write_shards,
)
from aligngpt_plugin.core.alignment import AlignmentConfig
from aligngpt_plugin.core.fileio import atomic_path, write_json_atomic
from aligngpt_plugin.integrations.llava.configuration import (
    MODEL_TYPE,
    MODEL_TYPES,
    RELEASED_ARCHITECTURE,
    RELEASED_MODEL_TYPE,
)

PLUGIN_ARCHITECTURE = "AlignGPTLlamaForCausalLM"
# What the public code hard-codes (mm_align.py: 8 indicators, 7 gate outputs, N_IMAGE_TOKEN = 576, width 256).
PUBLIC_ALIGNMENT = AlignmentConfig(num_levels=8, gate_tokens=576, gate_hidden_size=256)

# released prefix -> plugin prefix; keys under neither side's other prefixes keep their names (model.*, lm_head.*)
PREFIXES = (
    ("align_indicators.indicator_embs", "model.alignment.level_embeddings"),
    ("gated_weight_layer.mlp.", "model.alignment.gate."),
    ("mm_projector.", "model.mm_projector."),
    ("vision_tower.", "model.vision_tower."),
)
KEPT = ("model.", "lm_head.")
ROTARY_BUFFER = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
SET_ASIDE = "released"  # folder of the plugin checkpoint for what only the released layout holds


def released_to_plugin(key: str) -> str:
    """A weight's name in the plugin's layout.

    Args:
        key: its name in the released AlignGPT layout (e.g. `align_indicators.indicator_embs`).
    Returns:
        The plugin's name (e.g. `model.alignment.level_embeddings`); names under neither side's prefixes unchanged.
    """
    for released, plugin in PREFIXES:
        if key.startswith(released):
            return plugin + key[len(released):]
    return key


def plugin_to_released(key: str) -> str:
    """A weight's name in the released AlignGPT layout (the inverse of `released_to_plugin`).

    Args:
        key: its name in the plugin's layout.
    Returns:
        The released layout's name.
    """
    for released, plugin in PREFIXES:
        if key.startswith(plugin):
            return released + key[len(plugin):]
    return key


def is_set_aside(released_key: str) -> bool:
    """Keys of the released layout that the plugin's model has no place for (see the module docstring).

    Args:
        released_key: a weight name of the released layout.
    Returns:
        True for the rotary `inv_freq` buffers, which go to `released/`.
    """
    return bool(ROTARY_BUFFER.match(released_key))


# ------------------------------------------------------------------------------------------- checking

def _shape(infos: dict[str, TensorInfo], key: str, source: str, released: bool) -> tuple[int, ...]:
    if key not in infos:
        raise ConversionError(f"{source}: weight {plugin_to_released(key) if released else key!r} is missing")
    return infos[key].shape


def alignment_from_weights(infos: dict[str, TensorInfo], hidden_size: int | None, source: str,
                           need_gate: bool, released: bool) -> AlignmentConfig:
    """The AlignmentConfig that plugin-layout weights imply.

    Args:
        infos: {plugin-layout name: TensorInfo} (shapes are read, not tensors).
        hidden_size: the LLM's hidden size the level table must match (None: not checked).
        source: the file or folder, for messages.
        need_gate: require the gate (a full checkpoint) rather than allow its absence (a pre-training file).
        released: name keys in messages as the released layout has them.
    Returns:
        AlignmentConfig with `num_levels` N from the [N, H] level table and, with a gate, `gate_tokens` and
        `gate_hidden_size` from its [hidden, tokens] first layer.
    Raises:
        ConversionError: naming key and shapes, when the weights do not fit together or with the LLM.
    """
    levels = _shape(infos, "model.alignment.level_embeddings", source, released)
    n = levels[0]
    problems = []
    if len(levels) != 2 or n < 2:
        problems.append(f"level table {tuple(levels)}: expected [levels >= 2, hidden]")
    elif hidden_size is not None and levels[1] != hidden_size:
        problems.append(f"level table {tuple(levels)} is {levels[1]} wide, the LLM's hidden_size is {hidden_size}")
    gate_keys = [f"model.alignment.gate.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    if not need_gate and not any(k in infos for k in gate_keys):  # pre-training: no gate yet
        if problems:
            raise ConversionError(f"{source}: " + "; ".join(problems))
        return AlignmentConfig(num_levels=n)
    w0, b0, w2, b2 = (_shape(infos, k, source, released) for k in gate_keys)
    if len(w0) != 2 or b0 != w0[:1]:
        problems.append(f"gate layer 0 is weight {w0}, bias {b0}: expected [hidden, tokens] and [hidden]")
    elif len(w2) != 2 or w2[0] != n - 1 or b2 != (n - 1,):
        problems.append(f"gate layer 2 is weight {w2}, bias {b2}: {n} levels need {n - 1} outputs")
    elif w2[1] != w0[0]:
        problems.append(f"gate layers do not chain: {w0} then {w2}")
    if problems:
        raise ConversionError(f"{source}: " + "; ".join(problems))
    return AlignmentConfig(num_levels=n, gate_tokens=w0[1], gate_hidden_size=w0[0])


def check_llm(infos: dict[str, TensorInfo], config: dict, source: str) -> None:
    """Check the embedding and output layers against config.json, then the projector.

    Args:
        infos: {plugin-layout name: TensorInfo}.
        config: the checkpoint's config.json.
        source: the folder, for messages.
    Raises:
        ConversionError: a shape that config.json contradicts, or a missing weight.
    """
    hidden, vocab = config.get("hidden_size"), config.get("vocab_size")
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        shape = _shape(infos, key, source, released=False)
        if (vocab, hidden) != shape and None not in (vocab, hidden):
            raise ConversionError(f"{source}: {key} has shape {shape}, config.json says "
                                  f"[vocab_size {vocab}, hidden_size {hidden}]")
    check_projector(infos, config, source)


def check_projector(infos: dict[str, TensorInfo], config: dict, source: str) -> None:
    """Check the projector's first and last layers against `mm_hidden_size` and `hidden_size`.

    Args:
        infos: {plugin-layout name: TensorInfo}.
        config: the checkpoint's config.json (empty: only the presence of the projector is checked).
        source: the file or folder, for messages.
    Raises:
        ConversionError: no projector weights, or a shape config.json contradicts.
    """
    layers = sorted(k for k in infos if k.startswith("model.mm_projector.") and k.endswith(".weight"))
    if not layers:
        raise ConversionError(f"{source}: no projector weights (mm_projector.*)")
    first, last = infos[layers[0]].shape, infos[layers[-1]].shape
    mm_hidden, hidden = config.get("mm_hidden_size"), config.get("hidden_size")
    if mm_hidden is not None and first[-1] != mm_hidden:
        raise ConversionError(f"{source}: {plugin_to_released(layers[0])} has shape {first}, config.json's "
                              f"mm_hidden_size is {mm_hidden}")
    if hidden is not None and last[0] != hidden:
        raise ConversionError(f"{source}: {plugin_to_released(layers[-1])} has shape {last}, config.json's "
                              f"hidden_size is {hidden}")


def unknown_keys(keys, source: str, released: bool) -> None:
    """Refuse weights that belong to neither the released nor the plugin layout.

    Args:
        keys: the weight names.
        source: the file or folder, for messages.
        released: whether `keys` are in the released layout (else the plugin's).
    Raises:
        ConversionError: naming a few of them.
    """
    known = tuple(p[0 if released else 1] for p in PREFIXES) + KEPT
    bad = [k for k in keys if not k.startswith(known)]
    if bad:
        layout = "released AlignGPT" if released else "plugin"
        raise ConversionError(f"{source}: {len(bad)} weights are not part of the {layout} layout "
                              f"(docs/method.md#released-checkpoints), e.g. {bad[:3]}")


def public_form(alignment: AlignmentConfig, source: str) -> None:
    """from-plugin: the public code can only express its own gate and level count.

    Args:
        alignment: the checkpoint's alignment settings.
        source: the file or folder, for messages.
    Raises:
        ConversionError: naming each setting that differs from the public code's (8 levels, adaptive gate over
            576 image tokens and all text, 256 hidden).
    """
    ours = (alignment.num_levels, alignment.gate_tokens, alignment.gate_hidden_size, alignment.gate_input,
            alignment.gate_text, alignment.mode)
    public = (8, 576, 256, "fixed", "all", "adaptive")
    if ours != public:
        names = ("num_levels", "gate_tokens", "gate_hidden_size", "gate_input", "gate_text", "mode")
        diff = ", ".join(f"{n}={a!r} (public: {b!r})" for n, a, b in zip(names, ours, public) if a != b)
        raise ConversionError(f"{source}: the released layout is the public code's, which hard-codes 8 levels "
                              f"and an adaptive gate over 576 image tokens with all text; this checkpoint has {diff}")


# ------------------------------------------------------------------------------------------- writing
# ------------------------------------------------------------------------------------- the two ways

@dataclass
class ConversionReport:
    """What a conversion wrote and what it set aside."""

    output: Path
    tensors: int = 0
    set_aside: dict[str, int] = field(default_factory=dict)  # kind -> count
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote {self.output} ({self.tensors} tensors)"]
        lines += [f"  set aside in {SET_ASIDE}/: {n} {kind}" for kind, n in self.set_aside.items() if n]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def folder_to_plugin(src: Path, dst: Path, vision_tower: str | None, max_bytes: int) -> ConversionReport:
    """Convert a released AlignGPT checkpoint folder (or pre-training folder) to the plugin's layout.

    Args:
        src: the released folder.
        dst: the output folder (must not exist).
        vision_tower: a CLIP tower to write as `mm_vision_tower` (None: keep the config's).
        max_bytes: the largest shard to write.
    Returns:
        The ConversionReport (tensors written, what went to `released/`, notes).
    Raises:
        ConversionError: the folder does not fit the released layout.
    """
    config = read_config(src, RELEASED_MODEL_TYPE, "to-plugin")
    files = weight_files(src)
    adapter = next((src / n for n in ADAPTER_NAMES if (src / n).is_file()), None)
    if not files and adapter is not None:  # a pre-training folder (nlpzhaof/aligngpt-7b-pretrain)
        return pretrain_folder_to_plugin(src, adapter, dst, config, vision_tower)
    if not files:
        raise ConversionError(f"{src} holds no .safetensors or .bin weights")
    infos = tensor_infos(files)
    unknown_keys(infos, str(src), released=True)
    plugin_infos = {released_to_plugin(k): v for k, v in infos.items() if not is_set_aside(k)}
    check_llm(plugin_infos, config, str(src))
    alignment = alignment_from_weights(plugin_infos, config.get("hidden_size"), str(src), need_gate=True,
                                       released=True)

    main = plan_shards(infos, lambda k: None if is_set_aside(k) else released_to_plugin(k), max_bytes, "model")
    extras = plan_shards(infos, lambda k: k if is_set_aside(k) else None, max_bytes, "extras")
    report = ConversionReport(dst, tensors=len(plugin_infos))
    report.set_aside = {"rotary inv_freq buffers (transformers recomputes them)": sum(map(is_set_aside, infos))}
    plugin_config = dict(config, model_type=MODEL_TYPE, architectures=[PLUGIN_ARCHITECTURE],
                         alignment=alignment.to_dict())
    report.notes += vision_tower_notes(plugin_config, vision_tower)
    plan = {"direction": "to-plugin", "sources": source_stamp(files), "max_bytes": max_bytes}
    with partial_folder(dst, plan) as work:
        write_index(work, "model", main, write_shards(main, work))
        if extras:
            (work / SET_ASIDE).mkdir(exist_ok=True)
            write_index(work / SET_ASIDE, "extras", extras, write_shards(extras, work / SET_ASIDE))
        write_json_atomic(work / SET_ASIDE / "config.json", config)
        copy_other_files(src, work, set(files))
        write_json_atomic(work / "config.json", plugin_config)
    return report


def folder_from_plugin(src: Path, dst: Path, max_bytes: int) -> ConversionReport:
    """Convert a plugin (Llama) checkpoint folder to the released AlignGPT layout, with what `released/` kept.

    Args:
        src: the plugin checkpoint folder.
        dst: the output folder (must not exist).
        max_bytes: the largest shard to write.
    Returns:
        The ConversionReport.
    Raises:
        ConversionError: a projector-only checkpoint, weights that do not fit, or settings the public code
            cannot express.
    """
    config = read_config(src, MODEL_TYPE, "from-plugin")
    files = weight_files(src)
    if not files:
        if (src / "mm_projector.bin").is_file():
            raise ConversionError(f"{src} is a pre-training (projector-only) checkpoint: convert its file, "
                                  f"`aligngpt-convert from-plugin {src / 'mm_projector.bin'} "
                                  "OUT/mm_projector_align.bin`")
        raise ConversionError(f"{src} holds no .safetensors or .bin weights")
    infos = tensor_infos(files)
    unknown_keys(infos, str(src), released=False)
    check_llm(infos, config, str(src))
    alignment = alignment_from_weights(infos, config.get("hidden_size"), str(src), need_gate=True, released=False)
    public_form(AlignmentConfig.from_dict(config.get("alignment", {})), str(src / "config.json"))
    public_form(alignment, str(src))

    aside = src / SET_ASIDE
    extra_files = weight_files(aside) if aside.is_dir() else []
    extra_infos = tensor_infos(extra_files)
    clash = sorted(set(extra_infos) & {plugin_to_released(k) for k in infos})
    if clash:
        raise ConversionError(f"{aside} and the weights both hold {clash[:3]}")
    main = plan_shards(infos, plugin_to_released, max_bytes, "model")
    main += plan_shards(extra_infos, lambda k: k, max_bytes, "model")
    for i, shard in enumerate(main, 1):  # one numbering over both groups
        shard.name = "model.safetensors" if len(main) == 1 else f"model-{i:05d}-of-{len(main):05d}.safetensors"

    released_config = dict(config)
    released_config.pop("alignment", None)
    original = read_json(aside / "config.json") if (aside / "config.json").is_file() else {}
    released_config.update(model_type=RELEASED_MODEL_TYPE, architectures=[RELEASED_ARCHITECTURE])
    for key in ("architectures", "mm_vision_tower"):  # a converted checkpoint: as the released folder had them
        if original and key in original:
            released_config[key] = original[key]
        elif original:
            released_config.pop(key, None)
    plan = {"direction": "from-plugin", "sources": source_stamp(files + extra_files), "max_bytes": max_bytes}
    with partial_folder(dst, plan) as work:
        write_index(work, "model", main, write_shards(main, work))
        copy_other_files(src, work, set(files))
        write_json_atomic(work / "config.json", released_config)
    return ConversionReport(dst, tensors=len(infos) + len(extra_infos))


def read_config(folder: Path, want: str, direction: str) -> dict:
    """A checkpoint folder's config.json, checked to be of the model type a direction converts from.

    Args:
        folder: the checkpoint folder.
        want: the model type expected.
        direction: "to-plugin" or "from-plugin", for messages.
    Returns:
        The config as a dict.
    Raises:
        ConversionError: no config.json, or another model type.
    """
    path = folder / "config.json"
    if not path.is_file():
        raise ConversionError(f"{folder} has no config.json: is it a checkpoint folder?")
    config = read_json(path)
    found = config.get("model_type")
    if found != want:
        why = " (the public AlignGPT code is Llama only, so only Llama checkpoints have a released layout)" \
            if direction == "from-plugin" and found in MODEL_TYPES else ""
        raise ConversionError(f"{path}: model_type is {found!r}, {direction} expects {want!r}{why}")
    return config


def vision_tower_notes(config: dict, vision_tower: str | None) -> list[str]:
    """Point `mm_vision_tower` at a tower that exists here; the public scripts saved a relative local path.

    Args:
        config: the config being written (changed in place when `vision_tower` is given).
        vision_tower: the tower to use, or None.
    Returns:
        Notes for the report (what changed, or that the config's tower is not a folder here).
    """
    if vision_tower:
        old, config["mm_vision_tower"] = config.get("mm_vision_tower"), vision_tower
        return [f"mm_vision_tower {old!r} -> {vision_tower!r} (from-plugin restores the original)"]
    tower = config.get("mm_vision_tower")
    if tower and (tower.startswith((".", "/")) or tower.count("/") > 1) and not Path(tower).exists():
        return [f"mm_vision_tower is {tower!r}, which is not a folder here: LLaVA loads the vision tower from "
                "it; convert again with --vision-tower openai/clip-vit-large-patch14-336 (or a local copy)"]
    return []


def adapter_state(path: Path, to_plugin: bool) -> tuple[dict[str, torch.Tensor], AlignmentConfig]:
    """A pre-training file renamed; the alignment sizes it implies (checked).

    Args:
        path: `mm_projector_align.bin` (released) or `mm_projector.bin` (plugin).
        to_plugin: the direction.
    Returns:
        (the renamed state dict, without the gate when going to the released layout; its AlignmentConfig).
    Raises:
        ConversionError: unknown keys, no projector, or levels that do not fit.
    """
    with open_weights(path) as state:
        state = dict(state.items())
    if to_plugin:
        unknown_keys(state, str(path), released=True)
        state = {released_to_plugin(k): v for k, v in state.items()}
    else:
        unknown_keys(state, str(path), released=False)
    infos = {k: TensorInfo(tuple(v.shape), 0, path) for k, v in state.items()}
    check_projector(infos, {}, str(path))
    alignment = alignment_from_weights(infos, None, str(path), need_gate=False, released=to_plugin)
    if not to_plugin:
        # stage 1 of the public code has no gate: mm_projector_align.bin holds the projector and the levels
        state = {plugin_to_released(k): v for k, v in state.items() if not k.startswith("model.alignment.gate.")}
        if alignment.num_levels != PUBLIC_ALIGNMENT.num_levels:
            public_form(alignment, str(path))
    return state, alignment


def convert_adapter(src: Path, dst: Path, to_plugin: bool, force: bool = False) -> ConversionReport:
    """A pre-training file (`mm_projector_align.bin` <-> `mm_projector.bin`). An existing `dst` is
    replaced only with `force` (a folder's output is never replaced: see `partial_folder`).

    Args:
        src: the file to convert.
        dst: the output file.
        to_plugin: the direction.
        force: replace an existing `dst`.
    Returns:
        The ConversionReport.
    """
    if dst.is_dir():
        raise ConversionError(f"{dst} is a folder; a pre-training file converts to a file: give its path, "
                              f"e.g. {dst / ('mm_projector.bin' if to_plugin else 'mm_projector_align.bin')}")
    if dst.exists() and dst.resolve() == src.resolve():
        raise ConversionError(f"{dst} is the file being converted; write the result elsewhere")
    if dst.exists() and not force:
        raise ConversionError(f"{dst} already exists; pass --force to replace it, or choose another output")
    state, _ = adapter_state(src, to_plugin)
    with atomic_path(dst) as tmp:
        torch.save(state, tmp)
    return ConversionReport(dst, tensors=len(state))


def pretrain_folder_to_plugin(src: Path, adapter: Path, dst: Path, config: dict,
                              vision_tower: str | None) -> ConversionReport:
    """A released pre-training folder -> a plugin projector-only checkpoint (`mm_projector.bin` and its
    config), which stage 2's --pretrain_mm_mlp_adapter and the loader's --model-base path both take.

    Args:
        src: the released pre-training folder.
        adapter: its `mm_projector_align.bin`.
        dst: the output folder.
        config: the folder's config.json.
        vision_tower: a CLIP tower to write as `mm_vision_tower` (None: keep the config's).
    Returns:
        The ConversionReport.
    """
    state, alignment = adapter_state(adapter, to_plugin=True)
    plugin_config = dict(config, model_type=MODEL_TYPE, architectures=[PLUGIN_ARCHITECTURE],
                         alignment=alignment.to_dict())
    report = ConversionReport(dst, tensors=len(state))
    report.notes += vision_tower_notes(plugin_config, vision_tower)
    with partial_folder(dst, {"direction": "to-plugin", "sources": source_stamp([adapter])}) as work:
        with atomic_path(work / "mm_projector.bin") as tmp:
            torch.save(state, tmp)
        write_json_atomic(work / SET_ASIDE / "config.json", config)
        copy_other_files(src, work, {adapter})
        write_json_atomic(work / "config.json", plugin_config)
    return report


def convert(src: str | Path, dst: str | Path, to_plugin: bool = True, vision_tower: str | None = None,
            max_shard_size: int = 2 << 30, force: bool = False) -> ConversionReport:
    """Convert a checkpoint folder (or hub id) or a pre-training `.bin` file; ConversionError if it does
    not fit or cannot be read, before anything is written. An existing output file is replaced only with
    `force`; an existing output folder never is (remove it first).

    Args:
        src: the checkpoint folder, hub id (to-plugin only) or pre-training file.
        dst: the output folder or file.
        to_plugin: released -> plugin (True) or plugin -> released.
        vision_tower: a CLIP tower to write as `mm_vision_tower` (to-plugin).
        max_shard_size: the largest shard to write, in bytes.
        force: replace an existing output file.
    Returns:
        The ConversionReport.
    """
    source = resolve(str(src)) if to_plugin else Path(src)
    if not source.exists():
        raise ConversionError(f"{source} does not exist")
    dst = Path(dst)
    if source.is_file():
        return convert_adapter(source, dst, to_plugin, force)
    if to_plugin:
        return folder_to_plugin(source, dst, vision_tower, max_shard_size)
    return folder_from_plugin(source, dst, max_shard_size)
