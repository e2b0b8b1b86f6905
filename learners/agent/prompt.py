"""The one prompt format of the agent, shared by training and serving.

A prompt is, in this order (each part its own line block)::

    Page:
    <the page (``page_text``), at most max_observation_tokens tokens>
    History: open product 7 | back   (the last ``history_len`` actions, oldest first; "none" if empty)
    Goal: buy product your goal      (only when the buyer has a goal)
    <persona_3>                      (absent for a no-persona model)
    Action:

and the target is `` <action text>`` followed by EOS. The loss covers the target tokens only.

The page comes first because it is what buyers share: every buyer on the same page of a storefront
has the same leading ids (``encode_page``), so a server computes that part once per distinct page in
a batch (llm_policy.py) or keeps it in a prefix cache (vLLM); only the buyer's own part (goal,
history, persona, cue: ``encode_buyer``) differs. The persona sits right before the cue, next to the
decision it conditions.

Token ids are the canonical form: each part is tokenised on its own and the ids are concatenated, so
the persona token is always its own id, the observation budget is exact in tokens, and a candidate
action's ids never merge with the prompt's last token (scoring and training see the same split).
``render_prompt`` gives the same prompt as text, for reading and for servers that only take text.
Agents record ``PROMPT_LAYOUT`` in their manifest; serving refuses an agent trained on another layout.

Goals (layout ``page-first-goal-marked``): a goal task's page states the goal and marks every line
that shows the goal product (envs/render.py). The agent names its goal product ``GOAL_ALIAS`` (``your
goal``) in everything it reads and writes: ``open product 812`` is ``open product your goal`` in the
page, its history and its scored candidates, ``search "812"`` is ``search "your goal"``
(``alias_goal``; the scoring policy maps its pick back to the real action, scoring.py). Every other
product id of the page and of the history, every other search of the history and the shop's id read
``OTHER_ID``, and the goal line names no id (``page_text``, ``encode_buyer``). A small model cannot
copy an id it has never seen from the goal line into its action, and the ids of a storefront it has
never seen split into tokens it has never read (the tiny presets' tokenizer is trained on the
training storefronts' pages). Measured on the demo study's held-out merchants with tiny persona
agents: given the marks but writing real ids, goal success 0.00 (200 episodes); naming its goal but
reading the other ids, 0.12 (200; it exited at the new storefronts' cart and checkout pages); with
this view, 0.90 (400). What the agent does toward its goal depends on where the page shows it, not
on which storefront it is. Training examples with a hindsight goal are goal-task pages too (examples.py), so
they get the same view.

Prices (layout ``page-first-goal-marked-unpriced-rows``): the model reads a price on a product page
only. A listing's, cart's or checkout's product rows are shown without theirs, and what a buyer type
makes of the listed prices is fitted on the logs instead: which row it opens (row_choice.py) and
how it answers the product page's price (price_response.py). A model that reads the rows' prices
answers a cheaper listing whatever its persona: on the truth benchmark's held-out merchants
(RESULTS.md, session 32) the agent of the previous layout searched from the home page with P 0.30
under the merchants' own order and 0.25 with the cheapest products listed first (window shoppers,
researchers and cart abandoners' codes; 0.27 and 0.28 with the rows' prices left out), and over
whole visits the window shoppers viewed 0.59 more products and the researchers 0.15 more (recovered
from the codes), where the planted types view as many; with them left out, -0.09 and -0.05.
Agents of earlier layouts (``page-first``: no goal pages; ``page-first-goal-marked``: rows priced)
are refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from envs.render import GOAL_PREFIX, TYPICAL_PREFIX  # a goal task's goal line; a product page's typical price
from envs.storefront import OPEN_PRODUCT, REMOVE_PRODUCT
from learners.agent.actions import SEARCH_PREFIX
from learners.agent.policy import ActRequest
from learners.agent.tokens import PersonaTokens, persona_token

GOAL_ALIAS = "your goal"
"""How the agent names its goal product in actions (it holds a space, so no product id is it)."""
OTHER_ID = "other"
"""How a goal task's prompt shows every other product id, and the shop's (``page_text``)."""

IGNORE_INDEX = -100
"""Label value the loss skips (prompt and padding positions)."""


@dataclass(frozen=True)
class PromptFormat:
    """Lengths that shape the prompt; the same values must be used in training and serving."""

    history_len: int = 5
    """How many previous actions of the episode the prompt shows."""
    max_observation_tokens: int = 512
    """Observation tokens kept; a longer page keeps its first and last halves (title and actions)."""


PROMPT_LAYOUT = "page-first-goal-marked-unpriced-rows"
"""The layout above; an agent's manifest names the layout it was trained on."""
PAGE_CUE = "Page:\n"
ACTION_CUE = "\nAction:"


