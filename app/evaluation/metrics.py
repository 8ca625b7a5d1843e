"""Answer-quality metrics for open-ended video QA (one-word answers such as "red" up to free-text sentences).

Every text metric scores the *normalised* strings from `normalize_answer`, so "The red cup!" and "red cup" agree
everywhere. All functions are pure, deterministic and offline: rouge_score is used with our own tokenizer (its
default one drops non-ASCII characters, and we never touch nltk data), sacrebleu needs no downloads.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

import sacrebleu
from rouge_score import rouge_scorer

from app.data.mcq import LETTERS

__all__ = [
    "EVAL_METRICS",
    "ITEM_METRICS",
    "MCQ_METRICS",
    "aggregate",
    "anls",
    "bleu4",
    "exact_match",
    "item_metrics",
    "normalize_answer",
    "rouge_l",
    "token_f1",
]

# Per-item scores that `aggregate` averages; anything else in an item dict (ids, raw text, nll) is left alone.
ITEM_METRICS = ("exact_match", "token_f1", "rouge_l", "bleu4", "anls")  # each in [0, 1]
# Multiple-choice questions (a turn with options), each scored two ways: the letter the model wrote, and the option
# it finds most likely. None when the evaluation had no such question.
MCQ_METRICS = ("mcq_accuracy", "mcq_accuracy_ll")
# The headline metrics of an evaluation, in the order every table, log and report shows them.
EVAL_METRICS = (*ITEM_METRICS, "answer_nll", "perplexity", *MCQ_METRICS)

_ARTICLES = frozenset({"a", "an", "the"})
# Emoji and pictographs are "So"/"Sk"; ZWJ and friends are "Cf"; keycaps are "Me". None of them carry answer content,
# so an emoji-only prediction normalises to "" just like a punctuation-only one. Sm/Sc ("+", "$") are kept.
_DROPPED_CATEGORIES = frozenset({"So", "Sk", "Cf", "Me"})
# exp() overflows a float above ~709.78; an answer that unlikely is reported as infinite perplexity instead of crashing.
_MAX_EXP_ARG = 709.0


def _is_dropped(ch: str) -> bool:
    if "\ufe00" <= ch <= "\ufe0f":  # variation selectors (emoji vs text presentation), category Mn
        return True
    category = unicodedata.category(ch)
    return category.startswith("P") or category in _DROPPED_CATEGORIES


def normalize_answer(text: str) -> str:
    """Lower-case, NFKC, drop punctuation/emoji, drop English articles, collapse whitespace.

    NFKC runs first so full-width letters ("ＲＥＤ") fold to ASCII before lower-casing. Punctuation is deleted rather
    than replaced by a space (SQuAD convention), so "don't" -> "dont" and "t-shirt" -> "tshirt" on both sides alike.
    Non-ASCII letters (é, 中文) are kept.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if not _is_dropped(ch))
    return " ".join(tok for tok in text.split() if tok not in _ARTICLES)


def _tokens(text: str) -> list[str]:
    # Whitespace tokens of the normalised text; a CJK answer written without spaces is therefore a single token
    # (ANLS is the character-level metric that gives partial credit there).
    return normalize_answer(text).split()


class _NormalizingTokenizer:
    """rouge_score tokenizer protocol (an object with `tokenize`); keeps unicode and matches token_f1's tokens."""

    def tokenize(self, text: str) -> list[str]:
        return _tokens(text)


# Stateless after construction, so one instance serves every call. No stemmer: it is English-only and would make
# ROUGE-L disagree with exact match/F1 on inflections ("cups" vs "cup").
_ROUGE = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_NormalizingTokenizer())


def exact_match(pred: str, ref: str) -> float:
    """1.0 if the normalised strings are identical, else 0.0."""
    return float(normalize_answer(pred) == normalize_answer(ref))


