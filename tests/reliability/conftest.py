"""Prints the size of the bad-input corpus at the end of every test run that collected it."""

from __future__ import annotations


def pytest_terminal_summary(terminalreporter) -> None:
    import sys

    corpus = sys.modules.get("test_bad_input_corpus") or sys.modules.get("tests.reliability.test_bad_input_corpus")
    if corpus is None:
        return
    terminalreporter.write_line(
        f"bad-input corpus: {len(corpus.CASES)} cases, {len(corpus.CHECKED)} behaved as expected"
    )
