"""`runs/demo/report.md` and its figures, from what `aligngpt_plugin.devkit.demo_experiment.run` measured.

    python -m aligngpt_plugin.demo --out runs/demo                  # the demo, then this report
    python -m aligngpt_plugin.demo --out runs/demo --report-only    # redraw from runs/demo/report_data.json

Figures (matplotlib, Agg): scores_by_truth.png (CLIP scores per truth kind, level edges drawn),
loss_curves.png (both stages, both models, every seed), accuracy.png (per question kind: each seed and
the mean, chance marked), level_probe.png (share of the captions' attributes that are true, false or
absent, per fixed level, each seed), gate_heatmap.png (AlignGPT's mean gate weight per question kind and
level, mean over seeds).

Every number here comes from `summary` (`demo_stats` computed it from the answer and caption files);
the wording says what a number is, and claims a difference only where its test does.
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
MODEL_NAMES = {"aligngpt": "AlignGPT", "llava": "LLaVA", "aligngpt-trl": "AlignGPT (TRL)"}
MODEL_COLOURS = {"aligngpt": "tab:blue", "llava": "tab:orange", "aligngpt-trl": "tab:green"}
ALPHA = 0.05


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}%"


def pval(p: float) -> str:
    """A p-value as reported: 3 significant digits, never printed as 0."""
    if p >= 0.001:
        return f"{p:.3f}"
    return f"{p:.1e}" if p > 0 else "< 1e-300"


def spread(ms: dict, scale: float = 100, unit: str = "") -> str:
    """mean, SD (over seeds) and the range, e.g. `93.0 (SD 1.2; 91.7-94.3)`."""
    sd = "n/a" if ms["sd"] is None else f"{scale * ms['sd']:.1f}"
    return f"{scale * ms['mean']:.1f}{unit} (SD {sd}; {scale * ms['min']:.1f}-{scale * ms['max']:.1f})"


# --- figures -----------------------------------------------------------------------------------------------

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


def plot_losses(runs: dict, clip_losses: list[float], language_losses: list[float], path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    axes[0].plot(clip_losses, color="tab:gray")
    axes[0].set_title("CLIP (ClipLoss)")
    axes[1].plot(language_losses, color="tab:gray")
    axes[1].set_title("tiny LLM: text only")
    for ax, key, every, title in ((axes[2], "pretrain_loss", 1, "stage 1: pre-training"),
                                  (axes[3], "finetune_loss", 5, "stage 2: instruction tuning")):
        for i, per_model in enumerate(runs.values()):
            for model, r in per_model.items():
                ax.plot([every * (j + 1) for j in range(len(r[key]))], r[key], color=MODEL_COLOURS[model], lw=0.8,
                        alpha=0.8, label=MODEL_NAMES[model] if i == 0 else None)
        ax.set_title(f"{title} ({len(runs)} seeds)")
        ax.legend()
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].set_ylabel("training loss")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy(accuracy: dict, chance: dict[str, float], path: Path) -> Path:
    plt = _pyplot()
    kinds, models = accuracy["kinds"], list(accuracy["over_seeds"])
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    width = 0.8 / len(models)
    for m, model in enumerate(models):
        xs = [i + (m - (len(models) - 1) / 2) * width for i in range(len(kinds))]
        ax.bar(xs, [100 * accuracy["over_seeds"][model][k]["mean"] for k in kinds], width, alpha=0.6,
               color=MODEL_COLOURS[model], label=f"{MODEL_NAMES[model]} (mean; dots: seeds)")
        for x, k in zip(xs, kinds):
            seeds = [100 * accuracy["per_seed"][s][model][k]["accuracy"] for s in accuracy["seeds"]]
            ax.scatter([x] * len(seeds), seeds, color="black", s=9, zorder=3)
    for i, k in enumerate(kinds):
        ax.hlines(100 * chance[k], i - 0.45, i + 0.45, color="black", ls=":", label="chance" if i == 0 else None)
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_probe(probe: dict, path: Path) -> Path:
    """Per condition (fixed level, LLaVA): share of the captions' attributes true / false / absent."""
    plt = _pyplot()
    conds = probe["conditions"]
    fig, ax = plt.subplots(figsize=(1.5 + 0.75 * len(conds), 3.6))
    for verdict, colour in (("true", "tab:green"), ("false", "tab:red"), ("absent", "tab:gray")):
        rates = [[probe["per_seed"][s][c][verdict] / probe["per_seed"][s][c]["n"] for s in probe["seeds"]]
                 for c in conds]
        ax.plot(range(len(conds)), [100 * sum(r) / len(r) for r in rates], color=colour, marker="o",
                label=f"{verdict} (mean; dots: seeds)")
        for i, r in enumerate(rates):
            ax.scatter([i] * len(r), [100 * x for x in r], color=colour, s=8, alpha=0.6)
    ax.set_xticks(range(len(conds)), [c.replace("level ", "L") for c in conds])
    ax.set_ylabel("attributes of the captions (%)")
    ax.set_ylim(-2, 102)
    ax.set_xlabel("AlignGPT stage 1, level token fixed at L0..L7; LLaVA stage 1")
    ax.set_title("Level probe: colour, shape, place of held-out pictures")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


