"""The Narrow Gate experiment on the two model organisms, through the public API.

Runs, for each model: question-answering accuracy per kind with no intervention and under the
paper's knockouts (the gate, image-to-text, 10 random image tokens, and everything after the
image blocked from the image); the progressive gate knockout (last w layers); attention share by
role per layer; neighbourhood overlap χ of the gate, the mean image token and the last token with
the scene class ("red circle"); and gate patching between scenes of different colours (residual
and attention-input sites), on held-out single-object scenes of the synthetic world.

Command (writes ``benchmarks/results/organisms_narrow_gate.{md,json}``)::

    python benchmarks/organisms_narrow_gate.py --scenes 200

Any other supported model works too: ``--models organism:native /path/to/folder``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import vlm_lens
from vlm_lens import HookedVLM
from vlm_lens.analysis import (
    PatchPair,
    attention_share,
    neighbourhood_overlap,
    patching_sweep,
    representations,
)
from vlm_lens.interventions import (
    gate_knockout,
    image_to_text_knockout,
    knockout,
    last_layers,
    random_image_knockout,
)
from vlm_lens.positions import after
from vlm_lens.world import COLOURS, Scene, world_split
from vlm_lens.zoo.tasks import answer_accuracy, question_prompt

RESULTS = Path(__file__).parent / "results"
COLOUR_QUESTION = "what colour is the shape?"


def conditions(n_layers: int) -> dict[str, Any]:
    """Knockout conditions: name -> ``batch -> fwd_hooks`` (``None``: no intervention)."""
    out: dict[str, Any] = {
        "none": None,
        "gate": gate_knockout,
        "image->text": image_to_text_knockout,
        "random 10 image tokens": lambda b: random_image_knockout(b, k=10, seed=0),
        "all after image -> image": lambda b: knockout(
            b, queries=after("all", "image"), keys=["image", "image_row_end"]
        ),
    }
    for w in sorted({max(1, n_layers // 4), max(1, n_layers // 2)}):
        out[f"gate, last {w} layers"] = lambda b, w=w: gate_knockout(
            b, layers=last_layers(n_layers, w)
        )
    return out


def question_batches(model: HookedVLM, scenes: list[Scene], size: int = 32) -> list[Any]:
    """The colour question about every scene, in batches."""
    prompt = question_prompt(COLOUR_QUESTION, model.image_placeholder)
    return [
        model.prepare(
            images=[s.image for s in scenes[i : i + size]],
            text=[prompt] * len(scenes[i : i + size]),
            padding_side="left",
        )
        for i in range(0, len(scenes), size)
    ]


def colour_pairs(model: HookedVLM, scenes: list[Scene], n_pairs: int) -> list[PatchPair]:
    """Pairs of scenes with different colours: source colour patched into the target."""
    prompt = question_prompt(COLOUR_QUESTION, model.image_placeholder)
    token = {c: model.tokenizer.convert_tokens_to_ids(c) for c in COLOURS}
    pairs = []
    for i in range(n_pairs):
        a, b = scenes[2 * i], scenes[2 * i + 1]
        if a.objects[0].colour == b.objects[0].colour:
            continue
        source = model.prepare(images=a.image, text=prompt)
        target = model.prepare(images=b.image, text=prompt)
        pairs.append(
            PatchPair(source, target, token[a.objects[0].colour], token[b.objects[0].colour])
        )
    return pairs


def run_model(name: str, n_scenes: int, k: int) -> dict[str, Any]:
    """Every measurement for one model."""
    model = HookedVLM.from_pretrained(name)
    n_layers = model.cfg.n_layers
    scenes = world_split("test", n_scenes, seed=0, max_objects=1)
    out: dict[str, Any] = {"model": name, "family": model.family, "n_layers": n_layers}
    start = time.perf_counter()
    accuracy = {}
    for label, build in conditions(n_layers).items():
        result = answer_accuracy(model, scenes, intervention=build)
        accuracy[label] = result.accuracy
    out["accuracy"] = accuracy
    batches = question_batches(model, scenes)
    share = attention_share(model, batches)
    out["attention_share"] = {
        "groups": list(share.groups),
        "share": share.share.round(4).tolist(),
    }
    labels = [s.label for s in scenes]
    reps = {
        "gate": representations(model, batches, positions="gate"),
        "image_mean": representations(model, batches, positions="image", reduce="mean"),
        "last": representations(model, batches, positions="last"),
    }
    chi = neighbourhood_overlap(reps, labels, k=k)
    out["overlap"] = {
        "k": k,
        "chance": chi.chance,
        "by_role": {r: np.asarray(v).round(4).tolist() for r, v in chi.overlap.items()},
    }
    pairs = colour_pairs(model, scenes, n_pairs=min(60, n_scenes // 2))
    for site in ("residual", "attention"):
        sweep = patching_sweep(model, pairs, site=site)
        out[f"patching_{site}"] = {
            "flip_rate": sweep.flip_rate.round(4).tolist(),
            "similarity": sweep.similarity.round(4).tolist(),
            "baseline_flip_rate": round(sweep.baseline_flip_rate, 4),
            "baseline_similarity": round(sweep.baseline_similarity, 4),
            "n_pairs": sweep.n_pairs,
        }
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def to_markdown(results: list[dict[str, Any]], command: str) -> str:
    """The results as markdown tables."""
    lines = [
        "# The Narrow Gate experiment on the model organisms",
        "",
        f"Command: `{command}`",
        "",
        f"vlm_lens {vlm_lens.__version__}, torch {torch.__version__}, "
        f"{platform.machine()} CPU; held-out single-object test scenes of the world (seed 0).",
        "",
    ]
    for r in results:
        lines += [f"## {r['model']} ({r['family']}, {r['n_layers']} layers, {r['seconds']} s)", ""]
        kinds = list(r["accuracy"]["none"])
        lines += ["| knockout | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
        for label, acc in r["accuracy"].items():
            lines.append(f"| {label} | " + " | ".join(f"{acc[k]:.3f}" for k in kinds) + " |")
        share = r["attention_share"]
        lines += ["", "Attention share of the text after the image, by role:", ""]
        lines += ["| layer | " + " | ".join(share["groups"]) + " |"]
        lines += ["|---" * (len(share["groups"]) + 1) + "|"]
        for layer, row in enumerate(share["share"]):
            lines.append(f"| {layer} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
        ov = r["overlap"]
        lines += ["", f"Neighbourhood overlap χ (k={ov['k']}, chance {ov['chance']:.3f}):", ""]
        roles = list(ov["by_role"])
        lines += ["| layer | " + " | ".join(roles) + " |", "|---" * (len(roles) + 1) + "|"]
        for layer in range(r["n_layers"]):
            values = " | ".join(f"{ov['by_role'][role][layer]:.3f}" for role in roles)
            lines.append(f"| {layer} | {values} |")
        lines += ["", "Gate patching (colour flips toward the source image):", ""]
        lines += ["| layer | residual flip | residual sim | attention flip | attention sim |"]
        lines += ["|---|---|---|---|---|"]
        res, att = r["patching_residual"], r["patching_attention"]
        for layer in range(r["n_layers"]):
            lines.append(
                f"| {layer} | {res['flip_rate'][layer]:.3f} | {res['similarity'][layer]:.3f} | "
                f"{att['flip_rate'][layer]:.3f} | {att['similarity'][layer]:.3f} |"
            )
        lines += [
            f"| unpatched | {res['baseline_flip_rate']:.3f} | {res['baseline_similarity']:.3f} "
            f"| | |",
            "",
            f"{res['n_pairs']} pairs.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    """Run the experiment and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["organism:native", "organism:nonnative"])
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--k", type=int, default=10, help="neighbours for χ")
    parser.add_argument("--out", type=Path, default=RESULTS / "organisms_narrow_gate")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = [run_model(name, args.scenes, args.k) for name in args.models]
    command = "python benchmarks/organisms_narrow_gate.py " + " ".join(
        ["--models", *args.models, "--scenes", str(args.scenes), "--k", str(args.k)]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    args.out.with_suffix(".md").write_text(to_markdown(results, command))
    print(to_markdown(results, command))


if __name__ == "__main__":
    main()
