"""The GPU check, in one process and without Ray: train the GPU recipe's persona agent on a study's
traces, serve it with ``LLMPolicy.act`` at 1, 8, 64 and 256 requests per call, then play visits with
``EpisodePlayer`` on the text storefront.

  python -m benchmarks.gpu_check --study STUDY --out /tmp/gpu-check                 # on a GPU
  python -m benchmarks.gpu_check --study STUDY --out /tmp/gpu-check --device cpu \\
      --base-model tiny --batch-size 16 --max-tokens 300000 --visits 64             # a dry run here

On a lent GPU machine (the device run's command, with carry [".gpu"] and a timeout of 480 s):

  bash benchmarks/gpu_check.sh --max-tokens 8000000

STUDY is a study's output directory, or anything holding its ``traces/``, ``codes/`` and
``train-data/`` (``make gpu-bundle`` builds one for the brand log under ``.gpu/brand``). A lent GPU
machine has torch and transformers but no Ray, gymnasium or polars: ``make gpu-bundle`` packs what
is missing into ``.gpu/``, and ``benchmarks/gpu_check.sh`` unpacks it there and runs this script,
with ``.gpu`` carried.

The training settings are examples/study-tmall-gpu.yaml's ``agent`` section (the ``base`` preset,
batch 64, bf16 autocast, validation with early stopping), run in process (``workers=0``); the
flags below override them to fit the machine's time. Serving uses the exported agent as the
simulation does (its calibration, scoring rule and prompt layout), in bf16 on a GPU. Each batch
size is timed over the same requests, after one warm-up call, against one request per call in the
same run. The table printed last is what goes into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from engine.episode_player import EnvSpec, EpisodePlayer
from engine.population import PopulationSampler
from learners.agent.llm_policy import LLMPolicy
from learners.agent.offline_eval import requests_for
from learners.agent.policy import ActRequest
from learners.agent.sources import load_personas, load_traces
from learners.agent.train import train_agent
from learners.agent.train_config import AgentTrainConfig
from learners.config import config_from_dict, load_yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "study-tmall-gpu.yaml"
BATCHES = (1, 8, 64, 256)


def recipe(device: str, overrides: dict) -> AgentTrainConfig:
    """The GPU recipe's agent settings, in process, with ``overrides`` (None values dropped)."""
    config = config_from_dict(AgentTrainConfig, load_yaml(RECIPE)["agent"])
    set_ = {k: v for k, v in overrides.items() if v is not None}
    return replace(config, workers=0, use_gpu=device == "cuda", **set_)


def train(study: Path, out: Path, config: AgentTrainConfig) -> dict:
    """Fine-tune the persona agent into ``out``; wall time and the epochs' metrics."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        traces, source = load_traces(study / "traces", Path(work) / "traces")
        personas = load_personas(study / "codes", study / "train-data", Path(work) / "codes")
        start = time.perf_counter()
        result = train_agent(config, traces, personas.codes, out, codebook=personas.codebook, source=source)
    return {
        "seconds": time.perf_counter() - start,
        "examples": result.examples,
        "epochs": result.epochs,
        "kept": result.chosen,
    }


def requests(agent: Path, n: int, seed: int) -> list[ActRequest]:
    """``n`` goal-free requests as the agent's training examples show them (page, actions, code, history)."""
    table = pq.read_table(agent / "data" / "train.parquet")
    table = table.filter(pc.is_null(table["goal"]))
    pick = np.random.default_rng(seed).choice(table.num_rows, size=min(n, table.num_rows), replace=False)
    return requests_for(table.take(pick), "true", seed=seed)


def serve(policy: LLMPolicy, pool: list[ActRequest], per_batch: int) -> dict:
    """Requests per second of ``act`` at ``per_batch`` requests per call over ``pool``."""
    policy.act(pool[:per_batch])
    calls = [pool[i : i + per_batch] for i in range(0, len(pool) - per_batch + 1, per_batch)]
    sync = torch.cuda.synchronize if policy.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for call in calls:
        policy.act(call)
    sync()
    seconds = time.perf_counter() - start
    done = sum(len(c) for c in calls)
    return {"per_call": per_batch, "requests": done, "seconds": seconds, "per_s": done / seconds}


