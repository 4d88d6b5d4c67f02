"""AlignGPT as a LLaVA architecture: LLaVA's causal LM plus one alignment token right after BOS.

The alignment logic is written once (`AlignGPTForCausalLMMixin`, `AlignGPTModelMixin`) and put over each
language backbone LLaVA ships: `AlignGPTLlamaForCausalLM` (model_type `aligngpt_llava`, over
`LlavaLlamaForCausalLM`) and `AlignGPTMistralForCausalLM` (`aligngpt_mistral`, over
`LlavaMistralForCausalLM`). They are registered with AutoConfig / AutoModelForCausalLM, so
`from_pretrained` on a saved checkpoint gives the model back without `trust_remote_code`. (LLaVA's MPT is
refused with a message: its LLM lives under `transformer` with ALiBi attention and its own forward.)
The levels and the gate live in `aligngpt_plugin.core.alignment` (plain torch); this file only places
their token in LLaVA's sequence:

- LLaVA builds the multimodal embeddings (`prepare_inputs_labels_for_multimodal`, unchanged);
- every sample with an image gets one token at BOS + 1 (label IGNORE_INDEX, attention 1); samples
  without an image get none, so a batch grows by one column, filled with padding on the padding side;
- position ids follow the attention mask, as LLaVA computes them;
- LLaVA truncates to `tokenizer_model_max_length - 1`, so the token always fits.

Stage (docs/method.md#two-stages) comes from LLaVA's own config flag: with `tune_mm_mlp_adapter` the token is
`E[level]` of each sample (pre-training), otherwise the gate's combination (instruction tuning and
inference; `generate` runs the gate on the prompt at prefill and reuses the KV cache after).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM, LlavaLlamaModel
from llava.model.language_model.llava_mistral import LlavaMistralForCausalLM, LlavaMistralModel
from transformers import AutoModelForCausalLM, LlamaForCausalLM, MistralForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from aligngpt_plugin.core.alignment import AlignmentModule, full_weights, idle_term, is_alignment_layer, masked_mean
from aligngpt_plugin.integrations.llava.configuration import (
    MODEL_TYPE,
    AlignGPTConfig,
    AlignGPTMistralConfig,
    register,
)

__all__ = ["MODEL_TYPE", "AlignGPTConfig", "AlignGPTLlamaForCausalLM", "AlignGPTMistralForCausalLM", "AlignGPTOutput",
           "model_class_for"]


class AlignGPTModelMixin:
    """LLaVA's inner model, whatever its backbone, with the alignment module beside the projector."""

    def __init__(self, config):
        super().__init__(config)
        self.alignment = AlignmentModule(config.alignment_config, config.hidden_size)

    def initialize_vision_modules(self, model_args, fsdp=None):
        """LLaVA's, plus: the alignment module comes from `--pretrain_mm_mlp_adapter` with the projector.

        Args:
            model_args: LLaVA's ModelArguments (vision tower, projector type, `pretrain_mm_mlp_adapter`, ...).
            fsdp: LLaVA's FSDP setting, passed on.
        Raises:
            ValueError: the projector file holds no alignment weights, or levels of another shape.
        """
        super().initialize_vision_modules(model_args, fsdp=fsdp)
        path = getattr(model_args, "pretrain_mm_mlp_adapter", None)
        if path is None:
            return
        weights = torch.load(path, map_location="cpu", weights_only=True)
        found = {k.split("alignment.", 1)[1]: v for k, v in weights.items() if "alignment." in k}
        if not found:
            raise ValueError(f"{path} holds no alignment levels (keys: {sorted(weights)[:4]}...): it was "
                             "pre-trained without --align_levels. Pre-train with the flag, or convert a "
                             "released AlignGPT projector with aligngpt-convert")
        with full_weights(list(self.alignment.parameters())):  # ZeRO-3 built them partitioned
            expected = dict(self.alignment.state_dict())
            fitting = {k: v for k, v in found.items() if k in expected and expected[k].shape == v.shape}
            misfits = sorted(set(found) - set(fitting))
            if any(not k.startswith("gate.") for k in misfits):
                key = next(k for k in misfits if not k.startswith("gate."))
                want = tuple(expected[key].shape) if key in expected else None
                raise ValueError(f"{path}: alignment weight {key!r} has shape {tuple(found[key].shape)}, this "
                                 f"model expects {want} (--align_levels {self.alignment.num_levels}): pre-train "
                                 "with the same number of levels")
            if misfits:
                # stage 1 never trains the gate: a gate of another shape (other --align_gate_* options in
                # stage 2) starts fresh instead of from stage 1's initial values
                print(f"[aligngpt] {path}: the gate there has another shape ({', '.join(misfits)}); "
                      "stage 2 starts a fresh gate (stage 1 does not train it)", flush=True)
            elif not any(k.startswith("gate.") for k in fitting):
                print(f"[aligngpt] {path} holds no gate (as the public code's stage 1 saves it); stage 2 starts "
                      "a fresh gate", flush=True)
            self.alignment.load_state_dict(fitting, strict=False)

    def _init_weights(self, module):
        # from_pretrained on a plain Llama checkpoint initialises missing weights through the inner
        # model's _init_weights; the alignment module has its own init (Xavier-uniform levels)
        if isinstance(module, AlignmentModule):
            module.reset_parameters()
        elif not is_alignment_layer(module):  # the gate's layers: the module draws them from its own stream
            super()._init_weights(module)


