"""Malformed configs: each gets one line naming the file, the line where there is one, and the field."""

from __future__ import annotations

import pytest

EXAMPLES = "examples"


def test_config_is_a_directory(cli_error, tmp_path):
    assert cli_error("sft", tmp_path) == f"{tmp_path}: is a directory, not a config file (give a .yaml file)"
