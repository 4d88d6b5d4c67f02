"""The stack check: refuses what would train wrongly, with a message that says how to fix it."""

from __future__ import annotations

import pytest
from packaging.version import Version

from aligngpt_plugin.integration import compat


def test_installed_stack_passes():
    compat.check_stack()


def test_transformers_5_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setattr(compat, "transformers_version", lambda: Version("5.23.0"))
    monkeypatch.delenv(compat.ALLOW_TRANSFORMERS_5, raising=False)
    with pytest.raises(compat.UnsupportedStackError) as err:
        compat.check_stack()
    message = str(err.value)
    assert "5.23.0" in message and "training targets" in message and "transformers>=4.57,<5" in message


def test_transformers_5_runs_when_the_user_insists(monkeypatch):
    monkeypatch.setattr(compat, "transformers_version", lambda: Version("5.23.0"))
    monkeypatch.setenv(compat.ALLOW_TRANSFORMERS_5, "1")
    compat.check_stack()


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
    from aligngpt_plugin.integration import training as train

    monkeypatch.setenv(train.ATTN_ENV, value)
    with pytest.raises(ValueError, match=error):
        train.pick_attention()


def test_attention_defaults_to_sdpa_without_gpu(monkeypatch):
    import torch

    from aligngpt_plugin.integration import training as train

    monkeypatch.delenv(train.ATTN_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train.pick_attention() == "sdpa"
