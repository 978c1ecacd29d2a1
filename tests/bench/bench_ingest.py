"""Benchmark: HH-RLHF ingest throughput and memory.

    python tests/bench/bench_ingest.py [--records 10000] [--large 50000]

Prints records/s for 10,000 HH records (aim: >= 20,000/s), next to a reference measured in the same
run (reading + json.loads of every line, the floor any JSONL ingest pays), and the peak memory of
ingesting N and 5N records, each in a fresh process (tracemalloc peak of Python allocations, and
the process's max RSS): ingest streams, so the peak must not grow with the file beyond the 8-byte
digest per record kept for duplicate detection.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def write_hh(path: Path, count: int, seed: int = 0) -> None:
    """Realistic HH rows: 1-3 turns of history, replies of a few sentences (~700 bytes a row)."""
    rng = random.Random(seed)
    words = "the river town bridge bread soup emblem flag heron lynx oak star market winter spring festival".split()
    sentence = lambda n: " ".join(rng.choice(words) for _ in range(n)).capitalize() + "."
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            history = "".join(f"\n\nHuman: {sentence(8)}\n\nAssistant: {sentence(12)} {sentence(10)}" for _ in range(rng.randint(0, 2)))
            prompt = f"{history}\n\nHuman: Question {i}: {sentence(9)}\n\nAssistant:"
            row = {"chosen": f"{prompt} {sentence(14)} {sentence(12)}", "rejected": f"{prompt} {sentence(6)}"}
            handle.write(json.dumps(row) + "\n")


def _child(mode: str, path: str, out: str) -> None:
    """Run in a fresh process; print one JSON line of figures."""
    import resource
    import tracemalloc

    sys.path.insert(0, str(REPO))
    from labeling.ingest import ingest

    if mode == "reference":
        start = time.perf_counter()
        with open(path, encoding="utf-8") as handle:
            rows = sum(1 for line in handle if json.loads(line))
        print(json.dumps({"seconds": time.perf_counter() - start, "rows": rows}))
        return
    if mode == "memory":
        tracemalloc.start()
    start = time.perf_counter()
    summary = ingest("hh-rlhf", path, out)
    seconds = time.perf_counter() - start
    figures = {"seconds": seconds, "read": summary["read"], "accepted": summary["accepted"],
               "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if mode == "memory":
        figures["traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    print(json.dumps(figures))


def _run(mode: str, path: Path, out: Path) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", mode, str(path), str(out)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "PATH", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small, large = tmp / "small.jsonl", tmp / "large.jsonl"
        write_hh(small, args.records)
        write_hh(large, args.large, seed=1)
        mb = small.stat().st_size / 2**20
        reference = min(_run("reference", small, tmp / "r")["seconds"] for _ in range(args.repeats))
        timed = [_run("speed", small, tmp / "s") for _ in range(args.repeats)]
        best = min(timed, key=lambda f: f["seconds"])
        assert best["read"] == best["accepted"] == args.records, best
        rate = args.records / best["seconds"]
        print(f"HH ingest, {args.records:,} records ({mb:.1f} MB), best of {args.repeats}:")
        print(f"  ingest            {best['seconds']:.3f} s  = {rate:,.0f} records/s   (aim >= 20,000/s: {'ok' if rate >= 20_000 else 'BELOW'})")
        print(f"  reference         {reference:.3f} s  = {args.records / reference:,.0f} records/s   (read + json.loads only)")
        print(f"  ingest/reference  {best['seconds'] / reference:.1f}x the cost of just parsing the JSON")
        print("memory (fresh process each, tracemalloc on):")
        rows = []
        for label, path, count in (("N", small, args.records), ("5N", large, args.large)):
            figures = _run("memory", path, tmp / f"m{count}")
            rows.append(figures)
            print(f"  {count:>7,} records ({path.stat().st_size / 2**20:5.1f} MB): traced peak {figures['traced_peak_mb']:6.2f} MB, "
                  f"max RSS {figures['max_rss_mb']:6.1f} MB")
        growth = rows[1]["traced_peak_mb"] - rows[0]["traced_peak_mb"]
        per_record = growth * 2**20 / (args.large - args.records)
        print(f"  peak grows {growth:.2f} MB for {args.large - args.records:,} more records "
              f"({per_record:.0f} B/record: the duplicate-detection digests), while the file grows "
              f"{(large.stat().st_size - small.stat().st_size) / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
