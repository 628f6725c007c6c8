"""Append to a spool in a loop, printing each range once its append has returned.

Run by test_spool's kill -9 test: ``python spool_writer.py <spool path> <run> <seed>``. Each line
``<batch id> <stream> <first seq> <last seq>`` is printed (and flushed) only after the append that
stored that batch returned, so every printed batch must survive a SIGKILL of this process.

Each observation of a batch carries the batch id in its point id, its index as ``ts`` and the
batch size as its value, so that a reader can tell a whole batch from a torn one.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from tether.gateway.spool import Spool
from tether.protocol.telemetry import Observation

CHUNK_SIZE = 16  # small, so that most batches span several rows of the spool
STREAMS = ("alpha", "beta")


def batch(batch_id: int, size: int) -> list[Observation]:
    return [Observation(f"batch-{batch_id}", float(i), size) for i in range(size)]


def main() -> None:
    path, run, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    spool = Spool.open(path, max_bytes=1 << 30, max_age=1e9, chunk_size=CHUNK_SIZE)
    for n in range(100_000):  # bounded; the test kills us long before
        batch_id = run * 1_000_000 + n
        stream = STREAMS[n % len(STREAMS)]
        first, last = spool.append(stream, batch(batch_id, rng.randint(1, 80)), now=float(n))
        sys.stdout.write(f"{batch_id} {stream} {first} {last}\n")
        sys.stdout.flush()
    spool.close()


if __name__ == "__main__":
    main()
