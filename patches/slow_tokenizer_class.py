"""`AutoTokenizer.from_pretrained(path, use_fast=False)` no longer gives the class tokenizer_config.json names.

Breaks (transformers 5.x): for a checkpoint whose `config.json` has `model_type: "mistral"` (LLaVA's Mistral
backbone; also ministral/mistral3), 5.x maps the model type to `TokenizersBackend` (or `MistralCommonBackend`
when mistral-common is installed) and ignores `"tokenizer_class": "LlamaTokenizer"` in tokenizer_config.json;
`use_fast=False` is ignored too. The generic backend has no `legacy`, so LLaVA's `preprocess_v1`
(llava/train/train.py:477, `not tokenizer.legacy`) raises AttributeError "TokenizersBackend has no attribute
legacy" (5.0-5.24), and where the checkpoint ships only `tokenizer.model` the backend converted from it on
5.17 tokenizes differently (no "▁" prefix: "A" -> 29909 instead of 319), so `model_vqa_loader`'s prompts and
the training targets change silently. 4.x: `use_fast=False` loads the slow class named in
tokenizer_config.json (LlamaTokenizer). Fix: on 5.x, when `use_fast=False` is asked for and
tokenizer_config.json names a tokenizer class that transformers has, a tokenizer of another class is
loaded again with the named class (LLaVA's train(), `load_pretrained_model` and the plugin's loaders all
pass `use_fast=False`). Nothing changes on 4.x.
"""

from __future__ import annotations

import functools

from . import record, recorded

NAME = "slow_tokenizer_class"


def needed() -> bool:
    import transformers
    from packaging.version import Version

    return Version(transformers.__version__).major >= 5


def is_applied() -> bool:
    from transformers import AutoTokenizer

    return recorded(AutoTokenizer, NAME)


def named_class(path, **kwargs):
    """The tokenizer class tokenizer_config.json names, when transformers has it (else None)."""
    import transformers
    from transformers.models.auto.tokenization_auto import get_tokenizer_config

    hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if k in kwargs}
    try:
        name = get_tokenizer_config(path, **hub).get("tokenizer_class")
    except (OSError, ValueError):
        return None
    if not name:
        return None
    return getattr(transformers, name, None) or getattr(transformers, name.removesuffix("Fast"), None)


def apply() -> bool:
    if is_applied() or not needed():
        return False
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained.__func__

    @functools.wraps(original)
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        tokenizer = original(cls, pretrained_model_name_or_path, *args, **kwargs)
        if kwargs.get("use_fast", True) is False:
            wanted = named_class(pretrained_model_name_or_path, **kwargs)
            if isinstance(wanted, type) and not isinstance(tokenizer, wanted):
                kwargs.pop("use_fast")
                tokenizer = wanted.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        return tokenizer

    AutoTokenizer.from_pretrained = classmethod(from_pretrained)
    record(AutoTokenizer, NAME)
    return True
