from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from labeling import schema
from labeling.schema import Comparison, ComparisonTask, Demonstration

REPO = schema.SCHEMA_PATH.parents[1]

USER = [{"role": "user", "content": "Which river?"}]
TWO = [{"id": "a", "content": "The Vell."}, {"id": "b", "content": "The Umber."}]


def test_checked_in_schema_matches_models():
    checked_in = json.loads(schema.SCHEMA_PATH.read_text())
    assert checked_in == json.loads(json.dumps(schema.json_schema())), (
        "labeling/schema.json is stale: run `python -m labeling.schema > labeling/schema.json`")


def test_schema_command_prints_the_schema():
    out = subprocess.run([sys.executable, "-m", "labeling.schema"], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == json.loads(schema.SCHEMA_PATH.read_text())


def test_ranking_with_ties_is_valid_and_must_cover_every_candidate():
    three = TWO + [{"id": "c", "content": "Umber."}]
    record = Comparison(prompt=USER, candidates=three, ranking=[["b", "c"], ["a"]])
    assert record.ranking == [["b", "c"], ["a"]]
    for bad in ([["a"], ["b"]], [["a", "b", "c", "c"]], [["a"], [], ["b", "c"]], [["a"], ["b"], ["z"]]):
        with pytest.raises(ValidationError, match="rank mismatch"):
            Comparison(prompt=USER, candidates=three, ranking=bad)


def test_ratings_and_flags_must_name_candidates_and_flags_must_be_known():
    with pytest.raises(ValidationError, match="rank mismatch"):
        Comparison(prompt=USER, candidates=TWO, ranking=[["a"], ["b"]], ratings={"z": {"overall": 3}})
    with pytest.raises(ValidationError):
        Comparison(prompt=USER, candidates=TWO, ranking=[["a"], ["b"]], flags={"a": ["made_up_flag"]})


def test_prompt_must_end_with_a_user_turn():
    with pytest.raises(ValidationError, match="user turn"):
        Demonstration(prompt=USER + [{"role": "assistant", "content": "x"}], reply="y")


def test_task_id_is_stable_and_depends_on_content():
    first = ComparisonTask(prompt=USER, candidates=TWO)
    again = ComparisonTask(prompt=USER, candidates=TWO)
    other = ComparisonTask(prompt=USER, candidates=[TWO[1], TWO[0]])
    assert first.task_id == again.task_id != other.task_id
    assert first.task_id.startswith("t-")


def test_guidelines_carry_a_version_id():
    version = schema.guideline_version()
    assert version and version in schema.GUIDELINES_PATH.read_text()


@pytest.mark.parametrize("module", ["labeling.ingest", "labeling.build", "labeling.stats", "labeling.tasks", "labeling.cli", "labeling.readers",
                                    "labeling.screening", "labeling.controls"])
def test_importing_labeling_does_not_import_torch(module):
    code = f"import sys, {module}; heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
