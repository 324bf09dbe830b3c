"""Where a stage's work runs: in this process (`local`) or on Ray actors (`ray`), with the same results.

A stage describes its work as items (samples to attack, chunks of queries, batches to score) and a
worker: an object built by a picklable factory that loads what it needs once (a model, an
embedder) and has a method that turns one item into one outcome. The executor runs the method over
the items and hands each outcome back to the stage, which alone writes the run directory - so
resume and de-duplication work exactly as they do locally, whatever runs the work.

    local   one worker in this process, items in order
    ray     `workers` actors (one model each: `gpus_per_worker: 1` puts one per GPU) on an existing
            cluster (`address`, e.g. "auto" inside a Ray job or "ray://head:10001") or a local Ray
            started on demand. An actor that dies is restarted and its item retried up to
            `max_retries` times; an item that still fails is handed back as a `WorkerLostError`, which
            the stage records as a failure (a re-run tries it again), so nothing is retried forever.

Actors read inputs from the run directory, so on a cluster it must be on storage every node sees.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from medattack.config import option
from medattack.errors import ConfigError, MissingDependencyError, WorkerLostError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecutorConfig:
    kind: Literal["local", "ray"] = option("local", "local (this process) or ray (actors on a Ray cluster).")
    address: str | None = option(None, "Ray cluster address ('auto', 'ray://head:10001'); none: start a local Ray.")
    workers: int = option(2, "Ray actors, each with its own copy of the model.", low=1)
    cpus_per_worker: float = option(1.0, "CPUs reserved per actor.", low=0.0)
    gpus_per_worker: float | None = option(None, "GPUs per actor (1: one model per GPU); unset: one each when the "
                                           "cluster has a GPU per actor, a share when fewer, none on a CPU cluster.",
                                               low=0.0)
    max_retries: int = option(2, "Retries of an item whose actor died (the actor itself is restarted).", low=0)
    in_flight: int = option(1, "Items sent to an actor at once (1: a crash costs only the item it was on).", low=1)

    def __post_init__(self) -> None:
        if self.kind not in ("local", "ray"):
            raise ConfigError(f"executor kind {self.kind!r} is unknown; use local or ray.")
        if self.workers < 1 or self.max_retries < 0:
            raise ConfigError("executor: workers must be at least 1 and max_retries at least 0.")


class Pool(Protocol):
    def call_any(self, method: str, *args: Any) -> Any:
        """Call a method on one worker (e.g. to ask the loaded model's name)."""
        ...

    def map(self, method: str, items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """(index, outcome) per item, as they finish; an item whose worker was lost gives WorkerLostError."""
        ...

    def close(self) -> None: ...


class LocalPool:
    """One worker, built here, items in order."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.worker = factory()

    def call_any(self, method: str, *args: Any) -> Any:
        return getattr(self.worker, method)(*args)

    def map(self, method: str, items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        call = getattr(self.worker, method)
        for index, item in enumerate(items):
            yield index, call(item)

    def close(self) -> None:
        self.worker = None


class _RayWorker:
    """The actor class: builds the stage's worker from its factory and calls its methods."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.worker = factory()

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.worker, method)(*args)

    def pid(self) -> int:
        import os

        return os.getpid()


def gpu_share(cluster_gpus: float, workers: int) -> float:
    """GPUs per actor when the user set none: one each when there is a GPU per actor, an equal share
    of fewer GPUs (several models per GPU), 0 on a cluster without GPUs."""
    if cluster_gpus <= 0:
        return 0.0
    return 1.0 if cluster_gpus >= workers else round(cluster_gpus / workers, 4)


class RayPool:
    """`workers` actors, each given `in_flight` items at a time. Ray restarts an actor whose process
    dies; the item it was running goes back in the queue until it has been tried `max_retries + 1`
    times, and is then handed back as a WorkerLostError."""

    def __init__(self, factory: Callable[[], Any], config: ExecutorConfig) -> None:
        try:
            import ray
        except ImportError:
            raise MissingDependencyError("the ray executor needs Ray: pip install 'medattack[ray]'.") from None
        self.ray = ray
        self.config = config
        if not ray.is_initialized():
            ray.init(address=config.address, ignore_reinit_error=True, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.WARNING)
        gpus = config.gpus_per_worker
        if gpus is None:
            gpus = gpu_share(float(ray.cluster_resources().get("GPU", 0.0)), max(1, config.workers))
            log.warning("ray: %d actor(s) with %s GPU each (the cluster has %s); set gpus_per_worker to choose",
                        max(1, config.workers), f"{gpus:g}", f"{ray.cluster_resources().get('GPU', 0):g}")
        actor_class = ray.remote(_RayWorker).options(
            num_cpus=config.cpus_per_worker, num_gpus=gpus, max_restarts=-1, max_task_retries=0)
        self.actors = [actor_class.remote(factory) for _ in range(max(1, config.workers))]

    def call_any(self, method: str, *args: Any) -> Any:
        return self.ray.get(self.actors[0].call.remote(method, *args))

    def pids(self) -> list[int]:
        return self.ray.get([actor.pid.remote() for actor in self.actors])

    def map(self, method: str, items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        ray = self.ray
        pending = list(range(len(items)))[::-1]  # indices, popped from the end: in order
        attempts = [0] * len(items)
        running: dict[Any, tuple[int, int]] = {}  # object ref -> (item index, actor index)
        load = [0] * len(self.actors)

        def submit(actor: int) -> None:
            while pending and load[actor] < max(1, self.config.in_flight):
                index = pending.pop()
                attempts[index] += 1
                running[self.actors[actor].call.remote(method, items[index])] = (index, actor)
                load[actor] += 1

        for actor in range(len(self.actors)):
            submit(actor)
        restarting: dict[Any, int] = {}  # readiness probe -> actor index, for actors Ray is restarting
        while running or restarting:
            (ref,), _ = ray.wait([*running, *restarting], num_returns=1)
            if ref in restarting:  # a probe answered: the actor is back, or not yet (probe again shortly)
                actor = restarting.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError:
                    time.sleep(0.5)
                    restarting[self.actors[actor].pid.remote()] = actor
                    continue
                submit(actor)
                continue
            index, actor = running.pop(ref)
            load[actor] -= 1
            try:
                outcome = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as error:
                # the actor died on this item (nothing is sent to an actor while it restarts)
                if actor not in restarting.values():
                    restarting[self.actors[actor].pid.remote()] = actor
                if attempts[index] <= self.config.max_retries:
                    log.warning("item %d lost its worker (%s); trying it again", index, type(error).__name__)
                    pending.append(index)
                    for other in range(len(self.actors)):  # an idle healthy actor may take it now
                        if other not in restarting.values():
                            submit(other)
                else:
                    log.warning("item %d lost its worker %d times; recorded as failed", index, attempts[index])
                    yield index, WorkerLostError(
                        f"the worker died on this item {attempts[index]} time(s) ({type(error).__name__}); "
                        "a re-run tries it again.")
                continue
            yield index, outcome
            submit(actor)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []


POOLS: dict[str, Callable[[Callable[[], Any], ExecutorConfig], Pool]] = {
    "local": lambda factory, config: LocalPool(factory),
    "ray": RayPool,
}


def runs_here(config: ExecutorConfig | None) -> bool:
    """Whether the work runs in this process (so an already loaded model can be handed to it)."""
    return config is None or config.kind == "local"


def open_pool(config: ExecutorConfig | None, factory: Callable[[], Any]) -> Pool:
    """A pool of workers built by `factory` (picklable for ray: a module-level class and its arguments)."""
    config = config or ExecutorConfig()
    return POOLS[config.kind](factory, config)
