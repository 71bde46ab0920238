"""`python -m fewlabels` runs the CLI (also what torchrun launches: `torchrun ... -m fewlabels train ...`)."""

import sys

from fewlabels.cli import main

sys.exit(main())
