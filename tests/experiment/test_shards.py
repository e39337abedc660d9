"""The sharded sweep's driver without Ray: batches as one process cuts them, a dead worker's unfinished
trials re-queued, shards merged by trial id, resumed runs; and the CLI's message without Ray."""

import json
import pathlib

import pytest

from moia.experiment.results import TRIALS, append_trials, read_trials
from moia.experiment.shards import (
    SHARDS,
    Pool,
    SweepJob,
    WorkerDied,
    drive,
    merge_shards,
    shard_dir,
    sweep_batches,
)
from moia.experiment.sweep import Sweep, arm_trials, sweep_trials

LAYERS = [1, 2]


def small_sweep() -> Sweep:
    return Sweep(
        concepts=["Dust", "Oceans"],
        layers=LAYERS,
        strengths=[4],
        trials=[1, 2],
        control_trials=[1, 2, 3],
        arms=["baseline", "ablation"],
        batch_size=5,
    )


def reply(trial_id: str) -> dict:
    return {"id": trial_id, "response": f"reply to {trial_id}"}


class FakeWorker:
    """Appends one record per trial to its shard file; ``die_after`` records, it dies instead."""

    def __init__(self, job: SweepJob, index: int, die_after: int | None) -> None:
        self.job, self.index, self.die_after, self.ran = job, index, die_after, 0
        shard_dir(job.out, index).mkdir(parents=True, exist_ok=True)
        (shard_dir(job.out, index) / "worker.json").write_text('{"pid": 1}')  # as SweepWorker does

    def prepare(self):
        settings = {"model": "fake", "device": "cpu"}  # as run.recorded_settings
        return {"layers": LAYERS, "model": "fake", "settings": settings, "batch_size": 5}

    def run(self, ids, batch_size):
        path = shard_dir(self.job.out, self.index) / TRIALS
        assert (path.parent / "worker.json").exists(), "the driver removed a live worker's folder"
        for trial_id in ids:
            if self.die_after is not None and self.ran >= self.die_after:
                raise WorkerDied(f"worker {self.index} killed")
            append_trials(path, [reply(trial_id)])
            self.ran += 1
        return len(ids)


class Future:
    def __init__(self, kind, value):
        self.kind, self.value = kind, value


def local_pool(job: SweepJob, deaths: dict[int, int]) -> tuple[Pool, list]:
    """An in-process pool: calls run at once; worker k's first incarnation dies after deaths[k]."""
    started: list[int] = []

    def start(k):
        started.append(k)
        return FakeWorker(job, k, deaths.get(k) if started.count(k) == 1 else None)

    def call(worker, method, *args):
        try:
            return Future("ok", getattr(worker, method)(*args))
        except WorkerDied as e:
            return Future("died", e)

    def result(future):
        if future.kind == "died":
            raise future.value
        return future.value

    def wait(futures):
        return futures[0]

    return Pool(start, call, wait, result, stop=lambda worker: None), started


def job_for(tmp_path: pathlib.Path) -> SweepJob:
    return SweepJob("fake", "bridge", "float32", "cpu", small_sweep(), str(tmp_path))


def test_sweep_batches_are_those_of_one_process():
    sweep = small_sweep()
    batches = sweep_batches(sweep, LAYERS, set(), 5)
    per_arm = [arm_trials(sweep, arm, LAYERS) for arm in sweep.arms]
    expected = []
    for specs in per_arm:
        expected += [5] * (len(specs) // 5) + ([len(specs) % 5] if len(specs) % 5 else [])
    assert [len(b) for b in batches] == expected
    assert all(len({s.arm for s in b}) == 1 for b in batches)  # never mixed arms
    assert [s.id for b in batches for s in b] == [s.id for s in sweep_trials(sweep, LAYERS)]
    done = {s.id for s in per_arm[0][:7]}
    rest = sweep_batches(sweep, LAYERS, done, 5)
    assert [s.id for s in rest[0]] == [s.id for s in per_arm[0][7:12]]


def test_two_workers_give_every_trial_once_in_order(tmp_path):
    job = job_for(tmp_path)
    pool, started = local_pool(job, {})
    summary = drive(job, pool, workers=2)
    records = read_trials(tmp_path / TRIALS)
    order = [s.id for s in sweep_trials(job.sweep, LAYERS)]
    assert [r["id"] for r in records] == order
    assert (summary.total, summary.ran, summary.replaced, started) == (len(order), len(order), 0, [0, 1])
    assert not (tmp_path / SHARDS).exists()
    assert json.loads((tmp_path / "run.json").read_text())["model"] == "fake"


def test_a_dead_workers_unfinished_trials_are_requeued(tmp_path):
    job = job_for(tmp_path)
    pool, started = local_pool(job, {1: 3})  # worker 1 dies after 3 trials, mid-batch
    summary = drive(job, pool, workers=2)
    ids = [r["id"] for r in read_trials(tmp_path / TRIALS)]
    order = [s.id for s in sweep_trials(job.sweep, LAYERS)]
    assert ids == order  # each once, none lost
    assert summary.replaced == 1 and started == [0, 1, 1]
    assert summary.ran == len(order)


def test_resume_merges_what_the_last_runs_workers_finished(tmp_path):
    job = job_for(tmp_path)
    order = [s.id for s in sweep_trials(job.sweep, LAYERS)]
    append_trials(shard_dir(tmp_path, 0) / TRIALS, [reply(i) for i in order[:4]])
    append_trials(shard_dir(tmp_path, 3) / TRIALS, [reply(i) for i in order[10:12]])
    pool, _ = local_pool(job, {})
    summary = drive(job, pool, workers=1)
    assert [r["id"] for r in read_trials(tmp_path / TRIALS)] == order[:4] + order[10:12] + [
        i for i in order if i not in order[:4] + order[10:12]
    ]
    assert summary.already == 6 and summary.ran == len(order) - 6


def test_merge_keeps_the_first_record_of_an_id_and_skips_those_already_merged(tmp_path):
    append_trials(tmp_path / TRIALS, [reply("a")])
    append_trials(shard_dir(tmp_path, 0) / TRIALS, [reply("a"), reply("b")])
    append_trials(shard_dir(tmp_path, 1) / TRIALS, [{"id": "b", "response": "other"}, reply("c")])
    assert merge_shards(tmp_path, order=["c", "b", "a"]) == 2
    assert [(r["id"], r["response"]) for r in read_trials(tmp_path / TRIALS)] == [
        ("a", "reply to a"),
        ("c", "reply to c"),
        ("b", "reply to b"),
    ]


def test_workers_without_ray_say_how_to_install_it(monkeypatch, capsys, tmp_path):
    import builtins

    from moia.cli import main

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    args = ["reproduce", "--workers", "2", "--concepts", "Dust", "--arms", "baseline", "--out", str(tmp_path)]
    assert main(args) == 2
    assert 'needs Ray: pip install "moia[ray]"' in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, -1])
def test_workers_must_be_positive(tmp_path, workers):
    from moia.experiment.shards import run_sharded

    with pytest.raises(ValueError, match=f"--workers must be an integer >= 1, got {workers}"):
        run_sharded(job_for(tmp_path), workers)


def test_batch_size_zero_means_planned_and_negative_is_an_error():
    assert Sweep(concepts=["Dust"], layers=[1], strengths=[4]).batch_size == 0  # the default: planned
    small_sweep().validate(4)
    with pytest.raises(ValueError, match=r"batch_size must be >= 0 \(0: planned from free memory\), got -1"):
        Sweep(concepts=["Dust"], layers=[1], strengths=[4], batch_size=-1).validate(4)
