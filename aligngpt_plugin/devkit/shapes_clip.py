"""A tiny CLIP that knows the shapes: open_clip's own model and contrastive loss, trained in a minute on CPU.

    from aligngpt_plugin.devkit.shapes_clip import ClipTraining, train_shapes_clip
    clip = train_shapes_clip(Path("runs/demo/clip"), ClipTraining())
    # aligngpt-score ... --model runs/demo/clip/shapes-clip.json --pretrained runs/demo/clip/shapes-clip.pt
    # LLaVA's vision tower: --vision_tower runs/demo/clip/tower

The model is an open_clip `CLIP` built from a model config JSON (registered with `add_model_config`, as
open_clip's `model_configs/*.json`), trained with `open_clip.ClipLoss` on freshly drawn pictures and their
true captions. `train_shapes_clip` writes:

    shapes-clip.json   the open_clip model config (what `aligngpt-score --model` reads)
    shapes-clip.pt     its state dict (`--pretrained`)
    tower/             the vision half as a transformers CLIPVisionModelWithProjection folder with its
                       CLIPImageProcessor: LLaVA's vision tower, as LLaVA-1.5 uses the CLIP ViT-L/14-336
    clip_eval.json     held-out pictures: AUC of true captions against partly true and unrelated ones
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from aligngpt_plugin.devkit import demo_data

NAME = "shapes-clip"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ClipTraining:
    """Sizes of the tiny CLIP and of its training."""

    width: int = field(default=64, metadata={"help": "vision and text width, and the embedding size"})
    vision_layers: int = field(default=4, metadata={"help": "ViT layers (LLaVA reads layer -2)"})
    text_layers: int = field(default=2, metadata={"help": "text transformer layers"})
    image_size: int = field(default=96, metadata={"help": "input resolution"})
    patch_size: int = field(default=16, metadata={"help": "patch size: (image_size / patch_size)^2 image tokens"})
    context_length: int = field(default=24, metadata={"help": "caption tokens"})
    pictures: int = field(default=2048, metadata={"help": "training pictures, drawn afresh"})
    epochs: int = field(default=4, metadata={"help": "passes over the training pictures"})
    batch_size: int = field(default=64, metadata={"help": "pairs per contrastive batch"})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate (warmup, cosine)"})
    heldout: int = field(default=300, metadata={"help": "held-out pictures for the AUC"})
    seed: int = field(default=0, metadata={"help": "seeds weights, pictures and captions"})

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        if self.width % 16:
            raise ValueError(f"width={self.width}: must be a multiple of 16 (the attention head width)")
        if self.vision_layers < 2:
            raise ValueError(f"vision_layers={self.vision_layers}: LLaVA selects layer -2, so at least 2")

    def model_config(self) -> dict:
        """An open_clip model config, laid out as open_clip's model_configs/*.json."""
        return {"embed_dim": self.width,
                "vision_cfg": {"image_size": self.image_size, "patch_size": self.patch_size,
                               "layers": self.vision_layers, "width": self.width, "head_width": 16},
                "text_cfg": {"context_length": self.context_length, "vocab_size": 49408,
                             "width": self.width, "heads": self.width // 16, "layers": self.text_layers}}


@dataclass
class ShapesClip:
    """Where `train_shapes_clip` put the model, and how well it scores held-out pairs."""

    config: Path
    checkpoint: Path
    tower: Path
    auc: dict[str, float]
    losses: list[float]


def create(config: Path):
    """The open_clip model, its eval preprocessing and tokenizer, from a config JSON (open_clip's front door).

    Args:
        config: an open_clip model config file; its stem is the model's name.
    Returns:
        (model, preprocess: PIL image -> [3, S, S], tokenizer: list of str -> [n, context] ids).
    """
    import open_clip

    open_clip.add_model_config(config)
    model, _, preprocess = open_clip.create_model_and_transforms(config.stem)
    return model, preprocess, open_clip.get_tokenizer(config.stem)


def auc(positives: list[float], negatives: list[float]) -> float:
    """P(a positive scores above a negative), ties count half (the Mann-Whitney U statistic / n+ n-).

    Args:
        positives: the positives' scores.
        negatives: the negatives' scores.
    Returns:
        The AUC in [0, 1].
    """
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def heldout_auc(model, preprocess, tokenizer, n: int, seed: int) -> dict[str, float]:
    """Pictures no training saw, each with a true, a partly true and an unrelated caption: AUC of the
    true captions' scores against each kind of false one.

    Args:
        model: the open_clip model.
        preprocess: its eval preprocessing.
        tokenizer: its tokenizer.
        n: how many pictures to draw.
        seed: the run's seed (the held-out pictures use seed + 7919).
    Returns:
        {"true_vs_partial", "true_vs_unrelated", "true_vs_false": AUC}.
    """
    rng = random.Random(seed + 7919)
    pics, captions = [], {k: [] for k in demo_data.TRUTH_KINDS}
    for _ in range(n):
        content = demo_data.random_content(rng)
        pics.append(preprocess(demo_data.draw(*content, rng)))
        pic = demo_data.Picture("", *content)
        captions["true"].append(demo_data.caption(*content, rng))
        for kind in demo_data.TRUTH_KINDS[1:]:
            captions[kind].append(demo_data.false_caption(pic, kind, rng)[0])
    with torch.no_grad():
        image = torch.nn.functional.normalize(model.encode_image(torch.stack(pics)), dim=-1)
        scores = {k: (image * torch.nn.functional.normalize(model.encode_text(tokenizer(c)), dim=-1)).sum(-1).tolist()
                  for k, c in captions.items()}
    return {f"true_vs_{k}": auc(scores["true"], scores[k]) for k in demo_data.TRUTH_KINDS[1:]} | {
        "true_vs_false": auc(scores["true"], scores["partial"] + scores["unrelated"])}


def train_shapes_clip(out: Path, settings: ClipTraining | None = None, progress: bool = True) -> ShapesClip:
    """Train the tiny CLIP on freshly drawn shapes with their true captions; write it (see module doc).

    Args:
        out: the output folder (config, checkpoint, `tower/`, clip_eval.json).
        settings: the training settings (default ClipTraining()).
        progress: show a progress bar.
    Returns:
        The ShapesClip (paths, held-out AUCs, per-step losses).
    """
    import open_clip
    from tqdm import tqdm

    s = settings or ClipTraining()
    out.mkdir(parents=True, exist_ok=True)
    config = out / f"{NAME}.json"
    config.write_text(json.dumps(s.model_config(), indent=1))
    torch.manual_seed(s.seed)
    model, preprocess, tokenizer = create(config)

    rng = random.Random(s.seed)
    contents = [demo_data.random_content(rng) for _ in range(s.pictures)]
    pixels = torch.stack([preprocess(demo_data.draw(*c, rng)) for c in contents])
    texts = [demo_data.caption(*c, rng) for c in contents]

    steps_per_epoch = s.pictures // s.batch_size
    total = steps_per_epoch * s.epochs
    optimiser = torch.optim.AdamW(model.parameters(), lr=s.learning_rate, weight_decay=0.1)
    warmup = max(1, total // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda i: min(
        (i + 1) / warmup, 0.5 * (1 + math.cos(math.pi * i / total))))
    loss_fn = open_clip.ClipLoss()
    losses = []
    model.train()
    bar = tqdm(total=total, desc="CLIP training", disable=not progress, mininterval=2)
    generator = torch.Generator().manual_seed(s.seed)
    for _ in range(s.epochs):
        order = torch.randperm(s.pictures, generator=generator)
        for b in range(steps_per_epoch):
            idx = order[b * s.batch_size:(b + 1) * s.batch_size]
            image, text, scale = model(pixels[idx], tokenizer([texts[i] for i in idx]))
            loss = loss_fn(image, text, scale)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))  # as open_clip's trainer
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()

    checkpoint = out / f"{NAME}.pt"
    torch.save(model.state_dict(), checkpoint)
    tower = write_tower(model, out / "tower", s)
    scores = heldout_auc(model, preprocess, tokenizer, s.heldout, s.seed)
    (out / "clip_eval.json").write_text(json.dumps(
        {"auc": scores, "losses": losses, "settings": asdict(s), "written": time.strftime("%Y-%m-%d %H:%M:%S")},
        indent=1))
    return ShapesClip(config, checkpoint, tower, scores, losses)


