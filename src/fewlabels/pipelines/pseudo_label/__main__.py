"""`python -m fewlabels.pipelines.pseudo_label TEACHER_RUN DATA --out DIR ...`: the same as `fewlabels pseudo-label`
(also under torchrun)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run `fewlabels pseudo-label` with these arguments; returns its exit code."""
    from fewlabels.cli import main as cli_main

    return cli_main(["pseudo-label", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