# --- text --------------------------------------------------------------------------------------------------

def verdict(p: float) -> str:
    return f"p = {pval(p)}, " + ("below" if p < ALPHA else "not below") + f" {ALPHA}"


def accuracy_findings(summary: dict) -> list[str]:
    acc, chance = summary["accuracy"], summary["chance"]
    if len(acc["over_seeds"]) < 2:
        return [f"- {k}: " + ", ".join(f"{MODEL_NAMES[m]} {spread(v[k], unit='%')}"
                                       for m, v in acc["over_seeds"].items()) for k in acc["kinds"]]
    out = []
    for k in acc["kinds"]:
        a, b = acc["over_seeds"]["aligngpt"][k], acc["over_seeds"]["llava"][k]
        t = acc["paired"][k]
        ahead = t["sign"]["positive"]
        out.append(
            f"- **{k}** (chance {pct(chance[k], 0)}): AlignGPT {spread(a, unit='%')}, LLaVA {spread(b, unit='%')} "
            f"(mean over {len(acc['seeds'])} seeds, SD, range). AlignGPT ahead in {ahead}, behind in "
            f"{t['sign']['negative']} of {len(acc['seeds'])} seeds; per-seed exact McNemar p: "
            + ", ".join(pval(x["p"]) for x in t["per_seed"].values())
            + f"; sign test over seeds p = {pval(t['sign']['p'])}; seeds pooled (Stouffer, z "
            f"{t['stouffer']['z']:+.2f}, positive when AlignGPT is ahead): {verdict(t['stouffer']['p'])}"
            + ("" if len(t["per_seed"]) < 2 or t["sign"]["negative"] == 0 or t["sign"]["positive"] == 0 else
               " (the seeds disagree in direction)") + ".")
    return out


def probe_findings(summary: dict) -> list[str]:
    probe = summary.get("probe")
    if not probe or not probe["tests"]:
        return []
    over = probe["over_seeds"]
    out = ["- **level probe** (stage 1, captions of held-out pictures, share of colour/shape/place named "
           "truly): " + ", ".join(f"{c} {spread(over[c], unit='%')}" for c in probe["conditions"]) + "."]
    for name, t in probe["tests"].items():
        diffs = [probe["per_seed"][s][t["a"]]["true_rate"] - probe["per_seed"][s][t["b"]]["true_rate"]
                 for s in probe["seeds"]]
        out.append(f"  - {name}: difference per seed " + ", ".join(f"{100 * d:+.1f}" for d in diffs)
                   + " points; per-seed sign test over pictures p: "
                   + ", ".join(pval(x["pictures"]["p"]) for x in t["per_seed"].values())
                   + f"; seeds pooled (Stouffer): {verdict(t['stouffer']['p'])}.")
    return out


