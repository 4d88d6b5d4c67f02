"""Shared helpers of the TRL-path tests (test_trl_multiprocess, test_trl_resume, test_trl_equivalence): one tiny
start point that both training paths can load, and bounded subprocess runs.

`start_point(tiny, root)` writes, from the session's fixtures:

    root/llm/       the fixture Llama with its vocabulary grown to 32003 rows (the mean row appended 3 times,
                    as `llava_to_hf` grows it for `<image>`, `<pad>`, `<align>`): the LLaVA-original path's
                    `--model_name_or_path`, so that both paths' softmax runs over the same 32003 entries
    root/start.bin  the projector and the alignment module (levels, gate) of a fresh AlignGPT (seed 0), in
                    `mm_projector.bin`'s layout: the LLaVA-original path's `--pretrain_mm_mlp_adapter`
    root/llava/     that AlignGPT as LLaVA saves it (LLM + projector + alignment, CLIP named by path)
    root/hf/        root/llava/ converted with `llava_to_hf`: the TRL path's model folder

so the two paths start from the same weights. `run_bounded` runs a command in its own session and kills its
whole process tree after a timeout (a rank left waiting in a collective fails the test instead of blocking CI).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from processes import descendants, free_port  # noqa: F401  (free_port: the TRL tests take it from here)

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).resolve().parent / "trl_multiprocess"
LEVELS = 8
ADDED_TOKENS = 3  # <image>, <pad>, <align>


@dataclass
class StartPoint:
    llm: Path
    adapter: Path
    llava: Path
    hf: Path


def start_point(tiny, root: Path, levels: int = LEVELS) -> StartPoint:
    """Write the shared start (see the module docstring) under `root` and return its paths."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import aligngpt_plugin.integrations.llava.compat  # noqa: F401  (patches first)
    from aligngpt_plugin.conversion.hf import grow_rows, llava_to_hf
    from aligngpt_plugin.devkit.tiny_checkpoints import save_with_tokenizer, tokenizer_dir, vision_module_args
    from aligngpt_plugin.integrations.llava.model import AlignGPTConfig, AlignGPTLlamaForCausalLM

    root.mkdir(parents=True, exist_ok=True)
    llm = AutoModelForCausalLM.from_pretrained(tiny.llm)
    vocab = llm.config.vocab_size + ADDED_TOKENS
    with torch.no_grad():
        embed = grow_rows(llm.get_input_embeddings().weight.detach().clone(), vocab)
        head = grow_rows(llm.lm_head.weight.detach().clone(), vocab)
        llm.resize_token_embeddings(vocab, mean_resizing=False)
        llm.get_input_embeddings().weight.copy_(embed)
        llm.lm_head.weight.copy_(head)
    save_with_tokenizer(llm, root / "llm")

    base = AutoConfig.from_pretrained(root / "llm").to_dict()
    base.pop("model_type", None)
    torch.manual_seed(0)
    model = AlignGPTLlamaForCausalLM.from_pretrained(
        root / "llm", config=AlignGPTConfig(alignment={"num_levels": levels}, **base))
    model.get_model().initialize_vision_modules(vision_module_args(tiny.clip))
    with torch.no_grad():  # levels apart, so that each level's use shows in the loss
        model.get_model().alignment.level_embeddings.normal_(std=0.5)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()
             if k.startswith(("model.mm_projector.", "model.alignment."))}
    torch.save(state, root / "start.bin")
    model.config.mm_vision_tower = str(tiny.clip)
    model.save_pretrained(root / "llava", safe_serialization=True)
    for f in tokenizer_dir().iterdir():
        (root / "llava" / f.name).write_bytes(f.read_bytes())
    llava_to_hf(root / "llava", root / "hf")
    return StartPoint(llm=root / "llm", adapter=root / "start.bin", llava=root / "llava", hf=root / "hf")


def environment(dump: Path | None = None, **extra: str) -> dict[str, str]:
    """The child processes' environment: the repository and (with `dump`) the rank-dump probe on the path,
    one thread each (two ranks share 2 cores), offline."""
    paths = [str(ROOT)] + ([str(PROBE)] if dump is not None else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **extra}
    if dump is not None:
        env["ALIGNGPT_TRL_DUMP"] = str(dump)
    return env


def run_bounded(cmd: list[str], timeout: int, env: dict[str, str], expect_ok: bool = True) -> tuple[int, str]:
    """Run `cmd`; after `timeout` s kill its whole process tree (accelerate's and torchrun's workers live in
    sessions of their own) and fail the test. Returns (exit status, output); with `expect_ok` a non-zero
    status fails the test with the output's tail."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [*descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        pytest.fail(f"{' '.join(cmd[:6])}... did not finish in {timeout} s (ranks out of step?):\n{out[-3000:]}")
    if expect_ok:
        assert proc.returncode == 0, out[-5000:]
    return proc.returncode, out


def rank_dumps(folder: Path, n: int) -> list[dict]:
    """What each rank wrote (tests/trl_multiprocess/sitecustomize.py), in rank order."""
    import torch

    found = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(n)]
    assert [f["info"]["rank"] for f in found] == list(range(n))
    return found
