"""What a simulation does when something fails mid-run, so that no buyer is lost or played twice.

- A chunk that fails inside a live runner (an error raised by the env or the policy) is requeued,
  after the policy router is replaced if it is the one that died.
- A runner that is gone (its actor or task worker died, was killed, or became unreachable) is
  replaced, and every chunk queued on it is requeued.
- A chunk running longer than ``chunk_timeout_s`` counts as hung: its runner is replaced likewise.
- A dead policy replica is the router's business (engine/policy_server.py): it replaces the replica
  and the runner's call is sent again, so the chunk does not notice.

A chunk may be retried ``max_retries`` times before the run fails with its last error. Retrying
changes no rollout: a buyer's episode depends on its seed only.
"""

from __future__ import annotations

import collections

import pyarrow as pa
import ray

from engine.actor_pool import RunnerPool, RunnerSlot
from engine.policy_server import ACTOR_FAILURES
from engine.simulation_config import SimulationConfig


class FaultRecovery:
    """Failures of the chunks played by ``pool``: which actor to replace, which chunk to retry."""

    def __init__(self, pool: RunnerPool, config: SimulationConfig) -> None:
        self.pool = pool
        self.config = config
        self.attempts: collections.Counter = collections.Counter()

    def result(
        self, ref: ray.ObjectRef, slot: RunnerSlot, chunk_id: int, queue: collections.deque
    ) -> pa.Table | None:
        """The rollouts of ``chunk_id``, sent to ``slot`` as ``ref``; None after a failure, the chunk
        then being requeued (and its runner, or the router, replaced when gone)."""
        try:
            return ray.get(ref, timeout=self.config.call_timeout_s)
        except ray.exceptions.RayTaskError as err:  # the chunk failed inside a live runner
            if self.pool.router is not None and not self.router_alive():
                self.pool.replace_router()
            self.retry(chunk_id, err, queue)
        except ray.exceptions.RayError as err:  # the runner itself is gone (died, killed, unreachable)
            slot.in_flight[ref] = (chunk_id, 0.0)
            self.pool.replace_runner(slot, queue)
            self.attempts[chunk_id] += 1
            if self.attempts[chunk_id] > self.config.max_retries:
                raise RuntimeError(f"chunk {chunk_id}: runner lost {self.attempts[chunk_id]} times") from err
        return None

    def retry(self, chunk_id: int, err: BaseException, queue: collections.deque) -> None:
        self.attempts[chunk_id] += 1
        if self.attempts[chunk_id] > self.config.max_retries:
            raise RuntimeError(
                f"chunk {chunk_id} failed {self.attempts[chunk_id]} times; last error: {err}"
            ) from err
        queue.appendleft(chunk_id)

    def router_alive(self) -> bool:
        try:
            ray.get(self.pool.router.ready.remote(), timeout=self.config.call_timeout_s)
            return True
        except (*ACTOR_FAILURES, ray.exceptions.GetTimeoutError):
            return False

    def replace_hung_runners(self, queue: collections.deque, now: float) -> None:
        """Replace every runner with a chunk in flight for longer than ``chunk_timeout_s``."""
        for slot in self.pool.slots:
            if any(now - t0 > self.config.chunk_timeout_s for _, t0 in slot.in_flight.values()):
                self.pool.replace_runner(slot, queue)