def gate_findings(summary: dict) -> list[str]:
    gates = summary.get("gates")
    if not gates:
        return []
    per = gates["per_seed"]
    ents = [g["mean_entropy"] for s in per.values() for g in s["per_kind"].values()]
    levels = summary["settings"]["levels"]
    return ["- **gate**: per seed, the largest difference between two question kinds' mean weight on a level: "
            + ", ".join(f"{s['max_level_spread']:.4f}" for s in per.values())
            + "; permutation test of kind against weights, per seed p: "
            + ", ".join(pval(s["test"]["p"]) for s in per.values())
            + f" ({per[next(iter(per))]['test']['permutations']} permutations; smallest possible p "
            f"{1 / (1 + per[next(iter(per))]['test']['permutations']):.3f}); seeds combined (Fisher): "
            f"{verdict(gates['fisher']['p'])}. Mean entropy {min(ents):.3f}-{max(ents):.3f} "
            f"(uniform: {math.log(levels - 1):.3f})."]


def seeds_table(acc: dict) -> list[str]:
    """Accuracy per question kind, model and seed, with the mean, SD and range (`accuracy_statistics`' output)."""
    seeds, models = acc["seeds"], list(acc["over_seeds"])
    lines = ["| question | model | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | SD | range |",
             "|---|---|" + "---|" * (len(seeds) + 3)]
    for k in acc["kinds"]:
        for m in models:
            ms = acc["over_seeds"][m][k]
            cells = [f"{acc['per_seed'][s][m][k]['correct']}/{acc['per_seed'][s][m][k]['n']} "
                     f"({pct(acc['per_seed'][s][m][k]['accuracy'])})" for s in seeds]
            sd = "n/a" if ms["sd"] is None else f"{100 * ms['sd']:.1f}"
            lines.append(f"| {k} | {MODEL_NAMES[m]} | " + " | ".join(cells)
                         + f" | {pct(ms['mean'])} | {sd} | {pct(ms['min'])}-{pct(ms['max'])} |")
    return lines


def paired_table(acc: dict, a: str = "AlignGPT", b: str = "LLaVA") -> list[str]:
    """The McNemar tables per kind and seed and the tests over seeds of models `a` against `b`."""
    if not acc["paired"]:
        return []
    lines = [f"| question | seed | both right | only {a} | only {b} | both wrong | exact McNemar p |",
             "|---|---|---|---|---|---|---|"]
    for k, t in acc["paired"].items():
        for s, x in t["per_seed"].items():
            lines.append(f"| {k} | {s} | {x['both']} | {x['a_only']} | {x['b_only']} | {x['neither']} | "
                         f"{pval(x['p'])} |")
    lines += ["", f"| question | seeds {a} ahead / behind / tied | sign test p (smallest possible) | "
              "Stouffer z | Stouffer p |", "|---|---|---|---|---|"]
    for k, t in acc["paired"].items():
        sg = t["sign"]
        lines.append(f"| {k} | {sg['positive']} / {sg['negative']} / {sg['ties']} | {pval(sg['p'])} "
                     f"({pval(sg['min_p'])}) | {t['stouffer']['z']:+.2f} | {pval(t['stouffer']['p'])} |")
    return lines


