"""The offline demo: wrap a built-in tiny model, show its token roles and a cache summary.

Run ``python -m vlm_lens.demo``. Nothing is downloaded: the models are tiny,
randomly initialised Hugging Face VLMs built in memory (`vlm_lens.testing`), so the numbers
show the mechanics, not a trained model's behaviour.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from collections.abc import Sequence

import torch

from vlm_lens import HookedVLM, hooks
from vlm_lens.testing import TINY_FAMILIES, build_tiny, sample_image


def describe(family: str) -> None:
    """Print the layout, the parity check and a residual-cache summary for one family."""
    tiny = build_tiny(family)
    reference = copy.deepcopy(tiny.model)
    model = HookedVLM.from_hf(tiny.model, tiny.processor)
    batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
    tokens = model.to_str_tokens(batch)
    print(
        f"=== {family}: {type(reference).__name__}, {model.cfg.n_layers} layers, "
        f"d_model {model.cfg.d_model}, {len(tokens)} positions"
    )
    print("token layout (position range, role):")
    for line in batch.layout.summary(0).splitlines():
        print("   ", line)
    gate = int(batch.layout.positions("gate")[0][0])
    print(f"gate token: position {gate}, {tokens[gate]!r}")

    start = time.perf_counter()
    with torch.no_grad():
        logits, cache = model.run_with_cache(
            batch,
            names_filter=lambda n: hooks.lm_filter("hook_resid_post")(n) or n == hooks.IMAGE_EMBEDS,
        )
        reference_logits = reference(**batch.inputs).logits
    elapsed = time.perf_counter() - start
    print(
        f"logits {tuple(logits.shape)}; equal to Hugging Face: "
        f"{torch.equal(logits, reference_logits)} ({elapsed * 1000:.0f} ms for both)"
    )
    names = [n for n in cache if n.endswith("hook_resid_post") or n == hooks.IMAGE_EMBEDS]
    size = sum(cache[n].numel() * cache[n].element_size() for n in names)
    print(f"cache: {len(names)} tensors, {size / 1024:.1f} KiB")
    for name in names:
        print(f"    {name:32s} {tuple(cache[name].shape)}")
    text_after = batch.layout.mask("text", after="image")[0]
    resid = cache[hooks.resid_post(model.cfg.n_layers - 1)][0]
    print(
        f"mean |resid_post| at the gate {resid[gate].norm():.2f}, "
        f"over text after the image {resid[text_after].norm(dim=-1).mean():.2f}"
    )
    print()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m vlm_lens``."""
    parser = argparse.ArgumentParser(prog="python -m vlm_lens.demo", description=__doc__)
    parser.add_argument(
        "--family",
        choices=TINY_FAMILIES,
        action="append",
        help="family to show (repeatable; default: every family)",
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.manual_seed(0)
    for family in args.family or TINY_FAMILIES:
        describe(family)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
