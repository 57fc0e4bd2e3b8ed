"""`python -m steelyard.simulate ARGS` is `steelyard simulate ARGS`."""

from __future__ import annotations

import sys

from steelyard.simulate import main

raise SystemExit(main(sys.argv[1:]))
