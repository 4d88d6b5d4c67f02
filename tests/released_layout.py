"""The released AlignGPT checkpoints, rebuilt without the plugin's code, and a reference forward.

Facts read from the public code (AlignGPT-VL/AlignGPT, src/model/aligngpt.py, multimodal_components/
mm_align.py and clip_encoder.py, src/train/train.py), never from `aligngpt_plugin.convert`:

- `AlignGPTForCausalLM(LlamaForCausalLM)` holds `model` (the Llama), `lm_head`, and as its own attributes
  `align_indicators` (`AlignIndicator`: `indicator_embs` [8, hidden]), `gated_weight_layer`
  (`GatedWeightLayer`: `mlp = Sequential(Linear(576, 256), GELU, Linear(256, 7))`), `vision_tower`
  (`CLIPVisionTower`, whose `vision_tower` is a `CLIPVisionModel`) and `mm_projector`
  (`Sequential(Linear, GELU, Linear)` for mlp2x_gelu). So the state dict has those names at its top.
- Stage 1 saves `mm_projector_align.bin` with the parameters whose names contain `mm_projector` or
  `indicator_embs` (no gate: stage 1 builds none).
- Order of operations: the image features (CLIP layer -2, patch tokens, through the projector) replace
  the image placeholder; the indicator goes right after the first position (BOS). Pre-training: the
  indicator is `indicator_embs[level]`. Fine-tuning and inference: t = sum of the text embeddings after
  BOS / (count + 1e-8); d = <image token, t> per image token; w = softmax(mlp(d)); the indicator is
  `w @ indicator_embs[:-1] + indicator_embs[-1]`. Rows without an image get no indicator. The loss is
  the mean token cross-entropy over the whole batch (LlamaForCausalLM's).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
N_LEVELS, GATE_TOKENS, GATE_HIDDEN = 8, 576, 256


def released_state(tiny, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    """A full released checkpoint's state dict and config.json, from the fixture LLM and CLIP."""
    from transformers import CLIPVisionModel

    llm_config = json.loads((Path(tiny.llm) / "config.json").read_text())
    hidden = llm_config["hidden_size"]
    state = load_file(Path(tiny.llm) / "model.safetensors")  # model.*, lm_head.weight
    tower = CLIPVisionModel.from_pretrained(tiny.clip)
    state.update({f"vision_tower.vision_tower.{k}": v for k, v in tower.state_dict().items()})
    mm_hidden = tower.config.hidden_size
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale):
        return torch.randn(*shape, generator=g) * scale

    state.update({
        "mm_projector.0.weight": rand(hidden, mm_hidden, scale=0.5), "mm_projector.0.bias": rand(hidden, scale=0.1),
        "mm_projector.2.weight": rand(hidden, hidden, scale=0.3), "mm_projector.2.bias": rand(hidden, scale=0.1),
        "align_indicators.indicator_embs": rand(N_LEVELS, hidden, scale=1.0),
        # large enough that the gate's weights depend on the input (a near-constant gate would hide errors)
        "gated_weight_layer.mlp.0.weight": rand(GATE_HIDDEN, GATE_TOKENS, scale=3.0),
        "gated_weight_layer.mlp.0.bias": rand(GATE_HIDDEN, scale=0.1),
        "gated_weight_layer.mlp.2.weight": rand(N_LEVELS - 1, GATE_HIDDEN, scale=0.5),
        "gated_weight_layer.mlp.2.bias": rand(N_LEVELS - 1, scale=0.1),
    })
    # transformers 4.31 saved the rotary buffers with the weights
    head_dim = hidden // llm_config["num_attention_heads"]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    for layer in range(llm_config["num_hidden_layers"]):
        state[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()

    config = dict(llm_config)
    config.update(  # what the public train.py writes into the config, with LLaVA-1.5's finetune.sh flags
        model_type="aligngpt", architectures=["AlignGPTForCausalLM"], mm_vision_tower=str(tiny.clip),
        mm_hidden_size=mm_hidden, mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
        mm_vision_select_feature="patch", use_mm_proj=True, image_aspect_ratio="pad",
        tokenizer_padding_side="right", tokenizer_model_max_length=2048, tune_mm_mlp_adapter=False,
        freeze_mm_mlp_adapter=False, mm_use_im_start_end=False, mm_use_im_patch_token=False,
        mm_projector_lr=None, use_cache=True, torch_dtype="float32", transformers_version="4.31.0")
    return state, config


def write_released(folder: Path, state: dict, config: dict, tokenizer: Path, shards: int = 1,
                   fmt: str = "bin") -> Path:
    """Save as transformers 4.31's save_pretrained would (`.bin` shards with an index, or safetensors),
    with the tokenizer files of the folder `tokenizer`."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    keys = list(state)
    weight_map = {}
    for i in range(shards):
        part = {k: state[k].contiguous() for k in keys[i::shards]}
        if fmt == "bin":
            name = "pytorch_model.bin" if shards == 1 else f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
            torch.save(part, folder / name)
        else:
            name = "model.safetensors" if shards == 1 else f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file(part, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    if shards > 1:
        index = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
        (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for f in Path(tokenizer).glob("*token*"):
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def write_released_pretrain(folder: Path, state: dict, config: dict) -> Path:
    """`nlpzhaof/aligngpt-7b-pretrain`: mm_projector_align.bin (projector + levels) and the stage-1 config."""
    folder.mkdir(parents=True)
    torch.save({k: v for k, v in state.items() if "mm_projector" in k or "indicator_embs" in k},
               folder / "mm_projector_align.bin")
    (folder / "config.json").write_text(json.dumps(dict(config, tune_mm_mlp_adapter=True), indent=2))
    return folder


class ReleasedReference(nn.Module):
    """The released model's forward, step by step in the public code's order, on plain torch modules."""

    def __init__(self, state: dict, config: dict):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

        llm_fields = {k: v for k, v in config.items() if not k.startswith(("mm_", "tokenizer_"))}
        llm_fields.pop("model_type")
        self.llm = LlamaForCausalLM(LlamaConfig(**llm_fields)).eval()
        self.llm.load_state_dict({k: v for k, v in state.items()
                                  if k.startswith(("model.", "lm_head.")) and "rotary_emb" not in k})
        self.tower = CLIPVisionModel(CLIPVisionConfig.from_pretrained(config["mm_vision_tower"])).eval()
        self.tower.load_state_dict({k[len("vision_tower.vision_tower."):]: v for k, v in state.items()
                                    if k.startswith("vision_tower.vision_tower.")})
        hidden, mm_hidden = config["hidden_size"], config["mm_hidden_size"]
        self.projector = nn.Sequential(nn.Linear(mm_hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.projector.load_state_dict({k[len("mm_projector."):]: v for k, v in state.items()
                                        if k.startswith("mm_projector.")})
        self.levels = state["align_indicators.indicator_embs"]
        self.gate = nn.Sequential(nn.Linear(GATE_TOKENS, GATE_HIDDEN), nn.GELU(), nn.Linear(GATE_HIDDEN, N_LEVELS - 1))
        if "gated_weight_layer.mlp.0.weight" in state:
            self.gate.load_state_dict({k[len("gated_weight_layer.mlp."):]: v for k, v in state.items()
                                       if k.startswith("gated_weight_layer.mlp.")})

    @torch.no_grad()
    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, 576, hidden]: CLIP layer -2 without CLS, then the projector."""
        hidden = self.tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        return self.projector(hidden)

    @torch.no_grad()
    def sequence(self, ids: torch.Tensor, labels: torch.Tensor | None, pixels: torch.Tensor | None,
                 level: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """One sample (no padding): its input embeddings [L, H], labels [L] and gate weights [7] or None."""
        embed = self.llm.get_input_embeddings()
        if labels is None:
            labels = torch.full_like(ids, IGNORE_INDEX)
        where = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
        if not where:
            return embed(ids), labels, None
        (k,) = where
        before, after = embed(ids[:k]), embed(ids[k + 1:])
        image = self.image_tokens(pixels[None])[0]
        seq = torch.cat([before, image, after])
        seq_labels = torch.cat([labels[:k], torch.full((image.shape[0],), IGNORE_INDEX), labels[k + 1:]])
        weights = None
        if level is not None:  # pre-training
            token = self.levels[level]
        else:
            text = torch.cat([before, after])[1:]  # the text tokens after BOS
            mean = text.sum(0) / (text.shape[0] + 1e-8)
            scores = (image * mean).sum(-1)  # d_i, one per image token
            weights = self.gate(scores).softmax(-1)
            token = weights @ self.levels[:-1] + self.levels[-1]
        seq = torch.cat([seq[:1], token[None], seq[1:]])
        seq_labels = torch.cat([seq_labels[:1], torch.tensor([IGNORE_INDEX]), seq_labels[1:]])
        return seq, seq_labels, weights

    @torch.no_grad()
    def logits_and_loss(self, samples: list[tuple]) -> tuple[list[torch.Tensor], torch.Tensor, list]:
        """Per-sample logits [L_i, V], the batch loss (mean over all labelled tokens) and gate weights."""
        logits, losses, count, gates = [], 0.0, 0, []
        for ids, labels, pixels, level in samples:
            seq, seq_labels, weights = self.sequence(ids, labels, pixels, level)
            out = self.llm(inputs_embeds=seq[None]).logits[0]
            logits.append(out)
            gates.append(weights)
            target = seq_labels[1:]
            losses = losses + nn.functional.cross_entropy(out[:-1], target, ignore_index=IGNORE_INDEX,
                                                          reduction="sum")
            count += int((target != IGNORE_INDEX).sum())
        return logits, losses / max(count, 1), gates

    @torch.no_grad()
    def greedy(self, ids: torch.Tensor, pixels: torch.Tensor, steps: int,
               level: int | None = None) -> tuple[list[int], list[torch.Tensor]]:
        """Prefill the prompt (with the gate, or with `level`'s indicator as in pre-training), then decode
        `steps` tokens one at a time from the KV cache."""
        from transformers import DynamicCache

        seq, _, _ = self.sequence(ids, None, pixels, level)
        cache = DynamicCache()
        out = self.llm(inputs_embeds=seq[None], past_key_values=cache, use_cache=True)
        step_logits, tokens = [out.logits[0, -1]], []
        for position in range(seq.shape[0], seq.shape[0] + steps):
            token = int(step_logits[-1].argmax())
            tokens.append(token)
            if len(tokens) == steps:
                break
            out = self.llm(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values,
                           position_ids=torch.tensor([[position]]), use_cache=True)
            step_logits.append(out.logits[0, -1])
        return tokens, step_logits


def question_pictures(tiny, count: int = 2) -> list[torch.Tensor]:
    """The first `count` held-out question pictures of the fixtures, as CLIP's processor gives them: [3, H, W]."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor.from_pretrained(tiny.clip)
    files = sorted(tiny.images.glob("question_*"))[:count]
    return [processor.preprocess(Image.open(f).convert("RGB"), return_tensors="pt")["pixel_values"][0] for f in files]


def tokenize(tiny, prompt: str, answer: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaVA's ids for `prompt` (the image placeholder -200, by LLaVA's own `tokenizer_image_token`) plus the
    answer and EOS, and labels on the answer only."""
    from llava.mm_utils import tokenizer_image_token
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny.llm, use_fast=False)
    ids = tokenizer_image_token(prompt, tok, return_tensors="pt")
    labels = torch.full_like(ids, IGNORE_INDEX)
    if answer is not None:
        answer_ids = torch.tensor(tok(answer, add_special_tokens=False).input_ids + [tok.eos_token_id])
        ids, labels = torch.cat([ids, answer_ids]), torch.cat([labels, answer_ids])
    return ids, labels
