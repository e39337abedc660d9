"""A sweep sharded over workers: Ray actors, one model each, one output as from one process.

The driver loads no model. Worker 0 extracts the concept vectors and refusal directions into the
output folder (the same cache files a single process writes) and plans the batch size; the other
workers read them. The driver then cuts the unfinished trials into the very batches a single
process would run (per arm, in the sweep's order, ``batch_size`` at a time) and hands them out one
batch at a time to whichever worker is idle. Each worker runs its batches with ``run_sweep(...,
only=ids)`` into its own folder, ``shards/worker-K/`` (its own ``trials.jsonl``, appended after
every batch, crash-safe and resumable like the main one).

When a worker dies (its process killed, its node lost), the trials of its batch that are not in
its shard file go back to the front of the queue, and a replacement worker is started (at most
as many replacements as workers). At the end, and at the start of a resumed run, every shard
file is merged into ``trials.jsonl`` by trial id, in the sweep's order, and the shard folders
are removed. Because every batch is the one a single process would run, and each row's reply
depends on its own seed only (PROTOCOL §2, "Sampling"), the merged ``trials.jsonl`` holds the
same trials (as a set) as a single process's; a re-queued remainder of a batch runs as a smaller
batch, which gives each row the same reply as well (batch invariance, tested).

Ray is optional (``pip install "moia[ray]"``). On a cluster, the output folder must be on a
filesystem every node sees, and moia (and the model) must be installed on every node.
"""

import json
import os
import pathlib
import shutil
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..core.model import device_of, model_name
from ..io import write_text
from .arms import AblationSpec, cached_concept_vectors, prepare_arms
from .results import TRIALS, append_trials, check_run_settings, read_trials
from .run import arm_run_settings, recorded_settings, run_sweep
from .sweep import Sweep, TrialSpec, arm_trials

