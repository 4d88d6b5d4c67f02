"""The work behind `make demo` / `aligngpt-demo` (what it runs and writes: `aligngpt_plugin.demo`):
AlignGPT's thesis tested end to end on shape pictures whose captions match them to a known degree,
beside plain LLaVA trained on the same data with the same budget, each stage through the entry point a
user runs."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aligngpt_plugin.core.fileio import read_jsonl, write_json_atomic
from aligngpt_plugin.devkit import demo_data, pipeline
from aligngpt_plugin.devkit.shapes_clip import ClipTraining, train_shapes_clip
from aligngpt_plugin.devkit.shapes_llm import LanguageTraining, train_language
from aligngpt_plugin.devkit.tiny_checkpoints import FixturePaths, FixtureSpec, write_tiny_llm

LEVELS = 8
MODELS = ("aligngpt", "llava")
# LLaVA's builder loads a checkpoint as LLaVA only when its folder name contains "llava"; AlignGPT's is
# recognised by its config, whatever the folder is called.
FINETUNE_DIRS = {"aligngpt": "aligngpt-shapes-finetune", "llava": "llava-shapes-finetune"}


@dataclass
class DemoSettings:
    """Sizes and budgets of the demo; `quick()` is the test suite's."""

    pretrain_pairs: int = field(default=400, metadata={"help": "pre-training pictures (captions of mixed truth)"})
    finetune_pictures: int = field(default=800, metadata={"help": "instruction-tuning pictures"})
    eval_pictures: int = field(default=60, metadata={"help": "held-out pictures, one question of each kind"})
    llm_hidden: int = field(default=64, metadata={"help": "tiny Llama hidden size (random init)"})
    llm_layers: int = field(default=2, metadata={"help": "tiny Llama layers"})
    pretrain_epochs: float = field(default=1, metadata={"help": "stage 1 epochs"})
    finetune_epochs: float = field(default=1, metadata={"help": "stage 2 epochs"})
    batch_size: int = field(default=4, metadata={"help": "per-device batch, both stages"})
    pretrain_lr: float = field(default=1e-3, metadata={"help": "stage 1 learning rate (LLaVA-1.5: 1e-3)"})
    finetune_lr: float = field(default=3e-3, metadata={"help": "stage 2 learning rate (a random-init LLM needs more "
                                                               "than LLaVA-1.5's 2e-5)"})
    levels: int = field(default=LEVELS, metadata={"help": "alignment levels"})
    seed: int = field(default=0, metadata={"help": "seeds data, CLIP, LLM and both trainings"})
    models: tuple[str, ...] = field(default=MODELS, metadata={"help": "which models to train and evaluate"})
    clip: ClipTraining = field(default_factory=ClipTraining)
    language: LanguageTraining = field(default_factory=LanguageTraining)

    @classmethod
    def quick(cls, seed: int = 0) -> DemoSettings:
        return cls(pretrain_pairs=96, finetune_pictures=96, eval_pictures=8, seed=seed,
                   clip=ClipTraining(pictures=1024, epochs=4, heldout=100, seed=seed),
                   language=LanguageTraining(steps=20, seed=seed))


class Stages:
    """Prints each stage as it starts and keeps its wall time and CPU time (this process and its children:
    on a shared machine the CPU time shows what the stage would take alone)."""

    def __init__(self) -> None:
        self.started = time.time()
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self._current: tuple[str, float, float] | None = None

    @staticmethod
    def cpu() -> float:
        own, children = os.times()[:2], os.times()[2:4]
        return sum(own) + sum(children)

    def __call__(self, name: str) -> None:
        self.end()
        print(f"[demo {time.time() - self.started:5.0f}s] {name}", flush=True)
        self._current = (name, time.time(), self.cpu())

    def end(self) -> None:
        if self._current:
            name, t0, c0 = self._current
            self.seconds[name] = round(time.time() - t0, 1)
            self.cpu_seconds[name] = round(self.cpu() - c0, 1)
            print(f"[demo {time.time() - self.started:5.0f}s]   done in {self.seconds[name]:.0f}s "
                  f"({self.cpu_seconds[name]:.0f} CPU s)", flush=True)
            self._current = None


PROGRESS = re.compile(r"(\d+)%\|[^|]*\|\s*(\d+)/(\d+) \[([^\]]*)\]")  # a tqdm bar, as HF and LLaVA print it


