"""`runs/demo/report.md` and its figures, from what `aligngpt_plugin.devkit.demo_experiment.run` measured.

    python -m aligngpt_plugin.demo --out runs/demo                  # the demo, then this report
    python -m aligngpt_plugin.demo --out runs/demo --report-only    # redraw from runs/demo/report_data.json

Figures (matplotlib, Agg): scores_by_truth.png (CLIP scores per truth kind, level edges drawn),
loss_curves.png (both stages, both models), accuracy.png (per question kind, chance marked),
gate_heatmap.png (AlignGPT's mean gate weight per question kind and level).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from aligngpt_plugin.core.fileio import save_figure_atomic, write_json_atomic, write_text_atomic
from aligngpt_plugin.devkit.demo_data import QUESTIONS, TRUTH_KINDS

COMMAND = "python -m aligngpt_plugin.demo --out runs/demo"
REDRAW = "python -m aligngpt_plugin.demo --out runs/demo --report-only"
KIND_COLOURS = {"true": "tab:green", "partial": "tab:orange", "unrelated": "tab:red"}
MODEL_NAMES = {"aligngpt": "AlignGPT", "llava": "LLaVA"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_scores(scores_by_truth: dict[str, list[float]], edges: list[float], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    everything = [x for v in scores_by_truth.values() for x in v]
    bins = [min(everything) + i * (max(everything) - min(everything)) / 40 for i in range(41)]
    for kind in TRUTH_KINDS:
        ax.hist(scores_by_truth[kind], bins=bins, alpha=0.55, color=KIND_COLOURS[kind],
                label=f"{kind} ({len(scores_by_truth[kind])})")
    for edge in edges:
        ax.axvline(edge, color="black", lw=0.8, ls="--")
    ax.set_xlabel("CLIP score (cosine); dashed: level edges")
    ax.set_ylabel("pre-training pairs")
    ax.set_title("CLIP scores of the pre-training pairs by truth of the caption")
    ax.legend()
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_losses(models: dict, clip_losses: list[float], language_losses: list[float], path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    axes[0].plot(clip_losses, color="tab:gray")
    axes[0].set_title("CLIP (ClipLoss)")
    axes[1].plot(language_losses, color="tab:gray")
    axes[1].set_title("tiny LLM: text only")
    for ax, key, title in ((axes[2], "pretrain_loss", "stage 1: pre-training"),
                           (axes[3], "finetune_loss", "stage 2: instruction tuning")):
        for model, r in models.items():
            ax.plot([5 * (i + 1) for i in range(len(r[key]))], r[key], label=MODEL_NAMES[model])
        ax.set_title(title)
        ax.legend()
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].set_ylabel("training loss")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy(models: dict, chance: dict[str, float], path: Path) -> Path:
    plt = _pyplot()
    kinds = list(QUESTIONS)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    width = 0.8 / len(models)
    for m, (model, r) in enumerate(models.items()):
        xs = [i + (m - (len(models) - 1) / 2) * width for i in range(len(kinds))]
        ax.bar(xs, [100 * r["accuracy"][k] for k in kinds], width, label=MODEL_NAMES[model])
    for i, k in enumerate(kinds):
        ax.hlines(100 * chance[k], i - 0.45, i + 0.45, color="black", ls=":", label="chance" if i == 0 else None)
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(loc="upper right")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


def stderr(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def findings(summary: dict) -> list[str]:
    """The result in a few measured sentences, no verdict beyond what the numbers carry."""
    s, models, chance = summary["settings"], summary["models"], summary["chance"]
    n = s["eval_pictures"]
    out = []
    for k in QUESTIONS:
        acc = {m: r["accuracy"][k] for m, r in models.items()}
        text = ", ".join(f"{MODEL_NAMES[m]} {a:.0%}" for m, a in acc.items())
        if len(acc) == 2:
            a, b = acc.values()
            se = math.sqrt(stderr(a, n) ** 2 + stderr(b, n) ** 2)
            verdict = "within" if abs(a - b) <= 2 * se else "outside"
            text += f"; difference {100 * (a - b):+.0f} points, {verdict} 2 standard errors ({200 * se:.0f} points)"
        out.append(f"- {k} (chance {chance[k]:.0%}): {text}.")
    gates = models.get("aligngpt", {}).get("gates")
    if gates:
        ent = [g["mean_entropy"] for g in gates["per_kind"].values()]
        out.append(f"- gate: largest difference of a level's mean weight between question kinds "
                   f"{gates['max_level_spread']:.3f}; mean entropy {min(ent):.3f}-{max(ent):.3f} of "
                   f"{math.log(s['levels'] - 1):.3f} (uniform).")
    return out


def markdown(summary: dict) -> str:
    s, models, chance, lv = summary["settings"], summary["models"], summary["chance"], summary["levels"]
    n_q = s["eval_pictures"]
    auc = summary["clip_auc"]
    lines = [
        "# AlignGPT vs LLaVA on shapes: the demo's result",
        "",
        f"Made by `{COMMAND}` (seed {s['seed']}); the figures are redrawn from `report_data.json` by `{REDRAW}`.",
        "One seed, one run: read the differences against the sampling error of the held-out questions "
        f"(standard error of an accuracy p on {n_q} questions: sqrt(p(1-p)/{n_q})); seed-to-seed variation of the "
        "training is not measured by one run (`--seed N` gives another).",
        "",
        f"**Measured** (held-out accuracy, seed {s['seed']}):",
        "",
        *findings(summary),
        "",
        "## 1. A CLIP that knows the shapes",
        f"A tiny open_clip ViT (width {s['clip']['width']}, {s['clip']['vision_layers']} layers, "
        f"{s['clip']['image_size']} px, {s['clip']['patch_size']} px patches) trained with open_clip's ClipLoss on "
        f"{s['clip']['pictures']} pictures x {s['clip']['epochs']} epochs. On {s['clip']['heldout']} held-out pictures "
        "the AUC of true captions' scores against false ones:",
        "",
        "| true vs | AUC |", "|---|---|",
        f"| partly true (one attribute wrong) | {auc['true_vs_partial']:.3f} |",
        f"| unrelated alt-text | {auc['true_vs_unrelated']:.3f} |",
        f"| all false | {auc['true_vs_false']:.3f} |",
        "",
        "Its vision half, converted to a transformers CLIP folder, is LLaVA's vision tower in both models.",
        "",
        "## 2. Levels follow the truth",
        f"{s['pretrain_pairs']} pre-training pairs, captions true / partly true / unrelated; `aligngpt-score` with "
        f"that CLIP gives {s['levels']} equal-count levels. Spearman correlation of level and truth "
        f"(unrelated < partial < true): **{lv['spearman_level_truth']:.3f}** (score and truth: "
        f"{lv['spearman_score_truth']:.3f}).",
        "",
        "| level | " + " | ".join(TRUTH_KINDS) + " |", "|---|" + "---|" * len(TRUTH_KINDS),
    ]
    for i, share in enumerate(lv["share_per_level"]):
        lines.append(f"| {i} | " + " | ".join(f"{share[k]:.0%}" for k in TRUTH_KINDS) + " |")
    lines += ["", "![scores by truth](scores_by_truth.png)", "",
              "## 3. Both models, same budget",
              f"A tiny Llama (hidden {s['llm_hidden']}, {s['llm_layers']} layers, Vicuna-v1.5's tokenizer), trained "
              f"{s['language']['steps']} steps as a plain LM on captions and alt-text without images (so that, as "
              "Vicuna in LLaVA, the frozen LLM of stage 1 already reads the captions' language). Each "
              f"model: stage 1 ({s['pretrain_epochs']:g} epoch, lr {s['pretrain_lr']:g}) and stage 2 "
              f"({s['finetune_epochs']:g} epoch on {s['finetune_pictures']} pictures, lr {s['finetune_lr']:g}), batch "
              f"{s['batch_size']}, seed {s['seed']}, through `python -m aligngpt_plugin.train`; AlignGPT adds "
              f"`--align_levels {s['levels']}`.",
              "", "![loss curves](loss_curves.png)", "",
              "| | " + " | ".join(MODEL_NAMES[m] for m in models) + " |", "|---|" + "---|" * len(models),
              "| stage 1 loss, first -> last | " + " | ".join(
                  f"{r['pretrain_loss'][0]:.2f} -> {r['pretrain_loss'][-1]:.2f}" for r in models.values()) + " |",
              "| stage 2 loss, first -> last | " + " | ".join(
                  f"{r['finetune_loss'][0]:.2f} -> {r['finetune_loss'][-1]:.2f}" for r in models.values()) + " |",
              "",
              "## 4. Result: held-out accuracy",
              f"{n_q} held-out pictures, one question of each kind each; LLaVA's `model_vqa_loader`, greedy; an answer "
              "is right when it holds the expected word.",
              "",
              "| question | chance | " + " | ".join(MODEL_NAMES[m] for m in models) + " |",
              "|---|---|" + "---|" * len(models)]
    for k in QUESTIONS:
        lines.append(f"| {k} | {chance[k]:.0%} | " + " | ".join(
            f"{r['accuracy'][k]:.0%} (±{stderr(r['accuracy'][k], n_q):.0%})" for r in models.values()) + " |")
    lines += ["", "![accuracy](accuracy.png)", ""]
    gates = models.get("aligngpt", {}).get("gates")
    if gates:
        lines += ["## 5. The gate per question kind",
                  "Mean gate weight over the local levels 0..N-2, per question kind (H: mean entropy; "
                  f"uniform = {math.log(s['levels'] - 1):.3f}). Largest difference between kinds on any level: "
                  f"**{gates['max_level_spread']:.3f}**.", "",
                  "| question | " + " | ".join(str(i) for i in range(s["levels"] - 1)) + " | H |",
                  "|---|" + "---|" * s["levels"]]
        for k, g in gates["per_kind"].items():
            lines.append(f"| {k} | " + " | ".join(f"{w:.3f}" for w in g["mean_weights"])
                         + f" | {g['mean_entropy']:.3f} |")
        lines += ["", "![gate heatmap](gate_heatmap.png)", ""]
    cpu = summary.get("cpu_seconds", {})
    lines += ["## Stage times", "", "Wall time, and CPU time of the demo and its processes (on a machine shared with "
              "other jobs the wall time grows, the CPU time does not).", "",
              "| stage | seconds | CPU seconds |", "|---|---|---|"]
    lines += [f"| {k} | {v:.0f} | {cpu.get(k, float('nan')):.0f} |" for k, v in summary["seconds"].items()]
    return "\n".join(lines) + "\n"


def draw(out: Path) -> None:
    """The figures and report.md from `report_data.json` (written by `write_report`)."""
    from aligngpt_plugin.evaluation.gates import plot_heatmap

    source = out / "report_data.json"
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found: run `{COMMAND}` (with that --out) first; it writes the file")
    data = json.loads(source.read_text())
    summary = data["summary"]
    plot_scores(data["scores_by_truth"], summary["levels"]["edges"], out / "scores_by_truth.png")
    plot_losses(summary["models"], data["clip_losses"], data.get("language_losses", []), out / "loss_curves.png")
    plot_accuracy(summary["models"], summary["chance"], out / "accuracy.png")
    gates = summary["models"].get("aligngpt", {}).get("gates")
    if gates:
        plot_heatmap(gates["per_kind"], out / "gate_heatmap.png")
    write_text_atomic(out / "report.md", markdown(summary))


def write_report(out: Path, summary: dict, truth: dict, clip_losses: list[float],
                 language_losses: list[float]) -> Path:
    write_json_atomic(out / "report_data.json", {"summary": summary, "scores_by_truth": truth["scores_by_truth"],
                                                 "clip_losses": clip_losses, "language_losses": language_losses})
    draw(out)
    return out / "report.md"
