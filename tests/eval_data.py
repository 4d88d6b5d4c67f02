"""Benchmark files in each benchmark's own format, built from the fixture pictures, and a tiny checkpoint.

Layouts follow LLaVA's playground/data/eval (docs/Evaluation.md): POPE, ScienceQA, TextVQA, MMBench
(tsv with base64 images), MME (the release folder in both of its layouts), GQA and SEED.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

SHORT = "Answer the question using a single word or phrase."


def pictures(tiny, prefix: str = "question", n: int = 4) -> list[dict]:
    meta = json.loads((tiny.images.parent / "pictures.json").read_text())
    return [m for name, m in sorted(meta.items()) if name.startswith(prefix)][:n]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def copy_images(tiny, pics: list[dict], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for p in pics:
        shutil.copy(tiny.images / p["file"], folder / p["file"])


def write_pope(tiny, root: Path) -> dict:
    """Two questions per split; labels alternate yes/no."""
    pics = pictures(tiny, n=2)
    copy_images(tiny, pics, root / "pope/val2014")
    questions, qid = [], 0
    for split in ("adversarial", "popular", "random"):
        labels = []
        for k, p in enumerate(pics):
            label = "yes" if k % 2 == 0 else "no"
            obj = p["shape"] if label == "yes" else "dog"
            questions.append({"question_id": qid, "image": p["file"], "category": split,
                              "text": f"Is there a {obj} in the image?\n{SHORT}"})
            labels.append({"question_id": qid, "image": p["file"], "text": f"Is there a {obj} in the image?",
                           "label": label})
            qid += 1
        write_jsonl(root / f"pope/coco/coco_pope_{split}.json", labels)
    write_jsonl(root / "pope/llava_pope_test.jsonl", questions)
    return {"questions": questions}


def write_sqa(tiny, root: Path) -> None:
    """Three problems: two with an image, one text-only; answers A, B, A."""
    pics = pictures(tiny, n=2)
    copy_images(tiny, pics, root / "scienceqa/images/test")
    problems, llava = {}, []
    for k, pid in enumerate(("100", "101", "102")):
        problems[pid] = {"question": "Which colour?", "choices": ["red", "blue"], "answer": k % 2,
                         "hint": "", "image": "image.png" if k < 2 else None, "split": "test"}
        conv = f"{'<image>' + chr(10) if k < 2 else ''}Which colour?\nA. red\nB. blue"
        record = {"id": pid, "conversations": [{"from": "human", "value": conv},
                                                {"from": "gpt", "value": "AB"[k % 2]}]}
        if k < 2:
            record["image"] = pics[k]["file"]
        llava.append(record)
    (root / "scienceqa").mkdir(parents=True, exist_ok=True)
    (root / "scienceqa/problems.json").write_text(json.dumps(problems))
    (root / "scienceqa/pid_splits.json").write_text(json.dumps({"test": list(problems)}))
    (root / "scienceqa/llava_test_CQM-A.json").write_text(json.dumps(llava))


def write_textvqa(tiny, root: Path) -> None:
    pics = pictures(tiny, n=3)
    copy_images(tiny, pics, root / "textvqa/train_images")
    questions, data = [], []
    for p in pics:
        image_id = Path(p["file"]).stem
        q = "what colour is the shape?"
        questions.append({"question_id": image_id, "image": p["file"], "text": f"{q}\n{SHORT}"})
        data.append({"image_id": image_id, "question": q, "answers": [p["colour"]] * 10})
    write_jsonl(root / "textvqa/llava_textvqa_val_v051_ocr.jsonl", questions)
    (root / "textvqa/TextVQA_0.5.1_val.json").write_text(json.dumps({"data": data}))


def write_mmbench(tiny, root: Path, folder: str = "mmbench", name: str = "mmbench_dev_20230712") -> Path:
    import pandas as pd

    pics = pictures(tiny, n=2)
    rows = []
    for k, p in enumerate(pics):
        image = base64.b64encode((tiny.images / p["file"]).read_bytes()).decode()
        rows.append({"index": k, "question": "What colour is the shape?", "hint": float("nan"), "A": p["colour"],
                     "B": "purple", "C": "orange", "D": "pink", "answer": "A", "category": "colour",
                     "source": "fixture", "l2-category": "perception", "comment": "", "split": "dev",
                     "image": image})
    path = root / folder / f"{name}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def write_mme(tiny, root: Path) -> None:
    """`existence` (perception) in the images/ + questions_answers_YN/ layout, `code_reasoning`
    (cognition) with images and answers side by side; two questions per image, as MME has."""
    release = root / "MME/MME_Benchmark_release_version"
    pics = pictures(tiny, n=2)
    questions = []
    for category, nested in (("existence", True), ("code_reasoning", False)):
        images = release / category / ("images" if nested else "")
        answers = release / category / ("questions_answers_YN" if nested else "")
        copy_images(tiny, pics, images)
        answers.mkdir(parents=True, exist_ok=True)
        for p in pics:
            stem = Path(p["file"]).stem
            lines = [f"Is there a {p['shape']} in the image? Please answer yes or no.\tYes",
                     "Is there a dog in the image? Please answer yes or no.\tNo"]
            (answers / f"{stem}.txt").write_text("\n".join(lines) + "\n")
            image = f"{category}/{'images/' if nested else ''}{p['file']}"
            for line in lines:
                question = line.split("\t")[0]
                if category == "existence":  # LLaVA's file also has this form; the scorer maps it back
                    question = question.replace(" Please answer yes or no.", f"\n{SHORT}")
                questions.append({"question_id": f"{category}/{p['file']}", "image": image, "text": question,
                                  "category": category})
    write_jsonl(root / "MME/llava_mme.jsonl", questions)


def write_gqa(root: Path, questions: dict) -> None:
    (root / "gqa/data").mkdir(parents=True, exist_ok=True)
    (root / "gqa/data/testdev_balanced_questions.json").write_text(json.dumps(questions))


def torch_no_grad(fn):
    import torch

    return torch.no_grad()(fn)


def write_tiny_checkpoint(tiny, out: Path, **alignment) -> Path:
    """A loadable AlignGPT checkpoint (random projector and gate) as LLaVA's fine-tuning would save it."""
    from tiny_models import tiny_aligngpt
    from transformers import AutoTokenizer

    model = tiny_aligngpt(tiny, **alignment)
    model.config.update({"tune_mm_mlp_adapter": False, "mm_use_im_start_end": False,
                         "mm_use_im_patch_token": False, "image_aspect_ratio": "pad",
                         "tokenizer_padding_side": "right", "tokenizer_model_max_length": 2048})
    tokenizer = AutoTokenizer.from_pretrained(tiny.llm, use_fast=False)
    answer_yes_then_stop(model, tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_converted_checkpoint(tiny, out: Path) -> Path:
    """`write_tiny_checkpoint`'s model as a user of the released checkpoints has it: written in the
    released layout (aligngpt-convert from-plugin) and converted to `out` (to-plugin)."""
    from aligngpt_plugin.convert import main

    ours = write_tiny_checkpoint(tiny, out.with_name(out.name + "-ours"))
    assert main(["from-plugin", str(ours), str(out.with_name(out.name + "-released"))]) == 0
    assert main(["to-plugin", str(out.with_name(out.name + "-released")), str(out)]) == 0
    return out


@torch_no_grad
def answer_yes_then_stop(model, tokenizer) -> None:
    """Make greedy decoding answer "Yes" and stop, whatever the prompt: with every layer's output zeroed
    the last hidden state is the normalised embedding of the last token; all embeddings share a large
    direction u, which lm_head maps to "Yes", and "Yes" alone also has v, which it maps to EOS. The image
    path and the gate are untouched, and scores of a constant answer are easy to compute by hand (LLaVA's
    eval modules otherwise generate up to 1024 random tokens per question on the CPU)."""
    import torch

    inner = model.get_model()
    for layer in inner.layers:
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    hidden = model.config.hidden_size
    u, v = torch.zeros(hidden), torch.zeros(hidden)
    u[0], v[1] = 1.0, 1.0
    yes = tokenizer.convert_tokens_to_ids("▁Yes")
    inner.embed_tokens.weight[:, :2] = 0
    inner.embed_tokens.weight += 10 * u
    inner.embed_tokens.weight[yes] += 10 * v
    model.lm_head.weight.zero_()
    model.lm_head.weight[yes] = 10 * u
    model.lm_head.weight[tokenizer.eos_token_id] = 30 * v