def vision_state_dict(visual) -> dict[str, torch.Tensor]:
    """open_clip's VisionTransformer weights under transformers' CLIPVisionModelWithProjection names.

    Args:
        visual: the open_clip model's `visual` tower.
    Returns:
        {transformers name: tensor} (the fused qkv split into q, k, v; `proj` transposed).
    """
    sd = {k: v.detach().clone() for k, v in visual.state_dict().items()}
    hf = {
        "vision_model.embeddings.class_embedding": sd["class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": sd["conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "vision_model.pre_layrnorm.weight": sd["ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": sd["ln_pre.bias"],
        "vision_model.post_layernorm.weight": sd["ln_post.weight"],
        "vision_model.post_layernorm.bias": sd["ln_post.bias"],
        "visual_projection.weight": sd["proj"].t().contiguous(),  # open_clip: x @ proj; Linear: x @ W.T
    }
    for i in range(len(visual.transformer.resblocks)):
        src, dst = f"transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        for part in ("weight", "bias"):
            q, k, v = sd[f"{src}attn.in_proj_{part}"].chunk(3)
            hf |= {f"{dst}self_attn.q_proj.{part}": q, f"{dst}self_attn.k_proj.{part}": k,
                   f"{dst}self_attn.v_proj.{part}": v,
                   f"{dst}self_attn.out_proj.{part}": sd[f"{src}attn.out_proj.{part}"],
                   f"{dst}layer_norm1.{part}": sd[f"{src}ln_1.{part}"],
                   f"{dst}layer_norm2.{part}": sd[f"{src}ln_2.{part}"],
                   f"{dst}mlp.fc1.{part}": sd[f"{src}mlp.c_fc.{part}"],
                   f"{dst}mlp.fc2.{part}": sd[f"{src}mlp.c_proj.{part}"]}
    return {k: v.contiguous() for k, v in hf.items()}


def write_tower(model, out: Path, s: ClipTraining) -> Path:
    """The vision half as a transformers folder LLaVA's CLIPVisionTower loads (model + image processor).

    Args:
        model: the trained open_clip model.
        out: the folder to write.
        s: the training settings (width, image and patch size).
    Returns:
        `out`.
    Raises:
        RuntimeError: the converted weights do not fill the transformers model exactly.
    """
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    visual = model.visual
    mlp = visual.transformer.resblocks[0].mlp.c_fc
    config = CLIPVisionConfig(
        hidden_size=s.width, intermediate_size=mlp.out_features, num_hidden_layers=len(visual.transformer.resblocks),
        num_attention_heads=s.width // 16, image_size=s.image_size, patch_size=s.patch_size,
        projection_dim=visual.proj.shape[1], hidden_act="gelu", layer_norm_eps=1e-5)  # open_clip: exact GELU
    hf = CLIPVisionModelWithProjection(config)
    missing, unexpected = hf.load_state_dict(vision_state_dict(visual), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"open_clip -> transformers CLIP: missing {missing}, unexpected {unexpected}")
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out, safe_serialization=True)
    CLIPImageProcessor(  # open_clip's eval transform: shortest side to image_size, bicubic, centre crop
        size={"shortest_edge": s.image_size}, crop_size={"height": s.image_size, "width": s.image_size},
        do_center_crop=True, image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD), resample=3,
    ).save_pretrained(out)
    return out
