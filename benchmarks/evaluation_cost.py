"""What the four Table 1 conditions cost together, against the baseline alone.

For each model organism (side by side in one process) and each generative task (VQAv2-style
questions, 20 new tokens; captions, 60 new tokens) on held-out world scenes, times
`vlm_lens.evaluate.evaluate` with

* ``baseline`` alone;
* ``baseline,gate,image->text`` (the conditions that share the clean prefix);
* all four, ``baseline,gate,image->text,random`` (random: 5 draws for VQA, 3 for captions,
  as the paper), with the prefix shared and without (``reuse_prefix=False``), one call per
  run (``stack_runs=False``);
* all four stacked along the batch (``stack_runs=True``, the default of `evaluate`: one
  prefix pass, one call for the sharing runs, one for the random draws).

and prints the time to the last prediction (generation only: scoring, which for CIDEr starts
Java's PTB tokenizer twice per run, is left out) and its ratio to the baseline's (target: all
four at most 2x). Scores are computed too, and the shared-prefix, plain and stacked runs must
give the same table.

Command (one thread, as the organisms run best)::

    taskset -c 1 python benchmarks/evaluation_cost.py --items 64 --threads 1
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from vlm_lens import HookedVLM
from vlm_lens.evaluate import TASKS, EvalItem, evaluate
from vlm_lens.world import world_split

MODELS = ("organism:native", "organism:nonnative")
RUNS: tuple[tuple[str, str, bool, bool], ...] = (  # label, conditions, reuse_prefix, stack_runs
    ("baseline alone", "baseline", True, False),
    ("baseline, gate, image->text", "baseline,gate,image->text", True, False),
    ("all four, shared prefix", "baseline,gate,image->text,random", True, False),
    ("all four, no prefix reuse", "baseline,gate,image->text,random", False, False),
    ("all four, stacked", "baseline,gate,image->text,random", True, True),
)


def world_items(task: str, n: int) -> list[EvalItem]:
    """`n` held-out single-object scenes as items of `task` (VQA: one question per scene,
    kinds in turn; captions: the scene's caption)."""
    scenes = world_split("test", n, seed=0, max_objects=1)
    if task == "vqav2":
        out = []
        for i, scene in enumerate(scenes):
            qa = scene.qa[i % len(scene.qa)]
            out.append(EvalItem(f"q{scene.index}", scene.image, qa.question, (qa.answer,) * 10))
        return out
    return [EvalItem(f"c{s.index}", s.image, references=(s.caption,)) for s in scenes]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tasks", nargs="+", default=["vqav2", "coco-captions"])
    p.add_argument("--knockout-mode", choices=["zero", "mask"], default="zero")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    models = {name: HookedVLM.from_pretrained(name) for name in MODELS}
    print(
        f"{args.items} items, batch {args.batch_size}, {args.threads} thread(s), CPU, "
        f"knockout mode {args.knockout_mode}"
    )
    for task in args.tasks:
        items = world_items(task, args.items)
        print(f"\n### {task} (max_new_tokens {TASKS[task].max_new_tokens})\n")
        print("| run | " + " | ".join(f"{m} s | x baseline" for m in MODELS) + " |")
        print("|---|" + "---|---|" * len(MODELS))
        times: dict[str, dict[str, float]] = {label: {} for label, _, _, _ in RUNS}
        tables: dict[str, dict[str, Any]] = {}
        for name, model in models.items():
            evaluate(model, task, items[:4], "baseline", model_name=name, progress=False)  # warm
            for label, conditions, reuse, stack in RUNS:
                last: list[float] = []
                start = time.perf_counter()
                result = evaluate(
                    model,
                    task,
                    items,
                    conditions,
                    model_name=name,
                    batch_size=args.batch_size,
                    progress=False,
                    reuse_prefix=reuse,
                    stack_runs=stack,
                    knockout_mode=args.knockout_mode,
                    on_row=lambda _row, last=last: last.append(time.perf_counter()),
                )
                times[label][name] = last[-1] - start
                tables[f"{name} {label}"] = result.scores
            shared = tables[f"{name} all four, shared prefix"]
            plain = tables[f"{name} all four, no prefix reuse"]
            stacked = tables[f"{name} all four, stacked"]
            if not shared == plain == stacked:
                raise SystemExit(
                    f"{name}: scores differ: shared prefix {shared}, plain {plain}, "
                    f"stacked {stacked}"
                )
        for label, _, _, _ in RUNS:
            cells = []
            for name in MODELS:
                t, base = times[label][name], times["baseline alone"][name]
                cells += [f"{t:.2f}", f"{t / base:.2f}"]
            print(f"| {label} | " + " | ".join(cells) + " |")
        for name in MODELS:
            print(f"\n{name} scores (all four): {tables[f'{name} all four, shared prefix']}")


if __name__ == "__main__":
    main()
