"""Hand-computed checks for app.evaluation.metrics; the arithmetic behind each expected value is in the comments."""

from __future__ import annotations

import math

import pytest

from app.evaluation.metrics import (
    ITEM_METRICS,
    aggregate,
    anls,
    bleu4,
    chance_by_type,
    exact_match,
    item_metrics,
    normalize_answer,
    rouge_l,
    token_f1,
)


# --- normalisation ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("RED", "red"),
        ("Red!", "red"),
        ("the red ball", "red ball"),
        ("An apple on a table", "apple on table"),
        ("  red \t\n  ball  ", "red ball"),
        ("ＲＥＤ　ｃｕｐ", "red cup"),  # full-width letters and ideographic space fold under NFKC
        ("Café", "café"),
        ("我的杯子。", "我的杯子"),  # CJK survives, the ideographic full stop is punctuation (Po)
        ("«left» hand—", "left hand"),  # non-ASCII quotes and dash are P* too
        ("😀👍🏽", ""),
        ("?!...", ""),
        ("👨‍👩‍👧 …", ""),  # ZWJ sequence + ellipsis
        ("theatre", "theatre"),  # articles are removed as whole tokens only
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


# --- exact match / token F1 ------------------------------------------------------------------------------------------
def test_exact_match_uses_normalisation() -> None:
    assert exact_match("The Red!", "red") == 1.0
    assert exact_match("red", "reds") == 0.0


def test_token_f1_partial_overlap() -> None:
    # [red, cup] vs [red, plate]: overlap 1 -> P = 1/2, R = 1/2, F1 = 2*(1/4)/(1) = 0.5
    assert token_f1("the red cup", "red plate") == pytest.approx(0.5)


def test_token_f1_multiset_overlap() -> None:
    # pred [red, red, cup] vs ref [red, cup, cup]: Counter min -> red 1, cup 1 = 2 (not 3 or 4)
    # P = 2/3, R = 2/3, F1 = 2/3
    assert token_f1("red red cup", "red cup cup") == pytest.approx(2 / 3)
    # pred [red, red] vs ref [red]: overlap 1 -> P = 1/2, R = 1, F1 = 2*(1/2)/(3/2) = 2/3
    assert token_f1("red red", "red") == pytest.approx(2 / 3)


def test_token_f1_empty_conventions() -> None:
    assert token_f1("", "") == 1.0
    assert token_f1("the", "!!") == 1.0  # both normalise to ""
    assert token_f1("", "red") == 0.0
    assert token_f1("red", "") == 0.0
    assert token_f1("blue", "red") == 0.0


# --- ROUGE-L ---------------------------------------------------------------------------------------------------------
def test_rouge_l_hand_computed_lcs() -> None:
    # pred -> [cat, sat, on, mat] (4), ref -> [cat, was, sitting, on, mat] (5); LCS = cat on mat = 3
    # P = 3/4, R = 3/5, F = 2PR/(P+R) = 2*3/(4+5) = 2/3
    assert rouge_l("the cat sat on the mat", "a cat was sitting on a mat") == pytest.approx(2 / 3)


def test_rouge_l_keeps_unicode_tokens() -> None:
    # rouge_score's default tokenizer would drop "é"/"中文" entirely; ours keeps them.
    # [café, noir] vs [café]: LCS 1, P = 1/2, R = 1 -> F = 2/3
    assert rouge_l("Café noir", "café") == pytest.approx(2 / 3)
    assert rouge_l("中文", "中文") == 1.0
    assert rouge_l("中文", "日本") == 0.0


def test_rouge_l_empty() -> None:
    assert rouge_l("", "red") == 0.0
    assert rouge_l("", "") == 1.0


# --- BLEU-4 ----------------------------------------------------------------------------------------------------------
def test_bleu4_identical_sentence_is_one() -> None:
    assert bleu4("the man is cutting onions on a board", "The man is cutting onions on a board.") == pytest.approx(1.0)


def test_bleu4_no_overlap_is_zero() -> None:
    # no unigram match at all -> sacrebleu returns 0 before any smoothing
    assert bleu4("blue bowl", "red plate") == 0.0


def test_bleu4_short_exact_match_uses_effective_order() -> None:
    # one token: only the unigram order exists, p1 = 1/1, BP = 1 -> 1.0 (plain BLEU-4 would give 0)
    assert bleu4("Red", "red") == pytest.approx(1.0)


def test_bleu4_exp_smoothing_two_tokens() -> None:
    # [red, cup] vs [blue, cup]: p1 = 1/2; p2 = 0/1 -> exp smoothing 1/(2^1 * 1) = 1/2; no 3/4-grams (effective order 2)
    # BP = 1 (equal lengths); BLEU = sqrt(1/2 * 1/2) = 0.5
    assert bleu4("red cup", "blue cup") == pytest.approx(0.5)


def test_bleu4_exp_smoothing_six_tokens() -> None:
    # hyp man is cutting onions on board / ref man is cutting carrots on board
    # p1 = 5/6; p2 = 3/5 (man-is, is-cutting, on-board); p3 = 1/4 (man-is-cutting); p4 = 0/3 -> 1/(2*3) = 1/6
    # BLEU = (5/6 * 3/5 * 1/4 * 1/6) ** (1/4) = (1/48) ** 0.25
    assert bleu4("man is cutting onions on board", "man is cutting carrots on board") == pytest.approx(48**-0.25)


def test_bleu4_brevity_penalty() -> None:
    # [red] vs [red, cup]: p1 = 1, effective order 1; BP = exp(1 - 2/1) = e^-1
    assert bleu4("red", "red cup") == pytest.approx(math.exp(-1))


