"""Does the gate adapt to the task? Per-sample gate weights, per-benchmark means, entropy, a heatmap.

The eval scripts run LLaVA's eval modules with `ALIGNGPT_GATE_DUMP` set (see
`aligngpt_plugin.integrations.llava.loader`), which writes one line of gate weights per generated sample
with the sample's id: the question id under LLaVA's modules, the task and document id under lmms-eval
(which answers requests sorted by context length, not in document order).
`join_gates` joins those lines with the answers file (LLaVA's answers, or lmms-eval's
`*_samples_<task>.jsonl`) on the ids; `summarise` gives each benchmark's mean weight per
level and the mean entropy of the weights (log(N-1) = uniform, 0 = one level), and the spread of the
per-benchmark means, which is what would show the gate treating tasks differently.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import defaultdict, deque
from pathlib import Path

from aligngpt_plugin.core.fileio import read_jsonl, save_figure_atomic, write_json_atomic
from aligngpt_plugin.evaluation.scorers import AnswersError


def _lmms_task(answers: Path, lines: list[dict], task: str | None) -> str:
    if task is not None:
        return task
    named = re.search(r"_samples_(.+)\.jsonl$", answers.name)  # lmms-eval's <date>_samples_<task>.jsonl
    if named:
        return named.group(1)
    tasks = sorted({str(line.get("task")) for line in lines})
    if len(tasks) == 1:
        return tasks[0]
    raise AnswersError(f"{answers}: which lmms-eval task are these samples of? the gate file has {tasks}; "
                       "pass task=")


def join_gates(answers: str | Path, gates: str | Path, task: str | None = None) -> list[dict]:
    """Each answer with its gate weights, joined on the ids the gate dump writes.

    Args:
        answers: LLaVA's answers file (`question_id`, and `round_id` for MMBench's rounds) or lmms-eval's
            samples file (`doc_id`; `--log_samples`' `<date>_samples_<task>.jsonl`).
        gates: the `ALIGNGPT_GATE_DUMP` file of the same run; one of lmms-eval may hold several tasks.
        task: the lmms-eval task of `answers`; by default read from its file name.

    Returns:
        [{question_id, gate_weights}] (LLaVA) or [{task, doc_id, gate_weights}] (lmms-eval), in the answers'
        order; `gate_weights` is None for a sample without an image. A dump without ids (written before
        they were added) is joined by order, with a warning.
    """
    answers, gates = Path(answers), Path(gates)
    rows, lines = read_jsonl(answers), read_jsonl(gates)
    with_ids = [line for line in lines if "question_id" in line or "doc_id" in line]
    if not with_ids:
        return _join_by_order(answers, gates, rows, lines)
    if len(with_ids) != len(lines):
        raise AnswersError(f"{gates}: {len(lines) - len(with_ids)} of {len(lines)} gate lines carry no sample id; "
                           "the file mixes runs: delete it and the answers and rerun")
    if rows and "question_id" not in rows[0] and "doc_id" in rows[0]:  # lmms-eval's samples
        name = _lmms_task(answers, lines, task)
        lines = [line for line in lines if line.get("task") == name]
        fields = ("doc_id",)
        out_key = lambda r: {"task": name, "doc_id": r["doc_id"]}  # noqa: E731
    else:
        fields = ("question_id", "round_id") if rows and "round_id" in rows[0] and "round_id" in lines[0] \
            else ("question_id",)
        out_key = lambda r: {"question_id": r["question_id"]}  # noqa: E731
    # MME's question ids name the image, which has two questions: lines of one id pair up in their order,
    # which is the order the module answered them in and wrote the answers in
    by_id: dict[tuple, deque] = defaultdict(deque)
    for line in lines:
        by_id[tuple(line.get(f) for f in fields)].append(line)
    joined, missing = [], []
    for row in rows:
        key = tuple(row.get(f) for f in fields)
        if not by_id.get(key):
            missing.append(dict(zip(fields, key)))
            continue
        joined.append({**out_key(row), "gate_weights": by_id[key].popleft()["gate_weights"]})
    extra = [dict(zip(fields, k)) for k, left in by_id.items() for _ in left]
    if missing or extra:
        raise AnswersError(f"{gates} and {answers} are not of the same run: {len(missing)} answers have no gate "
                           f"line (first: {missing[:3]}), {len(extra)} gate lines no answer (first: {extra[:3]}); "
                           "the dump appends, so a rerun into the same file doubles it: delete both and rerun")
    return joined


def _join_by_order(answers: Path, gates: Path, rows: list[dict], lines: list[dict]) -> list[dict]:
    if len(rows) != len(lines):
        raise AnswersError(f"{gates} has {len(lines)} gate lines but {answers} has {len(rows)} answers; the "
                           "gate file must come from the same inference run (delete both and rerun)")
    warnings.warn(f"{gates}: gate lines without sample ids (a dump from an older version): joined with the "
                  "answers by order, which is right only for LLaVA's eval modules run in question order",
                  stacklevel=3)
    return [{"question_id": r.get("question_id", r.get("doc_id")), "gate_weights": w["gate_weights"]}
            for r, w in zip(rows, lines)]


def entropy(weights: list[float]) -> float:
    return -sum(w * math.log(w) for w in weights if w > 0)


def summarise(samples: list[dict]) -> dict:
    """Mean weight per level, mean entropy and its maximum, for the samples that went through the gate."""
    gated = [s["gate_weights"] for s in samples if s["gate_weights"] is not None]
    if not gated:
        return {"samples": len(samples), "gated": 0, "mean_weights": None, "mean_entropy": None}
    levels = len(gated[0])
    mean = [sum(w[i] for w in gated) / len(gated) for i in range(levels)]
    return {"samples": len(samples), "gated": len(gated), "mean_weights": mean,
            "mean_entropy": sum(entropy(w) for w in gated) / len(gated), "max_entropy": math.log(levels)}


def compare(per_benchmark: dict[str, dict]) -> dict:
    """How far apart the benchmarks' mean weights are: the largest difference on any level."""
    means = [s["mean_weights"] for s in per_benchmark.values() if s.get("mean_weights")]
    if len(means) < 2:
        return {"max_level_spread": None}
    spread = max(max(m[i] for m in means) - min(m[i] for m in means) for i in range(len(means[0])))
    return {"max_level_spread": spread}


def plot_heatmap(per_benchmark: dict[str, dict], out: str | Path) -> Path:
    """Rows: benchmarks (with their mean entropy); columns: local levels 0..N-2; colour: mean weight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k, s in per_benchmark.items() if s.get("mean_weights")]
    if not names:
        raise ValueError("no gate weights to plot: were the answers made with ALIGNGPT_GATE_DUMP set, on an "
                         "AlignGPT checkpoint in adaptive or local mode?")
    grid = [per_benchmark[k]["mean_weights"] for k in names]
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(grid[0]), 1.0 + 0.45 * len(names)))
    image = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(grid[0])), [str(i) for i in range(len(grid[0]))])
    ax.set_yticks(range(len(names)),
                  [f"{k} (H={per_benchmark[k]['mean_entropy']:.2f}/{per_benchmark[k]['max_entropy']:.2f})"
                   for k in names])
    ax.set_xlabel("alignment level (local part)")
    ax.set_title("mean gate weight per benchmark")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure_atomic(fig, out, dpi=120)  # a reader never sees half a PNG; the mode a plain open gives
    plt.close(fig)
    return out


def analyse(pairs: dict[str, tuple[str | Path, str | Path]], out_dir: str | Path) -> dict:
    """`pairs`: {benchmark: (answers, gates)}. Writes gates.json (per sample and summaries) and
    gate_heatmap.png under `out_dir`; returns the summary."""
    out_dir = Path(out_dir)
    samples = {k: join_gates(a, g) for k, (a, g) in pairs.items()}
    per_benchmark = {k: summarise(v) for k, v in samples.items()}
    summary = {"benchmarks": per_benchmark, **compare(per_benchmark)}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "gates.json", {"summary": summary, "samples": samples}, indent=None)
    if any(s.get("mean_weights") for s in per_benchmark.values()):
        summary["heatmap"] = str(plot_heatmap(per_benchmark, out_dir / "gate_heatmap.png"))
    return summary
