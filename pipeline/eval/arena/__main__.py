"""`python -m pipeline.eval.arena ...` is `chatsmith arena ...`."""

import sys

from pipeline.eval.arena.cli import main

sys.exit(main())