def test_bleu4_empty() -> None:
    assert bleu4("", "red") == 0.0
    assert bleu4("", "") == 1.0


# --- ANLS ------------------------------------------------------------------------------------------------------------
def test_anls() -> None:
    # one insertion over max length 8 -> 1 - 1/8
    assert anls("kitchen", "kitchens") == pytest.approx(0.875)
    # "kitten" vs "sitting": 3 edits / 7 = 0.4286 < 0.5 -> 1 - 3/7
    assert anls("kitten", "sitting") == pytest.approx(4 / 7)
    # "abcd" vs "abef": 2 / 4 = 0.5, not below the threshold -> 0 (Biten et al. cut-off)
    assert anls("abcd", "abef") == 0.0
    assert anls("left", "right") == 0.0  # 3 edits / 5 = 0.6
    assert anls("", "") == 1.0
    assert anls("", "red") == 0.0
    assert anls("Café", "cafe") == pytest.approx(0.75)  # é != e: 1 edit / 4


# --- empty prediction / item_metrics ---------------------------------------------------------------------------------
def test_empty_prediction_scores_zero() -> None:
    m = item_metrics("", "red cup")
    assert m == {"exact_match": 0.0, "token_f1": 0.0, "rouge_l": 0.0, "bleu4": 0.0, "anls": 0.0}


def test_item_metrics_nll_and_perplexity() -> None:
    m = item_metrics("red", "red", nll=math.log(2), num_answer_tokens=3)
    assert m["perplexity"] == pytest.approx(2.0)
    assert m["answer_nll"] == pytest.approx(math.log(2))
    assert m["num_answer_tokens"] == 3
    assert set(ITEM_METRICS) <= set(m)
    assert "perplexity" not in item_metrics("red", "red", nll=None, num_answer_tokens=0)
    assert item_metrics("a", "b", nll=1e6)["perplexity"] == math.inf
    with pytest.raises(ValueError):
        item_metrics("red", "red", nll=1.0, num_answer_tokens=0)


# --- aggregate -------------------------------------------------------------------------------------------------------
def test_aggregate_token_weighted_nll() -> None:
    items = [item_metrics("red", "red", 1.0, 2), item_metrics("blue", "red", 3.0, 6)]
    out = aggregate(items)
    # (1.0*2 + 3.0*6) / (2 + 6) = 20/8 = 2.5 (the unweighted mean would be 2.0)
    assert out["answer_nll"] == pytest.approx(2.5)
    assert out["perplexity"] == pytest.approx(math.exp(2.5))
    assert out["exact_match"] == pytest.approx(0.5)


def test_aggregate_by_type_and_empty_predictions() -> None:
    preds = ["Red", "", "left", "kitchen", "two"]
    refs = ["red", "blue", "right", "kitchen", "three"]
    types = ["color", "color", "direction", None, "count"]
    items = [item_metrics(p, r) for p, r in zip(preds, refs, strict=True)]
    out = aggregate(items, types=types, preds=preds, refs=refs)
    # color: [1, 0] -> 0.5; direction: [0]; count: [0]; the untyped "kitchen" hit counts only in the overall mean
    assert out["accuracy_by_type"] == {"color": 0.5, "count": 0.0, "direction": 0.0}
    assert out["count_by_type"] == {"color": 2, "count": 1, "direction": 1}
    assert out["chance_by_type"] == {"color": 0.5, "count": 1.0, "direction": 1.0}
    assert out["exact_match"] == pytest.approx(2 / 5)
    assert out["num_items"] == 5
    assert out["empty_predictions"] == 1
    # corpus BLEU-4 on one-word answers: no bigrams at all, so standard BLEU-4 is 0 (documented)
    assert out["corpus_bleu4"] == 0.0
    assert out["answer_nll"] is None and out["perplexity"] is None


def test_aggregate_corpus_bleu_identical() -> None:
    preds = refs = ["the man opens the fridge door slowly", "she puts the red cup on the shelf"]
    out = aggregate([item_metrics(p, r) for p, r in zip(preds, refs, strict=True)], preds=preds, refs=refs)
    assert out["corpus_bleu4"] == pytest.approx(1.0)
    assert out["bleu4"] == pytest.approx(1.0)


def test_aggregate_empty_list() -> None:
    out = aggregate([], types=[], preds=[], refs=[])
    assert out["num_items"] == 0
    for key in (*ITEM_METRICS, "corpus_bleu4", "answer_nll", "perplexity"):
        assert out[key] is None
    assert out["accuracy_by_type"] == {} and out["empty_predictions"] == 0


def test_aggregate_rejects_bad_input() -> None:
    items = [item_metrics("red", "red")]
    with pytest.raises(ValueError):
        aggregate(items, types=["a", "b"])
    with pytest.raises(ValueError):
        aggregate(items, preds=["red"])
    with pytest.raises(ValueError):
        aggregate([item_metrics("a", "a", 1.0, 2), item_metrics("a", "a", 1.0)])


def test_chance_is_the_most_common_answers_share_per_type() -> None:
    # A yes/no type that is mostly "yes" has a high chance level; four balanced colours have 1/4. Answers are
    # compared normalised, as exact match compares them ("Yes." and "yes" are one answer).
    types = ["yes_no"] * 10 + ["color"] * 8 + [None]
    refs = ["Yes."] * 4 + ["yes"] * 3 + ["no"] * 3 + ["red", "green", "blue", "yellow"] * 2 + ["kitchen"]
    assert chance_by_type(types, refs) == {"color": 0.25, "yes_no": 0.7}
    out = aggregate([item_metrics("yes", r) for r in refs], types=types)
    assert out["chance_by_type"] == {}  # no references given: no chance level claimed
