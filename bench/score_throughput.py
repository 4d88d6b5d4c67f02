"""aligngpt-score throughput against a plain per-image loop on the same model, and peak memory vs data size.

    python bench/score_throughput.py                       # CPU: ViT-B-32 (random weights), 192 images
    python bench/score_throughput.py --model ViT-L-14-336 --images 8192 --loop-images 512   # one GPU

Images are JPEGs of photo-like sizes (a blurred noise field with shapes, 320-640 px sides) written once
to a temporary folder; the records cycle over them when more are asked for than written. Both methods
decode every JPEG and run the same model with the same autocast dtype; weights are random (no download
is possible on the benchmark machines and speed does not depend on them). Reported:

- tool: end-to-end images/s of `score_dataset` (plan, DataLoader decoding in workers, batched forward,
  shards, merge), the model already loaded;
- loop: images/s of open -> preprocess -> encode_image -> tokenize -> encode_text, one record at a time;
- memory: peak RSS of the main process (and CUDA peak) of a full run at 1x and 10x the data, each in a
  fresh subprocess with a small model, so the growth is what the data costs.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SMALL_CLIP = {  # for the memory runs: cheap forward, so the data dominates
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def write_images(folder: Path, n: int, seed: int = 0) -> list[tuple[str, str]]:
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(n):
        w, h = rng.randint(320, 640), rng.randint(320, 640)
        noise = np.random.default_rng(i).integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
        image = Image.fromarray(noise).resize((w, h), Image.BILINEAR).filter(ImageFilter.GaussianBlur(2))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y = rng.randint(0, w - 60), rng.randint(0, h - 60)
            draw.ellipse((x, y, x + rng.randint(20, 60), y + rng.randint(20, 60)),
                         fill=tuple(rng.randint(0, 255) for _ in range(3)))
        name = f"img_{i:05d}.jpg"
        image.save(folder / name, quality=90)
        pairs.append((name, f"a photo of {rng.choice(['a dog', 'a street', 'two cups', 'a red car'])} number {i}"))
    return pairs


def write_data(path: Path, pairs: list[tuple[str, str]], n: int) -> Path:
    records = [{"id": f"b{i:07d}", "image": pairs[i % len(pairs)][0],
                "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                  {"from": "gpt", "value": pairs[i % len(pairs)][1]}]} for i in range(n)]
    path.write_text(json.dumps(records))
    return path


def loop_images_per_s(scorer, device, dtype, folder: Path, pairs, n: int) -> float:
    """The obvious way: one record at a time, same model and dtype."""
    import torch

    from aligngpt_plugin.scoring.dataset import load_image

    autocast = torch.autocast(device.type, dtype=dtype) if dtype else torch.autocast(device.type, enabled=False)
    with torch.inference_mode(), autocast:
        for warm in range(2):
            name, caption = pairs[warm]
            scorer.score(scorer.pixels(scorer.preprocess(load_image(folder / name)).unsqueeze(0), device),
                         scorer.tokenize([caption]).to(device)).item()
        start = time.perf_counter()
        for i in range(n):
            name, caption = pairs[i % len(pairs)]
            pixels = scorer.pixels(scorer.preprocess(load_image(folder / name)).unsqueeze(0), device)
            scorer.score(pixels, scorer.tokenize([caption]).to(device)).item()
    return n / (time.perf_counter() - start)


def memory_run(args) -> None:
    """Child process: one full run; prints peak RSS (and CUDA peak) as JSON."""
    import torch

    from aligngpt_plugin.scoring import ScoreConfig, score_dataset

    config = ScoreConfig(data_path=args.data, image_folder=args.image_folder, output_dir=args.output,
                         model=args.model, pretrained=None, batch_size=args.batch_size,
                         num_workers=args.num_workers, progress=False, chunk_size=args.chunk_size)
    summary = score_dataset(config)
    out = {"records": summary.records, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "largest_worker_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="open_clip name (default: ViT-B-32 on CPU, ViT-L-14-336 on GPU)")
    p.add_argument("--images", type=int, default=None, help="records for the tool (default 192 CPU, 8192 GPU)")
    p.add_argument("--unique-images", type=int, default=1024, help="JPEG files written (records cycle over them)")
    p.add_argument("--loop-images", type=int, default=None, help="records for the plain loop (default 64 / 512)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32 on CPU, 256 on GPU")
    p.add_argument("--num-workers", type=int, default=-1)
    p.add_argument("--decode-threads", type=int, default=4)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--memory-images", type=int, default=400, help="1x data size of the memory runs (10x too)")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--json", default=None, help="also write the results here")
    # the child process of a memory run
    p.add_argument("--memory-run", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--image-folder", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    p.add_argument("--chunk-size", type=int, default=8192, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_run:
        memory_run(args)
        return {}

    import torch

    from aligngpt_plugin.scoring import ScoreConfig, score_dataset
    from aligngpt_plugin.scoring.backends import load_scorer
    from aligngpt_plugin.scoring.distributed import autocast_dtype, resolve_device

    gpu = torch.cuda.is_available()
    model = args.model or ("ViT-L-14-336" if gpu else "ViT-B-32")
    n = args.images or (8192 if gpu else 192)
    n_loop = args.loop_images or (512 if gpu else 64)
    batch = args.batch_size or (256 if gpu else 32)
    results: dict = {"model": model, "device": torch.cuda.get_device_name() if gpu else "cpu",
                     "torch": torch.__version__, "cpus": len(__import__("os").sched_getaffinity(0))}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        pairs = write_images(tmp / "images", min(n, args.unique_images))
        print(f"wrote {len(pairs)} JPEGs in {time.perf_counter() - t:.1f} s", flush=True)
        data = write_data(tmp / "data.json", pairs, n)
        config = ScoreConfig(data_path=str(data), image_folder=str(tmp / "images"), output_dir=str(tmp / "out"),
                             model=model, pretrained=None, batch_size=batch, num_workers=args.num_workers,
                             decode_threads=args.decode_threads, precision=args.precision, progress=True)
        device = resolve_device(config, 0)
        dtype = autocast_dtype(args.precision, device)
        if gpu:
            torch.backends.cuda.matmul.allow_tf32 = True
        scorer = load_scorer(model, None, device)
        results.update(batch_size=batch, dtype=str(dtype or torch.float32), records=n)

        loop = loop_images_per_s(scorer, device, dtype, tmp / "images", pairs, n_loop)
        print(f"plain loop: {loop:.1f} images/s ({n_loop} records)", flush=True)
        start = time.perf_counter()
        summary = score_dataset(config, scorer)
        tool = n / (time.perf_counter() - start)
        print(f"aligngpt-score: {tool:.1f} images/s end to end ({n} records, {summary.scored} scored)", flush=True)
        results.update(tool_images_per_s=round(tool, 1), loop_images_per_s=round(loop, 1),
                       ratio=round(tool / loop, 2))

        if not args.skip_memory:
            (tmp / "model.json").write_text(json.dumps(SMALL_CLIP))
            memory = {}
            for scale in (1, 10):
                size = args.memory_images * scale
                scaled = write_data(tmp / f"mem{scale}.json", pairs, size)
                child = subprocess.run(
                    [sys.executable, __file__, "--memory-run", "--data", str(scaled), "--image-folder",
                     str(tmp / "images"), "--output", str(tmp / f"mem{scale}"), "--model", str(tmp / "model.json"),
                     "--batch-size", str(batch), "--num-workers", str(args.num_workers),
                     "--chunk-size", str(max(64, args.memory_images // 4))],
                    capture_output=True, text=True, check=True)
                memory[f"{scale}x"] = json.loads(child.stdout.strip().splitlines()[-1])
                print(f"memory at {scale}x ({size} records): {memory[f'{scale}x']}", flush=True)
            results["memory"] = memory
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
