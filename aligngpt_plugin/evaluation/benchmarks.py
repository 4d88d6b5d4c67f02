"""The 12 benchmarks of LLaVA-1.5 / AlignGPT: where LLaVA keeps each one's files and how it is scored.

The table itself is data, `benchmarks.json` beside this file. Paths are relative to LLaVA's eval folder
(`playground/data/eval`, from LLaVA's eval.zip plus each benchmark's own download, as LLaVA's
docs/Evaluation.md describes). `eval/<key>.sh` runs the inference
with LLaVA's eval module and then `aligngpt-eval score <key>`; the paper's numbers are in
`aligngpt_plugin.evaluation.report`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

Scoring = Literal["local", "submission", "gpt"]
EVAL_DOCS = "LLaVA's docs/Evaluation.md (github.com/haotian-liu/LLaVA)"


@dataclass(frozen=True)
class Benchmark:
    """One benchmark of the paper's table: where LLaVA's eval module reads its questions and images, and how
    its answers are scored (`local`, a `submission` file for a server, or a `gpt` judge).
    """
    key: str
    title: str  # the column name in the paper's table
    module: str  # LLaVA's eval module that writes the answers
    questions: str
    images: str | None
    scoring: Scoring
    metric: str
    needs: tuple[str, ...] = ()  # further files the scorer reads
    extra_args: tuple[str, ...] = ()
    source: str = ""  # where LLaVA's docs get the data
    notes: dict[str, str] = field(default_factory=dict)

    def missing(self, eval_dir: str | Path, for_scoring: bool = False) -> list[str]:
        """Files or folders of this benchmark that are not under `eval_dir`."""
        root = Path(eval_dir)
        paths = [self.questions, *([self.images] if self.images else [])]
        if for_scoring:
            paths = list(self.needs)
        return [p for p in paths if not (root / p).exists()]

    def require(self, eval_dir: str | Path, for_scoring: bool = False) -> None:
        """A clear error naming what is missing and where LLaVA's docs get it."""
        missing = self.missing(eval_dir, for_scoring)
        if missing:
            listed = "\n  ".join(str(Path(eval_dir) / m) for m in missing)
            raise FileNotFoundError(
                f"{self.title}: missing\n  {listed}\nGet them as {EVAL_DOCS} says ({self.title} section): "
                f"{self.source}")


EVAL_ZIP = "LLaVA's eval.zip extracted to playground/data/eval"


def load_benchmarks() -> dict[str, Benchmark]:
    """The table of benchmarks.json (data, one object per benchmark, in the paper's column order)."""
    rows = json.loads((resources.files(__package__) / "benchmarks.json").read_text())
    out = {}
    for row in rows:
        row = {k: tuple(v) if isinstance(v, list) else v for k, v in row.items()}
        row["source"] = row.get("source", "").format(eval_zip=EVAL_ZIP)
        out[row["key"]] = Benchmark(**row)
    return out


BENCHMARKS: dict[str, Benchmark] = load_benchmarks()


def get(key: str) -> Benchmark:
    """The benchmark named `key`.

    Args:
        key: its key in benchmarks.json (e.g. "gqa").
    Returns:
        The Benchmark.
    Raises:
        SystemExit: naming the known keys, for an unknown one.
    """
    try:
        return BENCHMARKS[key]
    except KeyError:
        raise SystemExit(f"unknown benchmark {key!r}; choose one of {', '.join(BENCHMARKS)}") from None
