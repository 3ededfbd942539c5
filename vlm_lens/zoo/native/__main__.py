"""``python -m vlm_lens.zoo.native``: train the native organism (see `vlm_lens.zoo.native`)."""

from vlm_lens.zoo.native.command import main

main()
