"""aligngpt-score beyond one machine: two torchrun agents standing for two nodes (static rendezvous on
loopback, gloo), a Slurm array job (--slurm-array, then --merge-only), and the resume story when a node dies."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import scoring_helpers  # noqa: E402
from scoring_helpers import (  # noqa: E402
    REPO,
    child_env,
    cli_args,
    write_pictures,
    write_tar_shard,
    write_tiny_open_clip,
)

from aligngpt_plugin.score import main as score_main  # noqa: E402

reference = scoring_helpers.reference  # the shared fixtures
one_thread = scoring_helpers.one_thread
pytestmark = pytest.mark.usefixtures("one_thread")
SHARDS, PER_SHARD = 3, 4


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("nodes")
    config, checkpoint = write_tiny_open_clip(root / "model")
    pairs = write_pictures(root / "images", SHARDS * PER_SHARD)
    shards = root / "shards"
    shards.mkdir()
    for s in range(SHARDS):
        write_tar_shard(shards / f"{s:05d}.tar", [
            (f"{s:05d}{i:04d}", {name.rsplit(".", 1)[1]: (root / "images" / name).read_bytes(),
                                 "txt": caption.encode()})
            for i, (name, caption) in enumerate(pairs[s * PER_SHARD:(s + 1) * PER_SHARD])])
    return {"root": root, "config": config, "checkpoint": checkpoint, "images": root / "images", "data": shards,
            "flags": ("--levels", "2", "--num-workers", "0")}


def outputs(out) -> dict[str, bytes]:
    files = sorted(out.glob("scores/*.parquet")) + sorted(out.glob("errors/*.jsonl")) + [out / "levels.json"]
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_by_torchrun_rendezvous_match_one_process(inputs, reference, tmp_path):
    """`torchrun --nnodes 2 --node_rank R --master_addr ... --master_port ...` on each node; here both on
    loopback, one process per node, gloo."""
    out = tmp_path / "out"
    port = str(free_port())
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
         "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port,
         "-m", "aligngpt_plugin.score", *cli_args(inputs, inputs["data"], out)],
        cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = []
    try:
        for node in nodes:
            logs.append(node.communicate(timeout=240)[0])
    finally:
        for node in nodes:
            node.kill()
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(logs)
    assert "x2 ranks" in logs[0] and "this run: 8 images" in logs[0]  # node 0: shards 0 and 2, then the merge
    assert outputs(out) == outputs(reference)


def test_slurm_array_then_merge_and_a_dead_node_run_again(inputs, reference, tmp_path, monkeypatch, capsys):
    """Tasks 1 and 2 of `sbatch --array=1-2` score shards 1 and 0, 2; the node of task 1 dies after its first
    shard; the merge refuses naming what is missing; task 1 run again finishes it; the merge matches one
    process."""
    out = tmp_path / "out"
    args = cli_args(inputs, inputs["data"], out)

    def task(n: int) -> int:
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(n))
        monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
        monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
        return score_main([*args, "--slurm-array"])

    assert task(2) == 0 and task(1) == 0
    assert "rank 0 of 2 done" in capsys.readouterr().out
    (out / "work" / "shard_00002.json").unlink()  # task 1's node died before shard 2 was marked done
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    assert score_main([*args, "--merge-only"]) == 2
    error = capsys.readouterr().err
    assert "1 of 3 shards are not scored yet (first: 00002)" in error and "rank k mod W" in error
    assert not (out / "levels.json").exists()

    assert task(1) == 0  # the same task again: only its unfinished shard
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    assert score_main([*args, "--merge-only"]) == 0
    assert outputs(out) == outputs(reference)
    assert json.loads((out / "work" / "shard_00002.json").read_text())["samples"] == PER_SHARD


def test_slurm_array_outside_an_array_job_is_refused(inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    assert score_main([*cli_args(inputs, inputs["data"], tmp_path / "out"), "--slurm-array"]) == 2
    assert "not in a Slurm array job" in capsys.readouterr().err
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    assert score_main([*cli_args(inputs, inputs["data"], tmp_path / "out"), "--slurm-array", "--rank", "0",
                       "--world-size", "2"]) == 2
    assert "--slurm-array sets --rank and --world-size" in capsys.readouterr().err
