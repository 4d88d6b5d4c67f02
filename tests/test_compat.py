"""The stack check: refuses what would train wrongly, with a message that says how to fix it."""

from __future__ import annotations

import inspect
import re
import warnings

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from aligngpt_plugin.integrations.llava import compat


def test_installed_stack_passes_without_a_warning():
    """Both venvs of the suite (4.57.6, 5.24.0) are tested releases: no warning, no refusal."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compat.check_stack()


MEASURED = ["4.57.6", "5.0.0", "5.5.4", "5.10.4", "5.14.1", "5.17.0", "5.24.0"]


@pytest.mark.parametrize("version", MEASURED)
def test_measured_good_releases_pass_without_a_warning(monkeypatch, version):
    """The releases the suite (or its transformers-bound part) ran on with patches/ (README.md#tested-versions)."""
    monkeypatch.setattr(compat, "transformers_version", lambda: Version(version))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compat.check_stack()


@pytest.mark.parametrize("version", ["4.37.2", "4.46.3", "4.56.2", "5.25.0", "5.39.1", "5.25.0.dev0"])
def test_untested_releases_warn_naming_the_tested_lines(monkeypatch, version):
    """LLaVA's own pin (4.37.2) up to 4.56, and 5.x newer than the newest measured (5.24): admitted, with a
    warning that says what was tested."""
    monkeypatch.setattr(compat, "transformers_version", lambda: Version(version))
    with pytest.warns(UserWarning) as caught:
        compat.check_stack()
    message = " ".join(str(w.message) for w in caught)
    assert f"transformers {version} is installed, which the plugin has not been tested on" in message
    assert "4.57.x or 5.0-5.24" in message


@pytest.mark.parametrize("version", ["5.40.0", "5.40.0rc1", "5.41.2", "6.0.0"])
def test_releases_without_past_key_values_are_refused_with_the_reason(monkeypatch, version):
    monkeypatch.setattr(compat, "transformers_version", lambda: Version(version))
    with pytest.raises(compat.UnsupportedStackError) as err:
        compat.check_stack()
    message = str(err.value)
    assert f"transformers {version} is installed" in message
    assert "removes the `past_key_values` keyword" in message and "4.57.x or 5.0-5.24" in message


def test_the_refusal_reason_holds_for_the_installed_code():
    """The facts the refusal rests on, read from the installed packages rather than from the plugin: LLaVA's
    model passes `past_key_values` to the Llama forward; where transformers announces the keyword's removal
    (5.x), the release it names is the first one refused and the one before it is not."""
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
    from transformers.models.llama import modeling_llama

    assert "past_key_values=past_key_values" in inspect.getsource(LlavaLlamaForCausalLM.forward)
    announced = set(re.findall(r"deprecate_kwarg\(\s*\"past_key_values\",\s*\"([\d.]+)\"",
                               inspect.getsource(modeling_llama)))
    if compat.transformers_version() < Version("5.24"):
        assert not announced  # 4.57: the keyword is the only one there is
        return
    assert len(announced) == 1, announced
    removal = Version(announced.pop())
    refused = [spec for spec, _ in compat.REFUSED if SpecifierSet(spec).contains(removal, prereleases=True)]
    assert refused and "past_key_values" in dict(compat.REFUSED)[refused[0]]
    before = Version(f"{removal.major}.{removal.minor - 1}.99")
    assert not any(SpecifierSet(spec).contains(before, prereleases=True) for spec, _ in compat.REFUSED)


def test_a_refused_release_names_its_reason_and_the_tested_lines(monkeypatch):
    """A planted entry (a release measured to break) is refused with its own reason."""
    monkeypatch.setattr(compat, "REFUSED", (("==5.99.*", "it drops every image token (seen in a test)."),))
    monkeypatch.setattr(compat, "transformers_version", lambda: Version("5.99.1"))
    with pytest.raises(compat.UnsupportedStackError) as err:
        compat.check_stack()
    message = str(err.value)
    assert "5.99.1" in message and "drops every image token" in message and "4.57" in message


def test_old_transformers_is_refused(monkeypatch):
    monkeypatch.setattr(compat, "transformers_version", lambda: Version("4.36.2"))
    with pytest.raises(compat.UnsupportedStackError, match="4.36.2"):
        compat.check_stack()


def test_missing_llava_names_the_install_command(monkeypatch):
    monkeypatch.setattr(compat, "installed_version", lambda dist: None)
    with pytest.raises(compat.UnsupportedStackError, match="--no-deps llava-torch==1.2.2.post1"):
        compat.check_stack()


def test_other_llava_release_warns(monkeypatch):
    monkeypatch.setattr(compat, "installed_version", lambda dist: "1.1.3")
    monkeypatch.setattr(compat, "transformers_version", lambda: Version("4.57.6"))
    with pytest.warns(UserWarning, match="1.2.2.post1"):
        compat.check_stack()


@pytest.mark.parametrize("value, error", [("flash_attention_2", "flash-attn"), ("paged", "choose one of")])
def test_attention_override_is_checked(monkeypatch, value, error):
    from aligngpt_plugin.integrations.llava import training as train

    monkeypatch.setenv(train.ATTN_ENV, value)
    with pytest.raises(ValueError, match=error):
        train.pick_attention()


def test_attention_defaults_to_sdpa_without_gpu(monkeypatch):
    import torch

    from aligngpt_plugin.integrations.llava import training as train

    monkeypatch.delenv(train.ATTN_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train.pick_attention() == "sdpa"