SHARDS = "shards"
RAY_HINT = 'needs Ray: pip install "moia[ray]" (or pip install ray)'
# environment the workers need to load models offline, forwarded to every Ray worker
FORWARDED_ENV = (
    *("MOIA_CACHE_DIR", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"),
    *("MOIA_JUDGE_MODEL", "MOIA_JUDGE_API_KEY", "MOIA_JUDGE_CACHE", "MOIA_JUDGE_URL"),
)


@dataclass(frozen=True)
class SweepJob:
    """What every worker needs to set up the same run (picklable: sent to each Ray actor)."""

    model: str
    backend: str
    dtype: str
    device: str | None
    sweep: Sweep
    out: str
    ablation: AblationSpec = field(default_factory=AblationSpec)
    bias: str | None = None
    judge: str = "rule"
    capitalize: bool = True
    threads: int | None = None


def shard_dir(out: Any, index: int) -> pathlib.Path:
    return pathlib.Path(out) / SHARDS / f"worker-{index}"


class SweepWorker:
    """One worker: a model and its sweep; Ray runs it as an actor (plain class, testable without)."""

    def __init__(self, job: SweepJob, index: int) -> None:
        import torch

        from ..lm.loading import load_model

        self.job, self.index = job, index
        if job.threads:
            torch.set_num_threads(job.threads)
        self.model = load_model(
            job.model, backend=job.backend, dtype=getattr(torch, job.dtype), device=job.device
        )
        self.ready: tuple[Any, Any, Any] | None = None
        folder = shard_dir(job.out, index)
        folder.mkdir(parents=True, exist_ok=True)
        info = {"pid": os.getpid(), "host": os.uname().nodename, "device": str(device_of(self.model))}
        write_text(folder / "worker.json", json.dumps(info) + "\n")  # which process is worker K

    def prepare(self) -> dict[str, Any]:
        """Extract (or read) vectors and refusal directions into the output folder; plan the batch.
        Returns what the driver needs: layers, the run settings a single process records, the batch."""
        from ..eval.judge import make_judge
        from ..lm.memory import auto_batch_size
        from ..trials.prompt import TrialPrompts

        job, model = self.job, self.model
        layers = job.sweep.validate(int(model.cfg.n_layers))
        vectors = cached_concept_vectors(
            model, job.sweep.concepts, layers, job.out, capitalize=job.capitalize, progress=False
        )
        interventions, arm_settings, _ = prepare_arms(
            model, job.sweep.arms, job.out, job.ablation, job.bias, progress=False
        )
        judge = make_judge(job.judge)
        self.ready = (vectors, interventions, judge)
        self.run_settings = arm_run_settings(
            model, job.backend, job.dtype, job.judge, judge, job.capitalize, arm_settings
        )
        prompts = TrialPrompts(model, job.sweep.variant, job.sweep.system)
        numbers = {*job.sweep.trials, *(job.sweep.control_trials or [])}
        longest = max(prompts.get(t, f).n_tokens for t in numbers for f in (False, True))
        batch = job.sweep.batch_size or auto_batch_size(model, longest, job.sweep.max_new_tokens)
        return {
            "layers": layers,
            "model": model_name(model),
            "run_settings": self.run_settings,
            "settings": recorded_settings(model, job.sweep, self.run_settings),
            "batch_size": batch,
        }

    def run(self, ids: list[str], batch_size: int) -> int:
        """Run the trials ``ids`` (one batch) into this worker's shard folder; returns how many ran."""
        if self.ready is None:
            self.prepare()
        assert self.ready is not None
        vectors, interventions, judge = self.ready
        sweep = replace(self.job.sweep, batch_size=batch_size)
        folder = shard_dir(self.job.out, self.index)
        summary = run_sweep(
            self.model, sweep, folder, vectors, interventions, judge, self.run_settings, False, only=set(ids)
        )
        return summary.ran


# ------------------------------------------------------------------------------- the driver's side
def sweep_batches(
    sweep: Sweep, layers: Sequence[int], done: set[str], batch_size: int
) -> list[list[TrialSpec]]:
    """The unfinished trials cut into the batches ``run_sweep`` would run: per arm, in order."""
    batches = []
    for arm in sweep.arms:
        todo = [s for s in arm_trials(sweep, arm, layers) if s.id not in done]
        batches += [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    return batches


def merge_shards(out: Any, order: Sequence[str] | None = None, remove: bool = True) -> int:
    """Append every shard's trials that ``trials.jsonl`` lacks (in ``order``, the sweep's), then
    empty the shard files (``remove``: remove the shard folders). Returns how many were added."""
    out = pathlib.Path(out)
    main = out / TRIALS
    have = {r["id"] for r in read_trials(main)}
    new: dict[str, dict[str, Any]] = {}
    files = sorted((out / SHARDS).glob(f"worker-*/{TRIALS}")) if (out / SHARDS).is_dir() else []
    for path in files:
        for record in read_trials(path):
            if record["id"] not in have:
                new.setdefault(record["id"], record)
    rank = {trial_id: i for i, trial_id in enumerate(order or [])}
    records = sorted(new.values(), key=lambda r: rank.get(r["id"], len(rank)))
    added = append_trials(main, records)  # one write, fsynced, before any shard file goes
    if remove:
        shutil.rmtree(out / SHARDS, ignore_errors=True)
    else:
        for path in files:
            path.unlink()
    return added


@dataclass
class ShardSummary:
    """What a sharded run did."""

    total: int
    already: int
    ran: int
    seconds: float
    workers: int
    replaced: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    trials_seconds: float = 0.0  # from the first batch handed out to the last one finished


class WorkerDied(Exception):
    """A worker's process is gone (its batch's unfinished trials are re-queued)."""


@dataclass
class Pool:
    """The driver's view of its workers: ``start(index)`` returns a handle, ``call(handle, method,
    *args)`` a future, ``wait(futures)`` one finished future, ``result(future)`` its value (raising
    ``WorkerDied`` for a dead worker), ``stop(handle)`` ends one. Ray implements it (``ray_pool``);
    tests use an in-process one."""

    start: Callable[[int], Any]
    call: Callable[..., Any]
    wait: Callable[[list[Any]], Any]
    result: Callable[[Any], Any]
    stop: Callable[[Any], None]


def drive(
    job: SweepJob, pool: Pool, workers: int, progress: Callable[[int], None] | None = None
) -> ShardSummary:
    """Run ``job``'s sweep on ``workers`` workers of ``pool`` and merge their shards (module doc)."""
    from .sweep import sweep_trials

    t0 = time.perf_counter()
    handles = {k: pool.start(k) for k in range(workers)}  # each loads its model meanwhile
    info = pool.result(pool.call(handles[0], "prepare"))  # extracts and caches vectors, directions
    layers, batch = info["layers"], int(info["batch_size"])
    settings = info["settings"]  # what a single process records (run.recorded_settings)
    check_run_settings(job.out, settings)
    order = [s.id for s in sweep_trials(job.sweep, layers)]
    merge_shards(job.out, order, remove=False)  # a resumed run: what the last run's workers finished
    done = {r["id"] for r in read_trials(pathlib.Path(job.out) / TRIALS)}
    queue = deque([s.id for s in b] for b in sweep_batches(job.sweep, layers, done, batch))
    already, ran, replaced = len(done & set(order)), 0, 0
    # busy: future -> (worker, ids of its batch; None while it prepares: reads worker 0's cache)
    t_trials = time.perf_counter()
    idle: deque[int] = deque([0])
    busy: dict[Any, tuple[int, list[str] | None]] = {}
    for k in list(handles)[1:]:
        busy[pool.call(handles[k], "prepare")] = (k, None)
    while queue or any(ids is not None for _, ids in busy.values()):
        while queue and idle:
            k = idle.popleft()
            ids = queue.popleft()
            busy[pool.call(handles[k], "run", ids, batch)] = (k, ids)
        future = pool.wait(list(busy))
        k, batch_ids = busy.pop(future)
        try:
            result = pool.result(future)
        except WorkerDied:
            pool.stop(handles.pop(k))
            finished = {r["id"] for r in read_trials(shard_dir(job.out, k) / TRIALS)}
            rest = [i for i in batch_ids or [] if i not in finished]
            count = len(batch_ids or []) - len(rest)
            if rest:
                queue.appendleft(rest)
            if replaced < workers:
                replaced += 1
                handles[k] = pool.start(k)  # the same shard folder
                busy[pool.call(handles[k], "prepare")] = (k, None)
            elif not handles:
                raise RuntimeError("every worker died; run the same command again to resume") from None
        else:
            count = result if batch_ids is not None else 0
            idle.append(k)
        ran += count
        if progress and count:
            progress(count)
    trials_seconds = time.perf_counter() - t_trials
    for handle in handles.values():
        pool.stop(handle)
    merge_shards(job.out, order)
    seconds = time.perf_counter() - t0
    return ShardSummary(len(order), already, ran, seconds, workers, replaced, info, trials_seconds)


def ray_pool(job: SweepJob, address: str | None = None) -> Pool:
    """A ``Pool`` of Ray actors (one GPU each where the cluster has GPUs, else CPU actors)."""
    try:
        import ray
        from ray.exceptions import RayActorError, RayTaskError
    except ImportError:
        raise ValueError(f"--workers {RAY_HINT}") from None
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    if not ray.is_initialized():
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": env} if env else None,
        )
    gpus = ray.cluster_resources().get("GPU", 0) if (job.device or "cuda").startswith("cuda") else 0
    resources = {"num_gpus": 1} if gpus else {"num_cpus": job.threads or 1}
    actor = ray.remote(SweepWorker).options(**resources, max_restarts=0)  # type: ignore[arg-type]

    def result(future: Any) -> Any:
        try:
            return ray.get(future)
        except RayActorError as e:
            raise WorkerDied(str(e)) from e
        except RayTaskError as e:  # the worker raised: the same error here (a ValueError stays one)
            raise e.as_instanceof_cause() from None

    def wait(futures: list[Any]) -> Any:
        ready, _ = ray.wait(futures, num_returns=1)
        return ready[0]

    return Pool(
        start=lambda k: actor.remote(job, k),  # type: ignore[attr-defined]
        call=lambda handle, method, *args: getattr(handle, method).remote(*args),
        wait=wait,
        result=result,
        stop=lambda handle: ray.kill(handle, no_restart=True),
    )


def run_sharded(
    job: SweepJob, workers: int, address: str | None = None, progress: Callable[[int], None] | None = None
) -> ShardSummary:
    """``drive`` on Ray actors; ``address`` None starts a local Ray instance on this machine."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be an integer >= 1, got {workers!r}")
    return drive(job, ray_pool(job, address), workers, progress)