def probe_tables(summary: dict) -> list[str]:
    probe = summary["probe"]
    seeds, conds = probe["seeds"], probe["conditions"]
    n = probe["per_seed"][seeds[0]][conds[0]]["n"]
    lines = [f"Share of true attributes (of {n} = pictures x 3 per seed), per seed, with the mean, SD and "
             "range over seeds; false: a wrong value named; absent: none named (mean over seeds).", "",
             "| condition | " + " | ".join(f"seed {s}" for s in seeds) + " | mean true | SD | false | absent |",
             "|---|" + "---|" * (len(seeds) + 4)]
    for c in conds:
        cells = [f"{probe['per_seed'][s][c]['true']} ({pct(probe['per_seed'][s][c]['true_rate'])})" for s in seeds]
        ms = probe["over_seeds"][c]
        false = sum(probe["per_seed"][s][c]["false"] / probe["per_seed"][s][c]["n"] for s in seeds) / len(seeds)
        absent = sum(probe["per_seed"][s][c]["absent"] / probe["per_seed"][s][c]["n"] for s in seeds) / len(seeds)
        sd = "n/a" if ms["sd"] is None else f"{100 * ms['sd']:.1f}"
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {pct(ms['mean'])} | {sd} | {pct(false)} | "
                     f"{pct(absent)} |")
    if probe["tests"]:
        lines += ["", "Paired tests on the same pictures: per seed, exact McNemar per attribute (true named or not) "
                  "and the sign test of the per-picture count of true attributes; over seeds, the sign test of "
                  "the seeds' differences and Stouffer's pooling of the per-seed picture tests.", "",
                  "| comparison | seed | colour p | shape p | place p | pictures better / worse / tied | "
                  "sign test p |", "|---|---|---|---|---|---|---|"]
        for name, t in probe["tests"].items():
            for s, x in t["per_seed"].items():
                pa, pic = x["per_attribute"], x["pictures"]
                lines.append(f"| {name} | {s} | " + " | ".join(pval(pa[a]["p"]) for a in ("colour", "shape", "place"))
                             + f" | {pic['positive']} / {pic['negative']} / {pic['ties']} | {pval(pic['p'])} |")
        lines += ["", "| comparison | seeds higher / lower / tied | sign test p (smallest possible) | Stouffer z | "
                  "Stouffer p |", "|---|---|---|---|---|"]
        for name, t in probe["tests"].items():
            sg = t["sign"]
            lines.append(f"| {name} | {sg['positive']} / {sg['negative']} / {sg['ties']} | {pval(sg['p'])} "
                         f"({pval(sg['min_p'])}) | {t['stouffer']['z']:+.2f} | {pval(t['stouffer']['p'])} |")
    return lines


def start_table(summary: dict) -> list[str]:
    runs = summary["runs"]
    lines = ["| seed | model | step 1 | mean of steps 1-5 | step 10 | last |", "|---|---|---|---|---|---|"]
    for s, per in runs.items():
        for m, r in per.items():
            x = r["pretrain_start"]
            lines.append(f"| {s} | {MODEL_NAMES[m]} | {x['step1']:.3f} | {x['mean_first5']:.3f} | "
                         f"{x['step10']:.3f} | {x['last']:.3f} |")
    return lines


def gate_tables(summary: dict) -> list[str]:
    gates = summary["gates"]
    levels = summary["settings"]["levels"]
    lines = ["| seed | question | " + " | ".join(str(i) for i in range(levels - 1)) + " | H |",
             "|---|---|" + "---|" * levels]
    for s, g in gates["per_seed"].items():
        for k, x in g["per_kind"].items():
            lines.append(f"| {s} | {k} | " + " | ".join(f"{w:.4f}" for w in x["mean_weights"])
                         + f" | {x['mean_entropy']:.3f} |")
    lines += ["", "| seed | pseudo-F | permutation p | largest difference between kinds on a level |",
              "|---|---|---|---|"]
    for s, g in gates["per_seed"].items():
        lines.append(f"| {s} | {g['test']['pseudo_f']:.2f} | {pval(g['test']['p'])} | {g['max_level_spread']:.4f} |")
    return lines


