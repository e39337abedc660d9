"""``moia reproduce --workers N [--ray-address ADDR]``: the same run, sharded over Ray actors.

The driver loads no model: the workers do (one each; one GPU each where the cluster has GPUs),
worker 0 prepares the vectors and directions, the driver merges the workers' shard files into
``trials.jsonl`` and writes the same report a single process writes (``moia.experiment.shards``).
"""

import argparse
import pathlib
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


def run_with_workers(
    args: argparse.Namespace, sweep: Any, ablation: Any, out: pathlib.Path
) -> dict[str, Any]:
    """The sharded run of ``moia reproduce``: the report's settings that come from the run, the
    same keys ``moia.cli.reproduce.run_here`` returns, plus the workers' count and replacements."""
    from ..experiment.shards import SweepJob, run_sharded

    out.mkdir(parents=True, exist_ok=True)
    job = SweepJob(
        model=args.model,
        backend=args.backend,
        dtype=args.dtype,
        device=args.device,
        sweep=sweep,
        out=str(out.resolve()),
        ablation=ablation,
        bias=args.bias,
        judge=args.judge,
        capitalize=not args.lowercase,
        threads=args.threads,
    )
    print(f"moia reproduce: {args.model} on {args.workers} workers, output {out}", flush=True)
    with tqdm(desc="trials", unit="trial") as bar:
        summary = run_sharded(job, args.workers, args.ray_address, progress=bar.update)
    return {
        "model": summary.info["model"],
        "layer_indices": summary.info["layers"],
        **summary.info["settings"],  # sampling and the run settings, as a single process records them
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
