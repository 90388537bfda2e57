"""Start-to-exit time of a trivial job in the bubblewrap sandbox against a bare subprocess.

Both sides run the same interpreter and command, ``sys.executable -S -c pass`` (``-S``: no
site import, so the figure is the sandbox's cost, not the venv's ``.pth`` files):

* bare: ``subprocess.run([sys.executable, "-S", "-c", "pass"])``;
* sandboxed: ``BubblewrapSandbox().run(SandboxRun(["python", "-S", "-c", "pass"], …))`` —
  the whole public path: cgroup creation and removal when the host allows it, namespaces,
  binds, rlimits, log streaming and the supervisor's polling.

    .venv/bin/python bench/sandbox.py              # 30 runs each
    .venv/bin/python bench/sandbox.py --runs 100

Target: at most 50 ms extra per job (median).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training_jobs.sandbox import BubblewrapSandbox, SandboxRun

EXTRA_TARGET_MS = 50.0


def p90(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=10)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="runs of each side")
    args = parser.parse_args()

    sandbox = BubblewrapSandbox()
    sandbox.check()
    bare: list[float] = []
    boxed: list[float] = []
    with tempfile.TemporaryDirectory(prefix="agora-bench-sandbox-") as out:
        job = SandboxRun(command=["python", "-S", "-c", "pass"], mounts=[], output_dir=Path(out), workdir="/")
        for _ in range(args.runs):  # interleaved, so both sides see the same machine state
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-S", "-c", "pass"], check=True)
            bare.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            outcome = sandbox.run(job)
            boxed.append(time.perf_counter() - t0)
            if not outcome.ok:
                sys.exit(f"sandboxed run failed: {outcome.reason}")

    b, s = statistics.median(bare) * 1000, statistics.median(boxed) * 1000
    print(f"`{Path(sys.executable).name} -S -c pass`, {args.runs} runs each, start to exit")
    print(f"sandbox: {sandbox.isolation['why']}\n")
    print(f"{'side':24} {'median ms':>10} {'p90 ms':>10}")
    print(f"{'bare subprocess':24} {b:10.1f} {p90(bare) * 1000:10.1f}")
    print(f"{'bubblewrap sandbox':24} {s:10.1f} {p90(boxed) * 1000:10.1f}")
    print(f"\nextra per job: {s - b:.1f} ms (median), ratio sandbox / bare: {s / b:.2f}")
    verdict = "met" if s - b <= EXTRA_TARGET_MS else "NOT met"
    print(f"target: at most {EXTRA_TARGET_MS:.0f} ms extra: {verdict}")


if __name__ == "__main__":
    main()