def route_findings(summary: dict) -> list[str]:
    """One line per question kind: AlignGPT through TRL against the LLaVA-code route (`--trl`)."""
    routes = summary.get("routes")
    if not routes or len(routes["over_seeds"]) < 2:
        return []
    out = []
    for k in routes["kinds"]:
        t = routes["paired"][k]
        diffs = [routes["per_seed"][s]["aligngpt-trl"][k]["accuracy"] - routes["per_seed"][s]["aligngpt"][k]["accuracy"]
                 for s in routes["seeds"]]
        out.append(f"- **{k}, TRL route against LLaVA-code route** (same AlignGPT, start, steps and questions): "
                   f"{spread(routes['over_seeds']['aligngpt-trl'][k], unit='%')} against "
                   f"{spread(routes['over_seeds']['aligngpt'][k], unit='%')}; difference per seed "
                   + ", ".join(f"{100 * d:+.1f}" for d in diffs) + " points; per-seed exact McNemar p: "
                   + ", ".join(pval(x["p"]) for x in t["per_seed"].values())
                   + f"; seeds pooled (Stouffer): {verdict(t['stouffer']['p'])}.")
    gaps = []
    for seed in routes["seeds"]:
        runs = summary["runs"][seed]
        for stage in ("pretrain_loss", "finetune_loss"):
            ours, theirs = runs["aligngpt-trl"][stage], runs["aligngpt"][stage]
            if len(ours) == len(theirs):
                gaps.append(max(abs(a - b) for a, b in zip(ours, theirs)))
    if gaps:
        out.append("- **Logged losses, TRL route against LLaVA-code route**: at most "
                   f"{max(gaps):.2g} apart at any logged step of either stage in any seed (same steps, same pictures "
                   "per step).")
    return out


def route_section(summary: dict) -> list[str]:
    """Section 8 (only with `--trl`): the two training routes of AlignGPT, paired."""
    routes = summary.get("routes")
    if not routes:
        return []
    s = summary["settings"]
    return [
        "## 8. The same AlignGPT through TRL (`--trl`)",
        "AlignGPT trained a second time per seed through TRL's SFTTrainer on the HF-native model (`aligngpt-sft`, "
        "stage 1 on the levelled captions, stage 2 on the instruction data with each answer a prompt/completion "
        "row), from the same start weights (`build-hf`, then `seed<k>/start.bin`) with the same steps, learning "
        f"rates, schedule and batch targets (stage 2: {len(QUESTIONS) * s['batch_size']} rows a step, {len(QUESTIONS)} "
        "answers a picture); "
        "converted back with `hf_to_llava` and answered by the same `model_vqa_loader`. Each step trains the same "
        "pictures on both routes (stage 2: `--align_group_turns`, a picture's answers in one step, pictures in the "
        "LLaVA-code route's order). What differs by construction: 3 more vocabulary rows that are never targets, "
        "and the order in which fp32 sums are added. If the routes train the same model, the losses agree step "
        "by step and the two answer the same questions alike: few discordant questions, and the paired tests "
        "find no difference (findings: top of this report).",
        "",
        *seeds_table(routes),
        "",
        *paired_table(routes, MODEL_NAMES["aligngpt-trl"], MODEL_NAMES["aligngpt"]),
        "",
    ]


