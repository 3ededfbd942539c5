"""Throughput of activation collection against plain Hugging Face forwards on the same batches.

"Ours" is what a dataset run does per chunk: `vlm_lens.data.collect` with residual probes (the
gate, the mean over image tokens and the last token, ``resid_post`` at every layer, each reduced
inside its hook and copied to the CPU as float32), and `vlm_lens.data.run_dataset` end to end
(prepare, collect, write each chunk to an `ActivationStore`). The baseline is the plain Hugging
Face model (a separate copy, SDPA) on the same batches. Target: collection within 1.1x of the
plain forward. Interleaved in one process; each timed call is one pass over every batch.

Two set-ups:

* ``--model organism:native`` / ``organism:nonnative`` (the default is the native one): the
  trained organisms on ``--images`` held-out world scenes, batches of ``--batch-size`` from
  ``model.prepare``; also times `run_dataset` against the processor plus the plain forward
  (``HF prepare + forward``) on the same chunks.
* ``--shape chameleon`` etc. (the `_common` shapes and size flags; used by the GPU script at
  Chameleon-7B shape): ``--batch`` prompts per forward (the pre-tokenised prompt of `_common`
  repeated), ``--batches`` batches; ``collect + write`` adds the chunk write of `run_dataset`.

    taskset -c 1 python benchmarks/activation_throughput.py --threads 1 --model organism:native
    taskset -c 1 python benchmarks/activation_throughput.py --threads 1 --model organism:nonnative
    taskset -c 1 python benchmarks/activation_throughput.py --threads 1 --shape chameleon --batch 4
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from typing import Any

import torch
from _common import Setup, build, median_times, parser, print_table

from vlm_lens import HookedVLM, hooks
from vlm_lens.batch import Batch
from vlm_lens.data import Probe, collect, run_dataset
from vlm_lens.data.store import ActivationStore

PROBES = (
    Probe("gate"),
    Probe("image_mean", positions="image", reduce="mean"),
    Probe("last", positions="last"),
)
"""The residual probes (``resid_post``, every layer) of the χ analyses."""

OURS = "vlm_lens collect (residual probes)"
BASE = "HF sdpa forward"


def _writer(batches: list[Batch], out: dict[str, Any]) -> Any:
    """collect + `ActivationStore.write_chunk` of every batch into a fresh store."""

    def go(model: HookedVLM) -> None:
        with tempfile.TemporaryDirectory() as folder:
            n = sum(len(b) for b in batches)
            store = ActivationStore.create(
                folder, config={}, records=[{}] * n, chunk_size=len(batches[0])
            )
            start = 0
            for chunk, batch in enumerate(batches):
                indices = range(start, start + len(batch))
                store.write_chunk(chunk, collect(model, batch, PROBES, example_indices=indices))
                start += len(batch)
            out["store"] = store.load("gate").shape

    return go


def measure(s: Setup, deadline: float | None = None) -> dict[str, Any]:
    """The `_common` set-up: ``s.args.batches`` copies of the prompt batch (``--batch`` rows),
    timed as HF SDPA (plain, and with ``output_hidden_states``), collect, collect + write."""
    args = s.args
    n_batches = getattr(args, "batches", 2)
    batches = [s.batch] * n_batches
    hf_inputs = [dict(b.inputs) for b in batches]
    out: dict[str, Any] = {}
    write = _writer(batches, out)
    variants = {
        BASE: lambda: [s.hf_sdpa(**x) for x in hf_inputs],
        "HF sdpa + output_hidden_states": lambda: [
            s.hf_sdpa(**x, output_hidden_states=True) for x in hf_inputs
        ],
        OURS: lambda: [collect(s.fast, b, PROBES) for b in batches],
        "vlm_lens collect + write_chunk": lambda: write(s.fast),
    }
    with torch.no_grad():
        # resid_post of the second-to-last layer is HF's input to the last layer (HF's final
        # hidden state has the final norm applied)
        got = collect(s.fast, s.batch, PROBES)["last"][:, -2]
        hidden = s.hf_sdpa(**hf_inputs[0], output_hidden_states=True).hidden_states[-2]
        last = s.batch.layout.mask("last").to(torch.int64).argmax(dim=1).to(hidden.device)
        want = hidden[torch.arange(len(s.batch), device=hidden.device), last].float().cpu()
    diff = float((got - want).abs().max())
    medians = median_times(variants, args.repeats, s.sync, deadline=deadline)
    examples = n_batches * len(s.batch)
    title = (
        f"{s.describe()}; {n_batches} batches of {len(s.batch)}; max |collected last-token "
        f"resid_post[-2] - HF hidden_states[-2]| {diff:.2e}"
    )
    print_table(title, medians, BASE)
    ratio = medians[OURS] / medians[BASE]
    print(f"ratio ours/HF (collect / plain forward): {ratio:.3f} (target <= 1.1)")
    return {
        "seconds": medians,
        "examples_per_pass": examples,
        "examples_per_s": {k: examples / v for k, v in medians.items()},
        "ratio_collect_over_hf": ratio,
        "max_abs_diff_last_vs_hf_hidden": diff,
    }


def organism(args: argparse.Namespace) -> dict[str, Any]:
    """The organism set-up (see the module docstring)."""
    import transformers

    from vlm_lens.checkpoints import resolve_checkpoint
    from vlm_lens.experiments.images import world_images
    from vlm_lens.zoo.registry import model_defaults

    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve_checkpoint(args.model)
    config = transformers.AutoConfig.from_pretrained(path)
    cls = getattr(transformers, config.architectures[0])
    hf = cls.from_pretrained(path, attn_implementation="sdpa").to(args.device).eval()
    processor = HookedVLM.from_pretrained(args.model).processor
    model = HookedVLM.from_hf(hf, processor)  # a deep copy: `hf` stays plain
    prompt = (model_defaults(args.model).task_prompts or {})["chi"]
    images = world_images(args.images)
    labels = list(images.labels or ())
    size = args.batch_size
    chunks = [list(images.images[i : i + size]) for i in range(0, len(images), size)]

    def prepare(chunk: list[Any]) -> Batch:
        return model.prepare(images=chunk, text=[prompt] * len(chunk), padding_side="left")

    batches = [prepare(c) for c in chunks]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    from vlm_lens.data.examples import make_examples

    examples = make_examples(list(images.images), prompt, labels=labels)
    folder = tempfile.mkdtemp()

    def dataset() -> None:
        run_dataset(
            model, examples, PROBES, folder, batch_size=size, progress=False, overwrite=True
        )

    variants = {
        BASE: lambda: [hf(**dict(b.inputs)) for b in batches],
        OURS: lambda: [collect(model, b, PROBES) for b in batches],
        "HF prepare + forward": lambda: [hf(**dict(prepare(c).inputs)) for c in chunks],
        "vlm_lens run_dataset (prepare, collect, write)": dataset,
    }
    if args.parts:  # where collect's time goes, step by step
        sites = [hooks.resid_post(layer) for layer in range(model.cfg.n_layers)] * len(PROBES)
        idle = [(name, lambda _t, hook: None) for name in sites]  # noqa: ARG005
        variants.update(
            {
                "parts: bridge-wrapped HF module, no vlm_lens call": lambda: [
                    model.hf_model(**dict(b.inputs)) for b in batches
                ],
                "parts: run_with_hooks, no hooks": lambda: [
                    model.run_with_hooks(b, return_type=None) for b in batches
                ],
                f"parts: run_with_hooks, {len(idle)} no-op hooks": lambda: [
                    model.run_with_hooks(b, fwd_hooks=idle, return_type=None) for b in batches
                ],
            }
        )
    with torch.no_grad():
        same = torch.equal(model(batches[0]), hf(**dict(batches[0].inputs)).logits)
    medians = median_times(variants, args.repeats, sync)
    print_table(
        f"{args.model}: {len(images)} world images in batches of {size}, "
        f"{torch.get_num_threads()} thread(s), {args.device}, median of {args.repeats}; "
        f"vlm_lens logits == HF: {same}",
        medians,
        BASE,
    )
    ratio = medians[OURS] / medians[BASE]
    e2e = (
        medians["vlm_lens run_dataset (prepare, collect, write)"] / medians["HF prepare + forward"]
    )
    print(f"ratio ours/HF (collect / plain forward): {ratio:.3f} (target <= 1.1)")
    print(f"ratio ours/HF (run_dataset / prepare + forward): {e2e:.3f}")
    return {
        "model": args.model,
        "seconds": medians,
        "ratio_collect_over_hf": ratio,
        "ratio_run_dataset_over_prepare_hf": e2e,
        "logits_equal": same,
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="organism:native or organism:nonnative")
    p.add_argument("--images", type=int, default=64, help="organism set-up: world images")
    p.add_argument("--batch-size", type=int, default=16, help="organism set-up: per forward")
    p.add_argument("--batches", type=int, default=2, help="shape set-up: batches per pass")
    p.add_argument(
        "--parts",
        action="store_true",
        help="organism set-up: also time the steps in between (the bridge's wrapped modules, "
        "run_with_hooks without and with idle hooks at the probe sites)",
    )
    args = p.parse_args()
    if args.model:
        organism(args)
        return
    start = time.perf_counter()
    s = build(args)  # --batch rows per forward
    print(f"built in {time.perf_counter() - start:.1f} s")
    measure(s)


def tiled(s: Setup, rows: int) -> Setup:
    """`s` with its prompt batch repeated to `rows` rows (a shallow copy of `s`)."""
    inputs = {k: v.repeat(rows, *([1] * (v.ndim - 1))) for k, v in s.batch.inputs.items()}
    args = argparse.Namespace(**{**vars(s.args), "batch": rows})
    return dataclasses.replace(s, batch=s.fast.batch_from_inputs(inputs), args=args)


if __name__ == "__main__":
    main()
