"""AlignGPT's alignment levels and patch-aligned projector training as a plugin for LLaVA.

Importing the package registers the AlignGPT config types with transformers' Auto classes, so that
`AutoModelForCausalLM.from_pretrained(checkpoint)` gives the LLaVA-original AlignGPT model back (see
`aligngpt_plugin.integrations.llava.configuration`) and `AutoModelForImageTextToText.from_pretrained(folder)`
the HF-native one (`aligngpt_plugin.integrations.hf`); nothing else is imported until it is used.
"""

from importlib.util import find_spec

if find_spec("transformers") is not None:
    from aligngpt_plugin.integrations.hf.configuration_aligngpt import register as _register_hf
    from aligngpt_plugin.integrations.llava.configuration import register as _register

    _register()
    _register_hf()