def play(study: Path, policy: LLMPolicy, visits: int, seed: int, max_steps: int) -> dict:
    """Free visits of the four training merchants with the most sessions, each buyer's code from its
    merchant's mix."""
    sampler = PopulationSampler.from_parquet(study / "codes" / "merchant_distributions.parquet")
    known = set(sampler.merchants)
    listed = pq.read_table(study / "train-data" / "merchants.parquet").sort_by([("sessions", "descending")])
    merchants = [m for m in listed["merchant_id"].to_pylist() if m in known][:4]
    if not merchants:
        raise ValueError(f"{study}: no merchant of train-data/ has a persona mix in codes/")
    buyers = sampler.population(merchants, max(1, visits // len(merchants)), seed=seed)
    player = EpisodePlayer(
        EnvSpec(kwargs={"data": str(study / "train-data")}), max_envs=256, max_steps=max_steps
    )
    start = time.perf_counter()
    table = player.play(buyers, policy.act)
    seconds = time.perf_counter() - start
    rows = table.to_pydict()
    converted = {b for b, c in zip(rows["sim_buyer_id"], rows["converted"], strict=True) if c}
    return {
        "visits": len(buyers),
        "steps": table.num_rows,
        "seconds": seconds,
        "steps_per_s": table.num_rows / seconds,
        "conversion": len(converted) / len(buyers),
        "invalid": 1.0 - float(np.mean(rows["valid"])),
    }


def table(device: str, config: AgentTrainConfig, trained: dict, served: list[dict], played: dict) -> str:
    lines = [
        f"device {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}), torch "
        f"{torch.__version__}; agent {config.base_model}, batch {config.batch_size}, "
        f"{trained['examples']:,} training examples, {trained['seconds']:.0f} s to train and export",
        "",
        "| stage / epoch | tokens/s | validation loss |",
        "|---|---:|---:|",
        *(
            f"| {e.get('stage')} / {e.get('epoch')} | {e.get('tokens_per_s', 0):,.0f} | "
            f"{e.get('val_loss', float('nan')):.4f} |"
            for e in trained["epochs"]
        ),
        "",
        "| requests per call | requests/s | × one per call |",
        "|---:|---:|---:|",
        *(f"| {s['per_call']} | {s['per_s']:,.0f} | {s['per_s'] / served[0]['per_s']:.1f} |" for s in served),
        "",
        f"EpisodePlayer: {played['visits']} visits, {played['steps']:,} steps in {played['seconds']:.1f} s "
        f"({played['steps_per_s']:,.0f} steps/s), conversion {played['conversion']:.3f}, "
        f"invalid-action rate {played['invalid']:.4f}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--study", type=Path, required=True, help="holds traces/, codes/ and train-data/")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--base-model", help="the recipe's base (25.7M parameters) unless given")
    parser.add_argument("--batch-size", type=int, help="training examples per step (the recipe's 64)")
    parser.add_argument("--stage2-epochs", type=int, default=2, help="the most epochs (the recipe's 12)")
    parser.add_argument("--max-tokens", type=int, help="training tokens per epoch (default: every example)")
    parser.add_argument("--requests", type=int, default=1024, help="requests timed per batch size")
    parser.add_argument("--visits", type=int, default=512)
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = recipe(
        args.device,
        {
            "base_model": args.base_model,
            "batch_size": args.batch_size,
            "stage2_epochs": args.stage2_epochs,
            "max_tokens": args.max_tokens,
            "seed": args.seed,
        },
    )
    args.out.mkdir(parents=True, exist_ok=True)
    agent = args.out / "agent"
    trained = train(args.study, agent, config)
    policy = LLMPolicy.from_pretrained(agent, device=args.device)
    if args.device == "cuda":
        policy.model.to(torch.bfloat16)
    pool = requests(agent, args.requests, args.seed)
    served = [serve(policy, pool, b) for b in BATCHES if b <= len(pool)]
    played = play(args.study, policy, args.visits, args.seed, args.max_steps)
    report = {"config": config.__dict__, "train": trained, "serve": served, "play": played}
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    print(table(args.device, config, trained, served, played), flush=True)


if __name__ == "__main__":
    main()
