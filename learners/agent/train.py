"""Two-stage fine-tuning of the persona agent on Ray Train (``TorchTrainer``), or in-process.

``train_agent`` builds the examples (examples.py), the base model with persona tokens (base_models.py,
tokens.py), runs the per-worker loop (train_loop.py) on ``workers`` Ray Train workers (``0``: in this
process, no Ray), and exports the final model. The output directory AGENT holds:

    config.json, model.safetensors, tokenizer files   a normal ``save_pretrained`` model (Auto* load it)
    persona_tokens.json                               code -> token string and id (absent: no-persona)
    adapter/                                          the LoRA adapter with the persona rows (--lora)
    manifest.json                                     config, inputs, row counts, the validation
                                                      merchants, the token budget's sample, per-epoch
                                                      train and validation losses, each stage's chosen epoch
    init/                                             the base model with tokens, before training
    data/train.parquet, data/quarantine.parquet       examples and quarantined trace rows
    data/validation.parquet                           validation examples (whole merchants; selection.py)
    data/calibration.parquet, calibration.json        goal-free validation rows before the budget's cut,
                                                      and the kind biases fitted on them (calibration.py)
    data/price_pages.parquet, price_response.json     product pages and the per-code price biases
    data/listing_pages.parquet, row_choice.json       listing pages and the per-code choice among their rows
    eval/heldout_buyers.parquet, heldout_merchants    held-out examples (when the shares are > 0)
    ray/ (Ray Train runs) or checkpoints/ (in-process) one checkpoint per stage and epoch

What is trained on (``_prepare``): the examples of the traces (examples.py), less the held-out shares
(``heldout_*_share``), less the validation merchants (``validation_share``: whole merchants, scored
after every epoch for early stopping, train_loop.py), cut to ``max_tokens`` training tokens per epoch by
a seeded, merchant-stratified sample of whole sessions when they hold more (selection.py; the
validation set is cut to the same share). The exported model is each stage's best epoch on the
validation loss (the last epoch without validation examples); with validation merchants, it is then
calibrated on their goal-free rows (``calibration_rows``, calibration.py), and each code's
answer to a price is measured on the product pages of the training and validation merchants,
before the budget's cut (``price_rows``, price_response.py), and how its buyers choose among the rows
of those merchants' listings (``row_choice_rows``, row_choice.py).

AGENT must be on storage every worker can read (a local path on one machine; shared storage on a
cluster), as Ray Train's own storage_path must be.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_model

from learners.agent.base_models import load_base, parameter_count
from learners.agent.calibration import calibrate, calibration_rows
from learners.agent.examples import build_examples, split_examples
from learners.agent.llm_policy import LLMPolicy
from learners.agent.price_response import (
    FIT_COLUMNS,
    PriceResponse,
    fit_price_response,
    product_page_rows,
)
from learners.agent.prompt import PROMPT_LAYOUT, PromptFormat, trained_layout
from learners.agent.row_choice import RowChoice, fit_row_choice, listing_page_rows
from learners.agent.scoring import SCORING_RULE
from learners.agent.selection import budget_sessions, keep_share, session_ids, split_validation
from learners.agent.tokens import add_persona_tokens
from learners.agent.train_config import AgentTrainConfig
from learners.agent.train_loop import (
    CheckpointStore,
    LocalStore,
    chosen_weights,
    encode_table,
    load_init,
    read_state,
    run_stages,
)
from learners.config import config_to_dict
from learners.worker_cpus import scaling_config

MANIFEST_FILE = "manifest.json"
VALIDATION_FILE = "validation.parquet"
CALIBRATION_ROWS_FILE = "calibration.parquet"
PRICE_ROWS_FILE = "price_pages.parquet"
"""The product pages the price response is measured on (price_response.py)."""
LISTING_ROWS_FILE = "listing_pages.parquet"
"""The listing pages the row choice is fitted on (row_choice.py)."""
RUN_NAME = "agent"
BEFORE_RECORDED = {"schedule": "constant"}
"""The value of a field a run's manifest does not record because it was added later, where it differs
from today's default (runs before the schedule field kept the rate constant)."""

