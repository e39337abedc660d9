"""Ray, end to end on this machine's CPU: ``moia reproduce --workers 2`` writes the same trials and report
as one process, greedy and sampled, with one worker SIGKILLed mid-run.

Ray runs as a local instance (``ray.init()`` on this machine: a real raylet and worker processes,
so that one can be killed; Ray's ``local_mode`` runs actors inside the driver and could not show
that). The model is a shrunk random Llama with SmolLM2's tokenizer (``tests/shrunk.py``).
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("ray", reason='Ray is not installed (pip install "moia[ray]"); sharded runs are skipped')
pytestmark = pytest.mark.slow

from tests.shrunk import save_shrunk  # noqa: E402

GRID = ["--concepts", "Dust", "Oceans", "--layers", "1", "--strengths", "4", "--trials", "1", "2"]
GRID += ["--control-trials", "1", "2", "--arms", "baseline", "ablation", "--max-new-tokens", "8"]
GRID += ["--batch-size", "2", "--threads", "1"]
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_shrunk("llama", tmp_path_factory.mktemp("llama"))


def _moia(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "moia", "reproduce", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )


def _trials(out: pathlib.Path) -> dict[str, dict]:
    lines = (out / "trials.jsonl").read_text().splitlines()
    records = {json.loads(line)["id"]: json.loads(line) for line in lines}
    assert len(records) == len(lines)  # no id twice
    return records


def _kill_worker_mid_run(out: pathlib.Path, proc: subprocess.Popen, index: int = 1) -> int:
    """SIGKILL worker ``index`` once it has finished a batch (and before the run ends)."""
    shard = out / "shards" / f"worker-{index}"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        trials = shard / "trials.jsonl"
        if (shard / "worker.json").exists() and trials.exists() and trials.read_text().count("\n") >= 1:
            pid = json.loads((shard / "worker.json").read_text())["pid"]
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.05)
    output = proc.communicate()[0]
    raise AssertionError(f"worker {index} never finished a batch before the run ended:\n{output}")


@pytest.mark.parametrize("sampling", [[], ["--temperature", "1"]], ids=["greedy", "sampled"])
def test_two_workers_match_one_process_with_a_worker_killed(llama, tmp_path, sampling):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    one = _moia("--model", str(llama), "--out", str(single), *GRID, *sampling)
    assert one.wait(timeout=600) == 0, one.communicate()[0]

    two = _moia("--model", str(llama), "--out", str(sharded), *GRID, *sampling, "--workers", "2")
    _kill_worker_mid_run(sharded, two)
    output = two.communicate(timeout=600)[0]
    assert two.returncode == 0, output
    assert "(1 replaced)" in output

    reference, merged = _trials(single), _trials(sharded)
    assert len(reference) == 36
    assert merged == reference  # every trial once, each with the same reply and grade
    if sampling:
        assert len({r["response"] for r in reference.values()}) > 10
    report_one = json.loads((single / "report.json").read_text())
    report_two = json.loads((sharded / "report.json").read_text())
    assert report_two["metrics"] == report_one["metrics"]
    assert report_two["settings"]["workers"]["replaced"] == 1
    assert json.loads((sharded / "run.json").read_text()) == json.loads((single / "run.json").read_text())
    assert not (sharded / "shards").exists()
