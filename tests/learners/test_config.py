"""Typed dataclass configs: docstrings become help, YAML < flags, typos fail loudly."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from learners.config import (
    add_config_args,
    build_config,
    config_flags,
    config_from_dict,
    config_to_dict,
    field_docs,
    option,
)


@dataclass
class ToyConfig:
    codes: int = 32
    """Number of buyer types K."""
    decay: float = 0.99
    """EMA decay of the codebook (1% of the new assignments per step)."""
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
    # A % in a docstring is text, not an argparse format.
    assert "EMA decay of the codebook (1% of the new assignments per step). (default: 0.99)" in " ".join(
        parser.format_help().split()
    )


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


@dataclass
class Inner:
    epochs: int = 2
    """Training epochs."""
    use_gpu: bool = field(default=False, metadata=option(switch=True))
    """One GPU per worker."""


@dataclass
class Outer:
    data: str = field(metadata=option(positional=True))
    """Input directory."""
    sim: list[str] = field(default_factory=list, metadata=option(repeat=True))
    """Runs, repeatable."""
    quiet: bool = field(default=False, metadata=option(flag="--no-log", switch=True))
    """No log."""
    limit: int | None = 5
    """A cap; none lifts it."""
    train: Inner = field(default_factory=lambda: Inner(epochs=3))
    """The training section."""
    fit: Inner = field(default_factory=Inner, metadata=option(inline=True))
    """Settings read at this level."""


def outer(argv, config_path=None):
    parser = argparse.ArgumentParser()
    add_config_args(parser, Outer)
    return build_config(Outer, parser.parse_args(argv), config_path), parser


def test_a_nested_section_is_a_yaml_mapping_and_dotted_flags(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  use_gpu: true\nepochs: 7\n")
    cfg, parser = outer(
        ["d", "--train.epochs", "9", "--sim", "a=x", "--sim", "y", "--limit", "none"], cfg_file
    )
    assert cfg == Outer("d", ["a=x", "y"], False, None, Inner(9, True), Inner(7, False))
    # Help from the field docstrings; a section's defaults are its parent's.
    text = " ".join(parser.format_help().split())
    assert (
        "--train.epochs TRAIN.EPOCHS" not in text
        and "--train.epochs EPOCHS Training epochs. (default: 3)" in text
    )
    assert outer(["d"])[0].train == Inner(3)  # the field's default, not Inner()'s


def test_config_flags_render_non_default_fields_that_rebuild_the_config():
    cfg = Outer("my dir", ["a=x"], True, None, Inner(4, True), Inner(2, True))
    flags = config_flags(cfg)
    assert flags == [
        "my dir",
        "--sim",
        "a=x",
        "--no-log",
        "--limit",
        "none",
        "--train.epochs",
        "4",
        "--train.use-gpu",
        "--use-gpu",
    ]
    assert outer(flags)[0] == cfg
    assert config_flags(Outer("d")) == ["d"]


def test_unknown_section_field_is_named_with_its_section(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ValueError, match=r"train\.epoch"):
        outer(["d"], cfg_file)
    cfg_file.write_text("train: 3\n")
    with pytest.raises(ValueError, match="train must be a mapping"):
        outer(["d"], cfg_file)
    assert config_from_dict(Outer, {"data": "d", "train": {"epochs": 1}}).train == Inner(1)
