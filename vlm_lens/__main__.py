"""``python -m vlm_lens``: the ``vlm-lens`` command; with no arguments, the default narrow-gate
report (built-in organisms and images, offline). The older demo is ``python -m vlm_lens.demo``."""

import sys

from vlm_lens.cli import main

raise SystemExit(main(sys.argv[1:] or ["narrow-gate"]))
