"""Does the gate adapt to the task? Per-sample gate weights, per-benchmark means, entropy, a heatmap.

The eval scripts run LLaVA's eval modules with `ALIGNGPT_GATE_DUMP` set (see
`aligngpt_plugin.integrations.llava.loader`), which writes one line of gate weights per generated sample,
in the order the answers are written.
`join_gates` pairs those lines with the answers file; `summarise` gives each benchmark's mean weight per
level and the mean entropy of the weights (log(N-1) = uniform, 0 = one level), and the spread of the
per-benchmark means, which is what would show the gate treating tasks differently.
"""

from __future__ import annotations

import math
from pathlib import Path

from aligngpt_plugin.core.fileio import read_jsonl, write_json_atomic
from aligngpt_plugin.evaluation.scorers import AnswersError


def join_gates(answers: str | Path, gates: str | Path) -> list[dict]:
    """[{question_id, gate_weights}] for every answer; the two files must have the same length."""
    rows, weights = read_jsonl(answers), read_jsonl(gates)
    if len(rows) != len(weights):
        raise AnswersError(f"{gates} has {len(weights)} gate lines but {answers} has {len(rows)} answers; the "
                           "gate file must come from the same inference run (delete both and rerun)")
    return [{"question_id": r["question_id"], "gate_weights": w["gate_weights"]} for r, w in zip(rows, weights)]


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
    fig.savefig(out, dpi=120)
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
