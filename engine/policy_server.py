"""Policy serving on Ray: micro-batching replicas behind a least-loaded router.

``PolicyServer`` is an async actor: it accepts many concurrent ``act`` calls (each usually one env
runner's whole tick) and gathers them into one micro-batch, bounded by ``max_batch_size`` requests
and ``max_wait_ms`` after the first arrival, then calls the backend's ``Policy.act`` once per batch
in a worker thread so the event loop keeps accepting calls meanwhile. A backend with its own
continuous batching (vLLM) exposes ``act_async`` and is called per request instead.

``PolicyRouter`` owns the replicas and replaces one that died or stopped answering, so a dead policy
server costs a restart, never a lost buyer. Env runners do not send their batches through it (that
would add two serialisation hops per tick): a ``ReplicaClient`` in the runner asks the router for
the replica handles once, calls the replicas directly (round-robin), and after a failed or timed-out
call asks the router to ``recover`` that replica, then retries on the handles it returns. The
router's own ``act`` (least-loaded choice, same retries) serves callers without a client.

Servers take a ``PolicyFactory`` (learners/agent/registry.py's ``policy_factory`` of a registered
backend, or a custom one) and build the policy in their own process: weights never travel.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from learners.agent.policy import ActRequest, ActResult
from learners.agent.registry import PolicyFactory

ACTOR_FAILURES = (RayActorError, ActorDiedError, ActorUnavailableError)


@dataclass
class ServerStats:
    """Counters a server reports; batch sizes show whether micro-batching happened."""

    calls: int = 0
    requests: int = 0
    batches: int = 0
    max_batch: int = 0
    tokens: int = 0
    busy_s: float = 0.0

    @property
    def mean_batch(self) -> float:
        return self.requests / self.batches if self.batches else 0.0


@ray.remote(max_concurrency=10_000)
class PolicyServer:
    """One policy replica; ``act`` calls from many runners are merged into micro-batches."""

    def __init__(self, factory: PolicyFactory, max_batch_size: int = 64, max_wait_ms: float = 5.0) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.policy = factory()
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.stats = ServerStats()
        self._queue: asyncio.Queue | None = None
        self._batcher: asyncio.Task | None = None

    async def ping(self) -> str:
        return ray.get_runtime_context().get_node_id()

    async def get_stats(self) -> dict[str, float]:
        s = self.stats
        return {**s.__dict__, "mean_batch": s.mean_batch}

    async def act(self, requests: Sequence[ActRequest]) -> list[ActResult]:
        """Answer ``requests`` in order; merged with concurrent calls into shared batches."""
        self.stats.calls += 1
        if not requests:
            return []
        act_async = getattr(self.policy, "act_async", None)
        if act_async is not None:
            start = time.perf_counter()
            results = await act_async(list(requests))
            self._count(len(requests), results, time.perf_counter() - start)
            return results
        if self._batcher is None:
            self._queue = asyncio.Queue()
            self._batcher = asyncio.get_running_loop().create_task(self._batch_loop())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((list(requests), future))
        return await future

    def _count(self, n: int, results: list[ActResult], seconds: float) -> None:
        self.stats.requests += n
        self.stats.batches += 1
        self.stats.max_batch = max(self.stats.max_batch, n)
        self.stats.tokens += sum(r.tokens for r in results)
        self.stats.busy_s += seconds

    async def _gather(self) -> list[tuple[list[ActRequest], asyncio.Future]]:
        """The next micro-batch: whatever is queued now, then more until full or the wait bound."""
        queue = self._queue
        items = [await queue.get()]
        size = len(items[0][0])
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch_size:
            if queue.empty():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                item = queue.get_nowait()
            items.append(item)
            size += len(item[0])
        return items

    def _run(self, batch: list[ActRequest]) -> list[ActResult]:
        results: list[ActResult] = []
        for lo in range(0, len(batch), self.max_batch_size):
            part = batch[lo : lo + self.max_batch_size]
            start = time.perf_counter()
            answers = list(self.policy.act(part))
            if len(answers) != len(part):
                raise RuntimeError(
                    f"policy {type(self.policy).__name__} returned {len(answers)} results"
                    f" for {len(part)} requests"
                )
            self._count(len(part), answers, time.perf_counter() - start)
            results.extend(answers)
        return results

    async def _batch_loop(self) -> None:
        while True:
            items = await self._gather()
            flat = [r for requests, _ in items for r in requests]
            try:
                results = await asyncio.to_thread(self._run, flat)
            except Exception as err:  # the error belongs to the callers; the loop must go on
                for _, future in items:
                    if not future.done():
                        future.set_exception(err)
                continue
            offset = 0
            for requests, future in items:
                if not future.done():
                    future.set_result(results[offset : offset + len(requests)])
                offset += len(requests)


@dataclass(frozen=True)
class ServingConfig:
    """How many replicas, how they batch, where they are placed, how long a call may take."""

    replicas: int = 1
    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)
    call_timeout_s: float = 120.0
    max_retries: int = 3


@ray.remote(num_cpus=0, max_concurrency=10_000)
class PolicyRouter:
    """Least-loaded routing over ``PolicyServer`` replicas, replacing dead or hung ones."""

    def __init__(self, factory: PolicyFactory, serving: ServingConfig) -> None:
        if serving.replicas < 1:
            raise ValueError(f"policy replicas must be >= 1, got {serving.replicas}")
        self.factory = factory
        self.serving = serving
        self.servers = [self._start() for _ in range(serving.replicas)]
        self.load = [0] * serving.replicas
        self.restarts = 0

    def _start(self) -> ray.actor.ActorHandle:
        s = self.serving
        options: dict[str, Any] = {"num_cpus": s.num_cpus, "num_gpus": s.num_gpus}
        if s.resources:
            options["resources"] = dict(s.resources)
        return PolicyServer.options(**options).remote(self.factory, s.max_batch_size, s.max_wait_ms)

    async def ready(self) -> list[str]:
        """Wait until every replica has loaded its policy; their node ids."""
        return list(await asyncio.gather(*(s.ping.remote() for s in self.servers)))

    async def replicas(self) -> list[ray.actor.ActorHandle]:
        return list(self.servers)

    async def recover(self, index: int, server: ray.actor.ActorHandle) -> list[ray.actor.ActorHandle]:
        """A caller's call to replica ``index`` (``server``) failed: replace it unless it answers a ping
        (or was replaced already); the current replicas."""
        current = self.servers[index]
        if current == server and not await self._healthy(current):
            self._replace(index, current)
        return list(self.servers)

    async def get_stats(self) -> dict[str, Any]:
        per = await asyncio.gather(*(self._stats_of(s) for s in self.servers))
        return {"restarts": self.restarts, "replicas": list(per)}

    async def _stats_of(self, server: ray.actor.ActorHandle) -> dict[str, float]:
        try:
            return await asyncio.wait_for(server.get_stats.remote(), self.serving.call_timeout_s)
        except (*ACTOR_FAILURES, TimeoutError):
            return {}

    async def _healthy(self, server: ray.actor.ActorHandle) -> bool:
        try:
            await asyncio.wait_for(server.ping.remote(), min(10.0, self.serving.call_timeout_s))
            return True
        except (*ACTOR_FAILURES, TimeoutError):
            return False

    def _replace(self, index: int, server: ray.actor.ActorHandle) -> None:
        # Concurrent callers see the same failure; only the first one replaces the replica.
        if self.servers[index] is server:
            ray.kill(server, no_restart=True)
            self.servers[index] = self._start()
            self.restarts += 1

    async def act(self, requests: Sequence[ActRequest]) -> list[ActResult]:
        """Answer ``requests`` on the least-loaded replica; retry elsewhere after a failure."""
        error: BaseException | None = None
        for _ in range(self.serving.max_retries + 1):
            index = min(range(len(self.servers)), key=self.load.__getitem__)
            server = self.servers[index]
            self.load[index] += len(requests)
            try:
                return await asyncio.wait_for(server.act.remote(list(requests)), self.serving.call_timeout_s)
            except ACTOR_FAILURES as err:
                error = err
                self._replace(index, server)
            except TimeoutError as err:
                error = err
                if not await self._healthy(server):
                    self._replace(index, server)
            finally:
                self.load[index] -= len(requests)
        raise RuntimeError(f"policy call failed after {self.serving.max_retries + 1} attempts") from error


@dataclass
class PendingCall:
    """A batch sent to one replica, kept so that it can be sent again after a failure."""

    requests: list[ActRequest]
    index: int
    server: ray.actor.ActorHandle
    ref: ray.ObjectRef


class ReplicaClient:
    """Runner-side access to a router's replicas: direct calls, the router consulted only on failure."""

    def __init__(
        self, router: ray.actor.ActorHandle, call_timeout_s: float = 120.0, max_retries: int = 3
    ) -> None:
        self.router = router
        self.call_timeout_s = call_timeout_s
        self.max_retries = max_retries
        self.servers: list[ray.actor.ActorHandle] = ray.get(router.replicas.remote(), timeout=call_timeout_s)
        self.turn = 0

    def submit(self, requests: list[ActRequest]) -> PendingCall:
        """Send ``requests`` to the next replica in turn; returns at once."""
        index = self.turn % len(self.servers)
        self.turn += 1
        server = self.servers[index]
        return PendingCall(requests, index, server, server.act.remote(requests))

    def fetch(self, pending: PendingCall) -> list[ActResult]:
        """The answers of ``pending``; a dead or hung replica is recovered and the batch sent again."""
        error: BaseException | None = None
        for _ in range(self.max_retries + 1):
            try:
                return ray.get(pending.ref, timeout=self.call_timeout_s)
            except (*ACTOR_FAILURES, ray.exceptions.GetTimeoutError) as err:
                error = err
                self.servers = ray.get(
                    self.router.recover.remote(pending.index, pending.server), timeout=self.call_timeout_s
                )
                pending = self.submit(pending.requests)
        raise RuntimeError(f"policy call failed after {self.max_retries + 1} attempts") from error