def run_module(module: str, args: list[str], log: Path, label: str, progress: bool = True,
               env: dict[str, str] | None = None) -> None:
    """`python -m module args` in a fresh process, everything it prints into `log`; with `progress`, its
    tqdm bar (the Trainer's steps, model_vqa_loader's questions) redrawn on one line. Raises with the
    output's tail when it fails."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=sink, stderr=subprocess.PIPE,
                                text=True, env=env, bufsize=1)
        shown = False
        for chunk in iter(lambda: proc.stderr.readline(), ""):  # tqdm ends its redraws with \r, not \n
            sink.write(chunk)
            bar = PROGRESS.findall(chunk)
            if progress and bar:
                _, done, total, rate = bar[-1]
                print(f"\r  {label}: {done}/{total} [{rate}]   ", end="", flush=True)
                shown = True
        proc.wait()
    if shown:
        print(flush=True)
    if proc.returncode != 0:
        tail = log.read_text()[-4000:]
        raise RuntimeError(f"python -m {module} failed (exit {proc.returncode}); log {log}:\n{tail}")


def answer_questions(model: Path, fx: FixturePaths, answers: Path, log: Path, progress: bool,
                     gate_dump: Path | None) -> None:
    """LLaVA's `model_vqa_loader` on the held-out questions, greedy, as LLaVA's eval scripts run it."""
    from aligngpt_plugin.integrations.llava.loader import GATE_DUMP_ENV

    run_module("aligngpt_plugin.llava_eval", [
        "llava.eval.model_vqa_loader", "--model-path", str(model), "--question-file", str(fx.questions),
        "--image-folder", str(fx.images), "--answers-file", str(answers), "--temperature", "0",
        "--conv-mode", "vicuna_v1", "--max_new_tokens", "4"], log, "questions", progress,
        env={GATE_DUMP_ENV: str(gate_dump)} if gate_dump else None)


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation: Pearson's r of the ranks."""
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sx, sy = math.sqrt(sum((a - mx) ** 2 for a in rx)), math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (sx * sy) if sx and sy else float("nan")


def levels_vs_truth(level_dir: Path, data: Path, levels: int) -> dict:
    """How the CLIP levels follow the known truth of each caption."""
    truth = {r["id"]: r["truth"] for r in json.loads(data.read_text())}
    scores = {s["id"]: s["score"] for s in read_jsonl(level_dir / "scores.jsonl")}
    levelled = json.loads((level_dir / f"{data.stem}_levels.json").read_text())
    order = {k: i for i, k in enumerate(reversed(demo_data.TRUTH_KINDS))}  # unrelated 0, partial 1, true 2
    kinds = demo_data.TRUTH_KINDS
    per_level = [{k: 0 for k in kinds} for _ in range(levels)]
    for r in levelled:
        per_level[r["align_level"]][r["truth"]] += 1
    ids = sorted(scores)
    return {
        "spearman_score_truth": spearman([scores[i] for i in ids], [order[truth[i]] for i in ids]),
        "spearman_level_truth": spearman([float(r["align_level"]) for r in levelled],
                                         [order[r["truth"]] for r in levelled]),
        "kinds_per_level": per_level,
        "share_per_level": [{k: c[k] / max(1, sum(c.values())) for k in kinds} for c in per_level],
        "scores_by_truth": {k: [scores[i] for i in ids if truth[i] == k] for k in kinds},
        "edges": json.loads((level_dir / "levels.json").read_text())["edges"],
    }


def accuracy_by_kind(answers: Path, questions: Path) -> dict[str, float]:
    """Share of answers holding the expected word, per question kind."""
    truth = {q["question_id"]: q for q in read_jsonl(questions)}
    hits: dict[str, list[bool]] = {}
    for a in read_jsonl(answers):
        q = truth[a["question_id"]]
        hits.setdefault(q["category"], []).append(q["answer"].lower() in a["text"].lower())
    return {k: sum(v) / len(v) for k, v in hits.items()}


def gates_by_kind(answers: Path, gates: Path, questions: Path) -> dict:
    """The gate's weights per question kind: mean, entropy, and the largest difference between kinds."""
    from aligngpt_plugin.evaluation.gates import compare, join_gates, summarise

    kind = {q["question_id"]: q["category"] for q in read_jsonl(questions)}
    samples = join_gates(answers, gates)
    per_kind = {k: summarise([s for s in samples if kind[s["question_id"]] == k]) for k in demo_data.QUESTIONS}
    return {"per_kind": per_kind, **compare(per_kind)}