class AlignGPTLlamaModel(AlignGPTModelMixin, LlavaLlamaModel):
    """LLaVA's Llama inner model with the alignment module."""
    config_class = AlignGPTConfig


class AlignGPTMistralModel(AlignGPTModelMixin, LlavaMistralModel):
    """LLaVA's Mistral inner model with the alignment module."""
    config_class = AlignGPTMistralConfig


@dataclass
class AlignGPTOutput(CausalLMOutputWithPast):
    """CausalLMOutputWithPast plus `gate_weights` [K, N-1], one row per sample with an image, in batch order
    (None in pre-training or without images)."""

    gate_weights: torch.FloatTensor | None = None


@contextmanager
def _room_for_one_token(config):
    """LLaVA truncates to `tokenizer_model_max_length`; keep one position free for the alignment token."""
    limit = getattr(config, "tokenizer_model_max_length", None)
    if limit is None:
        yield
        return
    config.tokenizer_model_max_length = limit - 1
    try:
        yield
    finally:
        config.tokenizer_model_max_length = limit


class AlignGPTForCausalLMMixin:
    """The alignment token in LLaVA's causal LM, written once for every backbone. A concrete class names
    `backbone` (the transformers causal LM whose forward runs the LLM) and `inner_model`."""

    backbone: type
    inner_model: type
    # LLaVA saves the (frozen) CLIP tower with the model but builds it from `mm_vision_tower` when it
    # loads, unless the tower was trained (`unfreeze_mm_vision_tower`): then these weights load
    _keys_to_ignore_on_load_unexpected = [r"^model\.vision_tower\."]

    def __init__(self, config):
        super(self.backbone, self).__init__(config)  # as LLaVA: skip the backbone's own inner model
        self.model = self.inner_model(config)
        if hasattr(config, "pretraining_tp"):  # Llama's, which LLaVA sets too
            self.pretraining_tp = config.pretraining_tp
        self.vocab_size = config.vocab_size
        self.lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._captured_image_features = None
        self._gate_weights = self.last_gate_weights = None
        self.last_gate_samples = None  # which samples of the last batch the gate weights belong to
        self._generate_levels = None  # generate's alignment_levels, for its prefill
        self.post_init()

    @property
    def alignment(self) -> AlignmentModule:
        """The alignment module (level embeddings [N, H] and gate) of the inner model."""
        return self.get_model().alignment

    @property
    def stage(self) -> str:
        """'pretrain' when LLaVA trains only the projector (`--tune_mm_mlp_adapter True`), else 'finetune'."""
        return "pretrain" if getattr(self.config, "tune_mm_mlp_adapter", False) else "finetune"

    def _init_weights(self, module):
        if isinstance(module, AlignmentModule):
            module.reset_parameters()
        elif not is_alignment_layer(module):  # the gate's layers: the module draws them from its own stream
            super()._init_weights(module)

    def use_fixed_level(self, level: int) -> None:
        """Generate with the token of one level, `E[level]`, as in pre-training: what a stage-1 model
        (no trained gate) can be evaluated with. Switches the model to inference.

        Args:
            level: the level, in 0..N-1.
        """
        alignment = replace(self.alignment.config, mode="fixed_level", fixed_level=level)  # validates the level
        self.alignment.config = alignment
        self.config.alignment = alignment.to_dict()
        self.config.tune_mm_mlp_adapter = False

    # LLaVA encodes the images inside prepare_inputs_labels_for_multimodal; the gate needs the same
    # projected image tokens, so they are kept here for the one call that follows instead of encoding twice.
    def encode_images(self, images):
        """LLaVA's `encode_images`, keeping its result for the gate of the same forward.

        Args:
            images: [n, 3, H, W] pixel values.
        Returns:
            [n, T, D], the projected image tokens (T per image; D the LLM's hidden size).
        """
        features = super().encode_images(images)
        self._captured_image_features = features
        return features

    def gate_text_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                       labels: torch.Tensor | None) -> torch.Tensor:
        """Text tokens the gate averages: not image, not padding, not the first (BOS) token; with
        gate_text='prompt' also not answer tokens (labels other than IGNORE_INDEX).

        Args:
            input_ids: [B, L], with IMAGE_TOKEN_INDEX where the image goes.
            attention_mask: [B, L] or None (no padding).
            labels: [B, L] or None.
        Returns:
            [B, L] bool.
        """
        mask = input_ids != IMAGE_TOKEN_INDEX
        if attention_mask is not None:
            mask &= attention_mask.bool()
        first = mask.float().argmax(dim=1)  # BOS: the first real token, whatever the padding side
        mask[torch.arange(mask.shape[0], device=mask.device), first] = False
        if labels is not None and self.alignment.config.gate_text == "prompt":
            mask &= labels == IGNORE_INDEX
        return mask

    def alignment_tokens(self, input_ids, attention_mask, labels, image_features, alignment_levels):
        """The AlignmentOutput for the samples that carry an image, in batch order (none: an empty one).
        The alignment module runs exactly once per call, whatever the batch holds.

        Args:
            input_ids: [B, L], with IMAGE_TOKEN_INDEX where the image goes.
            attention_mask: [B, L] or None.
            labels: [B, L] or None.
            image_features: [K, T, D] projected image tokens of the K image samples, or a list of K [T_k, D]
                tensors (any-resolution or several images per sample).
            alignment_levels: [B] long levels (pre-training; may be None for a batch without images).
        Returns:
            AlignmentOutput with `token` [K, D] and `gate_weights` [K, N-1] (None in pre-training).
        Raises:
            ValueError: pre-training a batch with images without levels.
        """
        has_image = (input_ids == IMAGE_TOKEN_INDEX).any(dim=1)
        if self.stage == "pretrain":
            if alignment_levels is None:
                if has_image.any():
                    raise ValueError(
                        "pre-training an AlignGPT model needs the alignment level of every sample: give the "
                        "records an `align_level` (or the public data's `similarity`) field; see aligngpt-score")
                alignment_levels = torch.zeros(len(has_image), dtype=torch.long, device=input_ids.device)
            return self.alignment(levels=alignment_levels[has_image])
        embed = self.get_model().embed_tokens
        safe_ids = input_ids.clamp(min=0)  # IMAGE_TOKEN_INDEX (-200) is masked out of the mean anyway
        text = masked_mean(embed(safe_ids), self.gate_text_mask(input_ids, attention_mask, labels))
        if isinstance(image_features, torch.Tensor):
            return self.alignment(image_tokens=image_features[has_image], text_mean=text[has_image])
        # Image lists (LLaVA-1.6 any-resolution, several images per sample): each sample has its own
        # number of image tokens (gate_input='pooled' makes that count free); the gate runs once on all
        chosen = has_image.nonzero().flatten().tolist()
        return self.alignment(image_tokens=[image_features[k] for k in chosen], text_mean=text[has_image])

    def prepare_inputs_labels_for_multimodal(self, input_ids, position_ids, attention_mask, past_key_values,
                                             labels, images, image_sizes=None, alignment_levels=None, **kwargs):
        """LLaVA's multimodal embeddings with the alignment token inserted right after BOS of each image sample.

        Args:
            input_ids: [B, L], with IMAGE_TOKEN_INDEX where the image goes.
            position_ids: [B, L] or None.
            attention_mask: [B, L] or None.
            past_key_values: the KV cache (decode steps pass through unchanged).
            labels: [B, L] or None.
            images: [B, 3, H, W], or LLaVA's per-sample list / [B, n, 3, H, W] for any-resolution or several images.
            image_sizes: the images' sizes, for any-resolution.
            alignment_levels: [B] long levels (pre-training); `generate` supplies its own for the prefill.
            **kwargs: only `align_levels`, the old name of `alignment_levels` (FutureWarning).
        Returns:
            LLaVA's tuple (input_ids, position_ids, attention_mask, past_key_values, inputs_embeds, labels). With
            images (not a decode step): (None, position_ids [B, L'] or None, attention_mask [B, L'] or None,
            past_key_values, inputs_embeds [B, L', D], labels [B, L'] or None), L' being LLaVA's length plus one
            when any sample has an image. Without: LLaVA's own result, unchanged.
        """
        alignment_levels = _renamed_levels(alignment_levels, kwargs)
        if kwargs:
            raise TypeError(f"prepare_inputs_labels_for_multimodal got unexpected arguments {sorted(kwargs)}")
        if alignment_levels is None:  # generate's prefill: LLaVA's generate calls here without them
            alignment_levels = getattr(self, "_generate_levels", None)
        if self.get_vision_tower() is None or images is None or input_ids.shape[1] == 1:
            return super().prepare_inputs_labels_for_multimodal(
                input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes)
        self._captured_image_features = None
        with _room_for_one_token(self.config):
            (_, position_ids_out, attention_out, past_key_values, embeds, labels_out) = \
                super().prepare_inputs_labels_for_multimodal(
                    input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes)
        features, self._captured_image_features = self._captured_image_features, None
        if isinstance(images, list) or images.ndim == 5:
            features = per_sample_image_tokens(features, images)
        has_image = (input_ids == IMAGE_TOKEN_INDEX).any(dim=1)
        out = self.alignment_tokens(input_ids, attention_mask, labels, features, alignment_levels)
        if not has_image.any():  # a text-only batch: the module ran, adding 0 (ranks stay in step)
            return None, position_ids_out, attention_out, past_key_values, embeds + idle_term(out), labels_out
        self._gate_weights = self.last_gate_weights = out.gate_weights
        self.last_gate_samples = has_image
        embeds, attention, labels_new, positions = insert_after_bos(
            embeds, attention_out, labels_out, out.token.to(embeds.dtype), has_image,
            left_padded=getattr(self.config, "tokenizer_padding_side", "right") == "left")
        if attention_out is not None:
            attention_out = attention.to(attention_out.dtype)
        if position_ids_out is not None:
            position_ids_out = positions
        return None, position_ids_out, attention_out, past_key_values, embeds, labels_new

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, images=None, image_sizes=None, return_dict=None,
                alignment_levels=None, cache_position=None, **kwargs):
        """LLaVA's forward with the alignment token; the rest goes to the backbone's causal LM forward.

        Args:
            input_ids: [B, L].
            attention_mask: [B, L] or None.
            position_ids: [B, L] or None.
            past_key_values: the KV cache (transformers 5.24+ may name it `cache`).
            inputs_embeds: [B, L, D]; given, the multimodal preparation is skipped (as in LLaVA).
            labels: [B, L] or None (IGNORE_INDEX where not trained).
            use_cache, output_attentions, output_hidden_states, return_dict: as the backbone's.
            images: [B, 3, H, W] (or LLaVA's image lists).
            image_sizes: the images' sizes, for any-resolution.
            alignment_levels: [B] long, each sample's level in 0..N-1 (-1 where none); needed in pre-training.
            cache_position: unused (the backbone derives it).
            **kwargs: passed to the backbone; `align_levels`, the old name of `alignment_levels`, still works with a
                FutureWarning.
        Returns:
            AlignGPTOutput: loss, logits [B, L', V], past_key_values, hidden states, attentions and
            `gate_weights` [K, N-1] of the K image samples (None in pre-training or without images).
        """
        alignment_levels = _renamed_levels(alignment_levels, kwargs)
        self._gate_weights = None
        if past_key_values is None:  # transformers 5.24+ names the KV cache `cache`
            past_key_values = kwargs.pop("cache", None)
        if inputs_embeds is None:
            (input_ids, position_ids, attention_mask, past_key_values, inputs_embeds, labels) = \
                self.prepare_inputs_labels_for_multimodal(input_ids, position_ids, attention_mask,
                                                          past_key_values, labels, images, image_sizes,
                                                          alignment_levels=alignment_levels)
        out = self.backbone.forward(
            self, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            **{_cache_keyword(self.backbone): past_key_values}, inputs_embeds=inputs_embeds, labels=labels,
            use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
            **kwargs)
        return AlignGPTOutput(loss=out.loss, logits=out.logits, past_key_values=out.past_key_values,
                              hidden_states=out.hidden_states, attentions=out.attentions,
                              gate_weights=self._gate_weights)

    def generate(self, inputs=None, images=None, image_sizes=None, alignment_levels=None, **kwargs):
        """LLaVA's generate; the gate runs at prefill and its weights are kept in `last_gate_weights` [K, N-1]
        (`last_gate_samples` [B] bool says which samples they belong to).

        Args:
            inputs: [B, L] prompt ids, with IMAGE_TOKEN_INDEX where the image goes.
            images: [B, 3, H, W] (or LLaVA's image lists) or None.
            image_sizes: the images' sizes, for any-resolution.
            alignment_levels: [B] long levels for the prefill's token (a model in the pre-training stage).
            **kwargs: transformers' generate arguments; `align_levels`, the old name of `alignment_levels`, still
                works with a FutureWarning.
        Returns:
            What transformers' generate returns: [B, new tokens] ids (LLaVA passes embeddings, so no prompt ids).
        """
        alignment_levels = _renamed_levels(alignment_levels, kwargs)
        # set by the prefill's gate, kept for analysis after generate
        self.last_gate_weights = self.last_gate_samples = None
        self._generate_levels = alignment_levels  # for the prefill, which LLaVA's generate runs itself
        try:
            return super().generate(inputs, images=images, image_sizes=image_sizes, **kwargs)
        finally:
            self._generate_levels = None