def _goal_forms(goal: str, name: str) -> tuple[tuple[str, str], ...]:
    return (
        (OPEN_PRODUCT + goal, OPEN_PRODUCT + name),
        (REMOVE_PRODUCT + goal, REMOVE_PRODUCT + name),
        (f'{SEARCH_PREFIX}{goal}"', f'{SEARCH_PREFIX}{name}"'),
    )


def alias_goal(action: str, goal: str | None) -> str:
    """``action`` as the agent names it: an action naming the goal product (open, remove, search)
    names ``GOAL_ALIAS`` instead; any other action, or any action without a goal, is unchanged."""
    if goal is None or goal == GOAL_ALIAS:
        return action
    for real, named in _goal_forms(goal, GOAL_ALIAS):
        if action == real:
            return named
    return action


def unalias_goal(action: str, goal: str | None) -> str:
    """The real action of an action the agent named with ``GOAL_ALIAS`` (``alias_goal``'s inverse)."""
    if goal is None:
        return action
    for real, named in _goal_forms(goal, GOAL_ALIAS):
        if action == named:
            return real
    return action


def _goal_action(action: str, goal: str) -> str:
    """An action as a goal task's prompt shows it: the goal named ``GOAL_ALIAS``, any other
    product, and any other search, ``OTHER_ID``."""
    action = alias_goal(action, goal)
    for template in (OPEN_PRODUCT, REMOVE_PRODUCT):
        if action.startswith(template) and action != template + GOAL_ALIAS:
            return template + OTHER_ID
    if action.startswith(SEARCH_PREFIX) and action != f'{SEARCH_PREFIX}{GOAL_ALIAS}"':
        return f'{SEARCH_PREFIX}{OTHER_ID}"'
    return action


def _buyer_lines(goal: str | None, history: Sequence[str], fmt: PromptFormat) -> str:
    shown = list(history)[-fmt.history_len :] if fmt.history_len > 0 else []
    if goal:
        shown = [_goal_action(a, goal) for a in shown]
    lines = ["History: " + (" | ".join(shown) if shown else "none")]
    if goal:
        lines.append(GOAL_PREFIX + GOAL_ALIAS)
    return "\n" + "\n".join(lines)


_PRODUCT_ID_LINES = (
    re.compile(r"^(- product )(\S+)( \|.*)$"),  # a listing, cart or checkout row
    re.compile(r"^(open product |remove product )(\S+)()$"),  # a listed action
    re.compile(r"^(Product id: )(\S+)(.*)$"),  # a product page
    re.compile(r"^(== Product )(\S+)( ==)$"),  # an untitled product's page title
)
_ROW_PRICE = re.compile(r"^(- product .+? \| category .*?) \| price (?:n/a|[0-9.]+)(?= \||$)", re.M)
"""A product row's price field (envs/render.py's ``ProductRow``), which the prompt leaves out."""
_SHOP_LINE = re.compile(r"^(Shop )(\S+)( \|.*)$")
_SEARCH_TITLE = re.compile(r'^(== Search results for ")([^"]*)(".*)$')


