"""The AlignGPT configs and their registration with transformers' Auto classes (imports transformers only).

`import aligngpt_plugin` calls `register()`, so that after it

    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained("checkpoints/aligngpt-7b")   # an AlignGPTLlamaForCausalLM

works for this plugin's checkpoints. The model classes need `llava`; they are imported the first time
an AlignGPT config is built (which is what `from_pretrained` does before it looks the class up), so
importing the package stays light and works where llava is not installed (scoring, evaluation reports).

The released checkpoints (`model_type: "aligngpt"`, METHOD.md section 6) have another layout; their
config type is registered too, so that loading one directly says how to convert it instead of
transformers' "unrecognized model type".
"""

from __future__ import annotations

from transformers import AutoConfig, LlamaConfig

from aligngpt_plugin.core.alignment import AlignmentConfig

MODEL_TYPE = "aligngpt_llava"
RELEASED_MODEL_TYPE = "aligngpt"
RELEASED_ARCHITECTURE = "AlignGPTForCausalLM"


def convert_hint(path: str = "CHECKPOINT") -> str:
    return (f"{path} is a released AlignGPT checkpoint (model_type '{RELEASED_MODEL_TYPE}'), whose weights sit "
            f"where this plugin's model does not look for them; convert it once with "
            f"`aligngpt-convert to-plugin {path} OUT_DIR` and load OUT_DIR")


class AlignGPTConfig(LlamaConfig):
    """LLaVA-Llama's config (LLaVA's own `LlavaConfig` adds nothing but its model_type) plus `alignment`,
    the AlignmentConfig as a dict (validated on construction)."""

    model_type = MODEL_TYPE

    def __init__(self, alignment: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.alignment = AlignmentConfig.from_dict(alignment or {}).to_dict()
        _register_model_classes()

    @property
    def alignment_config(self) -> AlignmentConfig:
        return AlignmentConfig.from_dict(self.alignment)


class ReleasedAlignGPTConfig(LlamaConfig):
    """The released checkpoints' config type: building it is refused with the conversion command."""

    model_type = RELEASED_MODEL_TYPE

    def __init__(self, **kwargs):
        raise ValueError(convert_hint())


def _register_model_classes() -> None:
    from importlib.util import find_spec

    if find_spec("llava") is not None:
        import aligngpt_plugin.integration.model  # noqa: F401  (registers the model classes with AutoModelForCausalLM)


def register() -> None:
    """Register the config types with AutoConfig (idempotent)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    for config in (AlignGPTConfig, ReleasedAlignGPTConfig):
        if config.model_type not in CONFIG_MAPPING:
            AutoConfig.register(config.model_type, config)
