"""Shared set-up of the speed benchmarks: model shapes, the variants, timing and peak memory.

Two prompt shapes, random weights, images given as model inputs:

* ``chameleon``: BOS + BOI + ``--image-tokens`` (1,024) VQ codes + EOI (the gate) + text,
  images pre-tokenised (the VQ encoder is not timed);
* ``llava``: Llama decoder, ``USER:`` + 576 image positions from a small CLIP tower (96 px,
  patch 4: 24 x 24 patches; hidden 32, 2 layers, the same in every variant) + text;
* ``qwen2_vl``: Qwen2-VL's decoder (multi-axis rotary positions from ``get_rope_index``), its
  chat prompt with one ``--image-px`` square image (256: a 64 x 64 patch grid from the tiny
  2-layer tower, patch 4, merged 2 x 2 into 1,024 ``<|image_pad|>`` positions) + text, through
  the family's own processor;
* ``llava_onevision``: LLaVA-OneVision (the paper's non-native model) with a Qwen2 decoder, a
  tiny SigLIP tower on 48 px crops (patch 4: 144 features a crop) and one 96 x 96 anyres
  pinpoint: a 96 x 96 image gives the base crop and 2 x 2 tiles, 144 + 24 x (24 + 1 newline) =
  720 image positions and 24 `image_newline` row ends, through the family's own processor.

Every script builds, side by side in one process: Hugging Face with eager attention and with
SDPA (deep copies of one model), TransformerLens' bridge as vlm_lens used it before the fast path
(HookedVLM on the eager model: every layer rebuilds attention eagerly), and vlm_lens with SDPA.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    ChameleonForConditionalGeneration,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from vlm_lens import Batch, HookedVLM
from vlm_lens.testing import tiny_chameleon, tiny_llava
from vlm_lens.testing.tiny_llava_next import tiny_llava_onevision
from vlm_lens.testing.tiny_qwen_vl import tiny_qwen2_vl


def parser(description: str) -> argparse.ArgumentParser:
    """Arguments every script takes (shape, size, device, repeats)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--shape",
        choices=["chameleon", "llava", "qwen2_vl", "llava_onevision"],
        default="chameleon",
    )
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--mlp", type=int, default=None, help="MLP width (default: ~8/3 hidden)")
    p.add_argument("--vocab", type=int, default=None, help="vocabulary (default: tokenizer's)")
    p.add_argument("--image-tokens", type=int, default=1024, help="Chameleon only")
    p.add_argument("--image-px", type=int, default=256, help="qwen2_vl only: image side")
    p.add_argument("--text-tokens", type=int, default=31)
    p.add_argument("--batch", type=int, default=1, help="prompts per forward")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p


@dataclass
class Setup:
    """The models and the prompt of one benchmark run."""

    hf_eager: torch.nn.Module
    hf_sdpa: torch.nn.Module
    bridge: HookedVLM
    fast: HookedVLM
    batch: Batch
    args: argparse.Namespace

    @property
    def inputs(self) -> dict[str, Any]:
        return dict(self.batch.inputs)

    def sync(self) -> None:
        if self.args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def describe(self) -> str:
        a = self.args
        n = self.batch.input_ids.shape[1]
        image = self.batch.layout.counts()["image"][0]
        return (
            f"{a.shape}-shaped: hidden {a.hidden}, {a.layers} layers, {a.heads} heads, "
            f"{n} positions ({image} image), batch {a.batch}, {a.dtype} on {a.device}, "
            f"{torch.get_num_threads()} thread(s), median of {a.repeats}"
        )


