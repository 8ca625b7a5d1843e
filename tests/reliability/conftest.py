"""Prints the size of the bad-input corpus at the end of every test run that collected it (with pytest-xdist, the
workers report their counts to the controller, which prints the sum)."""

from __future__ import annotations

import sys

import pytest

_FROM_WORKERS = {"cases": 0, "checked": 0, "seen": False}


def _corpus():
    return sys.modules.get("test_bad_input_corpus") or sys.modules.get("tests.reliability.test_bad_input_corpus")


def pytest_sessionfinish(session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)  # set on pytest-xdist workers only
    corpus = _corpus()
    if workeroutput is not None and corpus is not None:
        workeroutput["bad_input_corpus"] = (len(corpus.CASES), len(corpus.CHECKED))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    counts = getattr(node, "workeroutput", {}).get("bad_input_corpus")
    if counts:
        _FROM_WORKERS["cases"] = max(_FROM_WORKERS["cases"], counts[0])
        _FROM_WORKERS["checked"] += counts[1]
        _FROM_WORKERS["seen"] = True


def pytest_terminal_summary(terminalreporter) -> None:
    corpus = _corpus()
    if corpus is not None:
        cases, checked = len(corpus.CASES), len(corpus.CHECKED)
    elif _FROM_WORKERS["seen"]:
        cases, checked = _FROM_WORKERS["cases"], _FROM_WORKERS["checked"]
    else:
        return
    terminalreporter.write_line(f"bad-input corpus: {cases} cases, {checked} behaved as expected")
