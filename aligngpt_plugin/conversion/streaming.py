"""The shard streaming every conversion shares: tensor shapes without reading data, one source file
open at a time, output shards of bounded size written atomically, and a DST.partial folder that a
killed conversion continues.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from aligngpt_plugin.core.fileio import atomic_path, write_json_atomic, write_text_atomic

# Files of a checkpoint folder that hold no model weights (stage-1 adapters, trainer state).
ADAPTER_NAMES = ("mm_projector_align.bin", "mm_projector.bin")
NOT_WEIGHTS = ("training_args.bin", "optimizer", "scheduler", "rng_state", "trainer_state")

class ConversionError(ValueError):
    """The checkpoint does not have the layout or shapes the conversion expects."""


# ---------------------------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class TensorInfo:
    """A tensor's shape and size in bytes, and the file it is in, read without its data."""
    shape: tuple[int, ...]
    nbytes: int
    file: Path


_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


@contextlib.contextmanager
def open_weights(path: Path) -> Iterator[Mapping[str, torch.Tensor]]:
    """The tensors of one weight file, read lazily: safetensors through `safe_open`, `.bin` memory-mapped
    (`weights_only`), so only what is used is read. The mapping is released when the block ends.

    Args:
        path: a `.safetensors` or `.bin` file.
    Returns:
        A context manager giving {name: tensor}.
    Raises:
        ConversionError: naming the file, when it cannot be read as a state dict.
    """
    if path.suffix == ".safetensors":
        with unreadable_is_an_error(path):  # the header is read here: a corrupt file fails now, named
            handle = safe_open(str(path), framework="pt")
        with handle:
            yield _LazySafetensors(handle)
        return
    with unreadable_is_an_error(path):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a file saved in torch's legacy (pre-zip) format cannot be mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping):
            raise TypeError(f"holds a {type(state).__name__}, not a state dict of tensors")
    try:
        yield state
    finally:
        del state


@contextlib.contextmanager
def unreadable_is_an_error(path: Path) -> Iterator[None]:
    """A file that torch or safetensors cannot read (truncated, not a weight file, pickled objects that
    `weights_only` refuses) becomes a ConversionError naming it, instead of a traceback.

    Args:
        path: the file read inside the block.
    """
    try:
        yield
    except ConversionError:
        raise
    except Exception as e:  # noqa: BLE001 - the readers raise many kinds (RuntimeError, UnpicklingError, ...)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"{path}: not a readable weight file ({type(e).__name__}: {reason[:300]})") from None


def read_json(path: Path) -> dict:
    """A JSON object from `path`.

    Args:
        path: the JSON file.
    Returns:
        The object.
    Raises:
        ConversionError: naming the file and the place, when it is not a JSON object.
    """
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise ConversionError(f"{path}: not a text file") from None
    if not isinstance(value, dict):
        raise ConversionError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


class _LazySafetensors(Mapping):
    """A safetensors file as a mapping that reads a tensor when it is looked up."""

    def __init__(self, handle):
        self.handle = handle

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.handle.get_tensor(key)

    def __iter__(self):
        return iter(self.handle.keys())

    def __len__(self) -> int:
        return len(self.handle.keys())


def tensor_infos(files: list[Path]) -> dict[str, TensorInfo]:
    """Shape and size of every tensor, without reading the data.

    Args:
        files: weight files (`.safetensors` or `.bin`).
    Returns:
        {tensor name: TensorInfo}, in file order.
    """
    infos: dict[str, TensorInfo] = {}
    for path in files:
        if path.suffix == ".safetensors":
            with unreadable_is_an_error(path), safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    s = f.get_slice(key)
                    shape = tuple(s.get_shape())
                    n = 1
                    for d in shape:
                        n *= d
                    infos[key] = TensorInfo(shape, n * _SAFETENSORS_BYTES.get(s.get_dtype(), 4), path)
        else:
            with open_weights(path) as state:
                for key, value in state.items():
                    infos[key] = TensorInfo(tuple(value.shape), value.numel() * value.element_size(), path)
    return infos


def weight_files(folder: Path) -> list[Path]:
    """The model weight files of a checkpoint folder, in the order of its index if it has one.

    Args:
        folder: the checkpoint folder.
    Returns:
        The files (without adapters and trainer state; the safetensors ones when a folder has both kinds).
    Raises:
        ConversionError: an index without a weight map or naming files that are not there.
    """
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            weight_map = read_json(folder / index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ConversionError(f"{folder / index}: no \"weight_map\" object")
            names = weight_map.values()
            files = [folder / n for n in dict.fromkeys(names)]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise ConversionError(f"{folder / index} lists files that are not there: {missing}")
            return files
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin")
                   and p.name not in ADAPTER_NAMES and not p.name.startswith(NOT_WEIGHTS))
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    return safetensors or files  # a folder with both keeps the safetensors


def resolve(src: str) -> Path:
    """A local path, or a hub id fetched (or found in the cache) with huggingface_hub.

    Args:
        src: a path or a hub id `owner/name`.
    Returns:
        The local path.
    Raises:
        ConversionError: neither a path nor a hub id that can be fetched.
    """
    path = Path(src)
    if path.exists():
        return path
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", src):
        raise ConversionError(f"{src} does not exist (a checkpoint folder, a .bin file or a hub id owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(src, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.model",
                                                           "*.txt", "*.py", "*.md"]))
    except Exception as e:  # noqa: BLE001 - offline, unknown id, no access: all end here with the reason
        raise ConversionError(f"{src} is not a local path and could not be fetched from the hub "
                              f"({type(e).__name__}: {e})") from None


