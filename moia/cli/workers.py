"""``moia reproduce --workers N [--ray-address ADDR]``: the same run, sharded over Ray actors.

The driver loads no model: the workers do (one each; one GPU each where the cluster has GPUs),
worker 0 prepares the vectors and directions, the driver merges the workers' shard files into
``trials.jsonl`` and writes the same report a single process writes (``moia.experiment.shards``).
"""

import argparse
import pathlib
import time
from typing import Any

from tqdm.auto import tqdm


def add_worker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help='shard the trials over N Ray workers, one model each (needs pip install "moia[ray]")',
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="a running Ray cluster (ray start --head ...; default: start one on this machine)",
    )


def run_with_workers(args: argparse.Namespace, sweep: Any, skipped: dict[str, str]) -> int:
    """The sharded ``moia reproduce``: ``sweep`` built and its unrunnable arms ``skipped`` already."""
    from ..experiment.arms import AblationSpec
    from ..experiment.report import table_rows, text_table, write_report
    from ..experiment.results import TRIALS, read_trials
    from ..experiment.shards import SweepJob, run_sharded
    from ..experiment.sweep import sweep_trials

    t0 = time.perf_counter()
    name = pathlib.Path(args.model).name
    out = pathlib.Path(args.out or f"runs/reproduce-{name}{'-full' if args.full else ''}")
    out.mkdir(parents=True, exist_ok=True)
    job = SweepJob(
        model=args.model,
        backend=args.backend,
        dtype=args.dtype,
        device=args.device,
        sweep=sweep,
        out=str(out.resolve()),
        ablation=AblationSpec(args.ablation, args.ablation_weight, args.ablation_site),
        bias=args.bias,
        judge=args.judge,
        capitalize=not args.lowercase,
        threads=args.threads,
    )
    print(f"moia reproduce: {args.model} on {args.workers} workers, output {out}", flush=True)
    with tqdm(desc="trials", unit="trial") as bar:
        summary = run_sharded(job, args.workers, args.ray_address, progress=bar.update)
    layers = summary.info["layers"]
    ids = {s.id for s in sweep_trials(sweep, layers)}
    records = [r for r in read_trials(out / TRIALS) if r["id"] in ids]
    settings = {
        "model": summary.info["model"],
        "grid": "full" if args.full else "quick",
        **sweep.as_dict(),
        "layer_indices": layers,
        **summary.info["run_settings"],
        "skipped_arms": skipped,
        # wall time of the workers' part (model loads, preparation, trials), and of the trials
        "timing_s": {"workers": round(summary.seconds, 1), "trials": round(summary.trials_seconds, 1)},
        "trials_run": summary.ran,
        "trials_resumed": summary.already,
        "workers": {
            "count": summary.workers,
            "replaced": summary.replaced,
            "batch_size": summary.info["batch_size"],
        },
    }
    report = write_report(out, records, settings)
    print(text_table(table_rows(report["metrics"])))
    wall = time.perf_counter() - t0
    print(
        f"{summary.ran} trials run on {summary.workers} workers ({summary.replaced} replaced), "
        f"{summary.already} resumed, in {wall:.0f} s; report: {out / 'report.md'}"
    )
    return 0
