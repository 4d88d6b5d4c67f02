"""Shared fixtures: one set of tiny offline models and data per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    from aligngpt_plugin.devkit.tiny_checkpoints import write_fixtures

    return write_fixtures(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture(scope="session")
def llava_ready():
    """The plugin's checks and patches, applied once (what every entry point does first)."""
    from aligngpt_plugin.integrations.llava.compat import prepare_llava

    return prepare_llava()
