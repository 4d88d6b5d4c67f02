"""aligngpt-score against clip-retrieval's `inference` on the same webdataset shards, model file and settings.

    python bench/clip_retrieval_side_by_side.py                       # CPU: ViT-B-32 fp32, 1,000 JPEGs, 3 pairs
    python bench/clip_retrieval_side_by_side.py --device cuda --images 20000 --batch-size 256 --workers 8

What is compared: both tools read the same img2dataset-style shards (`00000.tar` with KEY.jpg, KEY.txt,
KEY.json, and a parquet per shard), load the same open_clip ViT-B-32 weights from one local file (random
init, saved here: no hub download; speed does not depend on the values), use the same batch size and
DataLoader worker count, and score image and caption (clip-retrieval also writes the embeddings; so does
aligngpt-score here, with --embeddings). Runs alternate (ours, theirs, theirs, ours, ...), each a fresh
process; reported are medians of:

- whole process: images / wall seconds from process start to exit (imports, model load, warm-up included);
- scoring loop: images / seconds of the loop alone (aligngpt-score: `score_units`; clip-retrieval: its
  runner's call), timed inside each process by a small wrapper;
- beside each tool's figures: its decode parallelism (DataLoader workers x threads decoding in each:
  aligngpt-score's --decode-threads, 1 for clip-retrieval) and the 1-minute load average at the start of its
  runs (a loaded machine favours whichever tool happens to run when the load drops: compare only figures
  taken at a load well under the core count);
- peak memory of the process tree: the largest sum over the process and all its children (workers) of
  PSS (proportional set size: pages shared by forked workers counted once in all) and of RSS (counted in
  every process that maps them), polled every 100 ms with psutil.

clip-retrieval 2.45.0 pins numpy<2, pyarrow<16, open_clip<3 and webdataset<0.3, so it runs from its own venv
(`--bench-venv`, made here on first use: `pip install clip-retrieval==2.45.0 "setuptools<81"`, its
pkg_resources import needs setuptools before 81); that venv reuses this venv's torch and torchvision through
a .pth file instead of downloading them again. Its folder input crashes with captions enabled (its issues
#345/#385), so both tools read the webdataset shards (`--input_format webdataset`).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

CLIP_RETRIEVAL = "clip-retrieval==2.45.0"
TORCH_ENTRIES = ("torch", "torchgen", "functorch", "torchvision", "torchvision.libs", "triton", "nvidia", "cuda")

OURS = """
import sys, time
from aligngpt_plugin.scoring import engine
inner = engine.score_units
def timed(*a, **k):
    start = time.perf_counter()
    out = inner(*a, **k)
    print(f"LOOP_SECONDS {time.perf_counter() - start:.4f}", file=sys.stderr, flush=True)
    return out
engine.score_units = timed
from aligngpt_plugin.score import main
sys.exit(main(sys.argv[1:]))
"""

THEIRS = """
import sys, time
import fire
from clip_retrieval.clip_inference import runner
inner = runner.Runner.__call__
def timed(self, *a, **k):
    build, spent = self.mapper_builder, [0.0]
    def timed_build():  # the model load happens in the runner; leave it out of the loop, as for ours
        start = time.perf_counter()
        mapper = build()
        spent[0] += time.perf_counter() - start
        return mapper
    self.mapper_builder = timed_build
    start = time.perf_counter()
    out = inner(self, *a, **k)
    print(f"LOOP_SECONDS {time.perf_counter() - start - spent[0]:.4f}", file=sys.stderr, flush=True)
    return out
