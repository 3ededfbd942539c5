"""Forward and residual-cache overhead of HookedVLM vs plain Hugging Face, side by side.

A Chameleon-shaped model with random weights (default: hidden 256, 4 layers, 8 heads) on one
prompt of BOS + BOI + 1,024 image-code tokens + EOI + 32 text tokens, images pre-tokenised (the
VQ encoder is not timed). Every variant runs interleaved in one process; the script prints the
median time of each and its ratio to HF eager and HF SDPA.

    python benchmarks/forward_overhead.py                       # CPU, fp32
    python benchmarks/forward_overhead.py --device cuda --dtype bfloat16 --hidden 4096 \\
        --layers 32 --heads 32                                  # Chameleon-7B shape on a GPU
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from transformers import ChameleonForConditionalGeneration

from vlm_lens import HookedVLM, hooks
from vlm_lens.testing import tiny_chameleon


def build(hidden: int, layers: int, heads: int, dtype: torch.dtype, device: str):
    tiny = tiny_chameleon()
    config = copy.deepcopy(tiny.model.config)
    config.hidden_size, config.num_hidden_layers = hidden, layers
    config.num_attention_heads = config.num_key_value_heads = heads
    config.intermediate_size = int(hidden * 8 / 3) // 64 * 64 or 64
    config.max_position_embeddings = 4096
    torch.manual_seed(0)
    model = ChameleonForConditionalGeneration(config).to(device=device, dtype=dtype).eval()
    model.set_attn_implementation("eager")
    return model, tiny


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        fn()
    sync()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--image-tokens", type=int, default=1024)
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    dtype = getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    eager, tiny = build(args.hidden, args.layers, args.heads, dtype, args.device)
    sdpa = copy.deepcopy(eager)
    sdpa.set_attn_implementation("sdpa")
    model = HookedVLM.from_hf(copy.deepcopy(eager), tiny.processor)

    tok = tiny.tokenizer
    codes = list(eager.model.vocabulary_mapping.image_tokens)
    generator = torch.Generator().manual_seed(0)
    image = [codes[i] for i in torch.randint(len(codes), (args.image_tokens,), generator=generator)]
    text = tok("x" * args.text_tokens, add_special_tokens=False)["input_ids"][: args.text_tokens]
    ids = [tok.bos_token_id, tok.convert_tokens_to_ids("<racm3:break>"), *image]
    ids += [tok.convert_tokens_to_ids("<eoss>"), *text]
    input_ids = torch.tensor([ids], device=args.device)
    batch = model.batch_from_inputs({"input_ids": input_ids})
    assert batch.layout.counts()["image"] == [args.image_tokens]

    resid_filter = hooks.lm_filter("hook_resid_post")
    variants: dict[str, Callable[[], object]] = {
        "HF eager": lambda: eager(input_ids=input_ids),
        "HF sdpa": lambda: sdpa(input_ids=input_ids),
        "HookedVLM forward (hooks idle)": lambda: model(batch),
        "HookedVLM run_with_cache(resid_post)": lambda: model.run_with_cache(
            batch, names_filter=resid_filter
        ),
    }
    with torch.no_grad():
        assert torch.equal(model(batch), eager(input_ids=input_ids).logits)
    for fn in variants.values():  # warm-up
        timed(fn, sync)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn, sync))
    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"Chameleon-shaped: hidden {args.hidden}, {args.layers} layers, {args.heads} heads, "
        f"{input_ids.shape[1]} positions ({args.image_tokens} image), {args.dtype} on "
        f"{args.device}, median of {args.repeats}; logits equal HF eager: True"
    )
    print(f"{'variant':40s} {'ms':>9s} {'x HF eager':>11s} {'x HF sdpa':>10s}")
    for name, value in median.items():
        print(
            f"{name:40s} {value * 1000:9.1f} {value / median['HF eager']:11.2f} "
            f"{value / median['HF sdpa']:10.2f}"
        )


if __name__ == "__main__":
    main()