# ------------------------------------------------------------------------------------------- writing

@dataclass
class OutputShard:
    """One output file: which source keys go into it, under which names."""

    name: str
    source: Path
    keys: dict[str, str] = field(default_factory=dict)  # source key -> output key
    nbytes: int = 0


def plan_shards(infos: dict[str, TensorInfo], rename, max_bytes: int, prefix: str) -> list[OutputShard]:
    """Group tensors into output files of at most `max_bytes` (a larger tensor gets a file to itself),
    never mixing source files, so one source file is open at a time.

    Args:
        infos: {source name: TensorInfo}, in the order to write.
        rename: source name -> output name, or None to leave the tensor out.
        max_bytes: the largest shard.
        prefix: the output files' stem (`model` gives model.safetensors or model-00001-of-0000N.safetensors).
    Returns:
        The shards, named.
    """
    shards: list[OutputShard] = []
    for key, info in infos.items():
        new = rename(key)
        if new is None:
            continue
        last = shards[-1] if shards else None
        if last is None or last.source != info.file or (last.keys and last.nbytes + info.nbytes > max_bytes):
            last = OutputShard("", info.file)
            shards.append(last)
        last.keys[key] = new
        last.nbytes += info.nbytes
    for i, shard in enumerate(shards, 1):
        shard.name = (f"{prefix}.safetensors" if len(shards) == 1
                      else f"{prefix}-{i:05d}-of-{len(shards):05d}.safetensors")
    return shards


def write_shards(shards: list[OutputShard], folder: Path) -> dict[str, str]:
    """Write every shard not already there (a resumed run keeps finished ones).

    Args:
        shards: the planned shards.
        folder: where to write them.
    Returns:
        The weight map {output name: shard file name}.
    """
    weight_map = {}
    by_source: dict[Path, list[OutputShard]] = {}
    for shard in shards:
        by_source.setdefault(shard.source, []).append(shard)
        weight_map.update(dict.fromkeys(shard.keys.values(), shard.name))
    for source, group in by_source.items():
        todo = [s for s in group if not (folder / s.name).is_file()]
        if not todo:
            continue
        with open_weights(source) as state:
            for shard in todo:
                tensors, seen = {}, set()
                for key, new in shard.keys.items():
                    value = state[key].contiguous()
                    ptr = value.untyped_storage().data_ptr()
                    tensors[new] = value.clone() if ptr in seen else value  # safetensors refuses shared storage
                    seen.add(ptr)
                with atomic_path(folder / shard.name) as tmp:
                    save_file(tensors, str(tmp), metadata={"format": "pt"})
                del tensors
    return weight_map


def write_index(folder: Path, prefix: str, shards: list[OutputShard], weight_map: dict[str, str]) -> None:
    """Write `<prefix>.safetensors.index.json` when there is more than one shard.

    Args:
        folder: the output folder.
        prefix: the shards' stem.
        shards: the shards (their sizes make `total_size`).
        weight_map: {output name: shard file name}.
    """
    if len(shards) > 1:
        write_json_atomic(folder / f"{prefix}.safetensors.index.json", {
            "metadata": {"total_size": sum(s.nbytes for s in shards)}, "weight_map": dict(sorted(weight_map.items()))})


@contextlib.contextmanager
def partial_folder(dst: Path, plan: dict) -> Iterator[Path]:
    """Write into DST.partial and rename it to DST at the end. A DST.partial left by a killed run of the
    same conversion (same source files, same plan) is continued; anything else there is an error.

    Args:
        dst: the output folder (must not exist).
        plan: what identifies the conversion (direction, sources, sizes): its hash marks the partial folder.
    Returns:
        A context manager giving the partial folder to write into.
    Raises:
        ConversionError: `dst` exists, or the partial folder belongs to another conversion.
    """
    if dst.exists():
        raise ConversionError(f"{dst} already exists; remove it or choose another output")
    work = dst.with_name(dst.name + ".partial")
    stamp = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
    marker = work / ".conversion"
    if work.exists():
        if not marker.is_file() or marker.read_text().strip() != stamp:
            raise ConversionError(f"{work} holds another conversion's files; remove it first")
        print(f"[aligngpt-convert] continuing the conversion in {work}", flush=True)
    else:
        work.mkdir(parents=True)
        write_text_atomic(marker, stamp + "\n")
    yield work
    marker.unlink()
    work.rename(dst)


def source_stamp(files: list[Path]) -> list:
    """What identifies the source files of a conversion, for `partial_folder`'s plan.

    Args:
        files: the source files.
    Returns:
        [[resolved path, size, mtime in ns], ...].
    """
    return [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def copy_other_files(src: Path, dst: Path, skip: set[Path]) -> None:
    """Tokenizer, generation config and the like, unchanged.

    Args:
        src: the source folder.
        dst: the output folder.
        skip: files not to copy (the weights); config.json, indexes and weight files are never copied.
    """
    for f in src.iterdir():
        if (f.is_file() and f not in skip and f.name != "config.json" and not f.name.endswith(".index.json")
                and f.suffix not in (".bin", ".safetensors") and not f.name.startswith(".")):
            shutil.copy2(f, dst / f.name)