def markdown(summary: dict) -> str:
    s, lv = summary["settings"], summary["levels"]
    auc = summary["clip_auc"]
    seeds = summary["accuracy"]["seeds"]
    n_q = s["eval_pictures"]
    top, mid = s["levels"] - 1, (s["levels"] - 1) // 2
    lines = [
        "# AlignGPT vs LLaVA on shapes: the demo's result",
        "",
        f"Made by `{COMMAND}`; `{REDRAW}` recomputes every statistic from the run's answer, caption and gate "
        "files and redraws this report and its figures.",
        f"Training seeds {', '.join(seeds)}: each trains both models (stage 1 and stage 2) from one shared start. "
        f"Fixed across seeds (data seed {s['data_seed']}): the pictures, captions and questions, the CLIP and its "
        "levels, the tiny LLM and its language warm-up. The spread over seeds is therefore the training's "
        "alone. Each difference between the models is tested on the same questions (paired, exact); "
        f"p-values are two-sided and not corrected for the {len(QUESTIONS)} question kinds (Bonferroni: "
        f"{ALPHA}/{len(QUESTIONS)} = {ALPHA / len(QUESTIONS):.3f}).",
        "",
        f"**Measured** ({n_q} held-out pictures, one question of each kind each, every seed):",
        "",
        *accuracy_findings(summary),
        *probe_findings(summary),
        *gate_findings(summary),
        *route_findings(summary),
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
    lines += [
        "", "![scores by truth](scores_by_truth.png)", "",
        "## 3. Both models, same budget, same start",
        f"A tiny Llama (hidden {s['llm_hidden']}, {s['llm_layers']} layers, Vicuna-v1.5's tokenizer), trained "
        f"{s['language']['steps']} steps as a plain LM on captions and alt-text without images (so that, as "
        "Vicuna in LLaVA, the frozen LLM of stage 1 already reads the captions' language). Each model and seed: "
        f"stage 1 ({s['pretrain_epochs']:g} epoch, lr {s['pretrain_lr']:g}) and stage 2 ({s['finetune_epochs']:g} "
        f"epoch on {s['finetune_pictures']} pictures, lr {s['finetune_lr']:g}), batch {s['batch_size']}, through "
        f"`python -m aligngpt_plugin.train`; AlignGPT adds `--align_levels {s['levels']}`.",
        "",
        "**Same start.** Both stage-1 runs of a seed load one file of start weights, `seed<k>/start.bin` "
        "(`--pretrain_mm_mlp_adapter`): the projector, and for AlignGPT the level embeddings and the gate. "
        "The file makes the start independent of what each model draws while it is built: the alignment module "
        "draws from its own random stream and leaves the global one alone, but where a model's weight init draws "
        "the gate's layers from the global stream before LLaVA's `initialize_vision_modules` draws the projector, "
        "the same `--seed` alone gives the two models different projectors (`tests/test_same_start.py`; "
        "`tests/test_demo.py` checks that with the file both projectors are the file's). Both runs read the "
        "batches in the same order (the Trainer's sampler, same seed). "
        "Step 1's loss is computed before any update, on the same first batch with the same projector: what "
        f"differs there is only AlignGPT's alignment token after BOS (its level's embedding, untrained, which the "
        f"frozen LLM has never seen; {s['levels']} x {s['llm_hidden']} Xavier-uniform values).",
        "",
        *start_table(summary),
        "",
        "![loss curves](loss_curves.png)",
        "",
        "## 4. The level token, probed (after stage 1)",
        f"Each seed's stage-1 checkpoints caption the {n_q} held-out pictures (greedy, LLaVA's `plain` input: BOS, "
        "the picture, then the caption; AlignGPT with its level token fixed at each level, `fixed_level`; LLaVA "
        "without one). The colour, shape and place named in a caption's first sentence (every caption it learnt is "
        "one sentence; a model that does not stop goes on repeating) are scored against the picture's known "
        "truth. If "
        "the level tells the model how well text and image match, a high level should give more true "
        f"attributes than a low one. Compared: level {top} (top) against level 0 (lowest), level {mid} (middle) "
        "and LLaVA.",
        "",
        *probe_tables(summary),
        "",
        "![level probe](level_probe.png)",
        "",
        "## 5. Held-out accuracy, every seed",
        f"{n_q} held-out pictures, one question of each kind each; LLaVA's `model_vqa_loader`, greedy; an answer "
        "is right when it holds the expected word. Cells: right / asked (accuracy).",
        "",
        *seeds_table(summary["accuracy"]),
        "",
        "![accuracy](accuracy.png)",
        "",
        "## 6. Paired tests: AlignGPT against LLaVA on the same questions",
        "Exact McNemar test per kind and seed: of the questions exactly one model got right, the count one way "
        "is Binomial(n, 1/2) if the models are equally good. Over seeds: the sign test of the seeds' differences "
        "(with 3 seeds it cannot go below p = 0.25) and Stouffer's pooling of the seeds' exact one-sided "
        "mid-p values (signed z, positive when AlignGPT is ahead). The seeds share the questions, so the pooled "
        "test speaks of these questions.",
        "",
        *paired_table(summary["accuracy"]),
        "",
    ]
    if summary.get("gates"):
        lines += [
            "## 7. The gate per question kind",
            "Mean gate weight over the local levels 0..N-2, per seed and question kind (H: mean entropy; "
            f"uniform = {math.log(s['levels'] - 1):.3f}). Whether the weights differ between kinds: a permutation "
            "test per seed (pseudo-F of the questions' weight vectors, between kinds over within; kinds shuffled "
            "over the questions), the seeds' p combined with Fisher's method: "
            f"**p = {pval(summary['gates']['fisher']['p'])}**. All questions of a kind share their text, so a "
            "gate that reads the text at all gives the kinds some difference; the size of the difference is the "
            "last column.",
            "",
            *gate_tables(summary),
            "",
            "![gate heatmap](gate_heatmap.png)",
            "",
        ]
    lines += route_section(summary)
    cpu = summary.get("cpu_seconds", {})
    load = summary.get("load_average_at_start")
    lines += ["## Stage times", "",
              f"Wall time, and CPU time of the demo and its processes; {s['jobs']} trainings at a time. On a "
              "machine shared with other jobs the wall time grows, the CPU time does not"
              + (f" (load average at the start: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f})." if load else "."),
              "", "| stage | seconds | CPU seconds |", "|---|---|---|"]
    lines += [f"| {k} | {v:.0f} | {cpu.get(k, float('nan')):.0f} |" for k, v in summary["seconds"].items()]
    return "\n".join(lines) + "\n"


def mean_gates(gates: dict) -> dict:
    """The per-kind gate summaries averaged over seeds (for the heatmap)."""
    per = list(gates["per_seed"].values())
    out = {}
    for k in per[0]["per_kind"]:
        rows = [p["per_kind"][k] for p in per]
        out[k] = {"mean_weights": [sum(r["mean_weights"][i] for r in rows) / len(rows)
                                   for i in range(len(rows[0]["mean_weights"]))],
                  "mean_entropy": sum(r["mean_entropy"] for r in rows) / len(rows),
                  "max_entropy": rows[0]["max_entropy"]}
    return out


def draw(out: Path) -> None:
    """The figures and report.md from `report_data.json` (written by `write_report`)."""
    from aligngpt_plugin.evaluation.gates import plot_heatmap

    source = out / "report_data.json"
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found: run `{COMMAND}` (with that --out) first; it writes the file")
    data = json.loads(source.read_text())
    summary = data["summary"]
    plot_scores(data["scores_by_truth"], summary["levels"]["edges"], out / "scores_by_truth.png")
    plot_losses(summary["runs"], data["clip_losses"], data.get("language_losses", []), out / "loss_curves.png")
    plot_accuracy(summary["accuracy"], summary["chance"], out / "accuracy.png")
    if summary.get("probe", {}).get("conditions"):
        plot_probe(summary["probe"], out / "level_probe.png")
    if summary.get("gates"):
        plot_heatmap(mean_gates(summary["gates"]), out / "gate_heatmap.png")
    write_text_atomic(out / "report.md", markdown(summary))


def write_report(out: Path, summary: dict, truth: dict, clip_losses: list[float],
                 language_losses: list[float]) -> Path:
    """report_data.json (the summary through JSON, as `--report-only` reads it back), then `draw`."""
    summary = json.loads(json.dumps(summary))  # the report reads what --report-only would: string keys, lists
    write_json_atomic(out / "report_data.json", {"summary": summary, "scores_by_truth": truth["scores_by_truth"],
                                                 "clip_losses": clip_losses, "language_losses": language_losses})
    draw(out)
    return out / "report.md"
