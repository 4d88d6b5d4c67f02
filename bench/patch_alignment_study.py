"""Patch-aligned pre-training vs caption-only pre-training, measured with aligngpt-analyze.

    python bench/patch_alignment_study.py                      # runs/patch_study/, 64 steps per run
    python bench/patch_alignment_study.py --steps 128 --weight 0.5 --out runs/patch_study_128

On the built-in fixtures (random-init tiny Llama and CLIP, pictures of coloured shapes whose patch labels
are the colour and the shape over the shape's region), LLaVA's stage 1 runs twice with the same seed, data
and settings: once with the caption loss only, once with `--patch_align_weight`. aligngpt-analyze then
reads both projectors on the held-out pictures (never seen in training) and on the training pictures.
Writes `study.json` and `study.md` (a table of both runs) under `--out`, beside each run's analysis.
The question is the paper's claim, stronger patch-level alignment; the table records what we see.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aligngpt_plugin.devkit import pipeline  # noqa: E402
from aligngpt_plugin.devkit.tiny_checkpoints import write_fixtures  # noqa: E402


def caption_losses(run: Path) -> list[float]:
    """Caption loss per logged step: `caption_loss` where the patch loss was on, else `loss`."""
    state = json.loads((run / "trainer_state.json").read_text())
    return [row.get("caption_loss", row["loss"]) for row in state["log_history"] if "loss" in row]


def patch_losses(run: Path) -> list[float]:
    state = json.loads((run / "trainer_state.json").read_text())
    return [row["patch_loss"] for row in state["log_history"] if "patch_loss" in row]


def tail_mean(values: list[float], n: int = 8) -> float | None:
    return sum(values[-n:]) / len(values[-n:]) if values else None


ROWS = [  # (label, path into the aggregate, format)
    ("labelled patches", ("labelled_patches",), "{:d}"),
    ("precision@5 (label words among the 5 nearest)", ("precision_at_k",), "{:.3f}"),
    ("hit@5 (a label word among the 5 nearest)", ("hit_at_k",), "{:.3f}"),
    ("chance precision@5", ("chance_precision_at_k",), "{:.5f}"),
    ("effective rank before projector", ("before_projector", "effective_rank"), "{:.2f}"),
    ("effective rank after projector", ("after_projector", "effective_rank"), "{:.2f}"),
    ("von Neumann entropy before (nats)", ("before_projector", "von_neumann_entropy"), "{:.3f}"),
    ("von Neumann entropy after (nats)", ("after_projector", "von_neumann_entropy"), "{:.3f}"),
    ("pursuit residual after 1 atom", ("pursuit_residual", 1), "{:.3f}"),
    ("pursuit residual after 8 atoms", ("pursuit_residual", -1), "{:.3f}"),
    ("phrases found among 8 pursuit atoms", ("pursuit_phrase_coverage",), "{:.3f}"),
]


def dig(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/patch_study")
    p.add_argument("--steps", type=int, default=64, help="optimizer steps per run (batch 4, 32 pictures)")
    p.add_argument("--weight", type=float, default=1.0, help="--patch_align_weight of the patch-aligned run")
    p.add_argument("--multi", default="mean", choices=("mean", "best"))
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    out = Path(args.out)
    fx = write_fixtures(out / "fixtures")
    settings = pipeline.StageSettings(max_steps=args.steps, save_steps=100000, learning_rate=args.learning_rate,
                                      logging_steps=max(1, args.steps // 32), seed=args.seed)
    runs = {"caption_only": (), "patch_aligned": ("--patch_align_weight", str(args.weight),
                                                  "--patch_align_multi", args.multi)}
    result = {"settings": vars(args), "runs": {}}
    for name, extra in runs.items():
        run = out / name
        start = time.perf_counter()
        pipeline.train(pipeline.pretrain_args(fx, run, settings, data=fx.pretrain_patches, extra=extra),
                       log=out / f"{name}.log")
        seconds = time.perf_counter() - start
        entry = {"train_seconds": round(seconds, 1), "final_caption_loss": tail_mean(caption_losses(run)),
                 "first_caption_loss": caption_losses(run)[0], "final_patch_loss": tail_mean(patch_losses(run))}
        for split, data in (("heldout", fx.heldout_patches), ("train", fx.pretrain_patches)):
            pipeline.run_module("aligngpt_plugin.analyze", [
                "--model", str(run), "--model-base", str(fx.llm), "--data", str(data),
                "--image-folder", str(fx.images), "--out", str(out / f"analysis_{name}_{split}"),
                "--plots", "2" if split == "heldout" else "0"], log=out / f"analysis_{name}_{split}.log")
            report = json.loads((out / f"analysis_{name}_{split}" / "report.json").read_text())
            entry[split] = report["aggregate"]
        result["runs"][name] = entry
        print(f"[study] {name}: {entry['train_seconds']} s, caption loss {entry['final_caption_loss']:.3f}, "
              f"held-out precision@5 {entry['heldout']['precision_at_k']:.3f}", flush=True)
    (out / "study.json").write_text(json.dumps(result, indent=1))
    (out / "study.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    s = result["settings"]
    runs = result["runs"]
    lines = [f"Tiny fixtures, LLaVA stage 1, {s['steps']} steps x batch 4, lr {s['learning_rate']}, seed {s['seed']}; "
             f"patch-aligned run: --patch_align_weight {s['weight']} --patch_align_multi {s['multi']}.", ""]
    lines += ["| metric | split | caption only | patch aligned |", "| --- | --- | --- | --- |"]
    for split in ("heldout", "train"):
        for label, path, fmt in ROWS:
            cells = []
            for name in ("caption_only", "patch_aligned"):
                value = dig(runs[name][split], path)
                cells.append("n/a" if value is None else fmt.format(value))
            lines.append(f"| {label} | {split} | {cells[0]} | {cells[1]} |")
    for key, label in (("final_caption_loss", "caption loss (mean of last 8 logs)"),
                       ("final_patch_loss", "patch loss (mean of last 8 logs)"), ("train_seconds", "training s")):
        cells = ["n/a" if runs[n][key] is None else f"{runs[n][key]:.3f}" for n in ("caption_only", "patch_aligned")]
        lines.append(f"| {label} | train | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
