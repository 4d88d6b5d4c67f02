"""CLIP models for scoring: open_clip (the default and main path) or a transformers CLIPModel folder.

Both give the same three things: `preprocess` (PIL image -> tensor, run in DataLoader workers),
`tokenize` (list of captions -> token ids, batched) and `encode` (pixels, tokens -> the two embeddings).
The score is the cosine of the L2-normalised embeddings, computed in float32.

Model names:
- an open_clip name (`ViT-L-14-336`, see `open_clip.list_models()`) with `pretrained` a tag (`openai`) or a
  local checkpoint file; `hf-hub:org/repo` and `local-dir:PATH` as open_clip reads them;
- a path to an open_clip model config JSON (`{"embed_dim", "vision_cfg", "text_cfg"}`), registered under
  its file stem, with `pretrained` a local checkpoint file (or none: random weights, for tests);
- `hf:PATH`, or a folder holding a transformers `config.json` of a CLIPModel: transformers' CLIP (the
  vision tower LLaVA loads), with its image processor's settings applied by the PIL implementation (the
  same pixels on transformers 4.x and 5.x); its tokenizer when the folder has one, else open_clip's, which
  is the same BPE vocabulary as OpenAI's CLIP.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DEFAULT_MODEL = "ViT-L-14-336"
DEFAULT_PRETRAINED = "openai"


@dataclass
class ClipScorer:
    """A loaded CLIP model and what its inputs need. `preprocess` and `tokenize` are picklable."""

    name: str
    pretrained: str | None
    backend: str  # "open_clip" or "transformers"
    model: torch.nn.Module
    preprocess: Any
    tokenize: Any
    normalize: tuple[list[float], list[float]] | None = None  # set when `preprocess` gives uint8 pixels

    def pixels(self, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Model input from what `preprocess` gave (uint8 is scaled and normalised here, on the device)."""
        batch = batch.to(device, non_blocking=True)
        if self.normalize is None:
            return batch
        mean, std = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in self.normalize)
        return batch.float().div(255).sub_(mean).div_(std)  # the arithmetic of ToTensor + Normalize

    def encode(self, pixels: torch.Tensor, tokens: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self.backend == "open_clip":
            return self.model.encode_image(pixels), encode_text_trimmed(self.model, tokens)
        image = self.model.get_image_features(pixel_values=pixels)
        text = self.model.get_text_features(**tokens) if isinstance(tokens, dict) else \
            self.model.get_text_features(input_ids=tokens)
        return _features(image), _features(text)

    def embed(self, pixels: torch.Tensor, tokens: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The L2-normalised image and text embeddings, float32 [batch, dim] each."""
        image, text = self.encode(pixels, tokens)
        return torch.nn.functional.normalize(image.float(), dim=-1), torch.nn.functional.normalize(text.float(), dim=-1)

    def score(self, pixels: torch.Tensor, tokens: Any) -> torch.Tensor:
        """Cosine similarity of each image with its own caption, float32 [batch]."""
        image, text = self.embed(pixels, tokens)
        return (image * text).sum(dim=-1)


def encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's `CLIP.encode_text` on the batch's tokens up to the longest caption's end, not all 77.

    Captions are short (LCS-558K: ~15 tokens), and open_clip's text tower is causal: a position sees only
    those before it, and the feature is read at the end-of-text token. The padding after the longest caption
    changes nothing, so it is cut, with the positional embeddings and the causal mask (the text tower then
    costs a fraction; the same numbers up to float rounding, checked in tests). Models where this does not
    hold (no causal mask, pooling at the last or first position, custom text towers) get `encode_text`.

    Args:
        model: the open_clip model.
        tokens: [B, 77] token ids (0 = padding).
    Returns:
        [B, D] text features (not normalised).
    """
    import open_clip
    from open_clip.transformer import text_global_pool

    pool = getattr(model, "text_pool_type", None)
    if type(model) is not open_clip.model.CLIP or model.attn_mask is None or pool not in ("argmax", "eos") \
            or not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
        return model.encode_text(tokens)
    used = (tokens != 0).any(dim=0).nonzero()
    length = int(used.max()) + 1 if used.numel() else 1
    if length >= tokens.shape[1]:
        return model.encode_text(tokens)
    text = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = text_global_pool(x, text, pool, eos_token_id=getattr(model, "text_eos_id", None))
    projection = model.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return x


def _features(output) -> torch.Tensor:
    # transformers >= 4.5x may return a model output instead of a tensor from get_*_features
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def is_transformers_clip(model: str) -> bool:
    """Whether `model` names a transformers CLIP folder (`hf:PATH`, or a folder whose config.json is CLIP's).

    Args:
        model: the `--model` value.
    Returns:
        True for a transformers CLIP, False for an open_clip name or config.
    """
    path = Path(model[3:] if model.startswith("hf:") else model)
    if model.startswith("hf:"):
        return True
    config = path / "config.json"
    if not (path.is_dir() and config.is_file()):
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == "clip"
    except (OSError, json.JSONDecodeError):
        return False


def load_scorer(model: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
                device: str | torch.device = "cpu") -> ClipScorer:
    """Load a CLIP model for scoring, in eval mode on `device`, float32 weights (autocast does the rest).

    Args:
        model: an open_clip model name, a model config .json, `hf-hub:ORG/REPO`, `local-dir:PATH`, or a
            transformers CLIPModel folder (`hf:PATH`).
        pretrained: open_clip's pretrained tag or a checkpoint file (ignored for transformers folders).
        device: where to put the model.
    Returns:
        The ClipScorer.
    Raises:
        ValueError: naming the model and what is accepted, when it cannot be found.
    """
    if is_transformers_clip(model):
        return _load_transformers(Path(model[3:] if model.startswith("hf:") else model), device)
    return _load_open_clip(model, pretrained, device)


def _load_open_clip(model: str, pretrained: str | None, device) -> ClipScorer:
    import open_clip

    name = model
    if model.endswith(".json"):
        config = Path(model)
        if not config.is_file():
            raise ValueError(f"open_clip model config {config} not found")
        open_clip.add_model_config(config)
        name = config.stem
    schema = name.split(":", 1)[0] + ":" if name.startswith(("hf-hub:", "local-dir:")) else None
    if schema is None and name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {name!r}: give one of open_clip.list_models() (e.g. "
                         f"{DEFAULT_MODEL}, ViT-B-32), a model config .json, hf-hub:ORG/REPO, local-dir:PATH, "
                         "or hf:PATH for a transformers CLIP folder")
    if pretrained and schema is None and not Path(pretrained).is_file():
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise ValueError(f"pretrained={pretrained!r} is neither a checkpoint file nor a tag of {name}; "
                             f"tags: {tags}")
    # OpenAI's weights were trained with QuickGELU; open_clip's plain names use GELU and only warn
    quick_gelu = bool(schema is None and pretrained and not Path(pretrained).is_file()
                      and open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False))
    net, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=pretrained or None, device=device, force_quick_gelu=quick_gelu)
    tokenizer = open_clip.get_tokenizer(name)
    net.eval().requires_grad_(False)
    preprocess, normalize = split_to_tensor(preprocess)
    return ClipScorer(model, pretrained, "open_clip", net, preprocess, tokenizer, normalize)