def _goal_view(line: str, goal: str) -> str:
    """One page line as a goal task's prompt shows it (``page_text``)."""
    for pattern in _PRODUCT_ID_LINES:
        found = pattern.match(line)
        if found:
            name = GOAL_ALIAS if found.group(2) == goal else OTHER_ID
            return found.group(1) + name + found.group(3)
    found = _SHOP_LINE.match(line)
    if found:
        return found.group(1) + OTHER_ID + found.group(3)
    found = _SEARCH_TITLE.match(line)
    if found and found.group(2) == goal:
        return found.group(1) + GOAL_ALIAS + found.group(3)
    return line


def page_text(observation: str) -> str:
    """The page as the prompt shows it: a goal-free page as observed but its category's typical price
    (envs/render.py; the price response reads it, price_response.py: in the prompt the demo's agent
    did worse with it, RESULTS.md session 19) and its product rows' prices (the module docstring); a
    goal task's page (it states the goal) also without its goal line (the buyer part states the
    goal), the goal product named ``GOAL_ALIAS`` and every other product, and the shop,
    ``OTHER_ID``: what the agent does toward its goal does not depend on the ids of a storefront it
    has never seen."""
    if TYPICAL_PREFIX in observation:
        observation = "\n".join(
            line for line in observation.split("\n") if not line.startswith(TYPICAL_PREFIX)
        )
    observation = _ROW_PRICE.sub(r"\1", observation)
    if GOAL_PREFIX not in observation:
        return observation
    lines = observation.split("\n")
    goal = next((line[len(GOAL_PREFIX) :] for line in lines if line.startswith(GOAL_PREFIX)), None)
    if goal is None:
        return observation
    return "\n".join(_goal_view(line, goal) for line in lines if not line.startswith(GOAL_PREFIX))


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
    persona_line = "\n" + persona_token(persona) if persona is not None and tokens is not None else ""
    return PAGE_CUE + page_text(observation) + _buyer_lines(goal, history, fmt) + persona_line + ACTION_CUE


def encode_page(tokenizer: PreTrainedTokenizerBase, observation: str, fmt: PromptFormat) -> list[int]:
    """The prompt's leading ids, the same for every buyer on this page."""
    return _encode(tokenizer, PAGE_CUE) + _clip(
        _encode(tokenizer, page_text(observation)), fmt.max_observation_tokens
    )


def encode_buyer(
    tokenizer: PreTrainedTokenizerBase,
    persona: int | None,
    goal: str | None,
    history: Sequence[str],
    tokens: PersonaTokens | None,
    fmt: PromptFormat,
) -> list[int]:
    """The prompt's trailing ids, the buyer's own: goal, history, persona token and the action cue."""
    ids = _encode(tokenizer, _buyer_lines(goal, history, fmt))
    if persona is not None and tokens is not None:
        ids += _encode(tokenizer, "\n") + [tokens.token_id(persona)]
    return ids + _encode(tokenizer, ACTION_CUE)


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
    return encode_page(tokenizer, observation, fmt) + encode_buyer(
        tokenizer, persona, goal, history, tokens, fmt
    )


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


def trained_layout(manifest: dict) -> str:
    """The prompt layout an agent's manifest names; agents from before layouts were recorded used
    the persona-first one."""
    return manifest.get("prompt_layout", "persona-first")


def saved_prompt_format(agent_dir: str | Path) -> PromptFormat:
    """The prompt format an exported agent was trained with (its manifest), else the default.

    Raises ValueError for an agent trained on another prompt layout: its scores would be noise."""
    manifest = Path(agent_dir) / "manifest.json"
    if manifest.exists():
        payload = json.loads(manifest.read_text(encoding="utf-8"))
        saved = payload.get("config", {})
        if "history_len" in saved:
            layout = trained_layout(payload)
            if layout != PROMPT_LAYOUT:
                raise ValueError(
                    f"{manifest}: this agent was trained on the {layout} prompt layout, and this"
                    f" version prompts {PROMPT_LAYOUT}; retrain it with `simpersona train-agent`"
                )
            return PromptFormat(saved["history_len"], saved["max_observation_tokens"])
    return PromptFormat()
