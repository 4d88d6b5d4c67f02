"""The stack check: refuses what would train wrongly, with a message that says how to fix it."""

from __future__ import annotations

import pytest
from packaging.version import Version

from aligngpt_plugin.integrations.llava import compat


def test_installed_stack_passes():
    compat.check_stack()


@pytest.mark.parametrize("version", ["4.57.6", "5.0.0", "5.5.4", "5.10.4", "5.14.1", "5.17.0", "5.24.0"])
def test_measured_good_releases_pass(monkeypatch, version):
    """The releases the suite (or its transformers-bound part) ran on with patches/ (README, Tested versions)."""
    monkeypatch.setattr(compat, "transformers_version", lambda: Version(version))
    compat.check_stack()


def test_a_refused_release_names_its_reason_and_the_tested_lines(monkeypatch):
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
