"""Peak memory of the χ pipeline against the number of images (target: flat).

The pipeline, as a user runs it on a labelled image folder: `vlm_lens.data.run_dataset` streams
PNG paths through an organism (`organism:native` / `organism:nonnative`, their χ prompt
``<image>what colour is the shape?``, world scenes labelled by colour), chunk by chunk, into an
`ActivationStore` (residual stream at the gate, the mean over image tokens and the last token,
every layer); then χ (`vlm_lens.analysis.neighbourhood_overlap`, k = 30) per role and layer,
each layer read back from the store on its own (``store.load(role, layers=[layer])``), and the
paper's χ_out (`vlm_lens.evaluate.chi_out`, last token, final layer).

Each (organism, n) runs in a fresh subprocess (glibc's mmap threshold fixed at 128 KiB, so
freed tensors go back to the system and RSS follows live memory). It reports, per stage, the
peak RSS growth over the RSS when the stage began (sampled every 1 ms) and tracemalloc's peak
(Python objects only: lists, records, manifests; torch's tensors are not traced), plus the
process's peak RSS (``VmHWM``, model included). Stages: ``run`` (run_dataset), ``chi`` (χ and
χ_out with the library's default distance chunking: up to 2**20 distances since 2026-12-04,
``max(1, 2**20 // n)`` rows; it was 2**24, so the block grew as n² up to 64 MiB at
n = 4,096) and ``chi_bounded`` (the same numbers with blocks of at most ``--chunk-elements``
distances, ``max(1, chunk_elements // n)`` rows: 2**20 = 4 MiB by default, so the block is the
same size for every n >= 1,024; χ_out's class average computed from
`neighbourhood_overlap_per_sample`, which takes the chunk size). The results must agree.

    taskset -c 1 python benchmarks/chi_memory.py --threads 1 --n 1000 4000
    taskset -c 1 python benchmarks/chi_memory.py --threads 1 --n 250 1000 --organisms native
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

ORGANISMS = ("native", "nonnative")


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover - not Linux


class Stage:
    """Peak RSS growth (sampled) and tracemalloc peak of the code inside ``with``."""

    def __init__(self, name: str, out: dict[str, Any]):
        self.name, self.out = name, out

    def __enter__(self) -> Stage:
        import gc

        gc.collect()
        self.before = _rss()
        self.peak = self.before
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        tracemalloc.reset_peak()
        self.traced = tracemalloc.get_traced_memory()[0]
        self.start = time.perf_counter()
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        seconds = time.perf_counter() - self.start
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, _rss())
        self.out[self.name] = {
            "seconds": round(seconds, 3),
            "rss_growth_mib": round((self.peak - self.before) / 2**20, 2),
            "tracemalloc_peak_mib": round(
                (tracemalloc.get_traced_memory()[1] - self.traced) / 2**20, 2
            ),
        }


def make_images(folder: Path, n: int, seed: int = 0) -> None:
    """Write `n` held-out single-object world scenes as PNGs plus ``labels.json`` (colours)."""
    from vlm_lens.world import iter_split

    folder.mkdir(parents=True, exist_ok=True)
    labels = []
    for scene in iter_split("test", n, seed=seed, max_objects=1):
        scene.image.save(folder / f"{scene.index:06d}.png")
        labels.append(scene.objects[0].colour)
    (folder / "labels.json").write_text(json.dumps(labels))


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One (organism, n) run of the pipeline; returns the measurements."""
    import numpy as np
    import torch

    from vlm_lens import HookedVLM
    from vlm_lens.analysis import neighbourhood_overlap
    from vlm_lens.data import Probe, run_dataset
    from vlm_lens.data.examples import make_examples
    from vlm_lens.evaluate import chi_out
    from vlm_lens.metrics.neighbourhood import neighbourhood_overlap_per_sample
    from vlm_lens.zoo.registry import model_defaults

    torch.set_num_threads(args.threads)
    name = f"organism:{args.child_organism}"
    model = HookedVLM.from_pretrained(name)
    if args.device != "cpu":
        model = model.to(args.device)
    prompt = (model_defaults(name).task_prompts or {})["chi"]
    folder = Path(args.images)
    labels = json.loads((folder / "labels.json").read_text())[: args.child_n]
    paths = [str(folder / f"{i:06d}.png") for i in range(args.child_n)]
    probes = [
        Probe("gate"),
        Probe("image_mean", positions="image", reduce="mean"),
        Probe("last", positions="last"),
    ]
    out: dict[str, Any] = {
        "organism": name,
        "n": args.child_n,
        "n_layers": int(model.cfg.n_layers),
        "d_model": int(model.cfg.d_model),
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "rss_after_load_mib": round(_rss() / 2**20, 1),
    }
    tracemalloc.start()
    with tempfile.TemporaryDirectory() as store_dir:
        with Stage("run", out):
            examples = make_examples(paths, prompt, labels=labels)
            store = run_dataset(
                model, examples, probes, store_dir, batch_size=args.batch_size, progress=False
            )
            del examples
        chi: dict[str, dict[str, list[float]]] = {}
        bounded = max(1, args.chunk_elements // args.child_n)
        for stage, chunk in (("chi_bounded", bounded), ("chi", None)):
            with Stage(stage, out):
                per_role: dict[str, list[float]] = {}
                for probe in probes:
                    values = []
                    for layer in range(model.cfg.n_layers):
                        x = store.load(probe.name, layers=[layer]).transpose(0, 1)
                        res = neighbourhood_overlap(x, labels, k=args.k, chunk_size=chunk)
                        values.append(float(res.overlap["representation"][0]))
                        del x
                    per_role[probe.name] = values
                last = store.load("last", layers=[model.cfg.n_layers - 1])[:, 0]
                if chunk is None:
                    per_role["chi_out"] = [chi_out(last, labels, k=args.k)]
                else:  # chi_out's class average, on distances in chunks of `chunk` rows
                    per = neighbourhood_overlap_per_sample(last, labels, k=args.k, chunk_size=chunk)
                    names = np.asarray(labels)
                    per_role["chi_out"] = [
                        float(np.mean([per[names == c].mean() for c in sorted(set(labels))]))
                    ]
            chi[stage] = per_role
    if chi["chi"] != chi["chi_bounded"]:
        raise SystemExit(f"χ differs with the chunking: {chi}")
    out["chi_values"] = chi["chi"]
    out["store_mib_per_role"] = round(
        args.child_n * out["n_layers"] * out["d_model"] * 4 / 2**20, 2
    )
    out["vmhwm_mib"] = round(_hwm_mib(), 1)
    out["images_per_s"] = round(args.child_n / out["run"]["seconds"], 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[1000, 4000], help="image counts")
    p.add_argument("--organisms", nargs="+", choices=ORGANISMS, default=list(ORGANISMS))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--k", type=int, default=30)
    p.add_argument(
        "--chunk-elements", type=int, default=2**20, help="distances per block for chi_bounded"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--timeout-s", type=float, default=None, help="per subprocess")
    p.add_argument(
        "--parallel",
        action="store_true",
        help="run the subprocesses at once (peaks are per process)",
    )
    p.add_argument("--json", default=None, help="write the results here (after each run)")
    p.add_argument("--images", default=None, help="folder of make_images (default: a temp dir)")
    p.add_argument("--child-organism", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-n", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_organism:
        print(json.dumps(child(args)))
        return
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.images or tmp)
        if not (folder / "labels.json").is_file() or len(
            json.loads((folder / "labels.json").read_text())
        ) < max(args.n):
            make_images(folder, max(args.n))
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
        runs = [(organism, n) for organism in args.organisms for n in args.n]
        start = time.perf_counter()
        procs: list[subprocess.Popen[str]] = []
        for i, (organism, n) in enumerate(runs):
            argv = [sys.executable, __file__, "--child-organism", organism]
            argv += ["--child-n", str(n), "--images", str(folder)]
            for flag in ("batch_size", "k", "chunk_elements", "threads", "device"):
                argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            procs.append(_spawn(argv, env))
            if not args.parallel or i == len(runs) - 1:
                for (organism_done, n_done), proc in zip(runs[len(results) :], procs, strict=False):
                    row = _finish(proc, organism_done, n_done, start, args.timeout_s)
                    results.append(row)
                    print(_line(row), flush=True)
                    if args.json:
                        Path(args.json).write_text(json.dumps(results, indent=1))
                procs = []
                start = time.perf_counter()
    print_summary(results)


def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(
    proc: subprocess.Popen[str], organism: str, n: int, start: float, timeout: float | None
) -> dict[str, Any]:
    """Wait for one subprocess (up to `timeout` seconds after `start`) and read its result."""
    left = None if timeout is None else max(0.1, timeout - (time.perf_counter() - start))
    try:
        stdout, stderr = proc.communicate(timeout=left)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        row: dict[str, Any] = {"organism": f"organism:{organism}", "n": n, "error": "timeout"}
    else:
        if proc.returncode == 0:
            row = json.loads(stdout.strip().splitlines()[-1])
        else:
            tail = stderr.strip().splitlines()[-5:]
            row = {"organism": f"organism:{organism}", "n": n, "error": tail}
    row["wall_s"] = round(time.perf_counter() - start, 1)
    return row


def _line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['organism']} n={row['n']}: FAILED {row['error']}"
    stages = "; ".join(
        f"{s}: {row[s]['seconds']:.1f} s, +{row[s]['rss_growth_mib']:.1f} MiB RSS, "
        f"+{row[s]['tracemalloc_peak_mib']:.2f} MiB traced"
        for s in ("run", "chi_bounded", "chi")
    )
    return (
        f"{row['organism']} n={row['n']} ({row['images_per_s']} img/s, VmHWM "
        f"{row['vmhwm_mib']} MiB, after load {row['rss_after_load_mib']} MiB): {stages}; "
        f"chi_out {row['chi_values']['chi_out'][0]:.3f}"
    )


def print_summary(results: list[dict[str, Any]]) -> None:
    """Peak growth per stage at the largest n over the smallest, per organism."""
    ok = [r for r in results if "error" not in r]
    for organism in sorted({r["organism"] for r in ok}):
        rows = sorted((r for r in ok if r["organism"] == organism), key=lambda r: r["n"])
        if len(rows) < 2:
            continue
        lo, hi = rows[0], rows[-1]
        parts = [
            f"{s} {lo[s]['rss_growth_mib']:.1f} -> {hi[s]['rss_growth_mib']:.1f} MiB"
            for s in ("run", "chi_bounded", "chi")
        ]
        print(
            f"{organism}: n {lo['n']} -> {hi['n']} ({hi['n'] / lo['n']:.0f}x): "
            + ", ".join(parts)
            + f"; VmHWM {lo['vmhwm_mib']} -> {hi['vmhwm_mib']} MiB"
        )


if __name__ == "__main__":
    main()
