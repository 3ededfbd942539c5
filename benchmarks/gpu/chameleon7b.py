"""Every speed benchmark at Chameleon-7B shape on one GPU, in one process, inside a time budget.

Builds one random-weight Chameleon-7B-shaped model once, on the GPU, in bf16 (hidden 4096, 32
layers, 32 heads, MLP 11,008, vocabulary 65,536; the prompt of `_common`: BOS + BOI + 1,024 VQ
codes + EOI + 31 text tokens = 1,058 positions) with `_common.build` (HF eager, HF SDPA, the
TransformerLens bridge and vlm_lens, deep copies of one model, ~56 GB), then runs on it, in
order, each benchmark's own measuring function:

1. `forward_overhead` (hooks idle), 2. `residual_cache` (``run_with_cache(resid_post)``),
3. `activation_throughput` (collect with the residual probes, ``--throughput-batch`` rows),
4. `attention_share_cost` (time, and CUDA peak memory per call), 5. `patching_sweep_cost` and
6. `knockout_sweep_cost` (``--sweep-layers`` conditions evenly spaced over the 32 layers).

In the background, on other CPU cores, `chi_memory` (CPU organisms: non-native 1,000 vs 4,000
images, native 250 vs 1,000; the native organism's 4,000 take ~10 minutes on one core and were
measured on the development machine).

Not run here: `evaluation_cost` (the organisms' generation on world questions: their trained
weights, tokenizer and vocabulary are the point; random 7B weights never stop at EOS) and the
organism/world studies (`table1_world`, `organisms_*`, `relational_learnability`), which are
about trained organisms, not speed.

The budget: a SIGALRM at ``--budget-s`` minus a margin stops whatever runs; each benchmark gets
a deadline for its repeats (`_common.median_times`) and is skipped when its estimated cost (in
forwards, from the measured forward time) does not fit. Results go to ``$OUT/chameleon7b.json``
after every benchmark (the device, versions and timings included) and the output to
``$OUT/chameleon7b.log``; every ratio printed is ours / HF SDPA on the same inputs.

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu/chameleon7b.py --budget-s 200 --out $OUT
    OMP_NUM_THREADS=1 python benchmarks/gpu/chameleon7b.py --smoke --out /tmp/smoke  # CPU check
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
sys.path.insert(0, str(BENCH))

SHAPE_7B = [
    "--shape", "chameleon", "--hidden", "4096", "--layers", "32", "--heads", "32",
    "--mlp", "11008", "--vocab", "65536", "--image-tokens", "1024", "--text-tokens", "31",
    "--dtype", "bfloat16", "--batch", "1",
]  # fmt: skip
SHAPE_SMOKE = [
    "--shape", "chameleon", "--hidden", "64", "--layers", "4", "--heads", "4",
    "--vocab", "512", "--image-tokens", "64", "--text-tokens", "8", "--dtype", "bfloat16",
    "--batch", "1",
]  # fmt: skip

# Estimated cost of each benchmark in vlm_lens forwards at batch 1 (rounds x variants, with
# warm-ups; sweeps per condition on the 7B shape): used to skip what cannot fit.
COST = {
    "forward_overhead": lambda r, _k: 6 * (r + 2),
    "residual_cache": lambda r, _k: 7 * (r + 2),
    "activation_throughput": lambda r, _k: 4 * 2 * 8 * (r + 1) + 16,
    "attention_share_cost": lambda r, _k: 6 * (r + 1) + 12,
    "patching_sweep_cost": lambda r, k: (1.6 * k + 12) * r + 4,
    "knockout_sweep_cost": lambda r, k: (1.6 * k + 10) * r + 4,
}


class OutOfBudget(BaseException):
    """Raised by the alarm at the end of the budget (a BaseException: no `except Exception`
    in a benchmark swallows it)."""


class Tee:
    """Write to the terminal and a log file."""

    def __init__(self, stream: Any, path: Path):
        self.stream, self.file = stream, open(path, "a", buffering=1)  # noqa: SIM115

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.file.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.file.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding...: the terminal's
        return getattr(self.stream, name)


def elapsed() -> float:
    return time.perf_counter() - T0


def ratios(seconds: dict[str, float], base: str) -> dict[str, float]:
    """Each variant's median over `base`'s."""
    return {k: round(v / seconds[base], 4) for k, v in seconds.items() if k != base}


def start_chi_memory(args: argparse.Namespace, out: Path, seconds: float) -> list[Any]:
    """`chi_memory` in the background (own session, so it can be killed as a group), on the
    upper half of the CPUs when there are 8 or more."""
    runs = (
        [("nonnative", ["64", "128"]), ("native", ["16", "32"])]
        if args.smoke
        else [("nonnative", ["1000", "4000"]), ("native", ["250", "1000"])]
    )
    cpus = sorted(os.sched_getaffinity(0))
    upper = cpus[len(cpus) // 2 :] if len(cpus) >= 8 else None
    procs = []
    for organism, ns in runs:
        cmd = [sys.executable, str(BENCH / "chi_memory.py"), "--organisms", organism, "--n", *ns]
        cmd += ["--parallel", "--threads", "1", "--timeout-s", str(int(seconds))]
        cmd += ["--json", str(out / f"chi_memory_{organism}.json")]
        if args.smoke:
            cmd += ["--k", "5", "--batch-size", "8"]
        log = open(out / f"chi_memory_{organism}.log", "w")  # noqa: SIM115
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

        def pin(cores: list[int] | None = upper) -> None:
            if cores:
                os.sched_setaffinity(0, cores)

        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=pin,  # noqa: PLW1509 - only sched_setaffinity, before exec
        )
        procs.append((organism, proc, log))
    return procs


def main() -> None:  # noqa: C901, PLR0915 - one linear script
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=float, default=200, help="hard wall-clock budget")
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    p.add_argument("--smoke", action="store_true", help="tiny shape on the CPU, same code paths")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sweep-repeats", type=int, default=2)
    p.add_argument("--sweep-layers", type=int, default=32, help="conditions per sweep")
    p.add_argument("--throughput-batch", type=int, default=8)
    p.add_argument("--no-chi-memory", action="store_true")
    p.add_argument("--only", nargs="+", default=None, help="run only these benchmarks")
    args = p.parse_args()
    if args.smoke:  # the code paths, not the numbers
        args.repeats, args.sweep_repeats = min(args.repeats, 2), min(args.sweep_repeats, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.stdout = Tee(sys.stdout, out / "chameleon7b.log")  # type: ignore[assignment]
    margin = 8.0
    hard_end = T0 + args.budget_s - margin  # the alarm; everything must be written by then

    def alarm(*_: object) -> None:
        raise OutOfBudget(f"budget of {args.budget_s} s (minus {margin} s margin) reached")

    signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, hard_end - time.perf_counter()))

    report: dict[str, Any] = {
        "script": "benchmarks/gpu/chameleon7b.py",
        "argv": sys.argv[1:],
        "budget_s": args.budget_s,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "benchmarks": {},
        "ratios_ours_over_hf": {},
    }
    path = out / "chameleon7b.json"

    def save() -> None:
        report["elapsed_s"] = round(elapsed(), 1)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=1, default=str))
        os.replace(tmp, path)

    background: list[Any] = []
    try:
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cpu" and not args.smoke and args.device is None:
            raise RuntimeError(
                "no CUDA device: the 7B shape is for a GPU; pass --smoke for the CPU check "
                "(or --device cpu to insist)"
            )
        report["device"] = {
            "device": device,
            "name": (
                torch.cuda.get_device_name(0)
                if device.startswith("cuda")
                else platform.processor() or platform.machine()
            ),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        }  # fmt: skip
        import transformers

        report["device"]["transformers"] = transformers.__version__
        if device.startswith("cuda"):
            props = torch.cuda.get_device_properties(0)
            report["device"]["memory_gib"] = round(props.total_memory / 2**30, 1)
        print(f"[{elapsed():6.1f}s] device {report['device']}", flush=True)
        save()
        if not args.no_chi_memory:
            cpus = sorted(os.sched_getaffinity(0))
            background = start_chi_memory(args, out, hard_end - time.perf_counter() - 30)
            if len(cpus) >= 8:  # keep this process off the cores chi_memory runs on
                os.sched_setaffinity(0, cpus[: len(cpus) // 2])

        import activation_throughput
        import attention_share_cost
        import forward_overhead
        import knockout_sweep_cost
        import patching_sweep_cost
        import residual_cache
        from _common import build, parser, sweep_parser

        shape = SHAPE_SMOKE if args.smoke else SHAPE_7B
        base = [*shape, "--device", device, "--repeats", str(args.repeats)]
        bargs = parser("7B").parse_args(base)
        sargs = sweep_parser("7B sweeps").parse_args(
            [*shape, "--device", device, "--repeats", str(args.sweep_repeats),
             "--sweep-layers", str(args.sweep_layers)]
        )  # fmt: skip
        if not device.startswith("cuda"):
            bargs.threads = sargs.threads = torch.get_num_threads()
        t = time.perf_counter()
        s = build(bargs)
        s.sync()
        if device.startswith("cuda"):
            report["device"]["allocated_gib_after_build"] = round(
                torch.cuda.memory_allocated() / 2**30, 1
            )
        report["build_s"] = round(time.perf_counter() - t, 1)
        report["shape"] = s.describe()
        print(f"[{elapsed():6.1f}s] built in {report['build_s']} s: {s.describe()}", flush=True)
        # one forward of each kind (CUDA/cuBLAS warm-up), then the time of a vlm_lens forward
        with torch.no_grad():
            s.hf_sdpa(**s.inputs)
            s.fast(s.batch)
            s.sync()
            t = time.perf_counter()
            s.fast(s.batch)
            s.sync()
        forward = time.perf_counter() - t
        report["vlm_lens_forward_s"] = round(forward, 4)
        print(f"[{elapsed():6.1f}s] one vlm_lens forward: {forward * 1000:.1f} ms", flush=True)
        save()

        sweep_setup = dataclasses.replace(s, args=sargs)
        plan: list[tuple[str, Any, int]] = [
            ("forward_overhead", lambda d: forward_overhead.measure(s, deadline=d), args.repeats),
            ("residual_cache", lambda d: residual_cache.measure(s, deadline=d), args.repeats),
            (
                "activation_throughput",
                lambda d: activation_throughput.measure(
                    activation_throughput.tiled(s, args.throughput_batch), deadline=d
                ),
                3,
            ),
            (
                "attention_share_cost",
                lambda d: attention_share_cost.measure(s, deadline=d),
                3,
            ),
            (
                "patching_sweep_cost",
                lambda d: patching_sweep_cost.measure(sweep_setup, deadline=d),
                args.sweep_repeats,
            ),
            (
                "knockout_sweep_cost",
                lambda d: knockout_sweep_cost.measure(sweep_setup, deadline=d),
                args.sweep_repeats,
            ),
        ]
        if args.only:
            plan = [step for step in plan if step[0] in args.only]
        remaining_cost = sum(COST[n](r, args.sweep_layers) for n, _, r in plan)
        for name, run, repeats in plan:
            cost = COST[name](repeats, args.sweep_layers) * forward
            left = hard_end - time.perf_counter()
            share = left * COST[name](repeats, args.sweep_layers) / max(remaining_cost, 1e-9)
            remaining_cost -= COST[name](repeats, args.sweep_layers)
            minimum = COST[name](1, args.sweep_layers) * forward
            entry: dict[str, Any] = {"estimated_s": round(cost, 1)}
            report["benchmarks"][name] = entry
            if minimum > left - 2:
                entry["status"] = f"skipped: one round needs ~{minimum:.0f} s, {left:.0f} s left"
                print(f"[{elapsed():6.1f}s] {name}: {entry['status']}", flush=True)
                save()
                continue
            # the repeats stop once the benchmark's share of the time left is used
            deadline = time.perf_counter() + max(share - minimum, 0.0)
            print(f"\n[{elapsed():6.1f}s] === {name} (est. {cost:.1f} s)", flush=True)
            t = time.perf_counter()
            try:
                result = run(deadline)
                entry.update(status="ok", result=result)
                report["ratios_ours_over_hf"][name] = summarise(name, result)
            except OutOfBudget:
                entry["status"] = "stopped: out of budget"
                raise
            except Exception as exc:  # one benchmark's failure must not lose the others
                entry.update(status=f"error: {type(exc).__name__}: {exc}"[:2000])
                entry["traceback"] = traceback.format_exc()[-6000:]
                print(entry["traceback"], flush=True)
            finally:
                entry["wall_s"] = round(time.perf_counter() - t, 1)
                if device.startswith("cuda"):
                    entry["max_memory_allocated_gib"] = round(
                        torch.cuda.max_memory_allocated() / 2**30, 1
                    )
                save()
            print(f"[{elapsed():6.1f}s] {name}: {entry['status']} in {entry['wall_s']} s")
    except OutOfBudget as exc:
        report["stopped"] = str(exc)
        print(f"\n[{elapsed():6.1f}s] STOPPED: {exc}", flush=True)
    except Exception as exc:  # the build or an import: record and exit cleanly
        report["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        report["traceback"] = traceback.format_exc()[-6000:]
        print(report["traceback"], flush=True)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        finish_background(background, report, T0 + args.budget_s - 4)
        save()
    print_summary(report)
    print(f"[{elapsed():6.1f}s] wrote {path}", flush=True)


def summarise(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """The ratios ours / HF SDPA of one benchmark's result."""
    sec = result.get("seconds", {})
    if name == "activation_throughput":
        return ratios(sec, activation_throughput_base())
    if name in ("patching_sweep_cost", "knockout_sweep_cost"):
        return {k: v for k, v in ratios(sec, "HF sdpa").items()}
    out: dict[str, Any] = ratios(sec, "HF sdpa")
    if name == "attention_share_cost":
        mem = result.get("peak_memory_mib", {})
        if mem.get("HF sdpa"):
            out["peak memory"] = ratios(mem, "HF sdpa")
    return out


