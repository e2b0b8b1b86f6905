"""Typed dataclass configs: docstrings become help, YAML < flags, typos fail loudly."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from learners.config import add_config_args, build_config, config_to_dict, field_docs


@dataclass
class ToyConfig:
    codes: int = 32
    """Number of buyer types K."""
    decay: float = 0.99
    """EMA decay of the codebook."""
    use_gpu: bool = False
    """Train on GPU workers."""
    merchants: list[str] = field(default_factory=list)
    """Merchants to keep (comma-separated on the command line)."""
    out: Path | None = None
    """Where to write."""


def parse(argv, config_path=None):
    parser = argparse.ArgumentParser()
    add_config_args(parser, ToyConfig)
    return build_config(ToyConfig, parser.parse_args(argv), config_path)


def test_field_docstrings_become_help():
    assert field_docs(ToyConfig)["codes"] == "Number of buyer types K."
    parser = argparse.ArgumentParser()
    add_config_args(parser, ToyConfig)
    assert "EMA decay of the codebook. (default: 0.99)" in " ".join(parser.format_help().split())


def test_defaults_then_yaml_then_flags(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("codes: 64\ndecay: 0.9\nmerchants: [a, b]\n")
    cfg = parse(["--decay", "0.5", "--use-gpu", "true"], cfg_file)
    assert (cfg.codes, cfg.decay, cfg.use_gpu, cfg.merchants) == (64, 0.5, True, ["a", "b"])
    assert parse(["--merchants", "x,y", "--out", "o"]).merchants == ["x", "y"]
    assert config_to_dict(parse(["--out", "o"]))["out"] == "o"


def test_unknown_yaml_field_is_named(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("codez: 3\n")
    with pytest.raises(ValueError, match=r"codez.*known"):
        parse([], cfg_file)


def test_bad_values_are_explained():
    with pytest.raises(ValueError, match="'codes'.*int"):
        parse(["--codes", "many"])
    with pytest.raises(ValueError, match="true/false"):
        parse(["--use-gpu", "maybe"])