runner.Runner.__call__ = timed
from clip_retrieval.clip_inference.main import main
fire.Fire(main, command=sys.argv[1:])
"""


def ensure_bench_venv(venv: Path) -> Path:
    """clip-retrieval's own venv (torch and torchvision borrowed from this one); returns its python."""
    python = venv / "bin" / "python"
    if (venv / ".ready").is_file():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.check_output([str(python), "-c", purelib], text=True).strip())
    borrowed = venv / "borrowed"
    borrowed.mkdir(exist_ok=True)
    ours = Path(next(p for p in sys.path if p.endswith("site-packages")))
    for entry in ours.iterdir():
        name = entry.name
        if name in TORCH_ENTRIES or name.startswith(("torch-", "torchvision-", "triton-", "nvidia_", "cuda_")):
            link = borrowed / name
            if not link.exists():
                link.symlink_to(entry)
    (site / "borrowed_torch.pth").write_text(str(borrowed) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", CLIP_RETRIEVAL, "setuptools<81"], check=True)
    (venv / ".ready").write_text(CLIP_RETRIEVAL + "\n")
    return python


def write_shards(folder: Path, n: int, per_shard: int) -> int:
    """n photo-like JPEGs (320-640 px) with captions as img2dataset shards; returns the shard count."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from score_throughput import write_images

    if (folder / ".ready").is_file():
        return len(list(folder.glob("*.tar")))
    pairs = write_images(folder / "jpegs", n)
    shards = (n + per_shard - 1) // per_shard
    for s in range(shards):
        rows = []
        with tarfile.open(folder / f"{s:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(s * per_shard, min(n, (s + 1) * per_shard)):
                name, caption = pairs[i]
                key = f"{s:05d}{i % per_shard:04d}"
                meta = {"key": key, "caption": caption, "status": "success"}
                for ext, data in (("jpg", (folder / "jpegs" / name).read_bytes()), ("txt", caption.encode()),
                                  ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime = len(data), 0
                    tar.addfile(info, io.BytesIO(data))
                rows.append(meta)
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{s:05d}.parquet")
    (folder / ".ready").write_text(str(n))
    return shards


def write_weights(path: Path, model: str) -> Path:
    import open_clip
    import torch

    if not path.is_file():
        torch.manual_seed(0)
        torch.save(open_clip.create_model(model, pretrained=None).state_dict(), path)
    return path


def watch(command: list[str], env: dict, timeout: float) -> dict:
    """Run a command; wall seconds, peak PSS and RSS of its process tree (MiB), its stderr's LOOP_SECONDS. A command
    still running after `timeout` s is killed with its children (clip-retrieval hangs when a worker fails)."""
    import psutil

    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    peak = {"pss": 0, "rss": 0}
    done = threading.Event()

    def poll():
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                infos = [p.memory_full_info() for p in tree]
                peak["pss"] = max(peak["pss"], sum(i.pss for i in infos))
                peak["rss"] = max(peak["rss"], sum(i.rss for i in infos))
            except psutil.Error:
                pass
            time.sleep(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        done.set()
        what = " ".join(command[:4])
        raise RuntimeError(f"{what} ... ran past {timeout:.0f} s and was killed:\n{err[-3000:]}") from None
    seconds = time.perf_counter() - start
    done.set()
    poller.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}")
    loop = [float(line.split()[1]) for line in err.splitlines() if line.startswith("LOOP_SECONDS")]
    return {"seconds": seconds, "loop_seconds": loop[-1] if loop else None, "peak_mib": peak["pss"] / 2**20,
            "peak_rss_mib": peak["rss"] / 2**20, "load_1min": [load_start, os.getloadavg()[0]]}


def same_scores(ours: Path, theirs: Path) -> dict:
    """Both tools' scores of the same keys: ours from scores/*.parquet, theirs the dot product of its saved
    image and text embeddings (float16 .npy, in the order of its metadata parquet)."""
    import numpy as np
    import pyarrow.parquet as pq

    mine = {}
    for f in sorted((ours / "scores").glob("*.parquet")):
        table = pq.read_table(f, columns=["key", "score"]).to_pydict()
        mine.update(zip(table["key"], table["score"]))
    keys = [k for f in sorted((theirs / "metadata").glob("*.parquet"))
            for k in pq.read_table(f).column("key").to_pylist()]
    image = np.concatenate([np.load(f) for f in sorted((theirs / "img_emb").glob("*.npy"))]).astype(np.float32)
    text = np.concatenate([np.load(f) for f in sorted((theirs / "text_emb").glob("*.npy"))]).astype(np.float32)
    other = (image * text).sum(axis=1)
    diff = np.abs(np.array([mine[k] for k in keys]) - other)
    return {"keys_compared": len(keys), "same_key_set": sorted(keys) == sorted(mine), "max_abs_diff": float(diff.max())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--per-shard", type=int, default=100)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--decode-threads", type=int, default=4,
                   help="aligngpt-score's threads decoding a batch in each worker (its default 4; clip-retrieval "
                        "decodes one image at a time per worker)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each tool, alternating")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--work", default="/tmp/aligngpt-vs-clip-retrieval", help="shards, weights and outputs")
    p.add_argument("--bench-venv", default="/tmp/aligngpt-bench-venv", help="clip-retrieval's venv")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--timeout", type=float, default=1800, help="seconds one run may take before it is killed")
    args = p.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    theirs_python = ensure_bench_venv(Path(args.bench_venv))
    shards = write_shards(work / "shards", args.images, args.per_shard)
    weights = write_weights(work / f"{args.model}_random.pt", args.model)
    pattern = str(work / "shards" / f"{{00000..{shards - 1:05d}}}.tar")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")
           if args.device == "cuda" else ""}

    def ours(run: int) -> list[str]:
        out = work / f"ours_{run}"
        return [sys.executable, "-c", OURS, "--data", pattern, "--output", str(out), "--overwrite", "--model",
                args.model, "--pretrained", str(weights), "--batch-size", str(args.batch_size), "--num-workers",
                str(args.workers), "--decode-threads", str(args.decode_threads),
                "--precision", "fp32", "--embeddings", "--no-progress", "--device", args.device]

    def theirs(run: int) -> list[str]:
        out = work / f"theirs_{run}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        return [str(theirs_python), "-c", THEIRS, "--input_dataset", pattern, "--output_folder", str(out),
                "--input_format", "webdataset", "--enable_text", "True", "--enable_image", "True",
                "--enable_metadata", "True", "--batch_size", str(args.batch_size), "--num_prepro_workers",
                str(args.workers), "--clip_model", f"open_clip:{args.model}/{weights}", "--use_jit", "False",
                # one output partition for the whole set: partitions = shards x samples per shard / write batch
                "--write_batch_size", str(args.images), "--wds_number_file_per_input_file", str(args.per_shard),
                "--wds_image_key", "jpg", "--wds_caption_key", "txt",
                "--enable_wandb", "False", "--use_mclip", "False"]

    load_before = os.getloadavg()[1]
    runs: dict[str, list[dict]] = {"aligngpt-score": [], "clip-retrieval": []}
    order = []
    for r in range(args.repeats):
        order += [("aligngpt-score", ours), ("clip-retrieval", theirs)][:: 1 if r % 2 == 0 else -1]
    for k, (name, command) in enumerate(order):
        result = watch(command(k), env, args.timeout)
        runs[name].append(result)
        print(f"{name:15s} run {len(runs[name])}: {args.images / result['seconds']:.2f} images/s whole process, "
              f"loop {args.images / result['loop_seconds'] if result['loop_seconds'] else float('nan'):.2f}, "
              f"peak {result['peak_mib']:.0f} MiB PSS ({result['peak_rss_mib']:.0f} RSS); 1-min load "
              f"{result['load_1min'][0]:.1f} at start, {result['load_1min'][1]:.1f} at end", flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name] if r[key] is not None)

    # how many images each tool decodes at once: its DataLoader workers x the threads decoding in each
    # (clip-retrieval's workers decode sample by sample); beside the figures, so ratios are read like with like
    parallelism = {"aligngpt-score": {"workers": args.workers, "threads_per_worker": args.decode_threads},
                   "clip-retrieval": {"workers": args.workers, "threads_per_worker": 1}}
    figures = {}
    for name in runs:
        loads = [r["load_1min"][0] for r in runs[name]]
        figures[name] = {"images_per_s": args.images / median(name, "seconds"),
                         "loop_images_per_s": args.images / median(name, "loop_seconds"),
                         "peak_mib": median(name, "peak_mib"), "peak_rss_mib": median(name, "peak_rss_mib"),
                         "decoders": parallelism[name]["workers"] * parallelism[name]["threads_per_worker"],
                         **parallelism[name], "load_1min_at_start": {"median": statistics.median(loads),
                                                                     "max": max(loads)}}
    a, b = figures["aligngpt-score"], figures["clip-retrieval"]
    ratios = {"whole_process": a["images_per_s"] / b["images_per_s"],
              "loop": a["loop_images_per_s"] / b["loop_images_per_s"], "peak_memory": a["peak_mib"] / b["peak_mib"],
              "peak_rss": a["peak_rss_mib"] / b["peak_rss_mib"]}
    machine = {"cpus": len(os.sched_getaffinity(0)), "load_average_5min": [load_before, os.getloadavg()[1]]}
    print(f"\n{args.images} JPEGs, {args.model} fp32, batch {args.batch_size}, {args.workers} workers, {args.device}, "
          f"medians of {args.repeats}; {machine['cpus']} CPUs, 5-min load {load_before:.1f} before, "
          f"{machine['load_average_5min'][1]:.1f} after:")
    for name, f in figures.items():
        print(f"  {name:15s} {f['images_per_s']:7.2f} images/s whole process, {f['loop_images_per_s']:7.2f} loop, "
              f"peak {f['peak_mib']:.0f} MiB PSS ({f['peak_rss_mib']:.0f} RSS); decoding {f['decoders']} at once "
              f"({f['workers']} workers x {f['threads_per_worker']} threads); 1-min load at start median "
              f"{f['load_1min_at_start']['median']:.1f}, max {f['load_1min_at_start']['max']:.1f}")
    print(f"  aligngpt-score / clip-retrieval: whole process x{ratios['whole_process']:.2f}, loop "
          f"x{ratios['loop']:.2f}, peak memory x{ratios['peak_memory']:.2f} (PSS; RSS x{ratios['peak_rss']:.2f})")
    last = {name: k for k, (name, _) in enumerate(order)}  # each tool's last run folder
    check = same_scores(work / f"ours_{last['aligngpt-score']}", work / f"theirs_{last['clip-retrieval']}")
    print(f"  same work: {check['keys_compared']} keys, same set {check['same_key_set']}, scores within "
          f"{check['max_abs_diff']:.1e} (clip-retrieval keeps float16 embeddings)")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "machine": machine, "figures": figures,
                                               "ratios": ratios, "same_scores": check, "runs": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