def token_f1(pred: str, ref: str) -> float:
    """SQuAD-style F1 over normalised tokens, counting overlap as a multiset (each ref token can match once)."""
    p, r = _tokens(pred), _tokens(ref)
    if not p or not r:
        # Both empty means "nothing expected, nothing said": a match. Only one empty is a miss.
        return float(not p and not r)
    overlap = sum((Counter(p) & Counter(r)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(p), overlap / len(r)
    return 2 * precision * recall / (precision + recall)


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F-measure (LCS over normalised tokens) via rouge_score."""
    if not _tokens(pred) and not _tokens(ref):
        return 1.0  # rouge_score says 0 here; keep the same both-empty convention as token_f1/anls
    return float(_ROUGE.score(ref, pred)["rougeL"].fmeasure)


def bleu4(pred: str, ref: str) -> float:
    """Sentence BLEU-4 on a 0-1 scale via sacrebleu.

    Smoothing: sacrebleu's "exp" (Chen & Cherry 2014 method 3, the NIST mteval one): the k-th n-gram order with zero
    matches gets precision 1/(2^k * total) instead of 0, so one missing 4-gram does not zero the whole score.
    `use_effective_order=True` drops orders the hypothesis is too short to have, so a one-word exact match ("red" vs
    "red") scores 1.0 instead of 0. If no unigram matches at all, sacrebleu returns 0. Inputs are normalised first and
    tokenised on whitespace ("none"), i.e. the same tokens as token_f1/rouge_l.
    """
    p, r = normalize_answer(pred), normalize_answer(ref)
    if not p and not r:
        return 1.0
    score = sacrebleu.sentence_bleu(p, [r], smooth_method="exp", tokenize="none", use_effective_order=True)
    # sacrebleu goes through exp(mean(log p)) on a 0-100 scale, so a perfect match can come back as 1.0000000000000004.
    return min(score.score / 100.0, 1.0)


def _levenshtein(a: str, b: str) -> int:
    # Two-row DP over characters; answers are short, so O(len(a) * len(b)) is fine.
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(pred: str, ref: str, threshold: float = 0.5) -> float:
    """ANLS for one pair: 1 - Levenshtein / max length over normalised strings, 0 when that distance >= threshold.

    The cut-off follows Biten et al. (2019): a normalised distance of exactly `threshold` already scores 0.
    """
    p, r = normalize_answer(pred), normalize_answer(ref)
    if not p and not r:
        return 1.0
    distance = _levenshtein(p, r) / max(len(p), len(r))
    return 0.0 if distance >= threshold else 1.0 - distance


def _exp(x: float) -> float:
    return math.inf if x > _MAX_EXP_ARG else math.exp(x)


def mcq_letter(pred: str, options: Sequence[str]) -> str | None:
    """The option a free-text answer picks: its first standalone letter among the options' (A-E for five), else an
    option's exact (normalised) text; None when it picks none."""
    letters = LETTERS[: len(options)]
    found = re.search(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])", pred)
    if found:
        return found.group(1)
    norm = normalize_answer(pred)
    hits = [i for i, option in enumerate(options) if normalize_answer(option) == norm]
    return LETTERS[hits[0]] if len(hits) == 1 else None


def mcq_scores(pred: str, ref: str, options: Sequence[str], option_nll: Sequence[float | None]) -> dict:
    """Both multiple-choice scores of one question (`ref`: the correct letter, or the correct option's text): the
    letter the answer picks, and the option whose reply has the lowest mean (length-normalised) NLL."""
    choice = mcq_letter(pred, options)
    scored = [(nll, i) for i, nll in enumerate(option_nll) if nll is not None]
    ll_choice = LETTERS[min(scored)[1]] if scored else None
    correct = ref.strip() if ref.strip() in LETTERS[: len(options)] else mcq_letter(ref, options)
    return {"mcq_choice": choice, "mcq_correct": float(choice is not None and choice == correct),
            "mcq_ll_choice": ll_choice, "mcq_ll_correct": float(ll_choice is not None and ll_choice == correct)}


def item_metrics(
    pred: str, ref: str, nll: float | None = None, num_answer_tokens: int | None = None,
    options: Sequence[str] | None = None, option_nll: Sequence[float | None] | None = None,
) -> dict[str, float | int]:
    """All per-item scores for one prediction/reference pair.

    `nll` is the mean per-token negative log-likelihood of the reference answer under teacher forcing; when given the
    dict also holds `answer_nll`, `perplexity` = exp(nll) and, if known, `num_answer_tokens` (aggregate weights by it).
    A multiple-choice question (`options`, and each option's mean NLL) adds `mcq_scores`.
    """
    out: dict[str, float | int] = {
        "exact_match": exact_match(pred, ref),
        "token_f1": token_f1(pred, ref),
        "rouge_l": rouge_l(pred, ref),
        "bleu4": bleu4(pred, ref),
        "anls": anls(pred, ref),
    }
    if nll is not None:
        if num_answer_tokens is not None and num_answer_tokens < 1:
            raise ValueError(f"num_answer_tokens must be >= 1 when nll is given, got {num_answer_tokens}")
        out["answer_nll"] = float(nll)
        out["perplexity"] = _exp(float(nll))
        if num_answer_tokens is not None:
            out["num_answer_tokens"] = int(num_answer_tokens)
    if options:
        out.update(mcq_scores(pred, ref, options, option_nll or [None] * len(options)))
    return out


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _answer_nll(items: Sequence[dict]) -> float | None:
    """Token-weighted mean NLL: sum(nll_i * tokens_i) / sum(tokens_i).

    This is the NLL of all reference tokens pooled, so perplexity = exp(it) is the usual corpus perplexity and long
    answers are not under-weighted. If no item carries a token count it falls back to the plain mean; a mix of items
    with and without counts has no sensible weighting and is rejected.
    """
    scored = [it for it in items if it.get("answer_nll") is not None]
    if not scored:
        return None
    counted = [it for it in scored if it.get("num_answer_tokens") is not None]
    if not counted:
        return _mean([float(it["answer_nll"]) for it in scored])
    if len(counted) != len(scored):
        raise ValueError("some items have answer_nll without num_answer_tokens; cannot token-weight the mean")
    total = sum(int(it["num_answer_tokens"]) for it in counted)
    return sum(float(it["answer_nll"]) * int(it["num_answer_tokens"]) for it in counted) / total


def chance_by_type(types: Sequence[str | None], refs: Sequence[str]) -> dict[str, float]:
    """Per question type, the share of its most common normalised reference answer (items of type None skipped).

    A constant answer scores exactly this, so it is the floor a per-type accuracy is read against: 0.25 for four
    balanced answers, higher when one answer dominates (a yes/no type that is 70 % "yes" has chance 0.70).
    """
    answers: dict[str, Counter] = {}
    for qtype, ref in zip(types, refs, strict=True):
        if qtype is not None:
            answers.setdefault(qtype, Counter())[normalize_answer(ref)] += 1
    return {t: c.most_common(1)[0][1] / c.total() for t, c in sorted(answers.items())}


def aggregate(
    items: list[dict],
    types: list[str | None] | None = None,
    preds: list[str] | None = None,
    refs: list[str] | None = None,
) -> dict:
    """Dataset-level metrics from `item_metrics` dicts (extra keys in the dicts are ignored).

    - each ITEM_METRICS key: mean over items;
    - `corpus_bleu4`: sacrebleu corpus BLEU-4 (0-1) over normalised preds/refs when both are given, else None. It is
      standard corpus BLEU (no effective order), so a corpus of answers shorter than 4 tokens scores 0 here; the
      mean sentence-level `bleu4` is the short-answer-friendly number;
    - `answer_nll`: token-weighted mean (see `_answer_nll`), `perplexity` = exp(answer_nll);
    - `accuracy_by_type` / `count_by_type`: mean exact match / count per question type, items with type None skipped;
    - `chance_by_type`: per type, the exact match a model would get by always giving that type's most common
      (normalised) reference answer: the level a per-type accuracy has to beat to show it read the video (needs
      `refs`, else {});
    - `mcq_accuracy` / `mcq_accuracy_ll`: over the multiple-choice items (`mcq_questions` of them), the share whose
      written letter / most likely option is correct; None without any;
    - `empty_predictions`: predictions that normalise to "" (needs `preds`, else None).
    Empty `items` gives num_items 0 and None for every metric.
    """
    n = len(items)
    for name, seq in (("types", types), ("preds", preds), ("refs", refs)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} items")
    if (preds is None) != (refs is None):
        raise ValueError("pass preds and refs together (corpus BLEU needs both)")

    out: dict = {key: _mean([float(it[key]) for it in items]) if n else None for key in ITEM_METRICS}

    out["corpus_bleu4"] = None
    if n and preds is not None and refs is not None:
        hyps = [normalize_answer(p) for p in preds]
        corpus = sacrebleu.corpus_bleu(hyps, [[normalize_answer(r) for r in refs]], tokenize="none")
        out["corpus_bleu4"] = min(corpus.score / 100.0, 1.0)

    nll = _answer_nll(items)
    out["answer_nll"] = nll
    out["perplexity"] = None if nll is None else _exp(nll)

    by_type: dict[str, list[float]] = {}
    for it, qtype in zip(items, types or [None] * n, strict=True):
        if qtype is not None:
            by_type.setdefault(qtype, []).append(float(it["exact_match"]))
    out["accuracy_by_type"] = {t: sum(v) / len(v) for t, v in sorted(by_type.items())}
    out["count_by_type"] = {t: len(v) for t, v in sorted(by_type.items())}
    out["chance_by_type"] = chance_by_type(types or [None] * n, refs) if refs is not None else {}

    mcq = [it for it in items if "mcq_correct" in it]
    out["mcq_accuracy"] = _mean([it["mcq_correct"] for it in mcq])
    out["mcq_accuracy_ll"] = _mean([it["mcq_ll_correct"] for it in mcq])
    out["mcq_questions"] = len(mcq)

    out["num_items"] = n
    out["empty_predictions"] = None if preds is None else sum(1 for p in preds if not normalize_answer(p))
    return out