def _renamed_levels(alignment_levels: torch.Tensor | None, kwargs: dict) -> torch.Tensor | None:
    """`alignment_levels`, or the levels given under their old name `align_levels` (popped from `kwargs`, with
    a FutureWarning). `align_levels` is the number N on the command line; the per-sample tensor took the name
    the transformers-native model uses.

    Args:
        alignment_levels: [B] long levels or None.
        kwargs: the caller's remaining keyword arguments; `align_levels` is removed from it.
    Returns:
        The [B] levels (or None), whichever name gave them.
    """
    if "align_levels" not in kwargs:
        return alignment_levels
    old = kwargs.pop("align_levels")
    warnings.warn("`align_levels=` (the per-sample levels) is renamed `alignment_levels=`, as in the "
                  "transformers-native AlignGPT model; the old name will be removed", FutureWarning, stacklevel=3)
    if alignment_levels is not None and old is not None:
        raise TypeError("both `alignment_levels` and its old name `align_levels` were given; keep `alignment_levels`")
    return old if alignment_levels is None else alignment_levels


@functools.cache  # once per backbone class, not on every forward
def _cache_keyword(backbone: type) -> str:
    """`cache` where the backbone's forward takes it (transformers 5.24+; `past_key_values` is deprecated
    there, to be removed in 5.40), else `past_key_values`."""
    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"


