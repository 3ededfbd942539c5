"""``python -m vlm_lens``: the ``vlm-lens`` command. With no command it runs ``narrow-gate``
(``python -m vlm_lens`` alone writes the default report: built-in organisms and images,
offline; ``python -m vlm_lens --n-images 16`` passes options to it). The older demo is
``python -m vlm_lens.demo``."""

import sys

from vlm_lens.cli import main

args = sys.argv[1:]
if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help", "--version")):
    args = ["narrow-gate", *args]
raise SystemExit(main(args))