def activation_throughput_base() -> str:
    import activation_throughput

    return activation_throughput.BASE


def finish_background(procs: list[Any], report: dict[str, Any], end: float) -> None:
    """Wait for the background runs until `end`, kill what is left, read their JSON."""
    for organism, proc, log in procs:
        try:
            proc.wait(timeout=max(0.1, end - time.perf_counter()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        name = f"chi_memory_{organism}"
        file = Path(log.name).with_suffix(".json")
        rows = json.loads(file.read_text()) if file.is_file() else []
        report["benchmarks"][name] = {"returncode": proc.returncode, "result": rows}
        summary = {}
        for row in rows:
            if "error" in row:
                summary[f"n={row['n']}"] = f"error: {row['error']}"
            else:
                summary[f"n={row['n']}"] = {
                    s: row[s]["rss_growth_mib"] for s in ("run", "chi_bounded", "chi")
                } | {"vmhwm_mib": row["vmhwm_mib"]}
        report["ratios_ours_over_hf"][name] = {"peak RSS growth MiB (not a ratio)": summary}


def print_summary(report: dict[str, Any]) -> None:
    print("\n=== summary: ratios ours / HF SDPA (medians, same inputs)")
    for name, entry in report["benchmarks"].items():
        status = entry.get("status", "ok" if "result" in entry else "?")
        print(f"{name}: {status}")
        for k, v in report["ratios_ours_over_hf"].get(name, {}).items():
            print(f"    {k}: {v}")
    for key in ("stopped", "error"):
        if key in report:
            print(f"{key}: {report[key]}")


if __name__ == "__main__":
    main()
