"""What a scoring run is asked to do (`ScoreConfig`) and what it did (`ScoreSummary`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from aligngpt_plugin.scoring.backends import DEFAULT_MODEL, DEFAULT_PRETRAINED, is_transformers_clip
from aligngpt_plugin.scoring.decoding import DECODE_MODES
from aligngpt_plugin.scoring.records import CAPTION_MODES
from aligngpt_plugin.scoring.shards import is_shard_input


class ScoreError(RuntimeError):
    """A record could not be scored under --strict, or a run's outputs are inconsistent."""


@dataclass
class ScoreConfig:
    """Everything a scoring run needs. `aligngpt-score`'s flags are made from these fields (their help,
    defaults and choices; score.py names the few whose flag is spelled otherwise)."""

    data_path: str = field(metadata={
        "help": "LLaVA data file (a JSON array or JSON Lines of records), or webdataset shards: a brace pattern "
                "(shards/{00000..00099}.tar), a folder of .tar files, or a list file (.txt, one shard a line)"})
    output_dir: str = field(metadata={"help": "where the outputs (and work/, the resumable shards) go"})
    image_folder: str | None = field(default=None, metadata={
        "help": "folder the records' `image` paths are relative to (JSON input; shards hold their images)"})
    model: str = field(default=DEFAULT_MODEL, metadata={
        "help": "open_clip model name, open_clip config .json, hf-hub:/local-dir:, or hf:PATH (transformers CLIP)"})
    pretrained: str | None = field(default=DEFAULT_PRETRAINED, metadata={
        "help": "open_clip pretrained tag or local checkpoint file; empty for random weights"})
    num_levels: int | None = field(default=None, metadata={
        "help": "equal-count levels N (default 8, or the levels file's); 0 = lowest similarity"})
    levels_from: str | None = field(default=None, metadata={"help": "apply the edges of this levels.json instead"})
    caption: Literal["gpt-first", "gpt-last", "gpt-all"] = field(default="gpt-first", metadata={
        "help": "which gpt turn is the caption (gpt-all joins every gpt turn of a conversation)"})
    caption_field: str | None = field(default=None, metadata={
        "help": "take the caption from this record field (shards: this field of the .json member, not the .txt)"})
    embeddings: bool = field(default=False, metadata={
        "help": "shards: also write the normalised image and text embeddings into each scores parquet"})
    decode: Literal["auto", "cpu", "device"] = field(default="auto", metadata={
        "help": "where JPEGs are decoded: cpu (workers, PIL), device (nvjpeg on the GPU), auto (device on CUDA "
                "when a probe finds it faster)"})
    batch_size: int = field(default=256, metadata={"help": "images per forward pass"})
    num_workers: int = field(default=-1, metadata={"help": "DataLoader workers (-1: one per CPU core, at most 16)"})
    decode_threads: int = field(default=4, metadata={"help": "threads decoding one batch's images in a worker"})
    chunk_size: int = field(default=8192, metadata={"help": "JSON input: records per chunk (the unit of resuming)"})
    device: str = field(default="auto", metadata={"help": "auto (cuda:LOCAL_RANK if available), cpu, cuda, ..."})
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(default="auto", metadata={
        "help": "autocast dtype; auto is bf16 on CUDA (fp16 where bf16 is missing), fp32 elsewhere"})
    strict: bool = field(default=False, metadata={"help": "stop at the first record that cannot be scored"})
    drop_errors: bool = field(default=False, metadata={
        "help": "leave records that could not be scored out of the levelled dataset (default: keep, no level)"})
    keep_top: float | None = field(default=None, metadata={
        "help": "also write the dataset filtered to the best-aligned fraction F of the scored records (0 < F <= 1)",
        "metavar": "F"})
    min_score: float | None = field(default=None, metadata={
        "help": "also write the dataset filtered to records scoring at least S (with --keep-top: both hold)",
        "metavar": "S"})
    trl_dataset: Literal["none", "parquet", "folder"] = field(default="none", metadata={
        "help": "JSON input: also write the levelled data in TRL's vision-language format (messages, images, "
                "align_level), for aligngpt-sft or TRL's SFTTrainer: a Parquet file (<data>_levels_trl.parquet) or "
                "a datasets save_to_disk folder (<data>_levels_trl/); images are stored as absolute paths"})
    overwrite: bool = field(default=False, metadata={"help": "discard a previous run's shards in output_dir"})
    merge: bool = field(default=True, metadata={"help": "write the outputs after scoring (rank 0)"})
    rank: int | None = field(default=None, metadata={"help": "this job's shard, for jobs run without torchrun"})
    world_size: int | None = field(default=None, metadata={"help": "number of shards, with --rank"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar with images/s"})
    chunk_delay_s: float = field(default=0.0, metadata={"help": "sleep after each unit (kill/resume tests)"})

    def __post_init__(self) -> None:
        if self.decode not in DECODE_MODES:
            raise ValueError(f"decode={self.decode!r}; choose one of {DECODE_MODES}")
        if self.image_folder is None and not self.shard_input:
            raise ValueError(f"{self.data_path} is a JSON data file: give --images, the folder its image paths "
                             "are relative to (only webdataset shards hold their images)")
        if self.image_folder is not None and self.shard_input:
            raise ValueError(f"{self.data_path} names webdataset shards, which hold their images: drop --images "
                             f"{self.image_folder}")
        if self.trl_dataset not in ("none", "parquet", "folder"):
            raise ValueError(f"trl_dataset={self.trl_dataset!r}; choose none, parquet or folder")
        if self.trl_dataset != "none" and self.shard_input:
            raise ValueError("--trl-dataset converts LLaVA JSON input; webdataset shards hold their images in the tar "
                             "files (convert the levelled JSON of a JSON run instead)")
        if self.embeddings and not self.shard_input:
            raise ValueError("embeddings are written into the per-shard parquet files: webdataset input only")
        if self.caption not in CAPTION_MODES:
            raise ValueError(f"caption={self.caption!r}; choose one of {CAPTION_MODES}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision={self.precision!r}; choose auto, fp32, bf16 or fp16")
        for name in ("batch_size", "chunk_size", "decode_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.levels_from is None and self.num_levels is None:
            self.num_levels = 8
        if self.keep_top is not None and not 0 < self.keep_top <= 1:
            raise ValueError(f"keep_top={self.keep_top}: give the fraction to keep, in (0, 1]")
        if self.num_levels is not None and self.num_levels < 2:
            raise ValueError(f"num_levels={self.num_levels}: at least 2 levels are needed")
        if (self.rank is None) != (self.world_size is None):
            raise ValueError("give --rank and --world-size together (or neither, and use torchrun)")
        if self.rank is not None and not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank} is outside 0..{self.world_size - 1}")
        self.pretrained = self.pretrained or None
        if is_transformers_clip(self.model):
            self.pretrained = None  # the folder holds the weights

    @property
    def shard_input(self) -> bool:
        """Whether data_path names webdataset shards (else a LLaVA JSON/JSONL file)."""
        return is_shard_input(self.data_path)


@dataclass
class ScoreSummary:
    """What a run did; also written to summary.json (the timing fields vary between runs)."""

    records: int
    scored: int
    errors: dict[str, int]
    counts: list[int]
    edges: list[float]
    outputs: dict[str, str]
    chunks_scored_now: int = 0
    images_scored_now: int = 0
    workers: int = 0  # DataLoader workers this run's scoring used (on rank 0)
    filtered: int | None = None  # records in the filtered dataset (with keep_top / min_score)
    filter_threshold: float | None = None  # the lowest score it keeps
    seconds: float = 0.0
    images_per_s: float = 0.0
    device: str = ""
