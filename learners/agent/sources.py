"""Where the agent's inputs come from: traces and persona codes, in the forms users have them.

Traces: a ``traces.parquet`` file, a directory holding one (``simpersona traces --out``), or a
prepared directory (``simpersona prepare --out``), which is replayed into traces on the spot.
Personas: a codes directory (``simpersona assign --out``: codes.parquet, per buyer or, with
``--other-visits``, per visit; its manifest naming the run),
or a VQ-VAE run directory (``simpersona fit-personas --out``), whose assignment of the prepared
directory's buyers is computed on the spot. The codebook (to initialise the persona rows) comes from
the run's ``model.safetensors`` (tensor ``quantizer.codebook``) when the run can be found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import safe_open

TRACES_FILE = "traces.parquet"
CODES_FILE = "codes.parquet"
RUN_MODEL_FILE = "model.safetensors"
CODEBOOK_TENSOR = "quantizer.codebook"


@dataclass
class Personas:
    """Persona codes of buyers and, when known, the codebook they index."""

    codes: pa.Table
    """merchant_id, buyer_id, code."""
    codebook: torch.Tensor | None
    """(K, code_dim) codebook of the VQ-VAE run, or None when the run is not available."""
    source: str
    """Where the codes were read from (for manifests)."""


def load_traces(path: str | Path, work_dir: Path) -> tuple[pa.Table, str]:
    """The traces table and its file: ``path`` is a traces file, a traces dir or a prepared dir."""
    path = Path(path)
    if path.is_file():
        return pq.read_table(path), str(path)
    if (path / TRACES_FILE).exists():
        return pq.read_table(path / TRACES_FILE), str(path / TRACES_FILE)
    if (path / "events.parquet").exists():
        from learners.data.traces import TracesConfig, build_traces

        build_traces(path, work_dir, TracesConfig())
        return pq.read_table(work_dir / TRACES_FILE), str(work_dir / TRACES_FILE)
    raise FileNotFoundError(
        f"{path}: neither a traces file, a directory with {TRACES_FILE}, nor a prepared directory "
        "(events.parquet); run `simpersona prepare` and `simpersona traces` first"
    )


def read_codebook(run_dir: str | Path) -> torch.Tensor:
    """The codebook tensor of a VQ-VAE run directory."""
    path = Path(run_dir) / RUN_MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: not a `simpersona fit-personas` run directory")
    with safe_open(str(path), framework="pt") as f:
        if CODEBOOK_TENSOR not in f.keys():  # noqa: SIM118 (safe_open has keys(), not __contains__)
            raise ValueError(f"{path}: no tensor {CODEBOOK_TENSOR!r}; is this a VQ-VAE run of this version?")
        return f.get_tensor(CODEBOOK_TENSOR)


def load_personas(path: str | Path, data: str | Path, work_dir: Path) -> Personas:
    """Codes (and codebook) from a codes dir or a run dir (assigning ``data``'s buyers on the spot)."""
    path = Path(path)
    if (path / CODES_FILE).exists():
        manifest = path / "manifest.json"
        run = json.loads(manifest.read_text()).get("run") if manifest.exists() else None
        codebook = read_codebook(run) if run and (Path(run) / RUN_MODEL_FILE).exists() else None
        return Personas(pq.read_table(path / CODES_FILE), codebook, str(path / CODES_FILE))
    if (path / RUN_MODEL_FILE).exists():
        if not (Path(data) / "buyers.parquet").exists():
            raise FileNotFoundError(
                f"{path} is a VQ-VAE run; assigning codes needs a prepared DATA directory with buyers.parquet "
                f"(got {data}); or run `simpersona assign {path} DATA --out CODES` and pass --personas CODES"
            )
        from learners.vqvae.assign import assign

        assign(path, data, work_dir)
        return Personas(pq.read_table(work_dir / CODES_FILE), read_codebook(path), str(path))
    raise FileNotFoundError(
        f"{path}: neither a codes directory ({CODES_FILE}) nor a VQ-VAE run ({RUN_MODEL_FILE})"
    )
