"""VQ-VAE settings that cannot give a codebook are refused before anything runs."""

from __future__ import annotations

import pytest

from learners.vqvae.config import VQVAEConfig


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"codes": 1}, "codes must be >= 2"),
        ({"workers": 0}, "workers must be >= 1"),
        ({"encoder": "lstm"}, "encoder must be"),
        # The codebook starts after the warm-up: with no epoch after it, every buyer would share one code.
        (
            {"epochs": 2, "warmup_epochs": 2},
            r"epochs \(2\) must be more than warmup_epochs \(2\).*fix: --epochs 6",
        ),
    ],
)
def test_settings_that_cannot_fit_a_codebook_are_refused(fields: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        VQVAEConfig(**fields)


def test_one_epoch_after_the_warm_up_is_enough_to_start() -> None:
    assert VQVAEConfig(epochs=3, warmup_epochs=2).epochs == 3
