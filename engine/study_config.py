"""``StudyConfig``: one run of the evaluation protocol, and the systems it compares.

The protocol's own settings (the split, the variants, the systems, the goal tasks, the bootstrap) are
fields; each stage's settings are a nested section of that stage's own config, with the study's
defaults: ``prepare`` (PrepareConfig), ``personas`` (VQVAEConfig), ``traces`` (TracesConfig),
``agent`` (AgentTrainConfig) and ``simulate`` (SimulationConfig). In YAML a section is a mapping
(``agent: {stage2_epochs: 6}``), on the command line a dotted flag (``--agent.stage2-epochs 6``);
either overrides only the fields it names. What the study decides itself (paths, the seed, the
merchants of each stage, each system's policy) is left out of the flags and refused in a section.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.simulation_config import SimulationConfig
from learners.agent.train_config import AgentTrainConfig
from learners.data.prepare import PrepareConfig
from learners.data.traces import TracesConfig
from learners.vqvae.config import VQVAEConfig

VARIANTS = ("strict", "same-window")


@dataclass(frozen=True)
class System:
    """One simulated system of the study: which policy, which agent, which code distribution."""

    policy: str
    """Simulation backend: transformers, markov or random."""
    agent: str | None
    """Key of the trained artifact it uses (persona, no-persona, larger, markov) or none."""
    use_persona: bool
    """Whether the policy sees each buyer's persona code."""
    codes: str
    """Where the codes come from: own (the merchant's), other (another held-out merchant's), uniform."""


SYSTEMS: dict[str, System] = {
    "persona": System("transformers", "persona", True, "own"),
    "mismatched-merchant": System("transformers", "persona", True, "other"),
    "mismatched-uniform": System("transformers", "persona", True, "uniform"),
    "no-persona": System("transformers", "no-persona", False, "own"),
    "larger-no-persona": System("transformers", "larger", False, "own"),
    "markov": System("markov", "markov", True, "own"),
    "markov-mismatched-merchant": System("markov", "markov", True, "other"),
    "random": System("random", None, False, "own"),
}

SECTIONS = ("prepare", "personas", "traces", "agent", "simulate")
"""The nested sections: each stage's own config."""
SET_BY_STUDY: dict[str, tuple[str, ...]] = {
    "personas": ("seed",),
    "traces": ("merchants",),
    "agent": ("seed", "no_persona"),
    "simulate": (
        "out",
        "data",
        "distributions",
        "merchants",
        "seed",
        "replicates",
        "goal_tasks",
        "use_persona",
        "policy",
        "policy_path",
        "resume",
    ),
}
"""Section fields the study sets itself (from ``seed``, the split and each system): no flags."""
SET_BY_STUDY_FLAGS = tuple(f"{section}.{name}" for section, names in SET_BY_STUDY.items() for name in names)

RUN_ONLY_FIELDS = (
    "out",
    "personas.workers",
    "personas.cpus_per_worker",
    "agent.workers",
    "agent.cpus_per_worker",
    "agents_side_by_side",
    "simulate.runners",
    "simulate.envs_per_runner",
    "simulate.policy_placement",
)
"""Settings that change how fast a study runs, not what it finds: a study may continue with others."""
PREPARE_FIELDS = ("data", "inputs", "format", "mapping")
"""Settings of the prepared data (with the ``prepare`` section), the one output before the split."""


def _simulate_defaults() -> SimulationConfig:
    return SimulationConfig(
        buyers_per_merchant=1000,
        buyers_per_real_session=5.0,
        max_steps=30,
        temperature=1.0,
        envs_per_runner=128,
        progress=False,
    )


AGENT_CODES = ("all-visits", "other-visits")
"""What ``StudyConfig.agent_codes`` may be."""


