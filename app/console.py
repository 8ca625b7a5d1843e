"""The one console every command prints through (stdout), and the one for errors and warnings (stderr).

One object each, so that under torchrun `silence_other_ranks` quiets every table and bar of ranks > 0 in one
place, and a test captures a command's whole output with `console.capture()`.
"""

from __future__ import annotations

from rich.console import Console

console = Console()
stderr = Console(stderr=True)


def silence_other_ranks() -> None:
    """Ranks > 0 print nothing: N copies of every table and bar would interleave."""
    from app import distributed

    if not distributed.is_main():
        console.quiet = True
        stderr.quiet = True
