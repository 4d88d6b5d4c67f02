"""The AlignGPT configs and their registration with transformers' Auto classes (imports transformers only).

`import aligngpt_plugin` calls `register()`, so that after it

    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained("checkpoints/aligngpt-7b")   # an AlignGPTLlamaForCausalLM

works for this plugin's checkpoints, on every backbone it supports (Llama: `aligngpt_llava`, Mistral:
`aligngpt_mistral`). The model classes need `llava`; they are imported the first time
an AlignGPT config is built (which is what `from_pretrained` does before it looks the class up), so
importing the package stays light and works where llava is not installed (scoring, evaluation reports).

The released checkpoints (`model_type: "aligngpt"`, docs/method.md#released-checkpoints) have another layout; their
config type is registered too, so that loading one directly says how to convert it instead of
transformers' "unrecognized model type".
"""

from __future__ import annotations

from transformers import AutoConfig, LlamaConfig, MistralConfig, PretrainedConfig

from aligngpt_plugin.core.alignment import AlignmentConfig

MODEL_TYPE = "aligngpt_llava"  # the Llama backbone (named before there were others)
MISTRAL_MODEL_TYPE = "aligngpt_mistral"
RELEASED_MODEL_TYPE = "aligngpt"
RELEASED_ARCHITECTURE = "AlignGPTForCausalLM"


def convert_hint(path: str = "CHECKPOINT") -> str:
    """The message that says a released AlignGPT checkpoint must be converted before it loads.

    Args:
        path: the checkpoint, as the message names it.
    Returns:
        The sentence, with the `aligngpt-convert to-plugin` command to run.
    """
    return (f"{path} is a released AlignGPT checkpoint (model_type '{RELEASED_MODEL_TYPE}'), whose weights sit "
            f"where this plugin's model does not look for them; convert it once with "
            f"`aligngpt-convert to-plugin {path} OUT_DIR` and load OUT_DIR")


class _AlignmentSettings:
    """What every AlignGPT config adds to its backbone's: `alignment`, the AlignmentConfig as a dict (the form
    config.json holds), validated on construction.

    `alignment_config` is the AlignmentConfig itself: the one given to the constructor, or built once from
    the dict, and built again only when `alignment` was replaced or edited since. It is kept in a slot, not
    in the instance's __dict__, because transformers writes every __dict__ entry into config.json.
    """

    __slots__ = ("_alignment_cache",)  # (the dict it was built from, the AlignmentConfig)

    def __init__(self, alignment: dict | AlignmentConfig | None = None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(alignment, AlignmentConfig):
            alignment = AlignmentConfig.from_dict(dict(alignment or {}))
        self.set_alignment(alignment)
        _register_model_classes()

    def set_alignment(self, alignment: AlignmentConfig) -> None:
        """Set the alignment settings (the dict config.json holds follows)."""
        self.alignment = alignment.to_dict()
        self._alignment_cache = (dict(self.alignment), alignment)

    @property
    def alignment_config(self) -> AlignmentConfig:
        cached = getattr(self, "_alignment_cache", None)
        if cached is None or cached[0] != self.alignment:  # loaded without __init__, or `alignment` changed
            self._alignment_cache = cached = (dict(self.alignment), AlignmentConfig.from_dict(self.alignment))
        return cached[1]


class AlignGPTConfig(_AlignmentSettings, LlamaConfig):
    """AlignGPT on LLaVA's Llama (the paper's: Vicuna-v1.5). LLaVA's own `LlavaConfig` adds nothing to
    LlamaConfig but its model_type."""

    model_type = MODEL_TYPE
    # In the class body, not only inherited: transformers 5 makes every config subclass a dataclass and
    # replaces an inherited __init__ with the generated one (then `alignment` is neither defaulted nor
    # validated, and the model classes are never registered).
    __init__ = _AlignmentSettings.__init__


class AlignGPTMistralConfig(_AlignmentSettings, MistralConfig):
    """AlignGPT on LLaVA's Mistral (`LlavaMistralForCausalLM`)."""

    model_type = MISTRAL_MODEL_TYPE
    __init__ = _AlignmentSettings.__init__


ALIGNGPT_CONFIGS = (AlignGPTConfig, AlignGPTMistralConfig)
MODEL_TYPES = tuple(c.model_type for c in ALIGNGPT_CONFIGS)
# the backbone checkpoints AlignGPT starts from (a plain LLM, or a LLaVA model of that backbone)
CONFIG_FOR_BACKBONE = {"llama": AlignGPTConfig, "llava_llama": AlignGPTConfig,
                       "mistral": AlignGPTMistralConfig, "llava_mistral": AlignGPTMistralConfig}


def config_for_base(base: PretrainedConfig, alignment: AlignmentConfig, source: str):
    """The AlignGPT config for training from the checkpoint whose config is `base`: an LLM or LLaVA model
    of a supported backbone, or an AlignGPT checkpoint (then with the same number of levels).

    Args:
        base: the checkpoint's config (Llama, Mistral, LLaVA of either, or AlignGPT).
        alignment: the alignment settings of the run.
        source: the checkpoint's path, for error messages.
    Returns:
        An `AlignGPTConfig` or `AlignGPTMistralConfig` carrying `alignment` (`base` itself when it is AlignGPT's).
    Raises:
        ValueError: another backbone, or an AlignGPT checkpoint with another number of levels.
    """
    if base.model_type in MODEL_TYPES:
        if base.alignment_config.num_levels != alignment.num_levels:
            raise ValueError(f"{source} has {base.alignment_config.num_levels} alignment levels, "
                             f"--align_levels asks for {alignment.num_levels}")
        base.set_alignment(alignment)
        return base
    if base.model_type not in CONFIG_FOR_BACKBONE:
        raise ValueError(
            f"{source} is a {base.model_type!r} model; AlignGPT runs on LLaVA's Llama and Mistral backbones "
            f"(model types {', '.join(sorted(CONFIG_FOR_BACKBONE))}). LLaVA's MPT is not supported: its "
            "model keeps the LLM under `transformer` with ALiBi attention and its own forward")
    values = base.to_dict()
    values.pop("model_type", None)
    return CONFIG_FOR_BACKBONE[base.model_type](alignment=alignment, **values)


class ReleasedAlignGPTConfig(LlamaConfig):
    """The released checkpoints' config type: building it is refused with the conversion command."""

    model_type = RELEASED_MODEL_TYPE

    def __init__(self, **kwargs):
        raise ValueError(convert_hint())


def _register_model_classes() -> None:
    from importlib.util import find_spec

    if find_spec("llava") is not None:
        import aligngpt_plugin.integrations.llava.model  # noqa: F401  (registers the model classes with AutoModelForCausalLM)


def register() -> None:
    """Register the config types with AutoConfig (idempotent)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    for config in (*ALIGNGPT_CONFIGS, ReleasedAlignGPTConfig):
        if config.model_type not in CONFIG_MAPPING:
            AutoConfig.register(config.model_type, config)


register()  # idempotent; see aligngpt_plugin/__init__.py for when it runs