# Fields that shape the model or its data: a resumed run must keep them.
FIXED_ON_RESUME = (
    "base_model",
    "schedule",
    "no_persona",
    "lora",
    "lora_rank",
    "lora_alpha",
    "seed",
    "history_len",
    "max_observation_tokens",
    "goal_share",
    "heldout_merchant_share",
    "heldout_buyer_share",
    "validation_share",
    "max_tokens",
)


@dataclass
class TrainResult:
    """What a finished run produced."""

    out_dir: Path
    """The exported model directory (AGENT)."""
    epochs: list[dict] = field(default_factory=list)
    """Metrics per finished stage and epoch of this invocation (loss, tokens, seconds, tokens_per_s;
    val_loss, best_epoch and stopped with validation examples)."""
    examples: int = 0
    """Training examples."""
    quarantined: int = 0
    """Trace rows quarantined while building examples."""
    history: list[dict] = field(default_factory=list)
    """Metrics of every epoch of the run, this invocation's and earlier ones' (the manifest's ``epochs``)."""
    chosen: dict[int, int] = field(default_factory=dict)
    """The epoch each stage kept: its best on the validation loss, else its last."""
    validation_examples: int = 0
    """Validation examples (0: no early stopping)."""


def train_agent(
    config: AgentTrainConfig,
    traces: pa.Table | None,
    codes: pa.Table | None,
    out_dir: str | Path,
    codebook: torch.Tensor | None = None,
    resume: bool = False,
    source: str = "traces",
    log: Callable[[str], None] = print,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Fine-tune an agent on ``traces`` (and persona ``codes``) into ``out_dir``; see the module doc.
    With ``resume`` the examples and initial model saved in ``out_dir`` are reused (traces may be None).
    ``log`` takes this process's lines; ``progress``, a picklable sink, the training progress lines of
    Ray Train's rank 0 (default: that worker prints them to its stderr)."""
    out = Path(out_dir).resolve()
    if codes is None and not config.no_persona and not resume:
        raise ValueError(
            "persona training needs codes (--personas CODES); pass --no-persona for the baseline"
        )
    manifest_path = out / MANIFEST_FILE
    if resume:
        if not manifest_path.exists():
            raise FileNotFoundError(f"{out}: nothing to resume (no {MANIFEST_FILE}); drop --resume to start")
        _check_resumable(config, json.loads(manifest_path.read_text()), manifest_path)
    elif out.exists() and any(p.suffix != ".log" for p in out.iterdir()):
        # Log files only (the CLI's ray.log, written before training starts) still count as empty.
        raise ValueError(f"{out} is not empty: pass --resume to continue that run, or choose a new --out")
    init_dir, train_path = out / "init", out / "data" / "train.parquet"
    validation_path = out / "data" / VALIDATION_FILE
    if not resume:
        if traces is None:
            raise ValueError("a new run needs traces")
        data = _prepare(config, traces, None if config.no_persona else codes, codebook, out, source, log)
    else:
        previous = json.loads(manifest_path.read_text())
        data = {k: previous[k] for k in ("rows", "validation", "budget") if k in previous}
        data["rows"]["examples"] = pq.read_metadata(train_path).num_rows
    _write_manifest(manifest_path, config, source, data, None, finished=False)

    validation = str(validation_path) if validation_path.exists() else None
    if config.workers == 0:
        store = LocalStore(out / "checkpoints")
        run_stages(
            config, str(init_dir), str(train_path), store, 0, 1, _device(config.use_gpu), log, validation
        )
        epochs, latest = store.metrics, store.latest()
    else:
        scaling = scaling_config(config.workers, config.use_gpu, config.cpus_per_worker)
        cpus = scaling.num_cpus_per_worker
        log(
            f"Ray Train: {config.workers} worker{'s' * (config.workers != 1)}, {cpus:g}"
            f" CPU{'s' * (cpus != 1)} (torch threads) each"
        )
        epochs, latest = _fit_on_ray(config, init_dir, train_path, out, scaling, progress, validation)
    _export(config, init_dir, latest, out)
    if (out / "data" / CALIBRATION_ROWS_FILE).exists():
        policy = LLMPolicy.from_pretrained(out, device=str(_device(config.use_gpu)), kind_bias={})
        calibration = calibrate(policy, pq.read_table(out / "data" / CALIBRATION_ROWS_FILE))
        calibration.save(out)
        log(calibration.line())
    fit_page_responses(out, config, log)
    state = (read_state(latest) if latest else None) or {}
    history = state.get("history", epochs)
    chosen = chosen_epochs(history)
    _write_manifest(manifest_path, config, source, data, history, finished=True)
    log(f"agent written to {out}")
    return TrainResult(
        out,
        epochs,
        data["rows"]["examples"],
        data["rows"]["quarantined"],
        history,
        chosen,
        data["rows"].get("validation", 0),
    )


def fit_page_responses(out: Path, config: AgentTrainConfig, log: Callable[[str], None]) -> None:
    """Fit and save the price response and the row choice of the agent in ``out`` on the pages
    ``_prepare`` kept (none kept: nothing to fit, an empty fit is saved)."""
    device = str(_device(config.use_gpu))
    if config.price_rows > 0:
        pages, response = out / "data" / PRICE_ROWS_FILE, PriceResponse()
        if pages.exists():
            policy = LLMPolicy.from_pretrained(out, device=device, price_bias={})
            response = fit_price_response(
                policy,
                pq.read_table(pages),
                personas=not config.no_persona,
                draws=config.price_draws,
                seed=config.seed,
            )
        response.save(out)
        log(response.line())
    if config.row_choice_rows > 0:
        pages, choice = out / "data" / LISTING_ROWS_FILE, RowChoice()
        if pages.exists():
            choice = fit_row_choice(pq.read_table(pages), personas=not config.no_persona)
        choice.save(out)
        log(choice.line())


def chosen_epochs(history: list[dict]) -> dict[int, int]:
    """The epoch each stage kept: its best on the validation loss (``best_epoch`` of its last epoch),
    else its last epoch."""
    chosen: dict[int, int] = {}
    for m in history:
        chosen[m["stage"]] = m.get("best_epoch") or m["epoch"]
    return chosen


def early_stopping_summary(history: list[dict], config: AgentTrainConfig) -> dict:
    """Per stage: epochs run, the cap, the chosen epoch, and whether validation stopped it early."""
    caps = {1: config.stage1_epochs, 2: config.stage2_epochs}
    stages: dict[str, dict] = {}
    for stage, epoch in chosen_epochs(history).items():
        rows = [m for m in history if m["stage"] == stage]
        stages[str(stage)] = {
            "epochs_run": len(rows),
            "max_epochs": caps.get(stage),
            "chosen_epoch": epoch,
            "stopped_early": bool(rows[-1].get("stopped")),
            "train_loss": [m["loss"] for m in rows],
            "val_loss": [m.get("val_loss") for m in rows],
        }
    return {"patience": config.patience, "validation": config.validation_share > 0, "stages": stages}


def _device(use_gpu: bool) -> torch.device:
    if use_gpu and not torch.cuda.is_available():
        raise ValueError("--use-gpu was given but torch sees no CUDA device")
    return torch.device("cuda" if use_gpu else "cpu")


def _check_resumable(config: AgentTrainConfig, manifest: dict, path: Path) -> None:
    saved, current = manifest["config"], config_to_dict(config)
    # Fields added since the run was started: what such a run did, i.e. the default then.
    default = config_to_dict(AgentTrainConfig()) | BEFORE_RECORDED
    changed = [
        f"{k}: {saved.get(k, default[k])!r} -> {current[k]!r}"
        for k in FIXED_ON_RESUME
        if saved.get(k, default[k]) != current[k]
    ]
    layout = trained_layout(manifest)
    if layout != PROMPT_LAYOUT:
        changed.append(f"prompt layout: {layout!r} -> {PROMPT_LAYOUT!r}")
    if changed:
        raise ValueError(
            f"{path}: cannot resume with a different {', '.join(changed)}; use the run's values or a new --out"
        )


def no_validation_line(share: float, merchants: int) -> str:
    """The console line of a run without validation merchants: why, and what it goes without."""
    skipped = (
        "every epoch is trained and the last one kept (no early stopping, no best-epoch restore) and no"
        " calibration is fitted"
    )
    if merchants < 2:
        # Validation holds out whole merchants, so that it measures stores the agent never saw.
        return (
            "no validation: the traces hold one merchant, and validation holds out whole merchants;"
            f" {skipped}"
        )
    return f"no validation (--validation-share {share:g}): {skipped}; for them: e.g. --validation-share 0.1"


def _prepare(config, traces, codes, codebook, out: Path, source: str, log) -> dict:
    """Examples, splits, the validation merchants, the token budget's sample and the initial model
    (base + persona tokens) under ``out``; what was kept (the manifest's rows, validation, budget)."""
    built = build_examples(traces, codes, goal_share=config.goal_share, seed=config.seed, source=source)
    parts = split_examples(
        built.examples, config.heldout_merchant_share, config.heldout_buyer_share, config.seed
    )
    train, validation, validation_merchants = split_validation(
        parts["train"], config.validation_share, config.seed
    )
    if config.max_examples is not None:
        train = train.slice(0, config.max_examples)
    if train.num_rows == 0:
        raise ValueError(
            f"{source}: no training examples left ({built.quarantine.num_rows} rows quarantined; "
            "see data/quarantine.parquet)"
        )
    reasons = (
        built.quarantine.column("reason").value_counts().to_pylist() if built.quarantine.num_rows else []
    )
    # A reason's head names it on the console ("inserted search", "action invalid on its page");
    # the rest of it says why, in data/quarantine.parquet and the manifest.
    why = "; ".join(f"{r['counts']} {r['values'].split(' (')[0].split(':')[0]}" for r in reasons[:3])
    log(
        f"{built.rows_read} trace rows: {built.examples.num_rows} examples ({built.goal_copies} of them"
        f" goal-shown copies), {built.quarantine.num_rows} not made examples"
        f"{f' ({why}; see ' + str(out / 'data' / 'quarantine.parquet') + ')' if why else ''};"
        f" {train.num_rows} for training"
        + (
            f", {validation.num_rows} for validation ({len(validation_merchants)} merchants)"
            if validation_merchants
            else ""
        )
    )
    if not validation_merchants:
        log(
            no_validation_line(
                config.validation_share, pc.count_distinct(parts["train"]["merchant_id"]).as_py()
            )
        )

    (out / "data").mkdir(parents=True, exist_ok=True)
    rows = calibration_rows(validation, config.calibration_rows, config.seed)
    if rows.num_rows:
        pq.write_table(rows, out / "data" / CALIBRATION_ROWS_FILE)
    # Every buyer of the training and validation merchants, before any budget cut: a code's answer to
    # a price is measured within buyers, and each buyer who saw a regular page and another cell's counts.
    both = pa.concat_tables([t.select(list(FIT_COLUMNS)) for t in (train, validation)])
    for limit, select, name in (
        (config.price_rows, product_page_rows, PRICE_ROWS_FILE),
        (config.row_choice_rows, listing_page_rows, LISTING_ROWS_FILE),
    ):
        pages = select(both, limit, config.seed) if limit > 0 else None
        if pages is not None and pages.num_rows:
            pq.write_table(pages, out / "data" / name)

    # A preset's tokenizer is trained on the training texts before any budget cut, so every agent of
    # a study given the same traces gets the same tokenizer.
    model, tokenizer = load_base(
        config.base_model, _corpus(train), seed=config.seed, split_digits=config.split_digits
    )
    tokens = None
    if codes is not None:
        tokens = add_persona_tokens(model, tokenizer, _num_codes(codes, codebook), codebook, seed=config.seed)
    budget = None
    if config.max_tokens is not None:
        fmt = PromptFormat(config.history_len, config.max_observation_tokens)

        def counter(table: pa.Table):
            """Training tokens of the given rows, as the training loop counts them."""
            return lambda rows: [
                len(p) + len(t) for p, t in encode_table(table.take(rows), tokenizer, tokens, fmt)
            ]

        train, budget = budget_sessions(train, counter(train), config.max_tokens, config.seed)
        log(budget.line())
        if budget.applied and validation.num_rows:
            before = validation.num_rows
            share = budget.kept_tokens / budget.tokens
            validation = keep_share(validation, counter(validation), share, config.seed)
            log(
                f"validation cut to the same share of its tokens: {validation.num_rows:,} of {before:,} examples"
            )
        if train.num_rows == 0:
            raise ValueError(
                f"max_tokens {config.max_tokens:,} keeps no session (the first in line needs more); raise it"
            )

    pq.write_table(train, out / "data" / "train.parquet")
    if validation.num_rows:
        pq.write_table(validation, out / "data" / VALIDATION_FILE)
    pq.write_table(built.quarantine, out / "data" / "quarantine.parquet")
    for name in ("heldout_buyers", "heldout_merchants"):
        if parts[name].num_rows:
            (out / "eval").mkdir(exist_ok=True)
            pq.write_table(parts[name], out / "eval" / f"{name}.parquet")

    init_dir = out / "init"
    init_dir.mkdir(parents=True)
    if tokens is not None:
        tokens.save(init_dir)
    model.save_pretrained(init_dir)
    tokenizer.save_pretrained(init_dir)
    log(
        f"base model {config.base_model}: {parameter_count(model):,} parameters, vocabulary {len(tokenizer):,}"
    )
    return {
        "rows": {
            "examples": train.num_rows,
            "quarantined": built.quarantine.num_rows,
            "quarantine_by_reason": {r["values"]: r["counts"] for r in reasons},
            "validation": validation.num_rows,
        },
        "validation": {
            "share": config.validation_share,
            "merchants": validation_merchants,
            "examples": validation.num_rows,
            "sessions": len(set(session_ids(validation).tolist())) if validation.num_rows else 0,
        },
        "budget": budget.to_dict() if budget else None,
    }


def _corpus(examples: pa.Table) -> list[str]:
    """Texts a locally built tokenizer is trained on: pages and actions as the prompts show them."""
    return examples.column("observation").to_pylist() + [
        " " + a for a in examples.column("action").to_pylist()
    ]


def _num_codes(codes: pa.Table, codebook: torch.Tensor | None) -> int:
    if codebook is not None:
        return int(codebook.shape[0])
    values = [c for c in codes.column("code").to_pylist() if c is not None]
    if not values or min(values) < 0:
        raise ValueError("codes table: codes must be non-negative integers (simpersona assign writes them)")
    return max(values) + 1


def _fit_on_ray(
    config: AgentTrainConfig,
    init_dir: Path,
    train_path: Path,
    out: Path,
    scaling,
    progress: Callable[[str], None] | None = None,
    validation_path: str | None = None,
):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={
            "config": config,
            "init_dir": str(init_dir),
            "train_path": str(train_path),
            "validation_path": validation_path,
            "progress": progress,
        },
        scaling_config=scaling,
        run_config=RunConfig(
            name=RUN_NAME,
            storage_path=str(out / "ray"),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            failure_config=FailureConfig(max_failures=config.max_failures),
        ),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    epochs = [dict(m) for m, _ in _reported(result)]
    if result.checkpoint is None:
        raise RuntimeError(f"{out}: Ray Train finished without a checkpoint")
    with result.checkpoint.as_directory() as directory:
        latest = out / "checkpoints" / "final"
        latest.mkdir(parents=True, exist_ok=True)
        for item in Path(directory).iterdir():
            (latest / item.name).write_bytes(item.read_bytes())
    return epochs, latest


def _reported(result) -> list[tuple[dict, object]]:
    """The per-epoch metrics Ray Train kept, oldest first."""
    return [(m, c) for c, m in (result.best_checkpoints or [])]


def _ray_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    # Rank 0 alone reports progress (the ranks' lines would repeat each other), to the driver's sink
    # when there is one: a worker's own output reaches the console only through Ray's forwarding.
    progress = loop_config.get("progress") or (lambda line: print(line, file=sys.stderr, flush=True))
    run_stages(
        loop_config["config"],
        loop_config["init_dir"],
        loop_config["train_path"],
        RayStore(),
        context.get_world_rank(),
        context.get_world_size(),
        ray.train.torch.get_device(),
        progress if context.get_world_rank() == 0 else (lambda line: None),
        loop_config.get("validation_path"),
    )


class RayStore(CheckpointStore):
    """Checkpoints through ``ray.train.report``; the latest comes back from ``ray.train.get_checkpoint``,
    copied into a directory of this worker's own."""

    def __init__(self) -> None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        self._latest: Path | None = None
        if checkpoint is not None:
            # Without a path, every rank on a node shares one download directory, and a rank that
            # comes late downloads into it again while another reads it: a resumed 2-worker run
            # failed on a torn optimizer file (test_train.py's resume test, twice in 11 runs).
            self._download = tempfile.TemporaryDirectory(prefix="agent-resume-")
            self._latest = Path(checkpoint.to_directory(self._download.name))

    def latest(self) -> Path | None:
        return self._latest

    def save(self, directory: Path | None, metrics: dict) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(directory)) if directory is not None else None
        ray.train.report(metrics, checkpoint=checkpoint)