def run(out: Path, settings: DemoSettings | None = None, progress: bool = True) -> dict:
    """Everything `aligngpt-demo` does (see `aligngpt_plugin.demo`); returns the summary it writes."""
    s = settings or DemoSettings()
    out = Path(out).resolve()  # checkpoints record these paths: absolute, they load from anywhere
    logs = out / "logs"
    stage = Stages()
    summary: dict = {"settings": asdict(s)}

    stage("data: shape pictures; pre-training captions true / partly true / unrelated (truth kept)")
    data = demo_data.write_demo_data(out / "data", s.pretrain_pairs, s.finetune_pictures, s.eval_pictures, s.seed)

    stage("CLIP: a tiny open_clip model trained contrastively on shapes (open_clip's ClipLoss)")
    clip = train_shapes_clip(out / "clip", s.clip, progress=progress)
    summary["clip_auc"] = clip.auc
    print(f"  held-out AUC, true captions vs: partly true {clip.auc['true_vs_partial']:.3f}, "
          f"unrelated {clip.auc['true_vs_unrelated']:.3f}")

    stage(f"aligngpt-score: CLIP scores of the pre-training pairs and {s.levels} levels")
    level_dir = out / "levels"
    run_module("aligngpt_plugin.score", [
        "--data", str(data.pretrain), "--images", str(data.images), "--output", str(level_dir),
        "--model", str(clip.config), "--pretrained", str(clip.checkpoint), "--levels", str(s.levels),
        "--batch-size", "64", "--num-workers", "0", "--overwrite"], logs / "score.log", "pairs", progress)
    levelled = level_dir / f"{data.pretrain.stem}_levels.json"
    truth = levels_vs_truth(level_dir, data.pretrain, s.levels)
    summary["levels"] = {k: v for k, v in truth.items() if k != "scores_by_truth"}
    print(f"  rank correlation of level and truth: {truth['spearman_level_truth']:.3f}; share of true "
          f"captions, level 0 -> {s.levels - 1}: "
          + " ".join(f"{x['true']:.2f}" for x in truth["share_per_level"]))

    stage(f"tiny LLM: a Llama with Vicuna-v1.5's tokenizer, {s.language.steps} steps of language training on "
          "captions and alt-text (no images)")
    llm = write_tiny_llm(out / "llm", FixtureSpec(hidden_size=s.llm_hidden, num_layers=s.llm_layers,
                                                 num_heads=max(1, s.llm_hidden // 16), seed=s.seed))
    language_losses = train_language(llm, s.language, progress=progress)
    fx = FixturePaths(out, llm, clip.tower, llm, data.images, data.pretrain, levelled, data.finetune, data.questions)
    image_tokens = (s.clip.image_size // s.clip.patch_size) ** 2
    fast = ("--gradient_checkpointing", "False")  # memory is no issue here; recomputation only costs time
    flags = {"aligngpt": ("--align_levels", str(s.levels), "--align_gate_tokens", str(image_tokens)), "llava": ()}

    results: dict = {}
    for model in s.models:
        r = results[model] = {}
        pre_dir, ft_dir = out / model / "pretrain", out / model / FINETUNE_DIRS[model]
        stage(f"{model}: stage 1, pre-training ({'projector + level embeddings' if flags[model] else 'projector'})")
        run_module("aligngpt_plugin.train", pipeline.pretrain_args(fx, pre_dir, pipeline.StageSettings(
            epochs=s.pretrain_epochs, batch_size=s.batch_size, learning_rate=s.pretrain_lr, save_steps=10**6,
            logging_steps=5, seed=s.seed), data=levelled, extra=(*flags[model], *fast)),
            logs / f"{model}_pretrain.log", "steps", progress)
        r["pretrain_loss"] = pipeline.logged_losses(pre_dir)
        stage(f"{model}: stage 2, instruction tuning (LLM + projector{' + gate' if flags[model] else ''})")
        run_module("aligngpt_plugin.train", pipeline.finetune_args(
            fx, pre_dir / "mm_projector.bin", ft_dir, pipeline.StageSettings(
                epochs=s.finetune_epochs, batch_size=s.batch_size, learning_rate=s.finetune_lr, save_steps=10**6,
                logging_steps=5, seed=s.seed), extra=(*flags[model], *fast)),
            logs / f"{model}_finetune.log", "steps", progress)
        r["finetune_loss"] = pipeline.logged_losses(ft_dir)
        stage(f"{model}: eval, LLaVA's model_vqa_loader on {s.eval_pictures * len(demo_data.QUESTIONS)} "
              "held-out questions")
        answers = out / "eval" / f"{model}_answers.jsonl"
        gates = answers.with_suffix(".gates.jsonl")
        gates.unlink(missing_ok=True)  # the dump appends: a rerun starts afresh
        answer_questions(ft_dir, fx, answers, logs / f"{model}_eval.log", progress,
                         gate_dump=gates if flags[model] else None)
        r["accuracy"] = accuracy_by_kind(answers, data.questions)
        if flags[model]:
            r["gates"] = gates_by_kind(answers, gates, data.questions)
        print(f"  {model} accuracy: " + ", ".join(
            f"{k} {v:.0%} (chance {demo_data.chance(k):.0%})" for k, v in r["accuracy"].items()))
    summary["models"] = results
    summary["chance"] = {k: demo_data.chance(k) for k in demo_data.QUESTIONS}

    stage("report: runs/demo/report.md with its figures")
    from aligngpt_plugin.devkit.demo_report import write_report

    summary["seconds"], summary["cpu_seconds"] = stage.seconds, stage.cpu_seconds
    write_report(out, summary, truth, clip.losses, language_losses)
    stage.end()
    summary["seconds"] = {**stage.seconds, "total": round(time.time() - stage.started, 1)}
    summary["cpu_seconds"] = {**stage.cpu_seconds, "total": round(sum(stage.cpu_seconds.values()), 1)}
    write_json_atomic(out / "summary.json", summary, indent=1)
    print(f"[demo] total {summary['seconds']['total']:.0f}s; report: {out / 'report.md'}")
    return summary