@dataclass
class StudyConfig:
    """One run of the evaluation protocol (``simpersona study CONFIG``)."""

    out: str = "study"
    """Study directory: every stage's output, the reports, metrics.json and summary.md."""
    data: str | None = None
    """Prepared directory of the real logs; none prepares `inputs` into OUT/data."""
    inputs: list[str] = field(default_factory=list)
    """Raw log files or directories, prepared when `data` is not set."""
    format: str | None = None
    """Source format of `inputs` (tmall-ijcai15, tmall-brand, rees46, taobao)."""
    mapping: str | None = None
    """YAML mapping of `inputs` (instead of `format`)."""
    heldout: int = 42
    """Held-out merchants, drawn among the eligible ones (`min_sessions`, `min_buyers`)."""
    min_sessions: int = 50
    """Held-out merchants, and training merchants replayed into traces, have at least this many real
    sessions: a merchant's real rates are only as precise as its sessions allow."""
    min_buyers: int = 1
    """... and at least this many buyers."""
    min_training_merchants: int = 4
    """A split that leaves fewer training merchants (not held out) is refused."""
    seed: int = 0
    """Seed of the split, the fits, the training, the simulations and the bootstrap."""
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    """Protocol variants to evaluate: strict (earlier-window codes, later-window rates), same-window."""
    window_quantile: float = 0.5
    """Strict variant: the cutoff is this quantile of the held-out merchants' event times (day precision)."""
    larger_model: str = "tiny-8x"
    """Base model of the larger no-persona baseline (the 8x twin of agent.base_model: tiny-8x, small-8x,
    base-8x); trained with the agent section's other settings."""
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS))
    """Systems to simulate and compare (keys of engine.study_config.SYSTEMS); the first is the main one."""
    bootstrap: int = 1000
    """Bootstrap replicates of the intervals, the ceiling and the floor."""
    agents_side_by_side: bool = True
    """Train the agents (persona, no-persona, larger) at once, each in a process of its own (the stage
    `simpersona train-agent` runs) with an equal share of this machine's CPUs, its lines printed when
    it ends (engine/side_by_side.py); false: one after another in this process, each with all of them."""
    goal_systems: list[str] = field(
        default_factory=lambda: ["persona", "no-persona", "larger-no-persona", "markov"]
    )
    """Systems given goal tasks (buy a target product within 20 steps)."""
    goal_merchants: int = 10
    """Held-out merchants (the first ones, sorted) whose catalogues give the goal tasks; with
    `simulate.goal_draw` off-home, the first ones with a product the home page does not feature."""
    goal_buyers_per_merchant: int = 10
    """Goal tasks per merchant and seed."""
    goal_seeds: int = 3
    """Seeds of the goal tasks; success is reported with a confidence interval over them."""
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    """How `inputs` are prepared (simpersona prepare's settings)."""
    personas: VQVAEConfig = field(default_factory=lambda: VQVAEConfig(epochs=10))
    """The VQ-VAE fitted on the training merchants (simpersona fit-personas' settings): codes is the
    codebook size K, epochs its training epochs, workers its Ray Train workers."""
    agent_codes: str = "all-visits"
    """The codes the persona agent and the Markov chain train with: all-visits (each buyer's code from
    all of its visits, as the held-out buyers are coded) or other-visits (each visit's code from the
    buyer's other visits, learners/vqvae/other_visits.py): a code then predicts a visit instead of
    describing it, as a what-if experiment asks, but is read from fewer visits (README, What-if
    experiments, measures the trade)."""
    traces: TracesConfig = field(default_factory=TracesConfig)
    """The training merchants' sessions replayed into traces (simpersona traces' settings): max_sessions
    caps them per merchant (default: every session; size the agents with agent.max_tokens instead)."""
    agent: AgentTrainConfig = field(
        default_factory=lambda: AgentTrainConfig(validation_share=0.1, log_every=1000)
    )
    """Every agent's fine-tuning (simpersona train-agent's settings): base_model of the persona and
    no-persona agents, stage1_epochs / stage2_epochs (caps with validation), validation_share of the
    replayed training merchants (never the held-out ones) as each agent's validation set, patience,
    max_tokens per epoch (a seeded, merchant-stratified sample of whole sessions), batch_size, use_gpu."""
    simulate: SimulationConfig = field(default_factory=_simulate_defaults)
    """Every simulation (simpersona simulate's settings): buyers_per_merchant simulated visits per
    held-out merchant and system at least, and buyers_per_real_session per real session (0: fixed at
    buyers_per_merchant); max_steps of a visit (goal tasks: 20); temperature of the LLM agents; runners,
    envs_per_runner and policy_placement ("runner" suits a CPU-only box)."""

    def __post_init__(self) -> None:
        if self.agent_codes not in AGENT_CODES:
            raise ValueError(
                f"study config: agent_codes {self.agent_codes!r}; choose from {list(AGENT_CODES)}"
            )
        unknown = [s for s in [*self.systems, *self.goal_systems] if s not in SYSTEMS]
        if unknown:
            raise ValueError(f"study config: unknown system(s) {unknown}; choose from {list(SYSTEMS)}")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise ValueError(f"study config: variants must be a non-empty subset of {VARIANTS}, got {bad}")
        defaults = StudyConfig.__dataclass_fields__
        for section, names in SET_BY_STUDY.items():
            given, default = getattr(self, section), defaults[section].default_factory()  # type: ignore[misc]
            changed = [n for n in names if getattr(given, n) != getattr(default, n)]
            if changed:
                raise ValueError(
                    f"study config: {', '.join(f'{section}.{n}' for n in changed)} are set by the study"
                    " (from its seed, split and systems); leave them out"
                )
