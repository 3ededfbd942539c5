"""The paper's Table 1 for both model organisms on world data, through ``vlm-lens evaluate``.

Writes the world fixtures in each real format (`vlm_lens.evaluate.fixtures`: VQAv2 JSON and
images, Karpathy-split COCO and Flickr30k JSON and images, one folder per class), runs
``vlm-lens evaluate`` for every task on both organisms with the four conditions, and the
progressive χ^out curve (the gate knocked out in the last w layers, w = 0 .. n_layers) on
the class folders; collects every ``table.json`` into
``benchmarks/results/table1_world.{md,json}``.

Command::

    python benchmarks/table1_world.py --vqa-images 100 --caption-images 100 --per-class 100
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from vlm_lens.cli import main as cli
from vlm_lens.evaluate import load_tables, tables_markdown
from vlm_lens.evaluate.fixtures import write_class_folders, write_karpathy, write_vqav2
from vlm_lens.model import HookedVLM

MODELS = ("organism:native", "organism:nonnative")
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vqa-images", type=int, default=100, help="scenes (5 questions each)")
    p.add_argument("--caption-images", type=int, default=100, help="test images per split")
    p.add_argument(
        "--per-class", type=int, default=100, help="images per class (4 classes; > k = 30)"
    )
    p.add_argument("--work", default=None, help="folder for the data and runs (default: temp)")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="table1_world_"))
    data = {
        "vqav2": write_vqav2(work / "data" / "vqav2", n_images=args.vqa_images),
        "coco-captions": write_karpathy(work / "data" / "coco", "coco", n_test=args.caption_images),
        "flickr30k": write_karpathy(  # other scenes than the COCO folder's
            work / "data" / "flickr30k", "flickr30k", n_test=args.caption_images, seed=1
        ),
        "imagenet-chi": write_class_folders(work / "data" / "classes", args.per_class),
    }
    seconds: dict[str, float] = {}
    for model in MODELS:
        for task, folder in data.items():
            out = work / "runs" / model.replace(":", "_") / task
            command = ["evaluate", task, "--data", str(folder), "--model", model,
                       "--out", str(out), "--quiet"]  # fmt: skip
            start = time.perf_counter()
            if cli(command) != 0:
                raise SystemExit(f"vlm-lens {' '.join(command)} failed")
            seconds[f"{model} {task}"] = time.perf_counter() - start
        n_layers = int(HookedVLM.from_pretrained(model).cfg.n_layers)
        windows = ["baseline", *(f"gate@last{w}" for w in range(1, n_layers + 1))]
        out = work / "progressive" / model.replace(":", "_")
        command = ["evaluate", "imagenet-chi", "--data", str(data["imagenet-chi"]),
                   "--model", model, "--conditions", ",".join(windows), "--out", str(out),
                   "--quiet"]  # fmt: skip
        if cli(command) != 0:
            raise SystemExit(f"vlm-lens {' '.join(command)} failed")
    tables = load_tables(work / "runs")
    curves = load_tables(work / "progressive")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "table1_world.json").write_text(
        json.dumps({"table1": tables, "progressive_chi": curves, "seconds": seconds}, indent=1)
        + "\n"
    )
    text = [
        "# Table 1 on world data, both organisms",
        "",
        "Command: `python benchmarks/table1_world.py "
        f"--vqa-images {args.vqa_images} --caption-images {args.caption_images} "
        f"--per-class {args.per_class}` (each cell is one `vlm-lens evaluate` run; CPU).",
        "",
        tables_markdown(tables),
        "",
        "## Progressive χ^out (gate knocked out in the last w layers)",
        "",
        tables_markdown(curves),
        "",
        "Seconds per run: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()),
        "",
    ]
    (RESULTS / "table1_world.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