def _export(config: AgentTrainConfig, init_dir: Path, checkpoint: Path | None, out: Path) -> None:
    """The final checkpoint as a plain ``save_pretrained`` directory (LoRA merged; adapter kept)."""
    from peft import get_peft_model

    from learners.agent.tokens import persona_lora_config

    model, tokenizer, tokens = load_init(str(init_dir), torch.device("cpu"))
    if config.lora:
        model = get_peft_model(model, persona_lora_config(model, tokens, config.lora_rank, config.lora_alpha))
    if checkpoint is not None:
        load_model(model, str(chosen_weights(checkpoint)))  # the last stage's best epoch
    if config.lora:
        model.save_pretrained(out / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if tokens is not None:
        tokens.save(out)


def _write_manifest(
    path: Path, config, source, data: dict, history: list[dict] | None, finished: bool
) -> None:
    """``history``: every epoch's metrics (from the final checkpoint); None keeps the manifest's."""
    import transformers

    try:  # in-process training (workers=0) runs where Ray is not installed
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = None

    previous = json.loads(path.read_text()) if path.exists() else {}
    epochs = previous.get("epochs", []) if history is None else history
    payload = {
        "config": config_to_dict(config),
        "prompt_layout": PROMPT_LAYOUT,
        "scoring": SCORING_RULE,
        "inputs": {
            "traces": previous.get("inputs", {}).get("traces", source) if source == "resumed" else source
        },
        "rows": data["rows"],
        "validation": data.get("validation"),
        "budget": data.get("budget"),
        "epochs": epochs,
        "early_stopping": early_stopping_summary(epochs, config),
        "finished": finished,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "ray": ray_version,
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