class _ToUint8:
    """PIL RGB image -> uint8 tensor [3, H, W] (a quarter of the float bytes to pass between processes)."""

    def __call__(self, image) -> torch.Tensor:
        import numpy as np

        return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


def split_to_tensor(preprocess):
    """open_clip's eval transform ends in ToTensor, Normalize: keep the PIL steps in the workers and
    scale and normalise on the device. Any other transform is kept whole (normalize None).

    Args:
        preprocess: open_clip's eval transform.
    Returns:
        (PIL image -> uint8 [3, H, W] transform, (mean, std) per channel) or (preprocess, None).
    """
    from torchvision import transforms as T

    steps = getattr(preprocess, "transforms", None)
    # open_clip >= 2.2x ends in MaybeToTensor, a ToTensor subclass with the same arithmetic on PIL images
    if not steps or len(steps) < 2 or not isinstance(steps[-2], T.ToTensor) or type(steps[-1]) is not T.Normalize:
        return preprocess, None
    norm = steps[-1]
    return T.Compose([*steps[:-2], _ToUint8()]), (list(map(float, norm.mean)), list(map(float, norm.std)))


class _HFImageProcessing:
    """Picklable PIL -> pixel tensor with a transformers image processor."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


class _HFTokenizing:
    def __init__(self, tokenizer, context_length: int):
        self.tokenizer, self.context_length = tokenizer, context_length

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        out = self.tokenizer(texts, padding=True, truncation=True, max_length=self.context_length,
                             return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


def pil_clip_image_processor():
    """The PIL/numpy CLIP image processor: `CLIPImageProcessorPil` on transformers 5, `CLIPImageProcessor`
    on 4.x, where it is that implementation. transformers 5's `CLIPImageProcessor` resizes with torchvision,
    which gives other pixels (hence other scores and level edges) for the same images; the PIL one gives 4.x's
    pixels on both lines (the same fix as patches/clip_image_processor_backend.py makes for LLaVA's tower)."""
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


def transformers_preprocess(folder: str | Path) -> _HFImageProcessing:
    """PIL image -> float pixels [3, H, W] with the folder's preprocessor_config.json, by the PIL processor.

    Args:
        folder: the transformers CLIP folder.
    Returns:
        A picklable callable.
    """
    return _HFImageProcessing(pil_clip_image_processor().from_pretrained(folder))


def _load_transformers(folder: Path, device) -> ClipScorer:
    from transformers import AutoTokenizer, CLIPModel

    if not (folder / "config.json").is_file():
        raise ValueError(f"hf:{folder}: no transformers config.json there; give a CLIPModel folder")
    net = CLIPModel.from_pretrained(folder, torch_dtype=torch.float32).to(device).eval().requires_grad_(False)
    preprocess = transformers_preprocess(folder)
    context = net.config.text_config.max_position_embeddings
    has_tokenizer = any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json"))
    if has_tokenizer:
        tokenize = _HFTokenizing(AutoTokenizer.from_pretrained(folder), context)
    else:
        import open_clip

        tokenize = open_clip.SimpleTokenizer(context_length=context)
    return ClipScorer(f"hf:{folder}", None, "transformers", net, preprocess, tokenize)
