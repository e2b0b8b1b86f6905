"""The pipeline stages' configs: what each stage reads, writes and how, as one typed dataclass.

A stage's config holds its inputs, its output and its settings; the settings of the library that
does the work are an inline section (``PrepareConfig``, ``VQVAEConfig``, ``TracesConfig``,
``AgentTrainConfig``), so their fields are the command's flags as they always were. Simulation's
config is ``SimulationConfig`` itself. ``command_line`` renders any of them as the ``simpersona``
command that runs the same stage by hand (``learners.config.config_flags``: its non-default fields).

Light to import (no torch, no Ray): the commands build their flags from these classes.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from engine.evaluate import UNITS
from engine.simulation_config import SimulationConfig
from learners.agent.train_config import AgentTrainConfig
from learners.config import config_flags, option
from learners.data.prepare import PrepareConfig
from learners.data.traces import TracesConfig
from learners.vqvae.config import VQVAEConfig


@dataclass
class PrepareStage:
    """`simpersona prepare`: raw logs -> a prepared directory (events, sessions, buyers, catalogs)."""

    inputs: list[str] = field(metadata=option(positional=True))
    """Input files or directories of them."""
    format: str | None = None
    """A built-in source format, e.g. tmall-ijcai15, rees46."""
    mapping: str | None = None
    """A YAML mapping describing the source's columns (instead of a format)."""
    out: str | None = None
    """Output directory (required unless --check)."""
    progress: bool = field(default=True, metadata=option(flag="--no-progress", switch=True))
    """Show progress bars on the console (--no-progress: none)."""
    prepare: PrepareConfig = field(default_factory=PrepareConfig, metadata=option(inline=True))
    """How the events are turned into the prepared tables."""


@dataclass
class FitPersonasStage:
    """`simpersona fit-personas`: the buyer-type codebook (VQ-VAE on Ray Train), its assignment and report."""

    data: str = field(metadata=option(positional=True))
    """Prepared directory (simpersona prepare --out DATA)."""
    out: str
    """Run directory."""
    resume: bool = field(default=False, metadata=option(switch=True))
    """Continue the run in --out from its last checkpoint."""
    truth: str | None = None
    """Planted types (truth.parquet of `simpersona synth`) for NMI."""
    report: bool = field(default=True, metadata=option(flag="--no-report", switch=True))
    """Assign the buyers and write the report after the fit (--no-report: skip both)."""
    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig, metadata=option(inline=True))
    """The VQ-VAE and its fit."""


@dataclass
class AssignStage:
    """`simpersona assign`: every buyer's type under a fitted run, and each merchant's mix of types."""

    run: str = field(metadata=option(positional=True))
    """Run directory of `simpersona fit-personas`."""
    data: str = field(metadata=option(positional=True))
    """Prepared directory (simpersona prepare)."""
    out: str
    """Output directory for the codes."""
    ray: bool = field(default=False, metadata=option(switch=True))
    """Stream the buyers through Ray Data map_batches."""
    concurrency: int = 2
    """Ray Data actors holding the model (--ray)."""
    other_visits: bool = field(default=False, metadata=option(switch=True))
    """Give each visit the code of the buyer's other visits (learners/vqvae/other_visits.py): codes
    to train an agent on that do not know the visit's outcome, for what-if experiments (in-process)."""


@dataclass
class ReplayTracesStage:
    """`simpersona traces`: real sessions replayed through the storefront into training traces."""

    data: str = field(metadata=option(positional=True))
    """A prepared directory (simpersona prepare --out)."""
    out: str
    """Output directory."""
    traces: TracesConfig = field(default_factory=TracesConfig, metadata=option(inline=True))
    """Which sessions are replayed."""


@dataclass
class TrainAgentStage:
    """`simpersona train-agent`: the persona agent's two-stage fine-tuning (Ray Train)."""

    data: str = field(metadata=option(positional=True))
    """Traces file/directory or prepared directory."""
    out: str
    """Output directory (AGENT)."""
    personas: str | None = None
    """Codes directory or VQ-VAE run (not needed with --no-persona); codes of `assign --other-visits`
    give each visit the code of the buyer's other visits."""
    resume: bool = field(default=False, metadata=option(switch=True))
    """Continue the run in AGENT after its last checkpoint."""
    agent: AgentTrainConfig = field(default_factory=AgentTrainConfig, metadata=option(inline=True))
    """How the agent is fine-tuned."""


@dataclass
class FitMarkovStage:
    """`simpersona fit-markov`: the per-type Markov chain baseline, fitted on the agents' examples."""

    traces: str = field(metadata=option(positional=True))
    """Traces file/directory or prepared directory."""
    out: str
    """The chain's JSON file."""
    personas: str | None = None
    """Codes directory or VQ-VAE run: the chain is per persona type."""
    agent: str | None = None
    """A persona agent directory: when it holds its training examples (AGENT/data/train.parquet: without
    its validation merchants, within its token budget) the chain is fitted on exactly those."""
    seed: int = 0
    """Seed of the hindsight-goal sampling when the examples are built from the traces."""
    goal_share: float = AgentTrainConfig.goal_share
    """Share of purchasing sessions added once more with the hindsight goal (as the agents' examples)."""


@dataclass
class EvaluateStage:
    """`simpersona evaluate`: simulated buyers against real ones, with intervals, ceiling and floor."""

    real: str
    """Prepared directory of the real buyers."""
    sim: list[str] = field(metadata=option(repeat=True))
    """Rollouts directory, as [NAME=]DIR (repeatable; the first is the main system)."""
    out: str
    """Report directory to write."""
    merchants: list[str] = field(default_factory=list)
    """Merchants to compare (comma-separated; default: every real merchant)."""
    unit: str = "session"
    """A real buyer is one visit (session, like one simulated episode) or a whole history (buyer)."""
    since: str | None = None
    """Only real sessions starting at or after this ISO time (the strict variant's later window)."""
    floor_data: str | None = None
    """Prepared directory whose pooled sessions give the floor (e.g. the training merchants); default:
    the other evaluated merchants."""
    compare: list[str] | None = None
    """Systems whose paired difference with the main one is reported (default: every other one)."""
    goals: list[str] = field(default_factory=list, metadata=option(repeat=True))
    """Goal-task rollouts, as NAME=DIR (repeatable): NAME's goal success is measured on them."""
    notes: str | None = None
    """The report's opening line (default: the real data, its merchants and the unit)."""
    replicates: int = 1000
    """Bootstrap replicates."""
    seed: int = 0
    """Seed of the bootstrap."""

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"evaluate: unit must be one of {UNITS}, got {self.unit!r}")


COMMANDS: dict[type, str] = {
    PrepareStage: "prepare",
    FitPersonasStage: "fit-personas",
    AssignStage: "assign",
    ReplayTracesStage: "traces",
    TrainAgentStage: "train-agent",
    FitMarkovStage: "fit-markov",
    SimulationConfig: "simulate",
    EvaluateStage: "evaluate",
}
"""The ``simpersona`` command of each stage config."""


def command_line(config: object) -> str:
    """The ``simpersona`` command that runs this stage config by hand: its non-default fields as flags."""
    return shlex.join(["simpersona", COMMANDS[type(config)], *config_flags(config)])