class AlignGPTLlamaForCausalLM(AlignGPTForCausalLMMixin, LlavaLlamaForCausalLM):
    """AlignGPT over LLaVA's Llama causal LM (`LlavaLlamaForCausalLM`; model_type `aligngpt_llava`)."""
    config_class = AlignGPTConfig
    backbone, inner_model = LlamaForCausalLM, AlignGPTLlamaModel


class AlignGPTMistralForCausalLM(AlignGPTForCausalLMMixin, LlavaMistralForCausalLM):
    """AlignGPT over LLaVA's Mistral causal LM (`LlavaMistralForCausalLM`; model_type `aligngpt_mistral`)."""
    config_class = AlignGPTMistralConfig
    backbone, inner_model = MistralForCausalLM, AlignGPTMistralModel


MODEL_CLASSES = {AlignGPTConfig: AlignGPTLlamaForCausalLM, AlignGPTMistralConfig: AlignGPTMistralForCausalLM}
MODEL_CLASS_BY_TYPE = {config.model_type: model for config, model in MODEL_CLASSES.items()}


def model_class_for(config) -> type:
    """The AlignGPT causal LM for an AlignGPT config (any backbone).

    Args:
        config: an AlignGPTConfig or AlignGPTMistralConfig.
    Returns:
        AlignGPTLlamaForCausalLM or AlignGPTMistralForCausalLM.
    """
    return MODEL_CLASSES[type(config)]


