"""How long a job's input lookup takes in the embedded store, read from it or from memory.

jobflow resolves a job's inputs with three lookups by uuid per referenced job.
The embedded store (montydb on SQLite) decodes every job document for each;
:class:`~xtalloop.store.recent.RecentJobDocs` answers those of jobs the same
run wrote from memory. This writes ``--jobs`` job documents of about
``--kb`` kB each into a fresh embedded store through xtalloop's job store (as
a local run does), then resolves the outputs of ``--lookups`` of them the way
jobflow does, through a plain job store and through the run's own
(``RetryingJobStore.wrap``), and prints both times.

Example::

    python benchmarks/store_lookup.py --jobs 400 --kb 40
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--kb", type=float, default=40.0, help="size of each job's output")
    parser.add_argument("--lookups", type=int, default=10)
    args = parser.parse_args()

    from jobflow.core.reference import OutputReference, resolve_references

    from xtalloop.config import StoreConfig
    from xtalloop.retry import RetryingJobStore
    from xtalloop.store import job_store

    with tempfile.TemporaryDirectory() as tmp:
        config = StoreConfig(path=str(Path(tmp) / "store"))
        ours = RetryingJobStore.wrap(job_store(config), 60)
        ours.connect()
        payload = [0.123456789] * int(args.kb * 1000 / 9)  # ~9 bytes per float in BSON
        uuids = [f"job-{i:05d}" for i in range(args.jobs)]
        start = time.perf_counter()
        for uuid in uuids:
            ours.update({"uuid": uuid, "index": 1, "output": {"energies": payload}},
                        key=["uuid", "index"])
        written = time.perf_counter() - start
        wanted = uuids[-args.lookups:]  # the newest: the inputs of the next jobs
        times = {}
        for name, store in (("store (plain job store)", job_store(config)),
                            ("memory (the run's own store)", ours)):
            store.connect()
            refs = [OutputReference(u) for u in wanted]
            start = time.perf_counter()
            values = resolve_references(refs, store)
            times[name] = (time.perf_counter() - start) / len(refs)
            assert all(len(v["energies"]) == len(payload) for v in values.values())
        size = sum(p.stat().st_size for p in Path(tmp).rglob("jobs.collection"))
        print(f"{args.jobs} job documents, {size / 1e6:.1f} MB on disk, written in "
              f"{written:.1f} s")
        for name, seconds in times.items():
            print(f"  one job's output resolved, {name}: {1000 * seconds:.2f} ms")
        plain, memory = times.values()
        print(f"  memory is {plain / memory:.0f}x faster")


if __name__ == "__main__":
    main()
