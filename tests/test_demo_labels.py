"""The demo's labels take the real path (tasks -> Label Studio export -> ingest -> build), and
`chatsmith labels stats` on them reports agreement that follows the noise the simulated labelers
were given."""

import json

import pytest

from tiny import DEMO, TINY, chatsmith


def demo_labels(tmp_path, noise):
    from pipeline.data import materialise_data
    from pipeline.demo.labelers import make_comparisons
    from pipeline.recipe import load_recipe
    from pipeline.runner import Run

    recipe = load_recipe(DEMO, [*TINY, "data.label_with_sft_samples=0", "data.world.overlap=1.0",
                                f"data.world.labeler_noise={noise}", "data.world.comparison_prompts=64"])
    run = Run(recipe, tmp_path / f"noise-{noise}", say=lambda _: None)
    materialise_data(run)
    result = make_comparisons(run, run.demo.world, sft_dir=None)  # candidates from simulated writers only: no model needed
    return run.dir / "labels", result


@pytest.fixture(scope="module")
def label_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    return {noise: demo_labels(root, noise) for noise in (0.01, 0.08, 0.4)}


def test_demo_labels_go_through_ingest_and_build(label_runs):
    labels, result = label_runs[0.08]
    summary = result["ingest"]
    assert summary["read"] == summary["accepted"] + summary["rejected"] > 0
    assert set(summary["reasons"]) <= {"status_cancelled"}
    assert (labels / "tasks" / "label_studio_import.json").exists()
    export = json.loads((labels / "label_studio_export.json").read_text())
    assert export[0]["annotations"] and export[0]["data"]["task_id"].startswith("demo-")
    train = [json.loads(l) for l in (labels / "build" / "comparisons_train.jsonl").read_text().splitlines()]
    evals = [json.loads(l) for l in (labels / "build" / "comparisons_eval.jsonl").read_text().splitlines()]
    assert train and evals
    prompts = lambda rows: {r["prompt"][-1]["content"] for r in rows}
    assert not prompts(train) & prompts(evals)  # split by prompt


def test_agreement_falls_as_labeler_noise_rises(label_runs):
    alphas = []
    for noise in (0.01, 0.08, 0.4):
        labels, _ = label_runs[noise]
        result = chatsmith("labels", "stats", labels / "ingest", "--json", labels / "stats.json")
        assert "alpha" in result.stdout.lower()
        figures = json.loads((labels / "stats.json").read_text())
        alphas.append(figures["agreement"]["preference_alpha_ordinal"])
    assert alphas[0] > alphas[1] > alphas[2], alphas
    assert alphas[0] > 0.8  # near-noiseless labelers who follow the same guidelines agree
