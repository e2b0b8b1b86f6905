"""The one prompt format of the agent, shared by training and serving.

A prompt is, in this order (each part its own line block)::

    <persona_3>                      (absent for a no-persona model)
    Goal: buy product 812            (only when the buyer has a goal)
    History: open product 7 | back   (the last ``history_len`` actions, oldest first; "none" if empty)
    Page:
    <observation without its goal line, at most max_observation_tokens tokens>
    Action:

and the target is `` <action text>`` followed by EOS. The loss covers the target tokens only.

Token ids are the canonical form: each part is tokenised on its own and the ids are concatenated, so
the persona token is always its own id, the observation budget is exact in tokens, and a candidate
action's ids never merge with the prompt's last token (scoring and training see the same split).
``render_prompt`` gives the same prompt as text, for reading and for servers that only take text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from learners.agent.policy import ActRequest
from learners.agent.tokens import PersonaTokens, persona_token

GOAL_PREFIX = "Goal: buy product "
"""How the prompt (and envs/render.py's goal line) states a goal."""
IGNORE_INDEX = -100
"""Label value the loss skips (prompt and padding positions)."""


@dataclass(frozen=True)
class PromptFormat:
    """Lengths that shape the prompt; the same values must be used in training and serving."""

    history_len: int = 5
    """How many previous actions of the episode the prompt shows."""
    max_observation_tokens: int = 512
    """Observation tokens kept; a longer page keeps its first and last halves (title and actions)."""


def _persona_part(persona: int | None, tokens: PersonaTokens | None) -> str:
    if persona is None or tokens is None:
        return ""
    return persona_token(persona) + "\n"


def _header(goal: str | None, history: Sequence[str], fmt: PromptFormat) -> str:
    lines = []
    if goal:
        lines.append(GOAL_PREFIX + goal)
    shown = list(history)[-fmt.history_len :] if fmt.history_len > 0 else []
    lines.append("History: " + (" | ".join(shown) if shown else "none"))
    lines.append("Page:")
    return "\n".join(lines) + "\n"


ACTION_CUE = "\nAction:"


def page_text(observation: str) -> str:
    """The observation without the page's own goal line: the goal comes from the request alone, so
    goal-task pages (which show it) and replayed trace pages (which cannot) give the same prompt."""
    if GOAL_PREFIX not in observation:
        return observation
    return "\n".join(line for line in observation.split("\n") if not line.startswith(GOAL_PREFIX))


def render_prompt(
    observation: str,
    persona: int | None,
    goal: str | None,
    history: Sequence[str],
    tokens: PersonaTokens | None,
    fmt: PromptFormat,
) -> str:
    """The prompt as text (observation not cut); tokenising it may split parts differently than
    ``encode_prompt`` at part boundaries, so models are fed ``encode_prompt`` ids."""
    return _persona_part(persona, tokens) + _header(goal, history, fmt) + page_text(observation) + ACTION_CUE


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    observation: str,
    persona: int | None,
    goal: str | None,
    history: Sequence[str],
    tokens: PersonaTokens | None,
    fmt: PromptFormat,
) -> list[int]:
    """Prompt token ids. ``persona`` is ignored when ``tokens`` is None (no-persona model)."""
    ids: list[int] = []
    if persona is not None and tokens is not None:
        ids += [tokens.token_id(persona)] + _encode(tokenizer, "\n")
    ids += _encode(tokenizer, _header(goal, history, fmt))
    ids += _clip(_encode(tokenizer, page_text(observation)), fmt.max_observation_tokens)
    ids += _encode(tokenizer, ACTION_CUE)
    return ids


def encode_target(tokenizer: PreTrainedTokenizerBase, action: str) -> list[int]:
    """Target ids: the action text after one space, then EOS."""
    return _encode(tokenizer, " " + action) + [tokenizer.eos_token_id]


def encode_targets(tokenizer: PreTrainedTokenizerBase, actions: Sequence[str]) -> list[list[int]]:
    """``encode_target`` of many actions in one tokenizer call."""
    if not actions:
        return []
    batch = tokenizer([" " + a for a in actions], add_special_tokens=False)["input_ids"]
    return [list(ids) + [tokenizer.eos_token_id] for ids in batch]


def _clip(ids: list[int], budget: int) -> list[int]:
    """Keep the page's start (title, product details) and end (its action list) within ``budget``."""
    if len(ids) <= budget:
        return ids
    head = budget // 2
    return ids[:head] + ids[len(ids) - (budget - head) :]


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def request_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, request: ActRequest, tokens: PersonaTokens | None, fmt: PromptFormat
) -> list[int]:
    """``encode_prompt`` of one policy request (the form every serving backend uses)."""
    return encode_prompt(
        tokenizer, request.observation, request.persona, request.goal, request.history, tokens, fmt
    )


def saved_prompt_format(agent_dir: str | Path) -> PromptFormat:
    """The prompt format an exported agent was trained with (its manifest), else the default."""
    manifest = Path(agent_dir) / "manifest.json"
    if manifest.exists():
        saved = json.loads(manifest.read_text(encoding="utf-8")).get("config", {})
        if "history_len" in saved:
            return PromptFormat(saved["history_len"], saved["max_observation_tokens"])
    return PromptFormat()
