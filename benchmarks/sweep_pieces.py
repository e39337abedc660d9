"""The pieces of ``bench_sweep.py``'s two runs, timed apart: where batching helps on this machine.

    OMP_NUM_THREADS=1 python benchmarks/sweep_pieces.py [NEW_TOKENS]     # default 16

SmolLM2-135M-Instruct on the default (native) path, random token ids of the benchmark's sizes: one
trial alone (its 162-token prompt, then a decode step at batch 1) against 32 trials batched (the
121-token shared prefix once, the 32 suffixes of 41 positions, then a decode step at batch 32), each
the median of 3 rounds, decode steps averaged over NEW_TOKENS - 1 steps. Prints the seconds and the
ratio they bound: one trial alone ÷ one trial's share of the batch (no hooks; ``bench_sweep.py``
measures the real trials). ``benchmarks/RESULTS.md`` reads these figures.
"""

import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported

import torch  # noqa: E402

PREFIX, SUFFIX, BATCH = 121, 41, 32


def main(new_tokens: int) -> dict[str, float]:
    import moia
    from moia.lm.decoding import Stepper
    from moia.lm.native import execution_model

    torch.set_grad_enabled(False)
    model = execution_model(moia.load_model("smollm2-135m-instruct"), None)
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(100, 40000, (1, PREFIX), generator=g)
    suffix = torch.randint(100, 40000, (BATCH, SUFFIX), generator=g)
    steps = new_tokens - 1  # the last token picked is not fed back

    def timed(fn, *args) -> float:
        start = time.perf_counter()
        fn(*args)
        return time.perf_counter() - start

    def run_steps(stepper: Stepper, rows: int) -> None:
        for _ in range(steps):
            stepper.step(torch.ones(rows, 1, dtype=torch.long))

    def feed(stepper: Stepper, tokens: torch.Tensor) -> None:
        stepper.forward(tokens, torch.ones_like(tokens))

    def one_round() -> dict[str, float]:
        alone, batched = Stepper(model, 1, new_tokens), Stepper(model, 1, new_tokens)
        times = {"solo_prompt": timed(feed, alone, torch.cat([prefix, suffix[:1]], 1))}
        times["solo_step"] = timed(run_steps, alone, 1) / steps
        times["prefix"] = timed(feed, batched, prefix)
        batched.repeat(BATCH)
        times["suffix"] = timed(feed, batched, suffix)
        times["batch_step"] = timed(run_steps, batched, BATCH) / steps
        return times

    rounds = [one_round() for _ in range(3)]
    runs = {k: [r[k] for r in rounds] for k in rounds[0]}
    t = {k: statistics.median(v) for k, v in runs.items()}
    alone_s = t["solo_prompt"] + steps * t["solo_step"]
    share_s = (t["prefix"] + t["suffix"] + steps * t["batch_step"]) / BATCH
    return {
        **{k: round(v, 4) for k, v in t.items()},
        "one_trial_alone_s": round(alone_s, 3),
        "one_trial_batched_s": round(share_s, 3),
        "ratio": round(alone_s / share_s, 2),
        "new_tokens": new_tokens,
        "threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 16)))
