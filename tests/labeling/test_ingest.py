"""Quarantine: every kind of bad input gets its own reason, good records next to it survive."""

from __future__ import annotations

import json

import pytest

from labeling.cli import main
from labeling.ingest import NothingAccepted, ingest

GOOD = {"chosen": "\n\nHuman: River of Alder?\n\nAssistant: The Sorrel.", "rejected": "\n\nHuman: River of Alder?\n\nAssistant: The Vell."}


def _hh(i: int) -> dict:
    return {"chosen": f"\n\nHuman: Question {i}?\n\nAssistant: Answer {i}.", "rejected": f"\n\nHuman: Question {i}?\n\nAssistant: Wrong {i}."}


def _lines(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def test_each_problem_has_its_own_reason_and_good_records_survive(tmp_path):
    lines = [
        json.dumps(_hh(1)).encode(),
        b'{"chosen": "\\n\\nHuman: hi \xff\xfe", "rejected": "x"}',  # bad UTF-8
        b'{"chosen": "unterminated',  # bad JSON
        b'["a", "list"]',  # not an object
        json.dumps({"chosen": GOOD["chosen"]}).encode(),  # missing field
        json.dumps({"chosen": 3, "rejected": 4}).encode(),  # wrong type
        json.dumps({"chosen": "no markers at all", "rejected": "none here"}).encode(),  # not a transcript
        json.dumps({"chosen": "\n\nHuman: a\n\nAssistant:   ", "rejected": "\n\nHuman: a\n\nAssistant: b"}).encode(),  # empty
        json.dumps({"chosen": GOOD["chosen"], "rejected": GOOD["chosen"]}).encode(),  # identical
        json.dumps(_hh(2)).encode(),
        b"   ",  # blank: not counted
        json.dumps(_hh(1)).encode(),  # duplicate of line 1
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    summary = ingest("hh-rlhf", path, tmp_path / "out")
    assert summary["read"] == 11 and summary["accepted"] == 2
    assert summary["reasons"] == {
        "bad_utf8": 1, "bad_json": 1, "not_an_object": 1, "missing_field": 1, "invalid_field": 1,
        "bad_transcript": 1, "empty_reply": 1, "identical_replies": 1, "duplicate": 1,
    }
    rejected = _lines(tmp_path / "out" / "rejected.jsonl")
    assert [r["line"] for r in rejected] == [2, 3, 4, 5, 6, 7, 8, 9, 12]
    assert all(r["raw"] and r["detail"] is not None and len(r["sha256"]) == 64 for r in rejected)
    accepted = _lines(tmp_path / "out" / "accepted.jsonl")
    assert [r["provenance"]["line"] for r in accepted] == [1, 10]
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary


def test_native_rank_mismatch_and_unknown_kind(tmp_path):
    base = {"prompt": [{"role": "user", "content": "q"}], "candidates": [{"id": "a", "content": "x"}, {"id": "b", "content": "y"}]}
    rows = [
        {"kind": "comparison", **base, "ranking": [["a"], ["b"]]},
        {"kind": "comparison", **base, "ranking": [["a"]]},
        {"kind": "judgement", **base},
        {"kind": "comparison", **base, "ranking": [["a"], ["b"]], "status": "cancelled"},
        {"kind": "comparison", **base, "ranking": [["b"], ["a"]], "extra_field": 1},
    ]
    path = tmp_path / "native.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = ingest("native", path, tmp_path / "out")
    assert summary["accepted"] == 1
    assert summary["reasons"] == {"rank_mismatch": 1, "unknown_kind": 1, "status_cancelled": 1, "invalid_field": 1}


def test_git_lfs_pointer_is_reported_as_such(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n")
    with pytest.raises(NothingAccepted, match="Git LFS pointer") as caught:
        ingest("hh-rlhf", path, tmp_path / "out")
    summary = caught.value.summary
    assert summary == {**summary, "read": 3, "accepted": 0, "reasons": {"lfs_pointer": 3}}
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary  # written before it raised


def test_truncated_gzip_keeps_what_was_readable(tmp_path):
    import gzip

    body = "".join(json.dumps(_hh(i)) + "\n" for i in range(200)).encode()
    packed = gzip.compress(body)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(packed[: len(packed) * 2 // 3])
    summary = ingest("hh-rlhf", path, tmp_path / "out")
    assert summary["reasons"].get("truncated_file") == 1
    assert 0 < summary["accepted"] < 200
    assert summary["read"] == summary["accepted"] + summary["rejected"]


def test_cli_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    good = tmp_path / "hh.jsonl"
    good.write_text(json.dumps(GOOD) + "\n")
    cases = [
        ["ingest", "--format", "csv", str(good), "--out", str(tmp_path / "o")],
        ["ingest", "--format", "hh-rlhf", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")],
        ["ingest", "--format", "hh-rlhf", str(tmp_path), "--out", str(tmp_path / "o")],
        ["stats", str(tmp_path / "nowhere")],
        ["build", str(tmp_path / "nowhere"), "--out", str(tmp_path / "d")],
        ["frobnicate"],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("chatsmith labels: error: ") and err.count("\n") == 1, (argv, err)
        assert "Traceback" not in err


def test_cli_ingest_then_build_then_stats(tmp_path, capsys):
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(_hh(i)) + "\n" for i in range(20)) + "not json\n")
    assert main(["ingest", "--format", "hh-rlhf", str(path), "--out", str(tmp_path / "in")]) == 0
    assert "read 21  accepted 20  rejected 1" in capsys.readouterr().out
    assert main(["build", str(tmp_path / "in"), "--out", str(tmp_path / "data"), "--eval-fraction", "0.2", "--seed", "3"]) == 0
    built = json.loads((tmp_path / "data" / "build.json").read_text())
    assert built["comparisons_train"] + built["comparisons_eval"] == 20 and built["comparisons_eval"] == 4
    assert main(["stats", str(tmp_path / "in"), "--json", str(tmp_path / "stats.json")]) == 0
    assert json.loads((tmp_path / "stats.json").read_text())["comparisons"] == 20


def test_a_format_is_listed_once_by_the_readers_table(monkeypatch):
    """The CLI's --format choices and the recipe's `data.labels[].format` come from `labeling.readers.READERS`: a
    format added there is known to both, and one not there to neither."""
    from labeling import cli, readers
    from pipeline.recipe import LabelsSource

    monkeypatch.setitem(readers.READERS, "vendor-x", readers.Reader(readers.read_native, frozenset({"comparisons"})))
    monkeypatch.setattr(readers, "FORMATS", tuple(readers.READERS))
    ingest_parser = cli._parser()._subparsers._group_actions[0].choices["ingest"]
    choices = next(a.choices for a in ingest_parser._actions if a.dest == "format")
    assert tuple(choices) == readers.FORMATS and "vendor-x" in choices
    assert LabelsSource(format="vendor-x", path="x.json").format == "vendor-x"
    with pytest.raises(ValueError, match="not one of"):
        LabelsSource(format="csv", path="x.csv")


@pytest.mark.parametrize("fmt", ["native", "hh-rlhf", "oasst", "label-studio", "argilla"])
def test_empty_file_reads_nothing_and_is_an_error(fmt, tmp_path):
    path = tmp_path / "empty.json"
    path.write_text("\n  \n")
    with pytest.raises(NothingAccepted, match="is empty") as caught:
        ingest(fmt, path, tmp_path / "out")
    summary = caught.value.summary
    assert (summary["read"], summary["accepted"], summary["rejected"]) == (0, 0, 0)
