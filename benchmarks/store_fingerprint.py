"""What a dataset run's fingerprint costs: hashing every weight, the hooks and the images.

`run_dataset` hashes all the bytes of every parameter and buffer (`vlm_lens.data.digest`, XXH3
128) once per call, before the first chunk. This script times it on the two organisms (with
the whole `model_identity`, hooks and attention included), on a synthetic module of
``--gigabytes`` of bf16 weights in Chameleon-7B-shaped matrices (4096 x 11008 and 4096 x 4096)
on ``--device``, and the image-file hashing of ``--images`` PNG files, against the cheap
first-8-values hash it replaced. No test asserts on time.

    python benchmarks/store_fingerprint.py --gigabytes 2
    python benchmarks/store_fingerprint.py --gigabytes 14 --device cuda  # a 7B model in bf16
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from vlm_lens import HookedVLM
from vlm_lens.data.digest import weights_digests
from vlm_lens.data.examples import example_digests, make_examples
from vlm_lens.data.identity import model_identity


def head_only(module: nn.Module) -> str:
    """The fingerprint before issue 17: the first 8 values of each parameter."""
    digest = hashlib.sha256()
    for name, param in module.named_parameters():
        head = param.detach().flatten()[:8].to("cpu", dtype=param.dtype)
        digest.update(f"{name}:{tuple(param.shape)}:".encode())
        digest.update(head.float().numpy().tobytes())
    return digest.hexdigest()


def timed(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def synthetic(gigabytes: float, device: str) -> nn.Module:
    """bf16 matrices of a 7B decoder's shapes adding up to about `gigabytes`."""
    module = nn.Module()
    shapes = [(11008, 4096), (4096, 11008), (4096, 4096)]
    total, i = 0, 0
    while total < gigabytes * 2**30:
        shape = shapes[i % len(shapes)]
        weight = torch.empty(shape, dtype=torch.bfloat16, device=device).normal_()
        module.register_parameter(f"w{i}", nn.Parameter(weight, requires_grad=False))
        total += weight.numel() * 2
        i += 1
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--gigabytes", type=float, default=2.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    print("| what | bytes | full hash (s) | GB/s | first-8 hash (s) |")
    print("|---|---|---|---|---|")
    for name in ("native", "nonnative"):
        model = HookedVLM.from_pretrained(f"organism:{name}")
        size = sum(t.numel() * t.element_size() for t in model.hf_model.state_dict().values())
        full = timed(lambda m=model: model_identity(m), args.repeats)
        cheap = timed(lambda m=model: head_only(m.hf_model), args.repeats)
        print(
            f"| organism:{name} model_identity | {size / 2**20:.1f} MiB | {full:.4f} | "
            f"{size / full / 1e9:.2f} | {cheap:.4f} |"
        )
    big = synthetic(args.gigabytes, args.device)
    size = sum(p.numel() * 2 for p in big.parameters())
    full = timed(lambda m=big: weights_digests(m), args.repeats)
    cheap = timed(lambda m=big: head_only(m), args.repeats)
    print(
        f"| synthetic bf16 on {args.device} | {size / 2**30:.2f} GiB | {full:.3f} | "
        f"{size / full / 1e9:.2f} | {cheap:.4f} |"
    )
    del big  # its weights, before the image files
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i in range(args.images):
            paths.append(Path(folder) / f"{i}.png")
            Image.effect_noise((224, 224), 64 + i % 64).convert("RGB").save(paths[-1])
        examples = make_examples(paths, "<image> Describe.")
        prompts = [e.text for e in examples]
        size = sum(p.stat().st_size for p in paths)
        full = timed(lambda: example_digests(examples, prompts), args.repeats)
        print(
            f"| {args.images} PNG files (224 px) | {size / 2**20:.1f} MiB | {full:.3f} | "
            f"{size / full / 1e9:.2f} | - |"
        )


if __name__ == "__main__":
    main()
