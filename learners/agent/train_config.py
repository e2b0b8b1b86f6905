"""``AgentTrainConfig``: how the persona agent is fine-tuned (train.py) and what its workers run (train_loop.py).

Its own module, light to import (no torch): commands and the study read it to build their flags, and
Ray Train hands it to every worker as it is (a dataclass pickles).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from learners.config import option

SCHEDULES = ("linear", "constant")
"""Learning-rate schedules after warm-up (``AgentTrainConfig.schedule``)."""


@dataclass
class AgentTrainConfig:
    """How to fine-tune the persona agent."""

    base_model: str = "tiny"
    """Base model: a preset built locally (``tiny``, ``small``, ``base`` and their 8x twins ``tiny-8x``,
    ``small-8x``, ``base-8x``; learners/agent/base_models.py), a Hugging Face hub id, or a local directory."""
    split_digits: bool = False
    """A preset's tokenizer splits every number into single digits (as Llama's and Qwen's do), so prices
    line up digit by digit; otherwise BPE merges digit runs as the logs make them frequent. Ignored
    for hub and local models, which bring their own tokenizer."""
    no_persona: bool = field(default=False, metadata=option(switch=True))
    """Train the same policy without persona tokens (the no-persona baseline); skips stage 1."""
    lora: bool = field(default=False, metadata=option(switch=True))
    """Stage 2 trains LoRA adapters (plus the persona rows) instead of all weights."""
    lora_rank: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scaling numerator (scale = alpha / rank)."""
    stage1_epochs: int = 1
    """Epochs of stage 1 (persona-token rows only); with validation examples, the most it may run."""
    stage2_epochs: int = 2
    """Epochs of stage 2 (the policy); with validation examples, the most it may run."""
    validation_share: float = 0.0
    """Share of the training examples held out of training as validation, by whole merchants (at most
    this share, at least one merchant when > 0; selection.validation_merchants): its loss (item ids left out, train_loop.py) is measured after every epoch of both
    stages, a stage stops early after `patience` epochs without improvement, and its best epoch is
    kept. 0: no validation, every epoch runs and the last is kept."""
    calibration_rows: int = 6000
    """After training, one score bias per action kind is fitted on up to this many goal-free rows of
    the validation merchants (all of them, before any token budget's cut), stores the agent never
    trained on, so its action rates carry to new stores (learners/agent/calibration.py). 0, or no
    validation: not calibrated."""
    calibration_visits: int = 0
    """With > 0, the biases are then refined on visits the agent walks itself: up to this many
    simulated visits of the replayed merchants (one per real session, its buyer's code) in each of the
    last two rounds (the earlier ones play a half, a quarter, ... of them: `round_sizes`),
    each kind's bias moved by the log ratio of its real to its simulated share of visits taking it
    (uses per visit for product views; engine/rollout_calibration.py, run by `simpersona train-agent`
    and the study; 4 rounds of 600 visits each took under 40 s for the Tmall CPU recipe's persona
    agent on a 2-core box in session 13). Off by default: measured on three study agents
    (benchmarks/RESULTS.md, session 13) it brought the Tmall agent's favourites to the real share of
    visits, changed nothing on one brand-log agent and cost another ARA, because the replayed stores
    cannot show how an agent drifts on a store it never saw. Walked under unseen ids
    (`calibration_unseen_ids`) they show part of it: the demo's and Tmall's agents gained ARA;
    session 28's brand-log agent gained CRA (0.640 -> 0.696, three draws) and lost a little ARA
    (0.730 -> 0.716)."""
    calibration_rounds: int = 4
    """Rounds of that refinement (each simulates the visits again with the biases so far)."""
    calibration_per_code: bool = True
    """In that refinement, each persona code's kinds also get biases of their own, moved by that
    code's real rates against its simulated ones (pulled toward all buyers' rates where a code has few
    sessions): the agent's types then act at their own rates, as the per-type Markov chain's do
    (engine/rollout_calibration.py; benchmarks/RESULTS.md, session 26)."""
    calibration_unseen_ids: bool = True
    """In that refinement, the visits are walked on a copy of the replayed stores whose shop and
    product ids the agent never read in training, as a held-out store's (engine/unseen_stores.py): the
    biases then fit how the agent acts on a store it does not know, not on one it learned by heart.
    Measured on the demo's four seeds (benchmarks/RESULTS.md, session 28)."""
    price_rows: int = 50000
    """After calibration, each persona code's answer to a price that the model misses (a markdown, a
    price below its category's typical one) is measured within buyers on up to this many goal-free
    product pages of the training and validation merchants (whole buyers, before any `max_tokens`
    cut) and served as per-code score biases on each price cell's pages
    (learners/agent/price_response.py). 0: not fitted. A log whose pages are all regular fits
    nothing."""
    price_draws: int = 8
    """Posterior draws of that answer kept beside it: what the logs leave uncertain, which
    `simpersona experiment --fit-draws` carries into an experiment's intervals
    (engine/experiment_fit.py). 0: none."""
    row_choice_rows: int = 50000
    """Then each persona code's choice among a listing's rows (by their place, bestseller badge and
    price) is fitted as a conditional logit on up to this many goal-free listing pages of the training
    and validation merchants whose logged action opened a listed row (whole buyers, before any
    `max_tokens` cut), and serves which row an `open product` opens in place of the model's id scores
    (learners/agent/row_choice.py). 0: not fitted, the model ranks the rows."""
    patience: int = 2
    """Early stopping: stop a stage after this many epochs in a row without a lower validation loss
    (0: run every epoch, still keeping the best)."""
    max_tokens: int | None = None
    """Training tokens per epoch (prompt + target tokens of every training example): when the examples
    hold more, a seeded, merchant-stratified sample of whole sessions that fits is kept (counted in the
    manifest). None: every example."""
    stage1_lr: float = 5e-3
    """Peak learning rate of stage 1 (new rows start far from trained values, so it is high)."""
    stage2_lr: float = 1e-3
    """Peak learning rate of stage 2 (about 2e-5 suits full fine-tuning of pretrained billion-scale models)."""
    weight_decay: float = 0.0
    """AdamW weight decay in stage 2 (stage 1 always uses 0 so frozen rows stay bit-identical)."""
    warmup_steps: int = 10
    """Linear warm-up steps at the start of each stage."""
    schedule: str = "linear"
    """Learning rate after warm-up: ``linear`` decays it to 0 over the stage's most epochs (its last
    epochs' weights move less, so the seed and the epoch early stopping picks matter less; a run resumed
    with a higher epoch cap continues on the new cap's line); ``constant`` keeps the peak."""
    batch_size: int = 16
    """Examples per optimizer step and worker."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip (0 = off)."""
    history_len: int = 5
    """Previous actions shown in the prompt (prompt.py); serving must use the same value."""
    max_observation_tokens: int = 512
    """Observation tokens kept in the prompt; serving must use the same value."""
    goal_share: float = 0.5
    """Share of purchasing sessions added once more with the hindsight goal (the bought product) shown."""
    heldout_merchant_share: float = 0.0
    """Share of merchants held out of training entirely (written to AGENT/eval/ for offline evaluation)."""
    heldout_buyer_share: float = 0.0
    """Share of the remaining merchants' buyers held out of training."""
    workers: int = 1
    """Ray Train workers (0: train in this process without Ray)."""
    cpus_per_worker: int = 0
    """CPUs (torch threads) each Ray Train worker takes; 0: as many as the cluster can give every
    worker (learners/worker_cpus.py)."""
    use_gpu: bool = field(default=False, metadata=option(switch=True))
    """One GPU per worker (bf16 autocast)."""
    max_failures: int = 0
    """Worker failures Ray Train recovers from by restarting at the latest checkpoint."""
    seed: int = 0
    """Seed of the tiny model's weights, token initialisation, goal sampling, splits and shuffles."""
    log_every: int = 20
    """Print a progress line every this many steps."""
    max_examples: int | None = None
    """Train on at most this many examples (the first, in trace order; for quick tries, `max_tokens`
    sizes real runs); None = all."""

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r}: use one of {', '.join(SCHEDULES)}")
        if self.price_draws < 0:
            raise ValueError(f"price_draws {self.price_draws}: use 0 (none) or more")
