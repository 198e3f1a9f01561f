"""Soak: SIGKILL the embedded stack at random moments while storescu sends, many times.

    .venv/bin/python bench/kill_soak.py [--cycles 100] [--kills 10] [--images 120]

Each cycle sends a synthetic CT study, kills the API process and its gateway child with
SIGKILL up to --kills times at random moments, restarts, lets storescu resend what it did not
get Success for, waits until the spool drains, and counts instances lost (acknowledged but not
in the cloud byte-identical) and duplicated. Prints one line per cycle and the totals.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloudfilm.synth import synthesize_study
from tests.e2e.fault_harness import run_kill_cycle


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--images", type=int, default=120)
    args = ap.parse_args()
    lost = duplicated = failed = interrupted = 0
    with tempfile.TemporaryDirectory() as d:
        study = [
            str(p)
            for p in synthesize_study(Path(d) / "study", modality="CT", images=args.images, seed=1)
        ]
        for n in range(args.cycles):
            with tempfile.TemporaryDirectory() as w:
                r = run_kill_cycle(Path(w), study, kills=args.kills, seed=n)
            lost, duplicated, failed = lost + r.lost, duplicated + r.duplicated, failed + r.failed
            interrupted += r.interrupted
            print(
                f"cycle {n + 1:3d}: acked {r.acked}/{r.files} interrupted {r.interrupted} "
                f"lost {r.lost} duplicated {r.duplicated} failed {r.failed}",
                flush=True,
            )
    print(
        f"total: {args.cycles} cycles, {interrupted} kills during a transfer, "
        f"lost {lost}, duplicated {duplicated}, failed {failed}"
    )
    return 1 if lost or duplicated or failed else 0


if __name__ == "__main__":
    sys.exit(main())
