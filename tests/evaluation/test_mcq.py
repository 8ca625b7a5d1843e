"""Multiple-choice scoring: the letter an answer picks, the most likely option, and both accuracies; the synthetic
set's multiple-choice form; and a real evaluation of the tiny twin scoring every option of every question."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from app.data.mcq import POST_PROMPT
from app.evaluation.metrics import aggregate, item_metrics, mcq_letter

OPTIONS = ["red", "green", "blue", "yellow", "pink"]


@pytest.mark.parametrize(("pred", "letter"), [
    ("C", "C"), ("The answer is C.", "C"), ("(D)", "D"), ("B) green", "B"), ("E", "E"),
    ("blue", "C"), ("Blue!", "C"),  # an option's exact text counts when no letter is given
    ("c", None), ("none of them", None), ("F", None),  # lower case and letters past the options pick nothing
])
def test_the_letter_an_answer_picks(pred, letter):
    assert mcq_letter(pred, OPTIONS) == letter


def test_both_accuracies_over_the_multiple_choice_items_only():
    items = [
        item_metrics("C", "C", 1.0, 1, OPTIONS, [2.0, 1.0, 0.5, 3.0, None]),  # written right, likeliest right
        item_metrics("A", "C", 1.0, 1, OPTIONS, [0.1, 1.0, 0.5, 3.0, 2.0]),   # both wrong
        item_metrics("zzz", "B", 1.0, 1, OPTIONS, [2.0, 1.0, 1.5, 3.0, 2.0]),  # no letter written, likeliest right
        item_metrics("red", "red", 1.0, 1),  # an open question: counts for exact match, not for the mcq scores
    ]
    assert (items[0]["mcq_choice"], items[0]["mcq_ll_choice"]) == ("C", "C")
    assert (items[2]["mcq_choice"], items[2]["mcq_ll_choice"]) == (None, "B")
    metrics = aggregate(items)
    assert metrics["mcq_questions"] == 3
    assert metrics["mcq_accuracy"] == pytest.approx(1 / 3) and metrics["mcq_accuracy_ll"] == pytest.approx(2 / 3)
    assert aggregate([items[3]])["mcq_accuracy"] is None


def test_synthetic_mcq_set_has_balanced_letters(tmp_path):
    from app.data.synthetic import make_sample_set

    summary = make_sample_set(tmp_path, clips=40, seed=3, frames=4, size=32, progress=False, audio=False, mcq=True)
    records = json.loads(summary.data_path.read_text())
    letters: dict[str, Counter] = {}
    for record in records:
        turns = record["conversations"]
        for human, gpt in zip(turns[::2], turns[1::2], strict=True):
            assert human["value"].endswith(POST_PROMPT) and "\nA. " in human["value"]
            assert gpt["value"] in "ABCD" and gpt["options"][ord(gpt["value"]) - 65] in human["value"]
            letters.setdefault(gpt["type"], Counter())[gpt["value"]] += 1
    for qtype, counts in letters.items():
        assert set(counts) == set("ABCD") and max(counts.values()) / counts.total() <= 0.30, (qtype, counts)


def test_evaluation_scores_every_option_and_reports_both_accuracies(tmp_path, model_cache, fresh_store):
    from cli_helpers import TINY, ego_here, tiny_sets

    from app.data.synthetic import make_sample_set
    from app.run_files import RunFiles

    make_sample_set(tmp_path / "mcq", clips=12, seed=1, frames=4, size=56, progress=False, audio=False, mcq=True)
    out = tmp_path / "out"
    res = ego_here("baseline", "--use-cpu", "--config", TINY,
                   *tiny_sets(tmp_path / "mcq", model_cache, out, f"tracking.uri={fresh_store}"))
    assert res.returncode == 0, res.stderr
    files = RunFiles(out).baseline()
    metrics = json.loads(files.results.read_text())["metrics"]
    rows = [json.loads(line) for line in files.predictions.read_text().splitlines()]
    assert metrics["mcq_questions"] == len(rows) > 0
    assert 0.0 <= metrics["mcq_accuracy"] <= 1.0 and 0.0 <= metrics["mcq_accuracy_ll"] <= 1.0
    for row in rows:
        assert len(row["option_nll"]) == len(row["options"]) == 4 and all(v > 0 for v in row["option_nll"])
        best = "ABCD"[min(range(4), key=lambda i: row["option_nll"][i])]
        assert row["mcq_ll_choice"] == best and row["mcq_ll_correct"] == float(best == row["reference"])
    assert "mcq_accuracy_ll (" in res.stdout  # the console table shows it with its question count
    import mlflow

    (run,) = mlflow.MlflowClient(fresh_store).search_runs(
        [mlflow.MlflowClient(fresh_store).get_experiment_by_name("ego4d-ft").experiment_id])
    assert run.data.metrics["eval/mcq_accuracy_ll"] == pytest.approx(metrics["mcq_accuracy_ll"])
    assert run.data.metrics["eval/mcq_accuracy"] == pytest.approx(metrics["mcq_accuracy"])


def test_compare_rows_show_both_accuracies_only_where_a_run_had_multiple_choice():
    from app.report.compare import comparison_rows
    from app.report.summary import RunSummary

    def run(mode: str, metrics: dict) -> RunSummary:
        return RunSummary(run_id=mode, run_name=mode, mode=mode, metrics={"exact_match": 0.5, **metrics},
                          accuracy_by_type={}, cost={}, eval_cost=None, params={}, url=None)

    rows = {r["metric"]: r for r in comparison_rows(run("baseline", {"mcq_accuracy": 0.2, "mcq_accuracy_ll": 0.25}),
                                                    run("qlora", {"mcq_accuracy": 0.6, "mcq_accuracy_ll": 0.7}))}
    assert rows["mcq_accuracy_ll"]["better"] == "M1" and rows["mcq_accuracy"]["delta"] == pytest.approx(0.4)
    open_ended = {r["metric"] for r in comparison_rows(run("baseline", {}), run("qlora", {}))}
    assert "exact_match" in open_ended and not open_ended & {"mcq_accuracy", "mcq_accuracy_ll"}


def test_the_likelihood_score_compares_replies_in_the_data_s_own_answer_form():
    from app.data.mcq import option_replies

    assert option_replies(["red", "blue"], "B") == ["A", "B"]  # letter answers: the letters
    assert option_replies(["red", "blue"], "blue") == ["red", "blue"]  # text answers: the texts
    assert option_replies(["red", "blue"], "it is blue") == ["A. red", "B. blue"]
    text = item_metrics("blue", "blue", 1.0, 1, ["red", "blue"], [2.0, 0.5])
    assert (text["mcq_choice"], text["mcq_correct"], text["mcq_ll_correct"]) == ("B", 1.0, 1.0)
