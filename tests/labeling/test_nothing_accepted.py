"""Ingest that accepts nothing fails: exit 1, one line, and which reader would take the file."""

from __future__ import annotations

import gzip
import json

import pytest

from labeling.cli import main

EXPORTS = {
    "native": "native_records.jsonl",
    "hh-rlhf": "hh_small.jsonl",
    "oasst": "oasst_trees.jsonl",
    "label-studio": "label_studio_ranker_export.json",
    "argilla": "argilla_v2_records.json",
}


def _ingest(capsys, fmt, path, out):
    code = main(["ingest", "--format", fmt, str(path), "--out", str(out)])
    captured = capsys.readouterr()
    return code, captured.err, captured.out


def _one_line(err):
    assert err.startswith("chatsmith labels: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("fmt", list(EXPORTS))
def test_empty_file_exits_1(fmt, tmp_path, capsys):
    path = tmp_path / "export.json"
    path.write_bytes(b"")
    code, err, out = _ingest(capsys, fmt, path, tmp_path / "out")
    assert code == 1 and "is empty" in _one_line(err) and out == ""


def test_whole_file_lfs_pointer_exits_1(tmp_path, capsys):
    path = tmp_path / "comparisons.jsonl"
    path.write_text("version https://git-lfs.github.com/spec/v1\n"
                    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 48213\n")
    code, err, _ = _ingest(capsys, "hh-rlhf", path, tmp_path / "out")
    assert code == 1 and "Git LFS pointer" in _one_line(err) and "git lfs pull" in err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())  # the counts are still on file
    assert (summary["read"], summary["accepted"], summary["rejected"]) == (3, 0, 3)


@pytest.mark.parametrize("fmt", ["hh-rlhf", "label-studio"])
def test_binary_data_exits_1(fmt, tmp_path, capsys):
    path = tmp_path / "export.jsonl"
    path.write_bytes(bytes(range(256)) * 40)
    code, err, _ = _ingest(capsys, fmt, path, tmp_path / "out")
    assert code == 1 and "is binary data" in _one_line(err)


def test_parquet_and_gzipped_binary_are_named(tmp_path, capsys):
    parquet = tmp_path / "train.parquet"
    parquet.write_bytes(b"PAR1" + bytes(range(200)) + b"PAR1")
    code, err, _ = _ingest(capsys, "oasst", parquet, tmp_path / "out1")
    assert code == 1 and "is a Parquet file, not an oasst export: convert it to JSONL" in _one_line(err)
    packed = tmp_path / "export.jsonl.gz"
    packed.write_bytes(gzip.compress(b"\x00\x01\x02" * 500))
    code, err, _ = _ingest(capsys, "hh-rlhf", packed, tmp_path / "out2")
    assert code == 1 and "binary data" in _one_line(err)


@pytest.mark.parametrize("right", list(EXPORTS))
def test_another_format_says_which_reader_would_accept_it(right, fixtures, tmp_path, capsys):
    for wrong in EXPORTS:
        if wrong == right:
            continue
        code, err, _ = _ingest(capsys, wrong, fixtures / EXPORTS[right], tmp_path / wrong)
        assert code == 1, (right, wrong)
        _one_line(err)
        assert f"as {wrong}: read" in err
        assert err.rstrip().endswith(f"looks like {'an' if right[0] in 'aeo' else 'a'} {right} export; use --format {right}"), err


def test_free_text_export_under_the_wrong_format_points_to_label_studio(fixtures, tmp_path, capsys):
    code, err, _ = _ingest(capsys, "argilla", fixtures / "label_studio_textarea_export.json", tmp_path / "out")
    assert code == 1 and _one_line(err).rstrip().endswith("looks like a label-studio export; use --format label-studio")


def test_only_bad_records_exits_1_without_a_hint(tmp_path, capsys):
    path = tmp_path / "hh.jsonl"
    path.write_text('{"chosen": "\\n\\nHuman: Hi\\n\\nAssistant: Hello!", "rejected": "\\n\\nHuman: Hi\\n\\nAssistant: Hello!"}\n'
                    "not json\n")
    code, err, _ = _ingest(capsys, "hh-rlhf", path, tmp_path / "out")
    assert code == 1 and "all rejected (" in _one_line(err) and "identical_replies 1" in err and "bad_json 1" in err
    assert "looks like" not in err


def test_one_good_record_is_enough(tmp_path, capsys):
    path = tmp_path / "hh.jsonl"
    path.write_text("not json\n" + json.dumps({"chosen": "\n\nHuman: Q?\n\nAssistant: A.", "rejected": "\n\nHuman: Q?\n\nAssistant: B."}) + "\n")
    code, err, out = _ingest(capsys, "hh-rlhf", path, tmp_path / "out")
    assert code == 0 and err == "" and "read 2  accepted 1  rejected 1" in out


def test_usage_errors_still_exit_2(fixtures, tmp_path, capsys):
    for argv in (["ingest", "--format", "hh-rlhf", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")],
                 ["ingest", "--format", "argilla", str(fixtures / "argilla_v2_records.json"), "--out", str(tmp_path / "o"),
                  "--tasks", str(tmp_path / "tasks.jsonl")]):
        assert main(argv) == 2, argv
        _one_line(capsys.readouterr().err)
