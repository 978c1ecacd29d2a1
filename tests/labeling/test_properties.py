"""Property: corrupt valid files in many ways; ingest never crashes, the counts add up, and every
good record survives next to the bad ones."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labeling.ingest import NothingAccepted, ingest

# Replies may contain newlines and the markers HH uses ("\n\nAssistant:" inside a reply is the hard
# case); prompt turns may contain "Assistant:" inline but no blank line, as in real HH transcripts
# (a turn boundary inside a turn is ambiguous in the format itself).
WORDS = st.lists(st.sampled_from(["ab", "cd", " ", ".", "?", "\n", "\n\n", "Assistant:", "Human:", "é", "水"]),
                 min_size=1, max_size=12).map("".join)
TURN_WORDS = st.lists(st.sampled_from(["ab", "cd", " ", ".", "?", "Assistant:", "Human:", "é", "水"]),
                      min_size=1, max_size=12).map("".join)
SETTINGS = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@st.composite
def hh_record(draw, index: int):
    turns = draw(st.lists(st.tuples(TURN_WORDS, TURN_WORDS), min_size=0, max_size=2))
    history = "".join(f"\n\nHuman: {h}\n\nAssistant: {a}" for h, a in turns)
    question = draw(TURN_WORDS)
    good, bad = draw(WORDS), draw(WORDS)
    prompt = f"{history}\n\nHuman: record {index} {question}\n\nAssistant: "
    # replies must be non-empty and differ once stripped; the index keeps records distinct
    return {"chosen": prompt + f"yes {index} {good}", "rejected": prompt + f"no {index} {bad}"}


@st.composite
def native_record(draw, index: int):
    k = draw(st.integers(2, 4))
    ids = [f"c{j}" for j in range(k)]
    order = draw(st.permutations(ids))
    cuts = sorted(draw(st.sets(st.integers(1, k - 1), max_size=k - 1)))
    ranking = [list(order[a:b]) for a, b in zip([0, *cuts], [*cuts, k])]
    return {"kind": "comparison", "prompt": [{"role": "user", "content": f"question {index} " + draw(WORDS)}],
            "candidates": [{"id": c, "content": f"reply {index}-{c} " + draw(WORDS)} for c in ids],
            "ranking": ranking, "labeler": {"id": draw(st.sampled_from(["l1", "l2"]))}}


def _corruptions(fmt):
    def truncate(line, data, rng):
        return [line[: rng.draw(st.integers(1, len(line) - 2))]]

    def bad_bytes(line, data, rng):
        at = rng.draw(st.integers(0, len(line)))
        return [line[:at] + b"\xff\xfe" + line[at:]]

    def split(line, data, rng):
        at = rng.draw(st.integers(1, len(line) - 2))
        return [line[:at], line[at:]]

    def not_object(line, data, rng):
        return [json.dumps(list(data.values())).encode()]

    def drop_key(line, data, rng):
        key = rng.draw(st.sampled_from(sorted(data)))
        if fmt == "native" and key in ("labeler",):
            key = "ranking"
        return [json.dumps({k: v for k, v in data.items() if k != key}).encode()]

    def identical(line, data, rng):
        if fmt == "hh-rlhf":
            return [json.dumps({"chosen": data["chosen"], "rejected": data["chosen"]}).encode()]
        same = dict(data, candidates=[dict(c, content=data["candidates"][0]["content"]) for c in data["candidates"]])
        return [json.dumps(same).encode()]

    def empty_reply(line, data, rng):
        if fmt == "hh-rlhf":
            # the real last turn starts where chosen and rejected part (a reply may contain the marker)
            shared = os.path.commonprefix([data["chosen"], data["rejected"]])
            cut = shared.rindex("\n\nAssistant:") + len("\n\nAssistant:")
            return [json.dumps({"chosen": data["chosen"][:cut] + "  ", "rejected": data["rejected"]}).encode()]
        return [json.dumps(dict(data, candidates=[dict(data["candidates"][0], content=" ")] + data["candidates"][1:])).encode()]

    def rank_mismatch(line, data, rng):
        if fmt == "hh-rlhf":
            return [json.dumps({"chosen": 1, "rejected": data["rejected"]}).encode()]
        return [json.dumps(dict(data, ranking=data["ranking"][:-1] + [["zz"]])).encode()]

    return [truncate, bad_bytes, split, not_object, drop_key, identical, empty_reply, rank_mismatch]


def _check(fmt, records, plan, rng):
    corruptions = _corruptions(fmt)
    lines: list[bytes] = []
    good_lines: list[int] = []
    for data, corruption in zip(records, plan):
        raw = json.dumps(data, ensure_ascii=False).encode()
        if corruption is None:
            lines.append(raw)
            good_lines.append(len(lines))
        else:
            lines.extend(corruptions[corruption](raw, data, rng))
        if rng.draw(st.booleans()):
            lines.append(b"   ")  # blank lines are not units
    duplicates = rng.draw(st.lists(st.sampled_from(good_lines), max_size=3)) if good_lines else []
    lines.extend(lines[i - 1] for i in duplicates)  # after the originals: the copies are the duplicates
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        try:
            summary = ingest(fmt, path, Path(tmp) / "out")
        except NothingAccepted as err:  # every record corrupted: an error, with the same counts on file
            assert not good_lines
            summary = err.summary
        accepted = [json.loads(l) for l in (Path(tmp) / "out" / "accepted.jsonl").read_text().splitlines()]
        rejected = [json.loads(l) for l in (Path(tmp) / "out" / "rejected.jsonl").read_text().splitlines()]
    nonblank = sum(1 for line in lines if line.strip())
    assert summary["read"] == nonblank == summary["accepted"] + summary["rejected"]
    assert len(accepted) == summary["accepted"] and len(rejected) == summary["rejected"]
    survived = {r["provenance"]["line"] for r in accepted}
    assert set(good_lines) <= survived, "a good record was lost"
    assert summary["reasons"].get("duplicate", 0) == len(duplicates)
    corrupted = sum(1 for c in plan if c is not None)
    assert summary["accepted"] == len(good_lines), (summary, corrupted)


@SETTINGS
@given(data=st.data())
def test_hh_corruptions(data):
    n = data.draw(st.integers(1, 8))
    records = [data.draw(hh_record(i)) for i in range(n)]
    plan = data.draw(st.lists(st.one_of(st.none(), st.integers(0, 7)), min_size=n, max_size=n))
    _check("hh-rlhf", records, plan, data)


@SETTINGS
@given(data=st.data())
def test_native_corruptions(data):
    n = data.draw(st.integers(1, 8))
    records = [data.draw(native_record(i)) for i in range(n)]
    plan = data.draw(st.lists(st.one_of(st.none(), st.integers(0, 7)), min_size=n, max_size=n))
    _check("native", records, plan, data)