def build(args: argparse.Namespace) -> Setup:
    """The four variants of the chosen shape, on `args.device` in `args.dtype`."""
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    mlp = args.mlp or max(64, int(args.hidden * 8 / 3) // 64 * 64)
    torch.manual_seed(0)
    if args.shape == "chameleon":
        tiny = tiny_chameleon()
        config = copy.deepcopy(tiny.model.config)
        config.hidden_size, config.num_hidden_layers = args.hidden, args.layers
        config.num_attention_heads = config.num_key_value_heads = args.heads
        config.intermediate_size = mlp
        config.max_position_embeddings = 8192
        if args.vocab:
            config.vocab_size = args.vocab
        with on_device(args):  # built in place (a 7B model is never materialised on the CPU)
            model = ChameleonForConditionalGeneration(config)
    elif args.shape in ("qwen2_vl", "llava_onevision"):
        text_sizes: dict[str, Any] = {
            "hidden_size": args.hidden,
            "num_hidden_layers": args.layers,
            "num_attention_heads": args.heads,
            "num_key_value_heads": args.heads,
            "intermediate_size": mlp,
            "max_position_embeddings": 8192,
            **({"vocab_size": args.vocab} if args.vocab else {}),
        }
        if args.shape == "qwen2_vl":
            tiny = tiny_qwen2_vl(**text_sizes)
            side = args.image_px
            tiny.processor.image_processor.size = {
                "shortest_edge": 64,
                "longest_edge": side * side,
            }
        else:
            tiny = tiny_llava_onevision(crop=48, pinpoints=[[96, 96]], **text_sizes)
        model = tiny.model
    else:
        tiny = tiny_llava()
        base = tiny.model.config
        text = base.text_config.to_dict()
        text.update(
            hidden_size=args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            num_key_value_heads=args.heads,
            intermediate_size=mlp,
            max_position_embeddings=8192,
            head_dim=args.hidden // args.heads,
        )
        if args.vocab:
            text["vocab_size"] = args.vocab
        vision = base.vision_config.to_dict()
        vision.update(image_size=96, patch_size=4)
        config = LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=base.image_token_index,
            image_seq_length=576,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
        config.architectures = ["LlavaForConditionalGeneration"]
        model = LlavaForConditionalGeneration(config)
    model = model.to(device=args.device, dtype=dtype).eval()
    model.set_attn_implementation("eager")
    hf_sdpa = copy.deepcopy(model)
    hf_sdpa.set_attn_implementation("sdpa")
    bridge = HookedVLM.from_hf(model, tiny.processor)  # deep copy, eager
    fast = HookedVLM.from_hf(hf_sdpa, tiny.processor)  # deep copy, sdpa
    batch = _prompt(fast, tiny, args, model)
    return Setup(model, hf_sdpa, bridge, fast, batch, args)


@contextlib.contextmanager
def on_device(args: argparse.Namespace) -> Iterator[None]:
    """Create tensors on ``args.device`` in ``args.dtype`` (for building random-weight models
    there, without a CPU copy); a no-op on the CPU in float32."""
    if args.device == "cpu" and args.dtype == "float32":
        yield
        return
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, args.dtype))
    try:
        with torch.device(args.device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _prompt(model: HookedVLM, tiny: Any, args: argparse.Namespace, hf: Any) -> Batch:
    tok = tiny.tokenizer
    gen = torch.Generator().manual_seed(0)
    text = tok("x" * args.text_tokens, add_special_tokens=False)["input_ids"][: args.text_tokens]
    if args.shape == "chameleon":
        codes = list(hf.model.vocabulary_mapping.image_tokens)
        image = [codes[i] for i in torch.randint(len(codes), (args.image_tokens,), generator=gen)]
        ids = [tok.bos_token_id, tok.convert_tokens_to_ids("<racm3:break>"), *image]
        ids += [tok.convert_tokens_to_ids("<eoss>"), *text]
        inputs: dict[str, Any] = {"input_ids": torch.tensor([ids] * args.batch)}
    elif args.shape in ("qwen2_vl", "llava_onevision"):
        side = args.image_px if args.shape == "qwen2_vl" else 96
        pixels = (torch.rand(side, side, 3, generator=gen) * 255).to(torch.uint8).numpy()
        prompt = tiny.prompt.replace("What is in the image?", tok.decode(text))
        inputs = dict(
            tiny.processor(
                images=[pixels] * args.batch, text=[prompt] * args.batch, return_tensors="pt"
            )
        )
    else:
        user = tok("USER: ", add_special_tokens=False)["input_ids"]
        ids = [tok.bos_token_id, *user] + [hf.config.image_token_index] * 576 + text
        pixels = torch.rand(args.batch, 3, 96, 96, generator=gen)
        inputs = {"input_ids": torch.tensor([ids] * args.batch), "pixel_values": pixels}
    dtype = getattr(torch, args.dtype)
    inputs = {
        k: v.to(args.device, dtype if v.is_floating_point() else None) for k, v in inputs.items()
    }
    return model.batch_from_inputs(inputs)


def median_times(
    variants: dict[str, Callable[[], object]],
    repeats: int,
    sync: Callable[[], None],
    *,
    warmup: bool = True,
    deadline: float | None = None,
) -> dict[str, float]:
    """Median seconds of each variant, interleaved round-robin (after one warm-up each).

    With `deadline` (a `time.perf_counter` value) no further round starts after it (at least
    one round runs), so a caller with a time budget gets fewer repeats instead of overrunning.
    """

    def once(fn: Callable[[], object]) -> float:
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            fn()
        sync()
        return time.perf_counter() - start

    if warmup:
        for fn in variants.values():
            once(fn)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(repeats):
        if i and deadline is not None and time.perf_counter() > deadline:
            break
        for name, fn in variants.items():
            times[name].append(once(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def print_table(title: str, medians: dict[str, float], base: str, extra: str = "") -> None:
    """Median ms and ratios to the `base` variant and to HF eager / HF sdpa when present."""
    print(title)
    refs = [r for r in ("HF eager", "HF sdpa") if r in medians]
    head = f"{'variant':52s} {'ms':>10s}" + "".join(f" {'x ' + r:>11s}" for r in refs)
    print(head + (f" {'x ' + base:>14s}" if base not in refs else "") + extra)
    for name, value in medians.items():
        row = f"{name:52s} {value * 1000:10.1f}"
        row += "".join(f" {value / medians[r]:11.2f}" for r in refs)
        if base not in refs:
            row += f" {value / medians[base]:14.2f}"
        print(row)


# ---------------------------------------------------------------------- sweeps
def time_sweep(
    args: argparse.Namespace,
    s: Setup,
    sweep: Callable[..., object],
    compare: Callable[[object, object], str],
    extra: dict[str, Callable[[], object]] | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Time a sweep side by side and print it in full-forward equivalents.

    `sweep(model, reuse_prefix=..., per_pass=...)` runs the sweep. Variants: the naive sweep
    (every condition in full), prefix reuse one condition per pass, prefix reuse with
    conditions stacked (``per_pass="auto"``), and with ``--with-bridge`` the naive sweep on
    the eager bridge. The sweeps are long: one warm-up forward, no warm-up sweep.
    `compare(stacked, naive)` describes how the results agree (printed in the title); `extra`
    adds variants timed alongside (a part of the sweep, say); `deadline` caps the repeats (see
    `median_times`). Returns the median seconds, the agreement and the full-forward
    equivalents (each median over the vlm_lens forward's).
    """
    out: dict[str, object] = {}

    def run(model: HookedVLM, name: str, reuse: bool, per_pass: int | str) -> Callable[[], None]:
        def go() -> None:
            out[name] = sweep(model, reuse_prefix=reuse, per_pass=per_pass)

        return go

    variants: dict[str, Callable[[], object]] = {
        "HF sdpa": lambda: s.hf_sdpa(**s.inputs),
        "vlm_lens forward (SDPA)": lambda: s.fast(s.batch),
        "naive sweep, vlm_lens SDPA (full runs)": run(s.fast, "naive", False, 1),
        "prefix reuse, one condition per pass": run(s.fast, "single", True, 1),
        "prefix reuse, conditions stacked (auto)": run(s.fast, "stacked", True, "auto"),
    }
    if args.no_naive:  # for more repeats of the others; agreement against one-per-pass
        del variants["naive sweep, vlm_lens SDPA (full runs)"]
    variants.update(extra or {})
    if args.with_bridge:
        variants["naive sweep, TL bridge eager (before)"] = run(s.bridge, "bridge", False, 1)
    forwards = {k: v for k, v in variants.items() if k in ("HF sdpa", "vlm_lens forward (SDPA)")}
    median_times(forwards, 1, s.sync)  # warm-up of the forwards only
    medians = median_times(variants, args.repeats, s.sync, warmup=False, deadline=deadline)
    reference = "single" if args.no_naive else "naive"
    agree = {f"stacked vs {reference}": compare(out["stacked"], out[reference])}
    if not args.no_naive:
        agree["one per pass vs naive"] = compare(out["single"], out["naive"])
    title = f"{s.describe()}; " + "; ".join(f"{k}: {v}" for k, v in agree.items())
    print_table(title, medians, "vlm_lens forward (SDPA)")
    base = medians["vlm_lens forward (SDPA)"]
    return {
        "seconds": medians,
        "agreement": agree,
        "forward_equivalents": {k: v / base for k, v in medians.items()},
    }


def sweep_parser(description: str) -> argparse.ArgumentParser:
    """`parser` plus ``--with-bridge`` (also time the naive sweep on the eager bridge) and
    ``--no-naive`` (leave the naive sweep out, to afford more repeats of the others)."""
    p = parser(description)
    p.add_argument("--with-bridge", action="store_true", help="also time the eager bridge")
    p.add_argument("--no-naive", action="store_true", help="skip the naive sweep (minutes)")
    p.add_argument(
        "--sweep-layers",
        type=int,
        default=None,
        help="sweep this many conditions, evenly spaced over the layers (default: every layer)",
    )
    return p


def swept(args: argparse.Namespace) -> list[int]:
    """The layers (patching) or window sizes minus one (knockout) a sweep covers:
    ``--sweep-layers`` of ``0 .. --layers - 1``, evenly spaced (all by default)."""
    n, k = args.layers, getattr(args, "sweep_layers", None)
    if not k or k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [n - 1]


# ---------------------------------------------------------------------- peak memory
def peak_memory(script: str, argv: list[str], variant: str) -> float:
    """Peak memory growth (MiB) of one call of `variant`: CUDA ``max_memory_allocated`` over
    the allocation before the call; on CPU, the peak RSS growth over the RSS before the call,
    in a fresh process with glibc's mmap threshold fixed at 128 KiB (so freed tensors are
    returned to the system), sampled every 0.2 ms, after one warm-up call."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(
        [sys.executable, script, *argv, "--child", variant],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out.strip().splitlines()[-1])


def child_peak(fn: Callable[[], object], device: str) -> float:
    """Run `fn` twice (warm-up, measured) and return the measured call's peak growth in MiB."""
    with torch.no_grad():
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        with torch.no_grad():
            fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * page

    import gc

    gc.collect()
    before = rss()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.0002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    with torch.no_grad():
        fn()
    done.set()
    thread.join()
    peak[0] = max(peak[0], rss())
    return (peak[0] - before) / 2**20


def sweep_floor(total: int, gate: int, n_layers: int, starts: list[int], *, source: bool) -> float:
    """The least work an exact sweep from the gate on can do, in full-forward equivalents,
    counting a position through one layer as ``1 / (total * n_layers)`` of a forward: the
    target's prefix before the gate once, the clean suffix (the gate and after, every layer),
    for a condition whose first touched layer is ``l`` the suffix through layers ``l ..``, and
    with `source` one full forward more (a patching sweep's source: the patch reads its gate,
    the result compares with its last-token distribution). Suffix positions attend to more
    keys than the average position, so at equal cost per position this is a lower bound
    (fixed per-pass costs come on top).

    Example:
        >>> round(sweep_floor(826, 761, 32, list(range(32)), source=True), 2)
        3.3
    """
    suffix = (total - gate) / total
    layers = sum(n_layers - start for start in starts) / n_layers
    return float(source) + gate / total + suffix * (1 + layers)


def print_floor(s: Setup, starts: list[int], *, source: bool) -> float:
    """Print and return `sweep_floor` for `s`'s prompt (its first sequence's last gate)."""
    total = int(s.batch.input_ids.shape[1])
    gate = int(s.batch.layout.mask("gate")[0].nonzero()[-1])
    floor = sweep_floor(total, gate, int(s.fast.cfg.n_layers), starts, source=source)
    print(
        f"exact floor at equal cost per position-layer ({total} positions, gate at {gate}"
        f"{', with the source forward' if source else ''}): {floor:.2f} full-forward equivalents"
    )
    return floor
