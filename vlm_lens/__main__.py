"""``python -m vlm_lens``: the offline demo (see `vlm_lens.demo`)."""

from vlm_lens.demo import main

raise SystemExit(main())
