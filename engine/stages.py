"""The pipeline's stages: one typed function each, from its config to a small typed result.

    stage            config (engine/stage_configs.py)   result (engine/stage_results.py)   command
    prepare          PrepareStage                        Prepared                           prepare
    fit_personas     FitPersonasStage                    PersonasFitted                     fit-personas
    assign           AssignStage                         Assigned (VisitsAssigned)          assign
    replay_traces    ReplayTracesStage                   TracesReplayed                     traces
    train_agent      TrainAgentStage                     AgentTrained                       train-agent
    fit_markov       FitMarkovStage                      MarkovFitted                       fit-markov
    simulate         SimulationConfig                    Simulated                          simulate
    evaluate         EvaluateStage                       Evaluated                          evaluate

A stage is what its ``simpersona`` command runs (the command parses its flags into the config and
prints the result's lines) and what ``simpersona study`` runs, so the command that
``engine.stage_configs.command_line`` renders from a config re-runs that stage by hand. The work is
done by the library functions each stage calls; a stage adds the reading of its inputs and, where
Ray runs, ``ray_session`` (Ray's own output to OUT/ray.log; ``verbose`` shows it on the console too;
every stage takes it, so all have one signature, though those without Ray have nothing to show).
Heavy imports stay inside the functions, so importing this module (and ``--help``) stays fast.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import nullcontext
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from engine.console_log import quiet_model_loading, ray_session
from engine.simulation_config import SimulationConfig
from engine.stage_configs import (
    AssignStage,
    EvaluateStage,
    FitMarkovStage,
    FitPersonasStage,
    PrepareStage,
    ReplayTracesStage,
    TrainAgentStage,
)
from engine.stage_results import (
    AgentTrained,
    Assigned,
    Evaluated,
    MarkovFitted,
    PersonasFitted,
    Prepared,
    Simulated,
    TracesReplayed,
    VisitsAssigned,
    one_kind_checks,
)


def prepare(config: PrepareStage, verbose: bool = False) -> Prepared:
    """Raw logs -> the prepared directory ``config.out`` (learners/data/prepare.py)."""
    from learners.data.adapters import expand_inputs, get_adapter
    from learners.data.prepare import prepare as prepare_logs

    adapter = get_adapter(config.format, config.mapping)
    inputs = expand_inputs(config.inputs)
    if config.out is None:
        raise ValueError("prepare: --out is missing; fix: pass --out DIR (or --check to only count rows)")
    start = time.perf_counter()
    # With use_ray, Ray Data's own log lines go to OUT/ray.log, like the other stages'.
    with ray_session(config.out, verbose) if config.prepare.use_ray else nullcontext():
        manifest = prepare_logs(inputs, adapter, config.prepare, Path(config.out), progress=config.progress)
    return Prepared(Path(config.out), manifest, time.perf_counter() - start)


def fit_personas(config: FitPersonasStage, verbose: bool = False) -> PersonasFitted:
    """Fit the VQ-VAE on Ray Train (learners/vqvae/fit.py); then, unless stopped early or told not to,
    assign the training buyers and write the type report with its k-means baseline."""
    if config.truth is not None and not Path(config.truth).exists():
        raise FileNotFoundError(
            f"{config.truth} not found (--truth expects truth.parquet of `simpersona synth`)"
        )
    from learners.vqvae.assign import assign as assign_codes
    from learners.vqvae.dataset import load_rows
    from learners.vqvae.fit import check_buyers, fit_codebook
    from learners.vqvae.report import write_report

    vq, data = config.vqvae, Path(config.data)
    rows = load_rows(data, vq.max_seq_len)
    # Before the session opens --out for Ray's log: a refused fit leaves nothing there.
    check_buyers(rows, vq.codes)
    with ray_session(config.out, verbose) as session:
        fit = fit_codebook(
            data, vq, Path(config.out), resume=config.resume, progress=session.progress, rows=rows
        )
    last = fit.history[-1] if fit.history else {}
    fitted = PersonasFitted(
        fit.run_dir,
        fit.epochs_done,
        vq.codes,
        int(last.get("codes_in_use", 0)),
        last.get("perplexity", 0.0),
        stopped=bool(vq.stop_after_epoch) and fit.epochs_done < vq.epochs,
    )
    if fitted.stopped or not config.report:
        return fitted
    assigned = assign_codes(fit.run_dir, data, fit.run_dir)
    truth = Path(config.truth) if config.truth else None
    metrics = write_report(fit.run_dir, data, truth=truth, seed=vq.seed)
    # The summary says what report.html and metrics.json say: the codes of the final assignment, not
    # those the last epoch's training batches hit.
    return replace(
        fitted,
        codes_in_use=int(metrics["codes_in_use"]),
        perplexity=float(metrics["perplexity"]),
        assigned=assigned.buyers_assigned,
        quarantined=assigned.buyers_quarantined,
        metrics=metrics,
    )


def assign(config: AssignStage, verbose: bool = False) -> Assigned | VisitsAssigned:
    """Each buyer's code under a fitted run, one encoder pass (learners/vqvae/assign.py); with
    ``other_visits``, each visit's code from the buyer's other visits (learners/vqvae/other_visits.py)."""
    from learners.vqvae.assign import assign as assign_codes

    if config.other_visits:
        if config.ray:
            raise ValueError("--other-visits runs in-process; leave out --ray")
        from learners.vqvae.other_visits import assign_other_visits

        manifest = assign_other_visits(config.run, config.data, config.out)
        return VisitsAssigned(Path(config.out), **manifest["counts"], seconds=manifest["seconds"])

    # Without ray the buyers are encoded in this process: no Ray, nothing of its to route.
    with ray_session(config.out, verbose) if config.ray else nullcontext():
        r = assign_codes(
            Path(config.run), Path(config.data), Path(config.out), config.ray, config.concurrency
        )
    return Assigned(r.out, r.buyers_read, r.buyers_assigned, r.buyers_quarantined, r.seconds)


def replay_traces(config: ReplayTracesStage, verbose: bool = False) -> TracesReplayed:
    """The prepared sessions replayed through the storefront (learners/data/traces.py)."""
    from learners.data.traces import build_traces

    report = build_traces(Path(config.data), Path(config.out), config.traces)
    return TracesReplayed(Path(config.out), report)


def utc_time(text: str, flag: str) -> datetime:
    """An ISO date or time; without a zone it is UTC, as the prepared timestamps are."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{flag} {text!r} is not an ISO date or time; fix: write e.g. 2015-06-08") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def train_agent(config: TrainAgentStage, verbose: bool = False) -> AgentTrained:
    """Read the traces and persona codes, then fine-tune the agent (learners/agent/train.py)."""
    agent = config.agent
    if not agent.no_persona and config.personas is None and not config.resume:
        raise ValueError("--personas RUN_OR_CODES is required (or --no-persona for the baseline)")
    from learners.agent.sources import load_personas, load_traces
    from learners.agent.train import train_agent as fine_tune

    quiet_model_loading()
    data, out = Path(config.data), Path(config.out)
    with tempfile.TemporaryDirectory(prefix="train-agent-") as work:
        traces, source, personas = None, "resumed", None
        if not config.resume:
            traces, source = load_traces(data, Path(work) / "traces")
            if not agent.no_persona:
                personas = load_personas(config.personas, data, Path(work) / "codes")
        # Ray starts once the inputs have been read (a bad one fails without it); workers 0
        # trains in this process without Ray and prints its progress here directly.
        with ray_session(out, verbose) if agent.workers > 0 else nullcontext() as logs:
            result = fine_tune(
                agent,
                traces,
                personas.codes if personas else None,
                out,
                codebook=personas.codebook if personas else None,
                resume=config.resume,
                source=source,
                progress=logs.progress if logs else None,
            )
        rollouts = _calibrate_rollouts(config, traces, personas.codes if personas else None)
    return AgentTrained(
        result.out_dir,
        result.epochs,
        result.chosen,
        result.examples,
        result.quarantined,
        result.validation_examples,
        rollouts,
    )


