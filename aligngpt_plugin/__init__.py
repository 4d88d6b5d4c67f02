"""AlignGPT's alignment levels and patch-aligned projector training as a plugin for LLaVA.

Importing the package registers the AlignGPT config types with transformers' Auto classes, so that
`AutoModelForCausalLM.from_pretrained(checkpoint)` gives the LLaVA-original AlignGPT model back (see
`aligngpt_plugin.integrations.llava.configuration`) and `AutoModelForImageTextToText.from_pretrained(folder)`
the HF-native one (`aligngpt_plugin.integrations.hf`).

Registration happens when transformers is imported, not before: at once if it already is, else right after
the process imports it. So `import aligngpt_plugin.core.alignment` (or the scoring library) loads neither
transformers nor an integration (tests/test_layout.py checks it), while `import aligngpt_plugin` followed by
`from transformers import AutoModelForImageTextToText` finds the AlignGPT types registered.
"""

import importlib.abc
import importlib.util
import sys

_REGISTERING_MODULES = ("aligngpt_plugin.integrations.llava.configuration",
                        "aligngpt_plugin.integrations.hf.configuration_aligngpt")


def _register() -> None:
    import importlib

    for name in _REGISTERING_MODULES:
        loading = sys.modules.get(name)
        if loading is not None and getattr(loading.__spec__, "_initializing", False):
            # this module's own import pulled transformers in: it is half loaded, and registers
            # itself at its end (importing it here would re-enter it)
            continue
        importlib.import_module(name).register()


class _RegisteringLoader(importlib.abc.Loader):
    """transformers' own loader, which registers the AlignGPT types once the package has executed."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _register()

    def __getattr__(self, name):  # get_data, is_package, resource readers: transformers' loader's own
        return getattr(self._loader, name)


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of `transformers` when the process first imports it."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)  # once; and so the lookup below does not come back here
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


if "transformers" in sys.modules:
    _register()
elif importlib.util.find_spec("transformers") is not None:
    sys.meta_path.insert(0, _RegisterOnImport())
