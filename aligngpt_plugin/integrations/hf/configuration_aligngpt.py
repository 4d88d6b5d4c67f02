"""The HF-native AlignGPT config: transformers' `LlavaConfig` plus the alignment settings.

    config = AlignGPTLlavaConfig(vision_config=..., text_config=..., alignment={"num_levels": 8},
                                 alignment_token_id=32002)

`model_type` is `llava_aligngpt`; `import aligngpt_plugin` registers it with `AutoConfig`, and the model
and processor classes with `AutoModelForImageTextToText` / `AutoProcessor`, so a saved folder loads back
with `from_pretrained` and no `trust_remote_code`.
"""

from __future__ import annotations

from transformers import LlavaConfig

from aligngpt_plugin.core.alignment import AlignmentConfig

MODEL_TYPE = "llava_aligngpt"
ALIGNMENT_TOKEN = "<align>"
STAGES = ("pretrain", "finetune")


class AlignGPTLlavaConfig(LlavaConfig):
    """`LlavaConfig` plus:

    Args:
        alignment (`dict`, *optional*): the `AlignmentConfig` as a dict (levels, gate, mode), validated here.
        alignment_token_id (`int`, *optional*): id of the alignment token (`<align>`), the one position per
            image-carrying sample whose embedding the model replaces by the alignment vector.
        alignment_stage (`str`, defaults to `"finetune"`): `"pretrain"` (stage 1: the token is `E[level]` of
            each sample's `alignment_levels`) or `"finetune"` (stage 2 and inference: the gate's combination).
    """

    model_type = MODEL_TYPE

    def __init__(self, alignment: dict | None = None, alignment_token_id: int | None = None,
                 alignment_stage: str = "finetune", **kwargs):
        super().__init__(**kwargs)
        self.alignment = AlignmentConfig.from_dict(dict(alignment or {})).to_dict()
        if alignment_stage not in STAGES:
            raise ValueError(f"alignment_stage={alignment_stage!r}; choose one of {', '.join(STAGES)}")
        self.alignment_token_id = alignment_token_id
        self.alignment_stage = alignment_stage
        _register_model_classes()

    @property
    def alignment_config(self) -> AlignmentConfig:
        """The alignment settings as the core's typed config."""
        return AlignmentConfig.from_dict(self.alignment)


def _register_model_classes() -> None:
    # The model classes register themselves when their module is imported; a config is built before
    # `from_pretrained` looks its model class up, so importing here is early enough and keeps
    # `import aligngpt_plugin` light.
    import aligngpt_plugin.integrations.hf.modeling_aligngpt  # noqa: F401


def register() -> None:
    """Register the config type with AutoConfig and the processor with AutoProcessor (idempotent)."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if MODEL_TYPE not in CONFIG_MAPPING:
        AutoConfig.register(MODEL_TYPE, AlignGPTLlavaConfig)
    register_processor()


def register_processor(processor_class: type | None = None) -> None:
    """Register `AlignGPTLlavaProcessor` with AutoProcessor (idempotent).

    Args:
        processor_class: the class, given by the processor's own module at its end. Without it the module is
            imported here, unless it is half loaded (its import pulled transformers in, which registers):
            then it registers itself when done, rather than being re-entered now.
    """
    import sys

    from transformers import AutoProcessor

    if processor_class is None:
        name = "aligngpt_plugin.integrations.hf.processing_aligngpt"
        loading = sys.modules.get(name)
        if loading is not None and getattr(loading.__spec__, "_initializing", False):
            return
        from aligngpt_plugin.integrations.hf.processing_aligngpt import AlignGPTLlavaProcessor as processor_class

    AutoProcessor.register(AlignGPTLlavaConfig, processor_class, exist_ok=True)


register()  # idempotent; see aligngpt_plugin/__init__.py for when it runs
