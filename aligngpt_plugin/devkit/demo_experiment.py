"""The work behind `make demo` / `aligngpt-demo` (what it runs and writes: `aligngpt_plugin.demo`):
AlignGPT's thesis tested end to end on shape pictures whose captions match them to a known degree,
beside plain LLaVA trained on the same data with the same budget, each stage through the entry point a
user runs."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aligngpt_plugin.core.fileio import read_jsonl, write_json_atomic
from aligngpt_plugin.devkit import demo_data, demo_stats, pipeline
from aligngpt_plugin.devkit.shapes_clip import ClipTraining, train_shapes_clip
from aligngpt_plugin.devkit.shapes_llm import LanguageTraining, train_language
from aligngpt_plugin.devkit.tiny_checkpoints import FixturePaths, FixtureSpec, write_tiny_llm

LEVELS = 8
MODELS = ("aligngpt", "llava")
TRL_MODEL = "aligngpt-trl"  # AlignGPT through TRL (--trl: devkit/demo_trl.py, which needs the `trl` extra)
# LLaVA's builder loads a checkpoint as LLaVA only when its folder name contains "llava"; AlignGPT's is
# recognised by its config, whatever the folder is called.
FINETUNE_DIRS = {"aligngpt": "aligngpt-shapes-finetune", "llava": "llava-shapes-finetune"}
# Stage 2 without LLaVA-1.5's modality grouping: every demo record has a picture, so grouping would only sort
# each step's 4 records by length, but its sampler draws from torch's global generator (its state depends on
# all drawn before); the seeded sampler's order is one the TRL route (--align_group_turns) repeats step for step
UNGROUPED = ("--group_by_modality_length", "False")


@dataclass
class DemoSettings:
    """Sizes and budgets of the demo; `quick()` is the test suite's.

    Fixed across the training seeds (drawn once with `data_seed`): the pictures, captions and questions,
    the CLIP and its levels, and the tiny LLM with its language warm-up. Varied by each training seed:
    the shared start of both models (projector, and AlignGPT's level embeddings and gate), both stages'
    data order, and everything the trainings draw."""

    pretrain_pairs: int = field(default=400, metadata={"help": "pre-training pictures (captions of mixed truth)"})
    finetune_pictures: int = field(default=800, metadata={"help": "instruction-tuning pictures"})
    eval_pictures: int = field(default=200, metadata={"help": "held-out pictures, one question of each kind; "
                                                              "the level probe captions them"})
    llm_hidden: int = field(default=64, metadata={"help": "tiny Llama hidden size (random init)"})
    llm_layers: int = field(default=2, metadata={"help": "tiny Llama layers"})
    pretrain_epochs: float = field(default=1, metadata={"help": "stage 1 epochs"})
    finetune_epochs: float = field(default=1, metadata={"help": "stage 2 epochs"})
    batch_size: int = field(default=4, metadata={"help": "per-device batch, both stages"})
    pretrain_lr: float = field(default=1e-3, metadata={"help": "stage 1 learning rate (LLaVA-1.5: 1e-3)"})
    finetune_lr: float = field(default=3e-3, metadata={"help": "stage 2 learning rate (a random-init LLM needs more "
                                                               "than LLaVA-1.5's 2e-5)"})
    levels: int = field(default=LEVELS, metadata={"help": "alignment levels"})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"help": "training seeds (both models, both stages)"})
    data_seed: int = field(default=0, metadata={"help": "seeds data, CLIP and LLM (fixed across training seeds)"})
    jobs: int = field(default=2, metadata={"help": "trainings run at once (one CPU thread each when > 1)"})
    models: tuple[str, ...] = field(default=MODELS, metadata={"help": "which models to train and evaluate"})
    trl: bool = field(default=False, metadata={"help": "also train AlignGPT through TRL (aligngpt-sft) and compare "
                                                      "the two routes (demo_trl)"})
    clip: ClipTraining = field(default_factory=ClipTraining)
    language: LanguageTraining = field(default_factory=LanguageTraining)

    @classmethod
    def quick(cls) -> DemoSettings:
        # every stage and both seeds at the least size whose checks still mean something: 8 levels of 8
        # pairs, a few logged stage-2 losses, a CLIP that separates true captions from alt-text (512
        # pictures x 4 epochs did not: held-out AUC 0.54)
        return cls(pretrain_pairs=64, finetune_pictures=64, eval_pictures=6, seeds=(0, 1),
                   clip=ClipTraining(pictures=1024, epochs=4, heldout=100), language=LanguageTraining(steps=10))

    @property
    def probe_levels(self) -> list[int]:
        """The levels the probe fixes: all of them (lowest, middle and top are compared)."""
        return list(range(self.levels))

    @property
    def middle_level(self) -> int:
        return (self.levels - 1) // 2


class Stages:
    """Prints each stage as it starts and ends, keeps its wall time and CPU time (the demo's own when the
    stage runs in this process, plus its subprocesses': on a shared machine the CPU time shows what the
    stage would take alone). Stages of different trainings may run at once, from threads."""

    def __init__(self) -> None:
        self.started = time.time()
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    @staticmethod
    def own_cpu() -> float:
        return sum(os.times()[:2])

    def say(self, text: str) -> None:
        with self._lock:
            print(f"[demo {time.time() - self.started:5.0f}s] {text}", flush=True)

    @contextlib.contextmanager
    def __call__(self, name: str, what: str = "", own: bool = True):
        """Time the block as stage `name`; it adds its subprocesses' CPU seconds to the yielded list."""
        self.say(f"{name}: {what}" if what else name)
        t0, c0, children = time.time(), self.own_cpu(), []
        yield children
        seconds = round(time.time() - t0, 1)
        cpu = round((self.own_cpu() - c0 if own else 0.0) + sum(children), 1)
        with self._lock:
            self.seconds[name], self.cpu_seconds[name] = seconds, cpu
        self.say(f"  {name}: done in {seconds:.0f}s ({cpu:.0f} CPU s)")


PROGRESS = re.compile(r"(\d+)%\|[^|]*\|\s*(\d+)/(\d+) \[([^\]]*)\]")  # a tqdm bar, as HF and LLaVA print it


def run_module(module: str, args: list[str], log: Path, label: str, progress: bool = True,
               env: dict[str, str] | None = None) -> float:
    """`python -m module args` in a fresh process, everything it prints into `log`; with `progress`, its
    tqdm bar (the Trainer's steps, model_vqa_loader's questions) redrawn on one line. Returns the process's
    CPU seconds (user + system, its children included); raises with the output's tail when it fails."""
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
        # wait4, not wait: the rusage of this one child, while other stages' children run beside it
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if shown:
        print(flush=True)
    if proc.returncode != 0:
        tail = log.read_text()[-4000:]
        raise RuntimeError(f"python -m {module} failed (exit {proc.returncode}); log {log}:\n{tail}")
    return usage.ru_utime + usage.ru_stime


def answer_questions(model: Path, fx: FixturePaths, answers: Path, log: Path, progress: bool,
                     gate_dump: Path | None, env: dict[str, str]) -> float:
    """LLaVA's `model_vqa_loader` on the held-out questions, greedy, as LLaVA's eval scripts run it."""
    from aligngpt_plugin.integrations.llava.loader import GATE_DUMP_ENV

    return run_module("aligngpt_plugin.llava_eval", [
        "llava.eval.model_vqa_loader", "--model-path", str(model), "--question-file", str(fx.questions),
        "--image-folder", str(fx.images), "--answers-file", str(answers), "--temperature", "0",
        "--conv-mode", "vicuna_v1", "--max_new_tokens", "4"], log, "questions", progress,
        env={**env, **({GATE_DUMP_ENV: str(gate_dump)} if gate_dump else {})})


def write_start(path: Path, seed: int, vision_width: int, hidden: int, alignment_flags: tuple[str, ...]) -> Path:
    """The weights both models start stage 1 from, drawn once for `seed`: LLaVA's `mlp2x_gelu` projector
    (Linear, GELU, Linear, torch's default init as LLaVA builds it) and AlignGPT's alignment module.

    The file makes the shared start explicit, whatever each model draws while it is built: the alignment
    module draws from its own stream (`core.alignment.private_rng`), but where a model's weight init still
    draws the gate's layers from the global RNG before LLaVA's `initialize_vision_modules` draws the
    projector, the same seed alone gives the two models different projectors (tests/test_same_start.py).
    Both stage-1 runs load this file with `--pretrain_mm_mlp_adapter` (LLaVA reads the `mm_projector.`
    keys, AlignGPT also the `alignment.` ones)."""
    import torch

    from aligngpt_plugin.core.alignment import AlignmentModule
    from aligngpt_plugin.core.fileio import atomic_path
    from aligngpt_plugin.integrations.llava.training import split_alignment_args

    config, _ = split_alignment_args(list(alignment_flags))
    torch.manual_seed(seed)
    projector = torch.nn.Sequential(torch.nn.Linear(vision_width, hidden), torch.nn.GELU(),
                                    torch.nn.Linear(hidden, hidden))
    alignment = AlignmentModule(config, hidden)
    weights = {f"model.mm_projector.{k}": v.detach().clone() for k, v in projector.state_dict().items()}
    weights |= {f"model.alignment.{k}": v.detach().clone() for k, v in alignment.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(weights, tmp)
    return path


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


def gates_by_kind(answers: Path, gates: Path, questions: Path, permutations: int = 199) -> dict:
    """The gate's weights per question kind (mean, entropy) and a permutation test of whether they differ
    between kinds (`demo_stats.gate_kind_test`)."""
    from aligngpt_plugin.evaluation.gates import join_gates, summarise

    kind = {q["question_id"]: q["category"] for q in read_jsonl(questions)}
    samples = [s for s in join_gates(answers, gates) if s["gate_weights"] is not None]
    per_kind = {k: summarise([s for s in samples if kind[s["question_id"]] == k]) for k in demo_data.QUESTIONS}
    test = demo_stats.gate_kind_test([s["gate_weights"] for s in samples], [kind[s["question_id"]] for s in samples],
                                     permutations=permutations)
    return {"per_kind": per_kind, "test": {k: v for k, v in test.items() if k != "mean_weights"},
            "max_level_spread": test["max_level_spread"]}


def first_losses(losses: list[float]) -> dict:
    """Stage 1's loss at step 1 (the shared start's loss on the first batch, before any update), the mean
    of the first 5 steps, step 10 and the last step (logged every step)."""
    return {"step1": losses[0], "mean_first5": sum(losses[:5]) / len(losses[:5]),
            "step10": losses[min(9, len(losses) - 1)], "last": losses[-1]}


def train_and_test(seed: int, model: str, ctx: dict) -> dict:
    """One model, one training seed: stage 1 from the seed's shared start, the level probe on the stage-1
    checkpoint, stage 2, the held-out questions (with the gate's weights for AlignGPT)."""
    s, out, fx, stage, env = ctx["settings"], ctx["out"], ctx["fx"], ctx["stage"], ctx["env"]
    progress = ctx["progress"]
    flags, fast = ctx["flags"][model], ("--gradient_checkpointing", "False")  # recomputation only costs time
    base = out / f"seed{seed}"
    logs = base / "logs"
    pre_dir, ft_dir = base / model / "pretrain", base / model / FINETUNE_DIRS[model]
    tag = f"seed {seed} {model}"
    r: dict = {}
    with stage(f"{tag}: stage 1", "pre-training ("
               + ("projector + level embeddings" if flags else "projector") + "), from the shared start") as cpu:
        cpu.append(run_module("aligngpt_plugin.train", pipeline.pretrain_args(fx, pre_dir, pipeline.StageSettings(
            epochs=s.pretrain_epochs, batch_size=s.batch_size, learning_rate=s.pretrain_lr, save_steps=10**6,
            logging_steps=1, seed=seed), data=ctx["levelled"], extra=(
                *flags, *fast, "--pretrain_mm_mlp_adapter", str(base / "start.bin"))),
            logs / f"{model}_pretrain.log", "steps", progress, env))
    r["pretrain_loss"] = pipeline.logged_losses(pre_dir)
    levels = [str(k) for k in s.probe_levels] if flags else []
    with stage(f"{tag}: level probe", "captions of the held-out pictures"
               + (f" at each fixed level 0..{s.levels - 1}" if flags else "")) as cpu:
        cpu.append(run_module("aligngpt_plugin.devkit.level_probe", [
            "--model", str(pre_dir), "--model-base", str(fx.llm), "--pictures", str(ctx["heldout"]),
            "--image-folder", str(fx.images), "--out", str(base / "probe" / model),
            *(["--levels", *levels] if levels else [])], logs / f"{model}_probe.log", "", False, env))
    with stage(f"{tag}: stage 2", "instruction tuning (LLM + projector" + (" + gate)" if flags else ")")) as cpu:
        cpu.append(run_module("aligngpt_plugin.train", pipeline.finetune_args(
            fx, pre_dir / "mm_projector.bin", ft_dir, pipeline.StageSettings(
                epochs=s.finetune_epochs, batch_size=s.batch_size, learning_rate=s.finetune_lr, save_steps=10**6,
                logging_steps=5, seed=seed), extra=(*flags, *fast, *UNGROUPED)),
            logs / f"{model}_finetune.log", "steps", progress, env))
    r["finetune_loss"] = pipeline.logged_losses(ft_dir)
    answers = base / "eval" / f"{model}_answers.jsonl"
    gates = answers.with_suffix(".gates.jsonl")
    gates.unlink(missing_ok=True)  # the dump appends: a rerun starts afresh
    with stage(f"{tag}: eval", f"LLaVA's model_vqa_loader on {s.eval_pictures * len(demo_data.QUESTIONS)} "
               "held-out questions") as cpu:
        cpu.append(answer_questions(ft_dir, fx, answers, logs / f"{model}_eval.log", progress,
                                    gates if flags else None, env))
    return r


def caption_files(out: Path, seeds: tuple[int, ...], models: tuple[str, ...], levels: list[int]) -> dict:
    """seed -> probe condition ("level k", "LLaVA") -> caption file."""
    files = {}
    for seed in seeds:
        files[str(seed)] = {f"level {k}": out / f"seed{seed}" / "probe" / "aligngpt" / f"level_{k}.jsonl"
                       for k in (levels if "aligngpt" in models else [])}
        if "llava" in models:
            files[str(seed)]["LLaVA"] = out / f"seed{seed}" / "probe" / "llava" / "captions.jsonl"
    return files


def statistics(out: Path, s: DemoSettings, questions: Path, heldout: Path) -> dict:
    """The report's numbers, recomputed from the files the runs wrote (answers, captions, gate dumps)."""
    qs = read_jsonl(questions)
    trained = (*s.models, *([TRL_MODEL] if s.trl else []))
    answers = {str(seed): {m: out / f"seed{seed}" / "eval" / f"{m}_answers.jsonl" for m in trained}
               for seed in s.seeds}
    result = {"accuracy": demo_stats.accuracy_statistics(qs, answers)}
    if s.trl:  # the same AlignGPT through TRL against the LLaVA-code route, on the same questions
        result["routes"] = demo_stats.accuracy_statistics(qs, answers, models=(TRL_MODEL, "aligngpt"))
    top, mid = s.levels - 1, s.middle_level
    compare = [(f"level {top}", "level 0"), (f"level {top}", f"level {mid}")] if "aligngpt" in s.models else []
    if set(MODELS) <= set(s.models):
        compare.append((f"level {top}", "LLaVA"))
    result["probe"] = demo_stats.probe_statistics(json.loads(heldout.read_text()),
                                                  caption_files(out, s.seeds, s.models, s.probe_levels), compare)
    if "aligngpt" in s.models:
        gates = {str(seed): gates_by_kind(answers[str(seed)]["aligngpt"],
                                          answers[str(seed)]["aligngpt"].with_suffix(".gates.jsonl"), questions)
                 for seed in s.seeds}
        result["gates"] = {"per_seed": gates,
                           "fisher": demo_stats.fisher([g["test"]["p"] for g in gates.values()])}
    return result


def rescore(out: Path) -> dict:
    """Recompute the statistics of a finished run from its answer, caption and gate files, then redraw the
    report (what `aligngpt-demo --report-only` does when the run's files are there)."""
    from aligngpt_plugin.devkit.demo_report import draw

    out = Path(out).resolve()
    source = out / "report_data.json"
    data = json.loads(source.read_text())
    summary = data["summary"]
    given = summary["settings"]
    s = DemoSettings(levels=given["levels"], seeds=tuple(given["seeds"]), models=tuple(given["models"]),
                     eval_pictures=given["eval_pictures"], trl=given.get("trl", False))
    numbers = statistics(out, s, out / "data" / "questions.jsonl", out / "data" / "heldout.json")
    summary |= json.loads(json.dumps(numbers))  # as the report reads them: through JSON
    write_json_atomic(source, data)
    write_json_atomic(out / "summary.json", summary, indent=1)
    draw(out)
    return summary


def run(out: Path, settings: DemoSettings | None = None, progress: bool = True) -> dict:
    """Everything `aligngpt-demo` does (see `aligngpt_plugin.demo`); returns the summary it writes."""
    s = settings or DemoSettings()
    out = Path(out).resolve()  # checkpoints record these paths: absolute, they load from anywhere
    logs = out / "logs"
    stage = Stages()
    summary: dict = {"settings": asdict(s), "load_average_at_start": os.getloadavg()}

    with stage("data", "shape pictures; pre-training captions true / partly true / unrelated (truth kept)"):
        data = demo_data.write_demo_data(out / "data", s.pretrain_pairs, s.finetune_pictures, s.eval_pictures,
                                         s.data_seed)

    with stage("CLIP", "a tiny open_clip model trained contrastively on shapes (open_clip's ClipLoss)"):
        s.clip.seed = s.data_seed
        clip = train_shapes_clip(out / "clip", s.clip, progress=progress)
    summary["clip_auc"] = clip.auc
    stage.say(f"  held-out AUC, true captions vs: partly true {clip.auc['true_vs_partial']:.3f}, "
              f"unrelated {clip.auc['true_vs_unrelated']:.3f}")

    level_dir = out / "levels"
    with stage("levels", f"aligngpt-score: CLIP scores of the pre-training pairs and {s.levels} levels") as cpu:
        cpu.append(run_module("aligngpt_plugin.score", [
            "--data", str(data.pretrain), "--images", str(data.images), "--output", str(level_dir),
            "--model", str(clip.config), "--pretrained", str(clip.checkpoint), "--levels", str(s.levels),
            "--batch-size", "64", "--num-workers", "0", "--overwrite"], logs / "score.log", "pairs", progress))
    levelled = level_dir / f"{data.pretrain.stem}_levels.json"
    truth = levels_vs_truth(level_dir, data.pretrain, s.levels)
    summary["levels"] = {k: v for k, v in truth.items() if k != "scores_by_truth"}
    stage.say(f"  rank correlation of level and truth: {truth['spearman_level_truth']:.3f}; share of true "
              f"captions, level 0 -> {s.levels - 1}: " + " ".join(f"{x['true']:.2f}" for x in truth["share_per_level"]))

    with stage("tiny LLM", f"a Llama with Vicuna-v1.5's tokenizer, {s.language.steps} steps of language training "
               "on captions and alt-text (no images)"):
        s.language.seed = s.data_seed
        llm = write_tiny_llm(out / "llm", FixtureSpec(hidden_size=s.llm_hidden, num_layers=s.llm_layers,
                                                     num_heads=max(1, s.llm_hidden // 16), seed=s.data_seed))
        language_losses = train_language(llm, s.language, progress=progress)
    fx = FixturePaths(out, llm, clip.tower, llm, data.images, data.pretrain, levelled, data.finetune, data.questions)
    image_tokens = (s.clip.image_size // s.clip.patch_size) ** 2
    align_flags = ("--align_levels", str(s.levels), "--align_gate_tokens", str(image_tokens))
    for seed in s.seeds:
        write_start(out / f"seed{seed}" / "start.bin", seed, s.clip.width, s.llm_hidden, align_flags)

    jobs = max(1, min(s.jobs, len(s.seeds) * len(s.models)))
    # one thread per training when several run at once: the tiny models gain little from a second thread
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if jobs > 1 else {}
    ctx = {"settings": s, "out": out, "fx": fx, "stage": stage, "env": env, "progress": progress and jobs == 1,
           "levelled": levelled, "heldout": data.heldout,
           "flags": {"aligngpt": align_flags, "llava": ()}}
    trained = list(s.models)
    if s.trl:
        from aligngpt_plugin.devkit.demo_trl import finetune_rows, train_and_test_trl
        from aligngpt_plugin.integrations.hf.templates import write_template

        trained.append(TRL_MODEL)
        with stage("TRL data", "instruction data as prompt/completion rows, one per answer; LLaVA's templates"):
            ctx["trl_finetune"] = finetune_rows(data.finetune, data.images, out / "data" / "trl_finetune")
            ctx["templates"] = {k: write_template(k, out / "data" / f"llava_{k}.jinja") for k in ("plain", "v1")}
    stage.say(f"{len(s.seeds)} training seeds x {len(trained)} models, {jobs} at a time")
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {(seed, m): pool.submit(train_and_test_trl, seed, ctx) if m == TRL_MODEL else
                   pool.submit(train_and_test, seed, m, ctx) for seed in s.seeds for m in trained}
        runs = {seed: {m: futures[seed, m].result() for m in trained} for seed in s.seeds}
    summary["runs"] = {str(seed): {m: {"pretrain_start": first_losses(r["pretrain_loss"]), **r} for m, r in per.items()}
                       for seed, per in runs.items()}
    summary["chance"] = {k: demo_data.chance(k) for k in demo_data.QUESTIONS}

    with stage("statistics", "accuracies, paired tests, level probe, gate (from the answer and caption files)"):
        summary |= statistics(out, s, data.questions, data.heldout)
    over = summary["accuracy"]["over_seeds"]
    for kind in summary["accuracy"]["kinds"]:
        stage.say(f"  {kind}, mean accuracy over seeds: " + ", ".join(f"{m} {over[m][kind]['mean']:.1%}" for m in over))

    from aligngpt_plugin.devkit.demo_report import write_report

    with stage("report", "report.md with its figures"):
        summary["seconds"], summary["cpu_seconds"] = dict(stage.seconds), dict(stage.cpu_seconds)
        write_report(out, summary, truth, clip.losses, language_losses)
    summary["seconds"] = {**stage.seconds, "total": round(time.time() - stage.started, 1)}
    summary["cpu_seconds"] = {**stage.cpu_seconds, "total": round(sum(stage.cpu_seconds.values()), 1)}
    summary["load_average_at_end"] = os.getloadavg()
    write_json_atomic(out / "summary.json", summary, indent=1)
    write_report(out, summary, truth, clip.losses, language_losses)  # again, with the report's own time
    stage.say(f"total {summary['seconds']['total']:.0f}s; report: {out / 'report.md'}")
    return summary
