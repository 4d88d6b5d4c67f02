"""Benchmark files in each benchmark's own format, built from the fixture pictures, and a tiny checkpoint.

Layouts follow LLaVA's playground/data/eval (docs/Evaluation.md): POPE, ScienceQA, TextVQA, MMBench
(tsv with base64 images), MME (the release folder in both of its layouts), GQA, SEED, VQAv2, VizWiz,
MMBench-CN, LLaVA-Bench in the wild and MM-Vet; pictures are renamed as each benchmark names its images.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."
UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."


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


def copy_as(tiny, pic: dict, dst: Path) -> Path:
    """One fixture picture saved as `dst`, re-encoded when the suffix differs (VQAv2's COCO_test2015_*.jpg,
    MM-Vet's v1_<n>.png, ...)."""
    from PIL import Image

    dst.parent.mkdir(parents=True, exist_ok=True)
    src = tiny.images / pic["file"]
    if src.suffix == dst.suffix:
        shutil.copy(src, dst)
    else:
        Image.open(src).convert("RGB").save(dst)
    return dst


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


def write_gqa_testdev(tiny, root: Path) -> dict:
    """GQA testdev-balanced: GQA's testdev_balanced_questions.json (its record per question id) and LLaVA's
    llava_gqa_testdev_balanced.jsonl over three images <imageId>.jpg; answers yes, no, the colour, yes."""
    pics = pictures(tiny, n=3)
    asks = [(0, f"Is there a {pics[0]['shape']} in the image?", "yes", "verify", "existVerify"),
            (1, "Is there a dog in the image?", "no", "verify", "existVerify"),
            (2, "What colour is the shape?", pics[2]["colour"], "query", "colorQuery"),
            (0, f"Is the {pics[0]['shape']} {pics[0]['colour']}?", "yes", "verify", "verifyAttr")]
    records, llava = {}, []
    for k, (i, question, answer, structural, detailed) in enumerate(asks):
        qid, image_id = f"20{k:06d}", f"n{100000 + i}"
        copy_as(tiny, pics[i], root / f"gqa/data/images/{image_id}.jpg")
        full = answer.capitalize() + "." if answer in ("yes", "no") else f"The shape is {answer}."
        records[qid] = {"semantic": [{"operation": "select", "dependencies": [], "argument": "shape"}],
                        "entailed": [], "equivalent": [qid], "question": question, "imageId": image_id,
                        "isBalanced": True, "groups": {"global": None, "local": f"10c-{structural}"},
                        "answer": answer, "semanticStr": "select: shape", "annotations": {
                            "answer": {}, "question": {}, "fullAnswer": {}},
                        "types": {"detailed": detailed, "semantic": "attr", "structural": structural},
                        "fullAnswer": full}
        llava.append({"question_id": qid, "image": f"{image_id}.jpg", "text": f"{question}\n{SHORT}",
                      "category": "default"})
    write_gqa(root, records)
    write_jsonl(root / "gqa/llava_gqa_testdev_balanced.jsonl", llava)
    return {"questions": records, "llava": llava}


COLOURS_CN = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色"}
SEED_TYPES = {"Scene Understanding": 1, "Instance Identity": 2, "Instance Attributes": 3, "Instance Location": 4,
              "Instances Counting": 5, "Spatial Relation": 6, "Instance Interaction": 7, "Visual Reasoning": 8,
              "Text Understanding": 9, "Action Recognition": 10, "Action Prediction": 11,
              "Procedure Understanding": 12}


def write_seed(tiny, root: Path) -> dict:
    """SEED-Bench: SEED-Bench.json ({questions, question_type}, string ids) and LLaVA's llava-seed-bench.jsonl
    (integer ids, SEED-Bench-image/<data_id>, a video question on its middle frame in
    SEED-Bench-video-image/<type>_<id>.png); three image questions and one video question."""
    pics = pictures(tiny, n=4)
    others = [c for c in COLOURS_CN if c != pics[1]["colour"]]  # the fixture's colours
    asks = [("Scene Understanding", "Where is the shape?", [pics[0]["place"], "in a kitchen", "on a road", "in a park"],
             "A"),
            ("Instance Attributes", "What colour is the shape?", [others[0], others[1], pics[1]["colour"], others[2]],
             "C"),
            ("Instances Counting", "How many shapes are in the image?", ["Two", "One", "Three", "Four"], "B"),
            ("Action Recognition", "What is the shape doing?", ["Rolling", "Jumping", "Flying", "Standing still"],
             "D")]
    questions, llava = [], []
    for k, (category, question, choices, answer) in enumerate(asks):
        qid, type_id = str(101669 + k), SEED_TYPES[category]
        video = type_id >= 10
        if video:
            data_id, image = f"fixture_video_{k}.mp4", f"SEED-Bench-video-image/{type_id}_{qid}.png"
        else:
            data_id = f"{1454426 + k}_{2591111986 + k}.jpg"
            image = f"SEED-Bench-image/{data_id}"
        copy_as(tiny, pics[k], root / "seed_bench" / image)
        questions.append({"answer": answer, **{f"choice_{c}": v for c, v in zip("abcd", choices)},
                          "data_id": data_id, "data_type": "video" if video else "image", "question": question,
                          "question_id": qid, "question_type_id": type_id})
        options = "\n".join(f"{c}. {v}" for c, v in zip("ABCD", choices))
        llava.append({"image": image, "text": f"{question}\n{options}\n{LETTER}", "category": category,
                      "question_id": int(qid)})
    (root / "seed_bench").mkdir(parents=True, exist_ok=True)
    (root / "seed_bench/SEED-Bench.json").write_text(json.dumps({"questions": questions,
                                                                 "question_type": SEED_TYPES}))
    write_jsonl(root / "seed_bench/llava-seed-bench.jsonl", llava)
    return {"questions": questions, "llava": llava}


def write_vqav2(tiny, root: Path) -> dict:
    """VQAv2 test2015 as LLaVA's eval.zip has it: llava_vqav2_mscoco_test2015.jsonl (four questions on three
    COCO_test2015_<id>.jpg images, id = image id * 1000 + n) and test-dev, three of them."""
    pics = pictures(tiny, n=3)
    asks = [(0, "What colour is the shape?"), (0, f"Is there a {pics[0]['shape']}?"), (1, "Is there a dog?"),
            (2, "How many shapes are there?")]
    test, seen = [], {}
    for i, question in asks:
        image_id = 262144 + i
        image = f"COCO_test2015_{image_id:012d}.jpg"
        copy_as(tiny, pics[i], root / "vqav2/test2015" / image)
        seen[i] = seen.get(i, -1) + 1
        test.append({"question_id": image_id * 1000 + seen[i], "image": image, "text": f"{question}\n{SHORT}",
                     "category": "default"})
    dev = [q for k, q in enumerate(test) if k != 2]  # the third question is in test-std only
    write_jsonl(root / "vqav2/llava_vqav2_mscoco_test2015.jsonl", test)
    write_jsonl(root / "vqav2/llava_vqav2_mscoco_test-dev2015.jsonl", dev)
    return {"test": test, "dev": dev}


def write_vizwiz(tiny, root: Path) -> list[dict]:
    """VizWiz test: the official test.json and LLaVA's llava_test.jsonl, three VizWiz_test_<n>.jpg images."""
    pics = pictures(tiny, n=3)
    asks = ["What colour is this?", "What is this?", "Can you tell me what this says?"]
    official, llava = [], []
    for k, (p, question) in enumerate(zip(pics, asks)):
        image = f"VizWiz_test_{k:08d}.jpg"
        copy_as(tiny, p, root / "vizwiz/test" / image)
        official.append({"image": image, "question": question})
        llava.append({"question_id": k, "image": image, "text": f"{question}\n{UNANSWERABLE}\n{SHORT}"})
    (root / "vizwiz").mkdir(parents=True, exist_ok=True)
    (root / "vizwiz/test.json").write_text(json.dumps(official))
    write_jsonl(root / "vizwiz/llava_test.jsonl", llava)
    return llava


def write_mmbench_cn(tiny, root: Path) -> Path:
    """mmbench_dev_cn_20231003.tsv: MMBench's columns in Chinese, base64 images; a hint on one question and
    one with two options only (C and D empty), as MMBench has."""
    import pandas as pd

    pics = pictures(tiny, n=3)
    rows = []
    for k, p in enumerate(pics):
        image = base64.b64encode((tiny.images / p["file"]).read_bytes()).decode()
        others = [COLOURS_CN[c] for c in COLOURS_CN if c != p["colour"]]
        options = [COLOURS_CN[p["colour"]], *others[:3]] if k < 2 else ["有", "没有"]
        question = "图中形状是什么颜色？" if k < 2 else "图中有狗吗？"
        rows.append({"index": 1000 + k, "question": question, "hint": "图中只有一个形状。" if k == 1 else float("nan"),
                     **dict(zip("ABCD", options + [float("nan")] * (4 - len(options)))),
                     "answer": "A" if k < 2 else "B", "category": "attribute_recognition", "image": image,
                     "source": "fixture", "l2-category": "finegrained_perception (instance-level)",
                     "comment": float("nan"), "split": "dev"})
    path = root / "mmbench_cn/mmbench_dev_cn_20231003.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def write_llava_w(tiny, root: Path) -> list[dict]:
    """llava-bench-in-the-wild: questions.jsonl (conv, detail, complex on two images 001.jpg, 002.jpg),
    context.jsonl (a caption per image) and answers_gpt4.jsonl, the reference answers the GPT-4 judge reads."""
    pics = pictures(tiny, n=2)
    base = root / "llava-bench-in-the-wild"
    contexts, questions, gpt4 = [], [], []
    for k, p in enumerate(pics):
        copy_as(tiny, p, base / f"images/{k + 1:03d}.jpg")
        contexts.append({"id": f"{k + 1:03d}", "image": f"{k + 1:03d}.jpg",
                         "caption": f"A {p['colour']} {p['shape']} in the {p['place']} of the picture."})
    asks = [(0, "conv", "What colour is the shape?"), (0, "detail", "Describe the picture in detail."),
            (1, "complex", "Why might someone draw this shape?")]
    for qid, (i, category, text) in enumerate(asks):
        questions.append({"image": f"{i + 1:03d}.jpg", "text": text, "category": category, "question_id": qid})
        gpt4.append({"question_id": qid, "prompt": text, "text": contexts[i]["caption"], "answer_id": f"gpt4-{qid}",
                     "model_id": "gpt-4-0314", "metadata": {}})
    write_jsonl(base / "questions.jsonl", questions)
    write_jsonl(base / "context.jsonl", contexts)
    write_jsonl(base / "answers_gpt4.jsonl", gpt4)
    return questions


def write_mmvet(tiny, root: Path) -> dict:
    """MM-Vet: mm-vet.json (v1_<n> -> imagename, capability, question, answer) and images/ as mm-vet.zip
    has them, and LLaVA's llava-mm-vet.jsonl (integer ids n); three questions, one image a png."""
    pics = pictures(tiny, n=3)
    asks = [("What colour is the shape?", "{colour}", ["rec"]), ("Where is the shape?", "{place}", ["rec", "spat"]),
            ("Is there a dog in the image?", "no", ["rec"])]
    official, llava = {}, []
    for k, (p, (question, answer, capability)) in enumerate(zip(pics, asks)):
        image = f"v1_{k}" + (".png" if k == 1 else ".jpg")
        copy_as(tiny, p, root / "mm-vet/images" / image)
        official[f"v1_{k}"] = {"imagename": image, "capability": capability, "question": question,
                               "answer": answer.format(**p)}
        llava.append({"question_id": k, "image": image, "text": question})
    (root / "mm-vet").mkdir(parents=True, exist_ok=True)
    (root / "mm-vet/mm-vet.json").write_text(json.dumps(official, indent=2))
    write_jsonl(root / "mm-vet/llava-mm-vet.jsonl", llava)
    return {"questions": official, "llava": llava}


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