def per_sample_image_tokens(features: torch.Tensor, images) -> list[torch.Tensor]:
    """Split what `encode_images` returned for LLaVA's concatenated image list back per sample.

    Args:
        features: [sum of n_i, T, D], the projected tokens of every image or view.
        images: LLaVA's per-sample images: [3, H, W] (one image) or [n_i, 3, H, W] each.
    Returns:
        One [n_i * T, D] tensor per sample (every view or image of a sample counts).
    """
    sizes = [1 if x.ndim == 3 else x.shape[0] for x in images]
    return [chunk.flatten(0, 1) for chunk in torch.split(features, sizes)]


def insert_after_bos(embeds: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor | None,
                     tokens: torch.Tensor, has_token: torch.Tensor, left_padded: bool):
    """Insert `tokens[k]` right after the first real position of the k-th sample flagged in `has_token`.
    Samples without a token get one extra padding position on their padding side.

    Args:
        embeds: [B, L, D].
        attention_mask: [B, L] or None (no padding).
        labels: [B, L] or None.
        tokens: [K, D] with K = has_token.sum().
        has_token: [B] bool.
        left_padded: whether padding is on the left.
    Returns:
        (embeds [B, L+1, D], attention [B, L+1] bool, labels [B, L+1] or None (the token's label is
        IGNORE_INDEX), position ids [B, L+1] that count real positions from 0).
    """
    b, length, _ = embeds.shape
    device = embeds.device
    valid = torch.ones(b, length, dtype=torch.bool, device=device) if attention_mask is None else attention_mask.bool()
    start = valid.float().argmax(dim=1, keepdim=True)  # first real position (BOS)
    if bool(has_token.all()) and bool((start == 0).all()):
        # The common case (every sample has an image, content starts at column 0): plain concatenation,
        # which is cheaper than the gathers below, forward and backward.
        new_embeds = torch.cat([embeds[:, :1], tokens.unsqueeze(1), embeds[:, 1:]], dim=1)
        new_valid = torch.cat([valid[:, :1], torch.ones_like(valid[:, :1]), valid[:, 1:]], dim=1)
        new_labels = None
        if labels is not None:
            new_labels = torch.cat([labels[:, :1], torch.full_like(labels[:, :1], IGNORE_INDEX), labels[:, 1:]], 1)
        return new_embeds, new_valid, new_labels, real_positions(new_valid)
    j = torch.arange(length + 1, device=device).expand(b, -1)
    flag = has_token.to(device).unsqueeze(1)
    none = torch.full_like(j, -1)  # source index of a padding position
    # With a token, both padding sides read the same way: up to BOS unchanged, the token, then the rest
    # one column later (left-padded content keeps its end at the last column, which is now one further).
    is_token = flag & (j == start + 1)
    with_token = torch.where(j <= start, j, j - 1)
    if left_padded:  # no token: one more padding column in front
        without = torch.where(j >= 1, j - 1, none)
    else:  # no token: one more padding column at the end
        without = torch.where(j < length, j, none)
    src = torch.where(is_token, none, torch.where(flag, with_token, without))
    in_range = src >= 0
    gather = src.clamp(min=0, max=length - 1)
    new_valid = torch.gather(valid, 1, gather) & in_range | is_token

    new_embeds = torch.gather(embeds, 1, gather.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
    new_embeds = torch.where(in_range.unsqueeze(-1), new_embeds, torch.zeros_like(new_embeds))
    token_rows = torch.zeros_like(new_embeds)
    token_rows[is_token] = tokens
    new_embeds = torch.where(is_token.unsqueeze(-1), token_rows, new_embeds)

    new_labels = None
    if labels is not None:
        new_labels = torch.gather(labels, 1, gather)
        new_labels = torch.where(in_range & ~is_token, new_labels, torch.full_like(new_labels, IGNORE_INDEX))
    return new_embeds, new_valid, new_labels, real_positions(new_valid)


def real_positions(valid: torch.Tensor) -> torch.Tensor:
    """Position ids that count real positions from 0 and are 0 on padding, as LLaVA sets them.

    Args:
        valid: [B, L] bool, True on real positions.
    Returns:
        [B, L] long.
    """
    return ((valid.long().cumsum(1) - 1).clamp(min=0)) * valid.long()


register()
for _config, _model in MODEL_CLASSES.items():
    AutoModelForCausalLM.register(_config, _model)