def _calibrate_rollouts(config: TrainAgentStage, traces, codes) -> str | None:
    """Refine the trained agent's biases on its own simulated visits (engine/rollout_calibration.py)
    and fit its price response again on the agent so refined; its console lines (or why it was
    skipped), or None when it is off."""
    agent = config.agent
    if agent.calibration_visits <= 0 or agent.calibration_rounds <= 0:
        return None
    from engine.rollout_calibration import calibrate_rollouts, prepared_of
    from learners.agent.llm_policy import LLMPolicy
    from learners.agent.sources import load_personas, load_traces
    from learners.agent.train import fit_page_responses

    out = Path(config.out)
    try:
        prepared = prepared_of(config.data)
    except FileNotFoundError as missing:  # training is done: say why this step is skipped
        return f"not rollout-calibrated: {missing}"
    with tempfile.TemporaryDirectory(prefix="rollout-calibration-") as work:
        if traces is None:  # a resumed run read no traces
            traces, _ = load_traces(config.data, Path(work) / "traces")
            if not agent.no_persona and config.personas is not None:
                codes = load_personas(config.personas, config.data, Path(work) / "codes").codes
        if codes is None and not agent.no_persona:
            return "not rollout-calibrated: a resumed persona agent needs --personas (its buyers' codes)"
        policy = LLMPolicy.from_pretrained(out, device="cuda" if agent.use_gpu else "cpu", temperature=1.0)
        record = calibrate_rollouts(
            policy,
            prepared,
            traces,
            None if agent.no_persona else codes,
            visits=agent.calibration_visits,
            rounds=agent.calibration_rounds,
            seed=agent.seed,
            per_code=agent.calibration_per_code,
            unseen_ids=agent.calibration_unseen_ids,
        )
    record.save(out)
    # The price response was fitted on the agent before its per-code biases; served with them, a code
    # the calibration held back would miss its answer (learners/agent/price_response.py): fit it again.
    refitted: list[str] = []
    fit_page_responses(out, replace(agent, row_choice_rows=0), refitted.append)
    return "\n".join(
        [record.line(), *(f"{line} (refitted after the rollout calibration)" for line in refitted)]
    )


