"""AlignGPT on transformers' own Llava: `LlavaModel` / `LlavaForConditionalGeneration` plus one alignment token.

The alignment vector is a real position of the sequence: the processor puts the token `<align>` right
after BOS of every sample that carries an image (none on text-only samples), and the model replaces that
token's embedding by the alignment vector, as Llava replaces each `<image>` token by an image feature. So
attention masks, position ids, the KV cache, `generate`, left or right padding and any collator need
nothing special. The levels and the gate are `aligngpt_plugin.core.alignment.AlignmentModule`:

- `config.alignment_stage == "pretrain"`: the vector is `E[level]` of each sample (`alignment_levels`);
- `"finetune"` (stage 2 and inference): the gate's combination of the levels, from the sample's projected
  image tokens and the mean embedding of its text (not image, alignment, padding or BOS tokens; with
  `gate_text="prompt"` also not answer tokens). `generate` runs the gate once, at prefill; the vector is
  then in the KV cache.

With no alignment token in a batch the forward is transformers' `LlavaForConditionalGeneration`'s, unchanged.
Works on transformers 4.57 (`get_image_features` returns a list, `past_key_values`) and 5.x (an output
object, `cache`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers import AutoModel, AutoModelForImageTextToText, LlavaForConditionalGeneration, LlavaModel
from transformers.models.llava.modeling_llava import (
    LlavaCausalLMOutputWithPast,
    LlavaModelOutputWithPast,
    LlavaPreTrainedModel,
)

from aligngpt_plugin.core.alignment import AlignmentModule, AlignmentOutput, idle_term, is_alignment_layer, masked_mean
from aligngpt_plugin.integrations.hf.configuration_aligngpt import AlignGPTLlavaConfig

IGNORE_INDEX = -100

__all__ = ["AlignGPTLlavaForConditionalGeneration", "AlignGPTLlavaModel", "AlignGPTLlavaOutput"]


@dataclass
class AlignGPTLlavaModelOutput(LlavaModelOutputWithPast):
    """`LlavaModelOutputWithPast` plus `gate_weights` [K, N-1]: the gate's weights for the K samples of the
    batch that carry an alignment token, in batch order (None where no gate ran)."""

    gate_weights: torch.FloatTensor | None = None


@dataclass
class AlignGPTLlavaOutput(LlavaCausalLMOutputWithPast):
    """`LlavaCausalLMOutputWithPast` plus `gate_weights` [K, N-1] (see `AlignGPTLlavaModelOutput`)."""

    gate_weights: torch.FloatTensor | None = None


class AlignGPTLlavaModel(LlavaModel):
    """`LlavaModel` with the alignment module (`alignment`: level embeddings [N, hidden] and the gate)."""

    config_class = AlignGPTLlavaConfig

    def __init__(self, config: AlignGPTLlavaConfig):
        super().__init__(config)
        self.alignment = AlignmentModule(config.alignment_config, config.text_config.hidden_size)
        self.last_gate_weights: torch.Tensor | None = None
        self.last_gate_samples: torch.Tensor | None = None  # [B] bool: which samples the weights belong to

    def _init_weights(self, module):
        if isinstance(module, AlignmentModule):
            module.reset_parameters()
        elif not is_alignment_layer(module):  # the gate's layers: the module draws them from its own stream
            super()._init_weights(module)

    def image_features(self, pixel_values: torch.Tensor, image_sizes=None) -> torch.Tensor:
        """Projected image tokens of every image, concatenated: [total image tokens, hidden]."""
        extra = {} if image_sizes is None else {"image_sizes": image_sizes}
        out = self.get_image_features(
            pixel_values=pixel_values, vision_feature_layer=self.config.vision_feature_layer,
            vision_feature_select_strategy=self.config.vision_feature_select_strategy, return_dict=True, **extra)
        features = getattr(out, "pooler_output", out)  # 5.x: an output object; 4.57: the list itself
        return torch.cat(list(features), dim=0)

    def gate_text_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                       labels: torch.Tensor | None) -> torch.Tensor:
        """[B, L] bool: the text positions the gate averages: not image, alignment or padding positions, not
        BOS; with gate_text='prompt' also not answer positions (labels other than -100)."""
        mask = (input_ids != self.config.image_token_id) & (input_ids != self.config.alignment_token_id)
        if attention_mask is not None:
            mask &= attention_mask.bool()
        bos = self.config.text_config.bos_token_id
        if bos is not None:
            mask &= input_ids != bos
        if labels is not None and self.alignment.config.gate_text == "prompt":
            mask &= labels == IGNORE_INDEX
        return mask

    def alignment_vectors(self, input_ids: torch.Tensor, embeds: torch.Tensor, image_mask: torch.Tensor,
                          image_features: torch.Tensor | None, attention_mask: torch.Tensor | None,
                          alignment_levels: torch.Tensor | None, labels: torch.Tensor | None) -> AlignmentOutput:
        """The AlignmentOutput of the samples that carry an alignment token, in batch order.

        Args:
            input_ids: [B, L]; embeds: [B, L, H] text embeddings (image positions may hold anything);
            image_mask: [B, L] bool, the image-token positions; image_features: [image tokens, H] or None;
            alignment_levels: [B] integers (stage 1), -1 where a sample has none; labels: [B, L] or None.
        Returns:
            AlignmentOutput with `token` [K, H] for the K samples with an alignment token.
        """
        rows = (input_ids == self.config.alignment_token_id).any(dim=1)
        if self.config.alignment_stage == "pretrain":
            if alignment_levels is None:
                raise ValueError("stage 1 (alignment_stage='pretrain') needs `alignment_levels`, one per sample "
                                 "(the `align_level` column that aligngpt-score writes)")
            levels = torch.as_tensor(alignment_levels, device=input_ids.device).long()
            missing = (rows & (levels < 0)).nonzero().flatten().tolist()
            if missing:
                raise ValueError(f"samples {missing} of the batch carry an alignment token but no level (-1); "
                                 "every image-caption pair of stage 1 needs its CLIP level")
            return self.alignment(levels=levels[rows])
        text_mean = masked_mean(embeds, self.gate_text_mask(input_ids, attention_mask, labels))[rows]
        if self.alignment.config.mode not in ("adaptive", "local"):
            return self.alignment(text_mean=text_mean)
        counts = image_mask.sum(dim=1)
        no_image = (rows & (counts == 0)).nonzero().flatten().tolist()
        if no_image or image_features is None:
            raise ValueError(f"samples {no_image or rows.nonzero().flatten().tolist()} carry an alignment token "
                             "but no image: the gate reads the image tokens (text-only samples get no token)")
        per_sample = torch.split(image_features, counts.tolist())
        chosen = [per_sample[k] for k in rows.nonzero().flatten().tolist()]
        sizes = {len(x) for x in chosen}
        image_tokens = torch.stack(chosen) if len(sizes) == 1 else chosen
        return self.alignment(image_tokens=image_tokens, text_mean=text_mean)

    def idle_alignment(self, like: torch.Tensor) -> AlignmentOutput:
        """The module run on zero samples: a batch without alignment tokens still uses its weights in
        training (every data-parallel rank reduces their gradients and gathers ZeRO-3 partitions)."""
        if self.config.alignment_stage == "pretrain":
            return self.alignment(levels=torch.zeros(0, dtype=torch.long, device=like.device))
        hidden = like.shape[-1]
        tokens = like.new_zeros(0, self.alignment.config.gate_tokens, hidden)
        return self.alignment(image_tokens=tokens, text_mean=like.new_zeros(0, hidden))

    def idle_image_term(self, features: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """0 from the tower and projector run on one zero image, where a training batch has no image.

        Under DeepSpeed every rank must run the same modules in the same order in each step: ZeRO-3 gathers
        each module's partitions collectively and ZeRO-2 reduces fixed gradient buckets, so a rank with a
        text-only batch that skipped the tower would leave the others waiting or mismatched. LLaVA's own data
        gives text-only samples a zero image for the same reason; here the model does it, before the
        alignment module as in an image batch.

        Args:
            features: [image tokens, H] of the batch's images, or None where it has none.
            like: [B, L, H] embeddings, for the device and dtype.
        Returns:
            A scalar 0, connected to the tower and projector when `features` is None.
        """
        if features is not None:
            return like.new_zeros(())
        size = self.config.vision_config.image_size
        dtype = next(self.vision_tower.parameters()).dtype
        zero = torch.zeros(1, 3, size, size, dtype=dtype, device=like.device)
        return self.image_features(zero).sum().to(like.dtype) * 0

    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.FloatTensor | None = None,
                attention_mask: torch.Tensor | None = None, inputs_embeds: torch.FloatTensor | None = None,
                alignment_levels: torch.LongTensor | None = None, alignment_labels: torch.LongTensor | None = None,
                image_sizes: torch.Tensor | None = None, **kwargs):
        """LlavaModel's forward; `alignment_levels` [B] (stage 1) and `alignment_labels` [B, L] (the labels,
        for gate_text='prompt') are the additions. Returns an `AlignGPTLlavaModelOutput`."""
        token_id = self.config.alignment_token_id
        align_mask = None if input_ids is None or token_id is None else input_ids == token_id
        self._gate_weights = None
        if align_mask is None or not (align_mask.any() or (self.training and torch.is_grad_enabled())):
            out = super().forward(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                                  inputs_embeds=inputs_embeds, image_sizes=image_sizes, **kwargs)
            return AlignGPTLlavaModelOutput(**out)
        for name in ("vision_feature_layer", "vision_feature_select_strategy"):
            if kwargs.pop(name, None) not in (None, getattr(self.config, name)):
                raise ValueError(f"{name} other than the config's is not supported with alignment tokens")
        embeds = self.get_input_embeddings()(input_ids.masked_fill(align_mask, 0))
        image_mask = input_ids == self.config.image_token_id
        features = None
        encoded = (kwargs.pop("mm_encoder_outputs", None) or {}).get("image")  # 5.x: encoded before the forward
        if encoded is not None:
            features = torch.cat(list(encoded.pooler_output), dim=0)
        elif pixel_values is not None:
            features = self.image_features(pixel_values, image_sizes)
        if features is not None:
            features = features.to(embeds.device, embeds.dtype)
            if int(image_mask.sum()) != features.shape[0]:
                raise ValueError(f"Image features and image tokens do not match: tokens: {int(image_mask.sum())}, "
                                 f"features {features.shape[0]}")
            embeds = embeds.masked_scatter(image_mask.unsqueeze(-1).expand_as(embeds), features)
        if align_mask.any():
            out = self.alignment_vectors(input_ids, embeds, image_mask, features, attention_mask,
                                         alignment_levels, alignment_labels)
            embeds = embeds.masked_scatter(align_mask.unsqueeze(-1).expand_as(embeds), out.token.to(embeds.dtype))
            self._gate_weights = self.last_gate_weights = out.gate_weights
            self.last_gate_samples = align_mask.any(dim=1)
        else:  # training on a batch without images: the tower, projector and module run and add 0
            embeds = embeds + self.idle_image_term(features, embeds) + idle_term(self.idle_alignment(embeds))
        out = super().forward(input_ids=None, pixel_values=None, attention_mask=attention_mask,
                              inputs_embeds=embeds, **kwargs)
        return AlignGPTLlavaModelOutput(**out, gate_weights=self._gate_weights)


class AlignGPTLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """`LlavaForConditionalGeneration` over `AlignGPTLlavaModel`.

    Extra forward inputs: `alignment_levels` [B] long (stage 1; -1 where a sample has none). The alignment
    token's label is ignored in the loss whatever the collator put there. `output.gate_weights` [K, N-1];
    `last_gate_weights` keeps the weights of the last gate run (the prefill, during `generate`).
    """

    config_class = AlignGPTLlavaConfig

    def __init__(self, config: AlignGPTLlavaConfig):
        # LlavaForConditionalGeneration.__init__ would build a plain LlavaModel first; build ours instead
        LlavaPreTrainedModel.__init__(self, config)
        self.model = AlignGPTLlavaModel(config)
        self.lm_head = torch.nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    @property
    def alignment(self) -> AlignmentModule:
        return self.model.alignment

    @property
    def last_gate_weights(self) -> torch.Tensor | None:
        return self.model.last_gate_weights

    @property
    def last_gate_samples(self) -> torch.Tensor | None:
        return self.model.last_gate_samples

    def _init_weights(self, module):
        if isinstance(module, AlignmentModule):
            module.reset_parameters()
        elif not is_alignment_layer(module):  # the gate's layers: the module draws them from its own stream
            super()._init_weights(module)

    def forward(self, input_ids: torch.LongTensor | None = None, labels: torch.LongTensor | None = None,
                alignment_levels: torch.LongTensor | None = None, **kwargs):
        """LlavaForConditionalGeneration's forward plus `alignment_levels`; returns an `AlignGPTLlavaOutput`."""
        token_id = self.config.alignment_token_id
        if labels is not None and input_ids is not None and token_id is not None:
            labels = labels.masked_fill(input_ids == token_id, IGNORE_INDEX)
        out = super().forward(input_ids=input_ids, labels=labels, alignment_levels=alignment_levels,
                              alignment_labels=labels, **kwargs)
        return AlignGPTLlavaOutput(**out, gate_weights=self.model._gate_weights)

    def generate(self, *args, **kwargs):
        self.model.last_gate_weights = self.model.last_gate_samples = None
        return super().generate(*args, **kwargs)

    def set_stage(self, stage: str) -> dict[str, int]:
        """Set `config.alignment_stage` and which parameters train, as the paper's stages do.

        Args:
            stage: "pretrain" (stage 1: the projector and the level embeddings train; tower and LLM frozen) or
                "finetune" (stage 2: the gate, the projector and the LLM train; levels and tower frozen).
        Returns:
            The number of trainable parameters per part (`projector`, `levels`, `gate`, `llm`, `vision`).
        """
        if stage not in ("pretrain", "finetune"):
            raise ValueError(f"stage={stage!r}; choose pretrain or finetune")
        self.config.alignment_stage = stage
        pretraining = stage == "pretrain"
        plan = {"vision": (self.model.vision_tower, False),
                "projector": (self.model.multi_modal_projector, True),
                "llm": (self.model.language_model, not pretraining)}
        for module, flag in plan.values():
            module.requires_grad_(flag)
        self.lm_head.requires_grad_(not pretraining)
        trains = self.alignment.trainable(pretraining)
        self.alignment.level_embeddings.requires_grad_(trains["level_embeddings"])
        self.alignment.gate.requires_grad_(trains["gate"])
        count = {name: sum(p.numel() for p in m.parameters() if p.requires_grad) for name, (m, _) in plan.items()}
        count["llm"] += sum(p.numel() for p in self.lm_head.parameters() if p.requires_grad)
        count["levels"] = self.alignment.level_embeddings.numel() if trains["level_embeddings"] else 0
        count["gate"] = sum(p.numel() for p in self.alignment.gate.parameters() if p.requires_grad)
        return count


def _with_parameter(method, base, name: str, annotation) -> None:
    """Give `method` the signature of `base` plus keyword `name`: generate inspects the forward's parameters
    (`logits_to_keep`, the cache's name), which differ between transformers 4.57 and 5.x."""
    signature = inspect.signature(base)
    params = list(signature.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    params.insert(at, inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    method.__signature__ = signature.replace(parameters=params)


_with_parameter(AlignGPTLlavaForConditionalGeneration.forward, LlavaForConditionalGeneration.forward,
                "alignment_levels", "torch.LongTensor | None")

AutoModel.register(AlignGPTLlavaConfig, AlignGPTLlavaModel, exist_ok=True)
AutoModelForImageTextToText.register(AlignGPTLlavaConfig, AlignGPTLlavaForConditionalGeneration, exist_ok=True)
try:  # AutoModelForVision2Seq: deprecated in 4.x, gone in 5.x
    from transformers import AutoModelForVision2Seq
except ImportError:
    AutoModelForVision2Seq = None
if AutoModelForVision2Seq is not None:
    AutoModelForVision2Seq.register(AlignGPTLlavaConfig, AlignGPTLlavaForConditionalGeneration, exist_ok=True)
