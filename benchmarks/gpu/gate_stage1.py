"""Stage 1 of the gate factorial (issue 15) on one GPU, inside a hard wall-clock budget.

    PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu/gate_stage1.py --out $OUT
    python3 benchmarks/gpu/gate_stage1.py --out /tmp/smoke --smoke     # CPU check, ~3 minutes

The corner (image+text objective, scratch, pixel VQ, relational, 8 layers) and its five
single-factor flips (`vlm_lens.experiments.gate_factorial.stage_cells(1)`), two seeds each: 12
organisms trained as 12 concurrent processes on the one GPU (``--device cuda``), from one data
cache built first over the CPU cores (`vlm_lens.zoo.native.datacache`). The recipe (`GPU`) is
time-budgeted: each phase trains for a fixed number of wall seconds (``--vq-seconds``...) with its
learning-rate schedule over that time, so the plan fits whatever the speed; every run also has a
``--deadline`` (checkpoint and stop) and a ``timeout`` around it. Each finished organism is
measured as soon as it finishes (`measure_gate` on the GPU, plus VQ shape probes); a run stopped
at the deadline in its decoder phase is exported from its checkpoint and measured, marked
truncated.

Files in ``--out`` (at most 8, each under 16 MiB, written as they are ready):

* ``gate_factorial.json`` / ``.md``: `write_factorial` of every measured organism;
* ``stage1.json``: per organism, the training record (steps, steps/s and seconds per phase, VQ
  statistics, held-out losses and accuracy) and the probes; the plan and its timings;
* ``stage1.md``: calibration (steps/s per phase), VQ shape probes, accuracy per kind, criteria;
* ``logs.tar.gz``: each run's ``train.log`` and ``measure.log`` tails, ``gate_factorial.html``;
* ``weights-1.tar`` ... ``weights-3.tar``: each organism's folder with fp16 safetensors (corner
  first, then organisms with a gate, then the rest; 40 MiB at most in all).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

GPU: dict[str, Any] = {
    "vq_steps": 100000,  # caps: the phases run for their seconds
    "vq_seconds": 60.0,
    "vq_batch": 256,
    "text_steps": 100000,
    "text_seconds": 25.0,
    "lm_steps": 100000,
    "lm_seconds": 140.0,
    "lm_scenes": 32,
    "lm_draws": 16,
    "train_scenes": 16000,
    "eval_scenes": 100,
    "monitor_scenes": 64,
    "monitor_every": 250,
    "checkpoint_every": 0,
}
"""The GPU recipe's overrides of `Settings` (the init-text cell's decoder gets ``lm_seconds -
text_seconds``)."""

SMOKE: dict[str, Any] = {
    "hidden": 32,
    "heads": 2,
    "ffn": 64,
    "vq_latent": 32,
    "vq_dim": 8,
    "vq_steps": 1000,
    "vq_seconds": 2.0,
    "vq_batch": 4,
    "text_steps": 3,
    "text_seconds": 1.0,
    "lm_steps": 1000,
    "lm_seconds": 3.0,
    "lm_scenes": 2,
    "lm_draws": 1,
    "train_scenes": 24,
    "eval_scenes": 4,
    "monitor_scenes": 4,
    "monitor_every": 2,
    "checkpoint_every": 0,
}
"""``--smoke``: tiny sizes, the same code path (seconds-long phases)."""

WORK = Path(os.environ.get("GATE_STAGE1_WORK", "/tmp/gate_stage1"))
WEIGHTS_LIMIT = 40 * 2**20
TAR_LIMIT = 15 * 2**20


def say(text: str) -> None:
    sys.stdout.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
    sys.stdout.flush()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--smoke", action="store_true", help="tiny sizes, seed 0, corner and init-text (CPU check)"
    )
    p.add_argument("--budget", type=float, default=300.0, help="seconds for data + training")
    p.add_argument("--measure-budget", type=float, default=180.0, help="extra seconds to measure")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--cells", nargs="+", default=None, help="cell names (default: all six)")
    p.add_argument("--scenes", type=int, default=None, help="test scenes per gate measurement")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--measure-one", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--cell", default=None, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------
# The plan


def plan(args: argparse.Namespace) -> list[tuple[Any, int, Any]]:
    """``(cell, seed, Settings)`` of every organism."""
    from vlm_lens.experiments.gate_factorial import stage_cells
    from vlm_lens.zoo.native import Settings

    recipe = SMOKE if args.smoke else GPU
    seeds = args.seeds or ([0] if args.smoke else [0, 1])
    names = args.cells or (["corner", "init-text"] if args.smoke else None)
    jobs = []
    for cell in [c for c in stage_cells(1) if names is None or c.name in names]:
        for seed in seeds:
            settings = Settings(seed=seed, **{**cell.factors, **recipe}, device=args.device)
            if settings.init == "text":  # the text phase comes out of the decoder's time
                settings = replace(settings, lm_seconds=settings.lm_seconds - settings.text_seconds)
            jobs.append((cell, seed, settings))
    return jobs


def train_command(folder: Path, settings: Any, seconds: float) -> list[str]:
    words = ["timeout", "-k", "10", str(int(seconds))]
    words += [sys.executable, "-m", "vlm_lens.zoo.native", "--out", str(folder)]
    for name, value in asdict(settings).items():
        words += [f"--{name.replace('_', '-')}", str(value)]
    return words


# --------------------------------------------------------------------------------------------
# Measuring one organism (a subprocess: ``--measure-one FOLDER``)


def export_partial(folder: Path, settings: Any) -> str | None:
    """Save the checkpoint's weights of a run stopped in its decoder phase as its folder;
    returns how far it got (None when there is nothing to measure)."""
    from vlm_lens.zoo.command import save_checkpoint
    from vlm_lens.zoo.native import build_config, build_model, build_processor, build_tokenizer
    from vlm_lens.zoo.native.build import task_words
    from vlm_lens.zoo.native.checkpointing import read_checkpoint

    state = read_checkpoint(folder)
    if state is None or "vq" not in state["finished"]:
        return None
    if state["phase"] == "text" or (settings.init == "text" and "text" not in state["finished"]):
        return None
    tokenizer = build_tokenizer(task_words(settings))
    processor = build_processor(tokenizer)
    model = build_model(build_config(tokenizer, settings), settings.seed)
    model.load_state_dict({k: v.cpu() for k, v in state["model"].items()})
    save_checkpoint(model, processor, folder)
    step = state["step"] if state["phase"] == "decoder" else 0
    return f"stopped at the deadline: decoder step {step} (of a time budget)"


def shape_probes(folder: Path, settings: Any, device: str, smoke: bool) -> dict[str, Any]:
    """How much shape and colour the organism's VQ codes keep (the shape head is off for the
    pixel VQ, so its training record's shape accuracy says nothing): the linear probes of
    `vlm_lens.zoo.native.probes.vq_probes` on the frozen VQ.

    * ``object_code``: shape of the object a code covers, from that one code's quantised vector
      (relational-world train/test scenes; the semantic head's measure, now for any VQ);
    * ``grid_codes``: shape of the one object of a local scene from the whole grid's quantised
      vectors (256 x d), next to ``grid_pixels``, the same probe on the raw pixels;
    * the same for colour (``_colour`` keys), with majority rates and chance.
    """
    from transformers import ChameleonForConditionalGeneration

    from vlm_lens.zoo.native import build_processor, build_tokenizer
    from vlm_lens.zoo.native.probes import vq_probes

    vq = ChameleonForConditionalGeneration.from_pretrained(folder).model.vqmodel.to(device).eval()
    processor = build_processor(build_tokenizer())
    n_train, n_test, steps = (40, 20, 20) if smoke else (2000, 500, 300)
    task = settings.task if smoke else "relational"
    return vq_probes(vq, processor, settings.world_seed, n_train, n_test, steps, multi_task=task)


def measure_one(args: argparse.Namespace) -> None:
    """Measure the organism in ``--measure-one`` (its ``settings.json`` beside it)."""
    from vlm_lens.experiments.gate_criteria import measure_gate
    from vlm_lens.model import HookedVLM
    from vlm_lens.world import task_split
    from vlm_lens.zoo.native import Settings

    folder: Path = args.measure_one
    settings = Settings(**json.loads((folder / "settings.json").read_text()))
    device = settings.device
    truncated = None
    if not (folder / "training.json").exists() and (folder / "model.safetensors").exists():
        truncated = "trained; stopped in its held-out evaluation (no training.json)"
    elif not (folder / "training.json").exists():
        truncated = export_partial(folder, settings)
        if truncated is None:
            say(f"{folder}: nothing to measure (stopped before its decoder phase)")
            return
    start = time.perf_counter()
    scenes, measure_device = args.scenes, device
    try:
        model = HookedVLM.from_pretrained(folder, device=device)
        test = task_split(settings.task, "test", scenes, settings.world_seed)
        batch = 128 if device.startswith("cuda") else 32
        measured = measure_gate(model, test, seed=settings.seed, batch_size=batch)
    except Exception as error:  # fall back to the CPU, fewer scenes: a record all the same
        if device == "cpu":
            raise
        traceback.print_exc()
        scenes, measure_device = min(scenes, 40), f"cpu ({device} failed: {error!r})"
        say(f"{folder}: measuring on {device} failed; on the CPU with {scenes} scenes")
        model = HookedVLM.from_pretrained(folder, device="cpu")
        test = task_split(settings.task, "test", scenes, settings.world_seed)
        measured = measure_gate(model, test, seed=settings.seed, batch_size=32)
    record = {
        "name": args.cell,
        "factors": {
            f: getattr(settings, f) for f in ("objective", "init", "tokenizer", "task", "layers")
        },
        "seed": settings.seed,
        "folder": str(folder),
        "scenes": scenes,
        "measure_device": measure_device,
        "truncated": truncated,
        **measured.to_record(),
        "measure_seconds": round(time.perf_counter() - start, 1),
    }
    (folder / "gate.json").write_text(json.dumps(record, indent=1) + "\n")
    say(f"{folder}: gate measured in {record['measure_seconds']} s (has gate {record['has_gate']})")
    try:
        start = time.perf_counter()
        try:
            probes = shape_probes(folder, settings, device, args.smoke)
        except Exception:
            if device == "cpu":
                raise
            traceback.print_exc()
            probes = shape_probes(folder, settings, "cpu", True)
            probes["device"] = "cpu, smoke sizes (the accelerator failed)"
        probes["seconds"] = round(time.perf_counter() - start, 1)
    except Exception as error:  # the probes must not lose the gate record
        probes = {"error": repr(error)}
    (folder / "probes.json").write_text(json.dumps(probes, indent=1) + "\n")
    say(f"{folder}: probes {probes}")


# --------------------------------------------------------------------------------------------
# The whole stage


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.scenes is None:
        args.scenes = 4 if args.smoke else 200
    if args.measure_one is not None:
        measure_one(args)
        return
    t0 = time.time()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = WORK / ("smoke" if args.smoke else "gpu")
    if work.exists():
        shutil.rmtree(work)
    runs = work / "runs"
    runs.mkdir(parents=True)
    jobs = plan(args)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    say(
        f"{len(jobs)} organisms on {args.device} ({gpu}); budget {args.budget} s + measure "
        f"{args.measure_budget} s; recipe {'SMOKE' if args.smoke else 'GPU'}"
    )
    summary: dict[str, Any] = {
        "device": args.device,
        "gpu": gpu,
        "recipe": SMOKE if args.smoke else GPU,
        "budget_seconds": args.budget,
        "organisms": {},
        "timings": {},
    }

    # 1. the data, once, over the CPU cores
    from vlm_lens.zoo.native.datacache import write_cache

    caches, made = {}, {}
    for task in dict.fromkeys(s.task for _, _, s in jobs):  # one file per task: runs load less
        caches[task] = work / f"data-{task}.pt"
        runs_of = [s for _, _, s in jobs if s.task == task]
        made[task] = write_cache(caches[task], runs_of, workers=args.workers)
    summary["timings"]["data_seconds"] = round(time.time() - t0, 1)
    summary["data"] = made
    say(f"data cache in {summary['timings']['data_seconds']} s: {made}")

    # 2. training, all at once; each measured as soon as it ends
    deadline = t0 + args.budget - (10 if args.smoke else 20)
    end_measure = t0 + args.budget + args.measure_budget
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env["TQDM_MININTERVAL"] = "5"
    training: dict[str, tuple[subprocess.Popen[bytes], Any, Any, int, Path]] = {}
    for cell, seed, settings in jobs:
        folder = runs / cell.name / f"seed-{seed}"
        folder.mkdir(parents=True)
        settings = replace(settings, deadline=deadline, data_cache=str(caches[settings.task]))
        (folder / "settings.json").write_text(json.dumps(asdict(settings)) + "\n")
        log = (folder / "train.log").open("wb")
        command = train_command(folder, settings, deadline - time.time() + 15)
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        training[f"{cell.name}/seed-{seed}"] = (process, log, cell, seed, folder)
    say(f"started {len(training)} training processes; deadline in {deadline - time.time():.0f} s")
    measuring: dict[str, tuple[subprocess.Popen[bytes], Any, Path]] = {}
    status: dict[str, Any] = {}
    while training or measuring:
        for name, (process, log, cell, _seed, folder) in list(training.items()):
            if process.poll() is None:
                continue
            log.close()
            code = process.returncode
            status[name] = {"exit": code, "ended_after_s": round(time.time() - t0, 1)}
            say(f"{name}: training exit {code} after {time.time() - t0:.0f} s")
            if (folder / "training.json").exists():
                record = json.loads((folder / "training.json").read_text())
                say(f"  steps, steps/s, wall s per phase: {_phase_calibration(record)}")
                say(f"  vq: {_vq_line(record)}; held-out accuracy {record['test'].get('accuracy')}")
            del training[name]
            if time.time() < end_measure - 5:
                mlog = (folder / "measure.log").open("wb")
                command = ["timeout", "-k", "10", str(int(end_measure - time.time()))]
                command += [
                    sys.executable,
                    __file__,
                    "--out",
                    str(out),
                    "--measure-one",
                    str(folder),
                ]
                command += ["--cell", cell.name, "--scenes", str(args.scenes)]
                command += ["--smoke"] if args.smoke else []
                measuring[name] = (
                    subprocess.Popen(command, stdout=mlog, stderr=subprocess.STDOUT, env=env),
                    mlog,
                    folder,
                )
        for name, (process, mlog, _folder) in list(measuring.items()):
            if process.poll() is None:
                continue
            mlog.close()
            status[name]["measure_exit"] = process.returncode
            status[name]["measured_after_s"] = round(time.time() - t0, 1)
            del measuring[name]
            say(f"{name}: measure exit {process.returncode} after {time.time() - t0:.0f} s")
            write_results(out, work, jobs, summary, status, final=False)
        time.sleep(1.0)
    summary["timings"]["total_seconds"] = round(time.time() - t0, 1)
    write_results(out, work, jobs, summary, status, final=True)
    say(
        f"done in {time.time() - t0:.0f} s; files in {out}: {sorted(p.name for p in out.iterdir())}"
    )


# --------------------------------------------------------------------------------------------
# Results


def _phase_calibration(training: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for phase, rec in training.get("phases", {}).items():
        if isinstance(rec, dict) and "steps" in rec:
            out[phase] = {
                "steps": rec["steps"],
                "steps_per_second": rec.get("steps_per_second"),
                "wall_seconds": rec.get("wall_seconds"),
            }
    return out


def _vq_line(training: dict[str, Any]) -> str:
    vq = training.get("phases", {}).get("vq", {})
    keys = (
        "test_reconstruction_rmse_0_255",
        "code_perplexity_on_test",
        "test_object_code_shape_accuracy",
    )
    return ", ".join(f"{k} {vq.get(k)}" for k in keys)


def write_results(
    out: Path,
    work: Path,
    jobs: list[Any],
    summary: dict[str, Any],
    status: dict[str, Any],
    final: bool,
) -> None:
    """Write every file of ``out`` from what has finished so far."""
    from vlm_lens.experiments.factorial_report import write_factorial

    records = []
    for cell, seed, _settings in jobs:
        name = f"{cell.name}/seed-{seed}"
        folder = work / "runs" / cell.name / f"seed-{seed}"
        entry: dict[str, Any] = {"status": status.get(name, {"exit": None})}
        if (folder / "training.json").exists():
            training = json.loads((folder / "training.json").read_text())
            entry["calibration"] = _phase_calibration(training)
            entry["training"] = training
        if (folder / "gate.json").exists():
            record = json.loads((folder / "gate.json").read_text())
            records.append(record)
            entry["gate"] = {
                k: record.get(k)
                for k in (
                    "has_gate",
                    "baseline_accuracy",
                    "drop",
                    "max_gate_share",
                    "max_flip_rate",
                    "truncated",
                    "chance",
                    "counts",
                    "measure_seconds",
                )
            }
            entry["accuracy_per_kind"] = record["accuracy"]["none"]
            entry["criteria"] = record["criteria"]
        if (folder / "probes.json").exists():
            entry["shape_probes"] = json.loads((folder / "probes.json").read_text())
        summary["organisms"][name] = entry
    (out / "stage1.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    (out / "stage1.md").write_text(to_markdown(summary))
    if records:
        staging = work / "report"
        write_factorial(records, staging)
        for suffix in ("json", "md"):
            shutil.copy(staging / f"gate_factorial.{suffix}", out / f"gate_factorial.{suffix}")
    if final:
        write_logs(out, work, jobs)
        write_weights(out, work, jobs, records)


def to_markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# Gate factorial stage 1 on the GPU",
        "",
        f"Device {summary['device']} ({summary['gpu']}); budget {summary['budget_seconds']} s; "
        f"timings {summary['timings']}.",
        "",
        "Recipe overrides: " + ", ".join(f"{k}={v}" for k, v in summary["recipe"].items()),
        "",
        "## Calibration (steps, steps/s, wall s per phase)",
        "",
        "| organism | exit | vq | text | decoder | truncated |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in summary["organisms"].items():
        cal = e.get("calibration", {})

        def cell(phase: str, cal: dict[str, Any] = cal) -> str:
            c = cal.get(phase)
            return (
                "" if c is None else f"{c['steps']} / {c['steps_per_second']} / {c['wall_seconds']}"
            )

        truncated = e.get("gate", {}).get("truncated") or ""
        lines.append(
            f"| {name} | {e['status'].get('exit')} | {cell('vq')} | {cell('text')} | "
            f"{cell('decoder')} | {truncated} |"
        )
    lines += [
        "",
        "## VQ: do shape and colour survive? (linear probes on the frozen VQ, "
        "`vlm_lens.zoo.native.probes`; chance 1/6)",
        "",
        "Head: the training-only shape head (untrained, so meaningless, for the pixel VQ). Probes:"
        " from one object code (relational scenes) and from the whole code grid of a one-object "
        "scene, next to the same probe on the raw pixels; shape / colour.",
        "",
        "| organism | VQ rmse 0-255 | head shape acc (training) | object code | majority | "
        "grid codes | grid pixels |",
        "|---|---|---|---|---|---|---|",
    ]

    def pair(p: dict[str, Any], key: str) -> str:
        colour = key.replace("object_code", "object_code_colour", 1)
        if key.startswith("grid_"):
            colour = f"{key}_colour"
        return f"{p.get(key, '')} / {p.get(colour, '')}"

    for name, e in summary["organisms"].items():
        vq = e.get("training", {}).get("phases", {}).get("vq", {})
        p = e.get("shape_probes", {})
        pixel = e.get("training", {}).get("settings", {}).get("tokenizer") == "pixel"
        head = "untrained" if pixel else vq.get("test_object_code_shape_accuracy", "")
        lines.append(
            f"| {name} | {vq.get('test_reconstruction_rmse_0_255', '')} | {head} | "
            f"{pair(p, 'object_code')} | {pair(p, 'object_code_majority')} | "
            f"{pair(p, 'grid_codes')} | {pair(p, 'grid_pixels')} |"
        )
    lines += ["", "## Accuracy per kind (no intervention) vs chance, and the criteria", ""]
    for name, e in summary["organisms"].items():
        if "accuracy_per_kind" not in e:
            continue
        chance = e["gate"]["chance"]
        accs = ", ".join(
            f"{k} {v:.3f} ({chance[k]:.3f})" for k, v in e["accuracy_per_kind"].items()
        )
        crit = "; ".join(f"{k}: {c['reason']}" for k, c in e["criteria"].items())
        lines += [f"- **{name}** (has gate {e['gate']['has_gate']}): {accs}", f"  - {crit}"]
    return "\n".join(lines) + "\n"


def write_logs(out: Path, work: Path, jobs: list[Any]) -> None:
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        for cell, seed, _ in jobs:
            folder = work / "runs" / cell.name / f"seed-{seed}"
            for log in ("train.log", "measure.log"):
                path = folder / log
                if path.exists():
                    data = path.read_bytes()[-200_000:]
                    info = tarfile.TarInfo(f"{cell.name}-seed-{seed}-{log}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        html = work / "report" / "gate_factorial.html"
        if html.exists():
            tar.add(html, arcname="gate_factorial.html")


def write_weights(out: Path, work: Path, jobs: list[Any], records: list[dict[str, Any]]) -> None:
    """fp16 safetensors (plus config and processor files) of each organism, in priority order:
    the corner, organisms with a gate, the rest; at most `WEIGHTS_LIMIT` over three tars."""
    from safetensors.torch import load_file, save_file

    gated = {(r["name"], r["seed"]) for r in records if r.get("has_gate")}
    order = sorted(
        jobs, key=lambda j: (j[0].name != "corner", (j[0].name, j[1]) not in gated, j[0].name, j[1])
    )
    members = []  # per organism: [(path, arcname)], bytes
    for cell, seed, _ in order:
        folder = work / "runs" / cell.name / f"seed-{seed}"
        if not (folder / "model.safetensors").exists():
            continue
        state = {
            k: v.half() if v.is_floating_point() else v
            for k, v in load_file(folder / "model.safetensors").items()
        }
        half = folder / "fp16" / "model.safetensors"
        half.parent.mkdir(exist_ok=True)
        save_file(state, half, metadata={"format": "pt"})
        files = [(half, f"{cell.name}-seed-{seed}/model.safetensors")]
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix in (".json", ".jinja") and path.name != "gate.json":
                files.append((path, f"{cell.name}-seed-{seed}/{path.name}"))
        members.append((files, sum(f.stat().st_size + 1024 for f, _ in files)))
    groups: list[list[Any]] = [[]]
    total, size = 0, 0
    for files, nbytes in members:
        if total + nbytes > WEIGHTS_LIMIT:
            break
        if groups[-1] and size + nbytes > TAR_LIMIT:
            if len(groups) == 3:
                break
            groups.append([])
            size = 0
        groups[-1].extend(files)
        size += nbytes
        total += nbytes
    for k, group in enumerate(g for g in groups if g):
        with tarfile.open(out / f"weights-{k + 1}.tar", "w") as tar:
            for path, arcname in group:
                tar.add(path, arcname=arcname)


if __name__ == "__main__":
    main()