def fit_markov(config: FitMarkovStage, verbose: bool = False) -> MarkovFitted:
    """The per-type Markov chain (learners/agent/markov_policy.py) on the persona agent's training
    examples when ``config.agent`` holds them, else on every example built from the traces."""
    import pyarrow.parquet as pq

    from learners.agent.examples import build_examples
    from learners.agent.markov_policy import MarkovPolicy
    from learners.agent.sources import load_personas, load_traces

    trained = Path(config.agent) / "data" / "train.parquet" if config.agent else None
    if trained is not None and trained.exists():
        examples, source = pq.read_table(trained), f"{trained} (the persona agent's training examples)"
    else:
        if config.personas is None:
            raise ValueError(
                "fit-markov: the chain is per persona type; pass --personas CODES (or --agent AGENT"
                " holding its training examples)"
            )
        with tempfile.TemporaryDirectory(prefix="fit-markov-") as work:
            traces, _ = load_traces(config.traces, Path(work) / "traces")
            codes = load_personas(config.personas, config.traces, Path(work) / "codes").codes
        examples = build_examples(traces, codes, config.goal_share, config.seed).examples
        source = f"{config.traces} with codes {config.personas}"
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)
    MarkovPolicy.fit(examples).save(config.out)
    return MarkovFitted(Path(config.out), examples.num_rows, source)


def simulate(config: SimulationConfig, verbose: bool = False) -> Simulated:
    """The simulation on Ray (engine/simulation.py), with Ray's own output in OUT/ray.log."""
    from engine.simulation import simulate as run_simulation

    quiet_model_loading()
    with ray_session(config.out, verbose, address=config.ray_address):
        manifest = run_simulation(config)
    return Simulated(Path(config.out), manifest)


def _named(specs: list[str]) -> dict[str, Path]:
    """``[NAME=]DIR`` specs by name (a bare DIR is named after its folder)."""
    runs = {}
    for spec in specs:
        name, _, path = spec.rpartition("=")
        runs[name or Path(path).name] = Path(path)
    return runs


def evaluate(config: EvaluateStage, verbose: bool = False) -> Evaluated:
    """Every system's fidelity to the real buyers (engine/evaluate.py) with intervals, the ceiling and
    the floor (engine/bootstrap.py); writes the report (engine/report.py)."""
    from engine.bootstrap import uncertainty
    from engine.evaluate import fidelity, real_stats, real_units, sim_stats, sim_units, step_quality
    from engine.report import write_report

    runs, goals = _named(config.sim), _named(config.goals)
    merchants = list(config.merchants) or None
    since = utc_time(config.since, "--since") if config.since else None
    real = real_stats(config.real, merchants, unit=config.unit, since=since)
    real_kinds = {k for stats in real.values() for k in stats.kind_counts}
    goal_success = {name: step_quality(path).get("goal_success") for name, path in goals.items()}
    systems = {}
    for name, path in runs.items():
        systems[name] = fidelity(sim_stats(path, real_kinds), real) | step_quality(path)
        if name in goal_success:
            systems[name]["goal_success"] = goal_success[name]
    units = real_units(config.real, merchants, unit=config.unit, since=since)
    main = next(iter(runs))
    bounded = uncertainty(
        units,
        {name: sim_units(path, units.actions) for name, path in runs.items()},
        main,
        compare=list(runs)[1:] if config.compare is None else list(config.compare),
        pool=real_units(config.floor_data, actions=units.actions) if config.floor_data else None,
        replicates=config.replicates,
        seed=config.seed,
    )
    notes = config.notes or f"real: {config.real}; {len(real)} merchants; one real buyer = one {config.unit}"
    notes += f"; {bounded['visits']['median']:.0f} simulated visits per merchant (median)"
    checks = one_kind_checks(real_kinds)
    notes += "".join(f"; check: {c}" for c in checks)
    if checks:
        # Differences between systems that the data cannot tell apart are not effects it supports.
        for diffs in bounded["effects"]["vs"].values():
            for d in diffs.values():
                d["claimed"] = False
    page = write_report(systems, config.out, main=main, notes=notes, fidelity=bounded)
    merchants_compared = min(s["merchants"] for s in systems.values())
    return Evaluated(page, systems, bounded, goal_success, notes, merchants_compared, checks)
