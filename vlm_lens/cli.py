"""The ``vlm-lens`` command (also ``python -m vlm_lens``).

* ``vlm-lens narrow-gate [--model NAME_OR_PATH]... [--images DIR] [--out report.html]
  [--json results.json]``: attention share, χ, modality gap, the knockout conditions and the
  patching sweep on each model, written as one self-contained HTML report. Without ``--model``
  it runs the built-in organisms; without ``--images``, the built-in synthetic world. Offline.
* ``vlm-lens evaluate TASK --data DIR --model NAME_OR_PATH [--conditions ...] [--limit N]
  [--out DIR]``: the paper's Table 1 for one task and model (`vlm_lens.evaluate`), resumable;
  writes ``predictions.jsonl``, ``table.json`` and ``table.md``; under torchrun or accelerate
  launch the ranks share the batches (``predictions.rank{r}.jsonl`` each) and rank 0 writes the
  table.
* ``vlm-lens info NAME_OR_PATH``: the family, the token roles of a sample prompt, the hook names.

Bad arguments print one line, ``vlm-lens: error: ...``, and exit with status 2 (1 for a failure
while running); ``--debug`` shows the traceback instead.

Example:
    >>> main(["narrow-gate", "--images", "/no/such/folder"])  # the error line goes to stderr
    2
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click

from vlm_lens import __version__
from vlm_lens.errors import VLMLensError

if TYPE_CHECKING:
    from vlm_lens.experiments.narrow_gate import ModelRun

PROG = "vlm-lens"
USAGE_ERROR = 2
RUN_ERROR = 1


def _echo(line: str) -> None:
    click.echo(line, err=True)


def _quiet_libraries() -> None:
    """Keep the output to our lines and progress bars (no library warnings)."""
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=PROG)
def app() -> None:
    """vlm_lens: TransformerLens for vision-language models."""


def _output_file(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Refuse an output path that cannot be written, before any analysis runs."""
    if value is None:
        return None
    path = Path(value)
    if path.is_dir():
        raise click.BadParameter(
            f"{value} is a folder; give a file path, e.g. {path / 'narrow_gate_report.html'}"
        )
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise click.BadParameter(f"the folder {parent} does not exist; create it first")
    return value


def _max_rows(value: str | int) -> int | Literal["auto"]:
    """``--max-rows``: a positive integer or ``auto``."""
    if value == "auto":
        return "auto"
    try:
        rows = int(value)
    except ValueError:
        rows = 0
    if rows < 1:
        raise click.BadParameter(f"{value!r} is neither a positive integer nor 'auto'")
    return rows


@app.command("narrow-gate")
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="NAME_OR_PATH",
    help="Hub id, local folder or organism:NAME; repeat to compare models side by side "
    "(default: every built-in organism).",
)
@click.option(
    "--images",
    metavar="DIR",
    default=None,
    help="Folder of images, flat or one subfolder per label (DIR/<label>/*.jpg) "
    "(default: the built-in synthetic world).",
)
@click.option(
    "--out",
    default="narrow_gate_report.html",
    show_default=True,
    metavar="FILE",
    callback=_output_file,
    help="The HTML report.",
)
@click.option(
    "--json",
    "json_path",
    default=None,
    metavar="FILE",
    callback=_output_file,
    help="Also write the numbers.",
)
@click.option(
    "--n-images",
    type=click.IntRange(min=2),
    default=48,
    show_default=True,
    help="Most images to use.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--k",
    type=click.IntRange(min=1),
    default=7,
    show_default=True,
    help="Neighbours for χ (keep it below the smallest class).",
)
@click.option(
    "--chi-average",
    type=click.Choice(["class", "sample"]),
    default="class",
    show_default=True,
    help="χ's average: class (mean of the class means, the paper's dadapy call) or sample "
    "(plain mean over images).",
)
@click.option(
    "--n-pairs",
    type=click.IntRange(min=1),
    default=12,
    show_default=True,
    help="Most image pairs to patch.",
)
@click.option(
    "--patch-site",
    type=click.Choice(["residual", "attention"]),
    default="residual",
    show_default=True,
    help="Patch the residual stream at one layer, or the attention input from the layer on.",
)
@click.option(
    "--heatmap-layer",
    type=int,
    default=None,
    help="Layer of the attention map and view (default: the middle layer).",
)
@click.option(
    "--prompt",
    default=None,
    help="Prompt with <image> where the image goes (default: the organisms' colour question, "
    "else '<image>This is a picture of a').",
)
@click.option("--device", default=None, help="cpu, cuda, cuda:1... (default: cpu).")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads for torch (default: 1 when every model is a built-in organism, whose "
    "tiny matrices only lose time to threading; else torch's default).",
)
@click.option(
    "--attention-view/--no-attention-view",
    default=True,
    show_default=True,
    help="Include the circuitsvis attention view (1.3 MB of script).",
)
@click.option(
    "--evaluation",
    "evaluation",
    multiple=True,
    metavar="DIR",
    help="Results of vlm-lens evaluate (its --out folder, or a folder of them); repeat for "
    "several. Adds the Table 1 section.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def narrow_gate(
    models: tuple[str, ...],
    images: str | None,
    out: str,
    json_path: str | None,
    n_images: int,
    batch_size: int,
    k: int,
    chi_average: str,
    n_pairs: int,
    patch_site: str,
    heatmap_layer: int | None,
    prompt: str | None,
    device: str | None,
    threads: int | None,
    attention_view: bool,
    evaluation: tuple[str, ...],
    quiet: bool,
    debug: bool,  # noqa: ARG001 - read by main()
) -> None:
    """Run the paper's analyses and write one self-contained HTML report. Under torchrun or
    accelerate launch the processes share every analysis's batches (--device cuda:
    cuda:LOCAL_RANK each) and rank 0 writes the report."""
    from vlm_lens.data import distributed

    _quiet_libraries()
    import torch

    from vlm_lens.report import Settings, build_report, default_models
    from vlm_lens.zoo.registry import model_defaults

    wanted = {model_defaults(m).threads for m in (models or default_models())}
    if threads is None and len(wanted) == 1:
        threads = wanted.pop()
    if threads is not None:
        torch.set_num_threads(threads)

    settings = Settings(
        batch_size=batch_size,
        k=k,
        chi_average="sample" if chi_average == "sample" else "class",
        n_pairs=n_pairs,
        patch_site="attention" if patch_site == "attention" else "residual",
        heatmap_layer=heatmap_layer,
        prompt=prompt,
        attention_view=attention_view,
    )
    ranks = distributed.current()
    if ranks.active and device == "cuda":
        device = f"cuda:{ranks.local_rank}"
    quiet = quiet or ranks.rank != 0  # one rank's progress and log lines
    command = None
    if sys.argv[0].endswith(PROG):
        command = " ".join([PROG, *sys.argv[1:]])
    elif sys.argv[0].endswith("__main__.py"):
        command = " ".join(["python -m vlm_lens", *sys.argv[1:]])
    with distributed.sharded():
        result = build_report(
            list(models) or None,
            images,
            out=out,
            json_path=json_path,
            n_images=n_images,
            settings=settings,
            device=device,
            progress=not quiet,
            log=None if quiet else _echo,
            command=command,
            evaluation=list(evaluation) or None,
        )
    if ranks.rank != 0:  # every rank has the same runs; rank 0 wrote the report
        return
    for run in result.runs:
        click.echo(_summary(run))
    size = result.html_path.stat().st_size / 1e6
    also = f" and {result.json_path}" if result.json_path else ""
    click.echo(
        f"wrote {result.html_path} ({size:.1f} MB){also}: {len(result.runs)} model(s), "
        f"{len(result.images)} images, {result.seconds:.1f} s"
    )


def _summary(run: ModelRun) -> str:
    """One line per model: knockout accuracy (or agreement) and the best patching layer."""
    ko = run.knockout
    values = ko.accuracy if ko.accuracy is not None else ko.agreement
    what = "accuracy" if ko.accuracy is not None else "agreement"
    parts = ", ".join(f"{c} {v:.2f}" for c, v in zip(ko.conditions, values, strict=True))
    line = f"{run.name}: knockout {what}: {parts}"
    sweep = run.patching
    if sweep is not None and len(sweep.layers):
        best = int(sweep.flip_rate.argmax())
        line += f"; patching flip rate {sweep.flip_rate[best]:.2f} at layer {sweep.layers[best]}"
    return line


@app.command("evaluate")
@click.argument("task", metavar="TASK")
@click.option(
    "--data",
    required=True,
    metavar="DIR",
    help="The task's data: VQAv2 JSON files and images, a Karpathy-split JSON and images, "
    "one folder per class, or a Hugging Face dataset saved with save_to_disk.",
)
@click.option(
    "--model",
    "model_name",
    required=True,
    metavar="NAME_OR_PATH",
    help="Hub id, local folder or organism:NAME.",
)
@click.option(
    "--conditions",
    default="baseline,gate,image->text,random",
    show_default=True,
    help="Comma-separated: baseline, gate, image->text, random, or NAME@lastW (a knockout in "
    "the last W layers).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Most items (default: the paper's 2,000 sampled as it does).",
)
@click.option(
    "--seed",
    type=int,
    default=42,
    show_default=True,
    help="Seed of the sampling and of the random draws.",
)
@click.option(
    "--out",
    default="evaluation",
    show_default=True,
    metavar="DIR",
    help="Folder for predictions.jsonl (resumable), table.json and table.md.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--knockout-mode",
    type=click.Choice(["zero", "mask"]),
    default="zero",
    show_default=True,
    help="zero: the paper's post-softmax weights set to 0, not renormalised; mask: "
    "pre-softmax, renormalised (SDPA layers stay fused).",
)
@click.option(
    "--k", type=click.IntRange(min=1), default=30, show_default=True, help="Neighbours for χ."
)
@click.option(
    "--reuse-prefix/--no-reuse-prefix",
    default=True,
    show_default=True,
    help="Compute the clean prefix once per batch for every condition (same predictions).",
)
@click.option(
    "--stack-runs/--no-stack-runs",
    default=True,
    show_default=True,
    help="Run a batch's conditions and random draws stacked along the batch, in as few "
    "calls as possible (same predictions; --no-stack-runs: one call per run).",
)
@click.option(
    "--max-rows",
    default="auto",
    show_default=True,
    callback=lambda _ctx, _param, value: _max_rows(value),
    metavar="N|auto",
    help="Most rows (prompts x runs) of one stacked call; auto: from the free memory.",
)
@click.option(
    "--chi-average",
    type=click.Choice(["class", "sample"]),
    default="class",
    show_default=True,
    help="χ_out's average: class (mean of the class means, the paper's dadapy call) or "
    "sample (plain mean over images).",
)
@click.option("--device", default=None, help="cpu, cuda, cuda:1... (default: cpu).")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads for torch (default: 1 for the built-in organisms, else torch's).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def evaluate_command(
    task: str,
    data: str,
    model_name: str,
    conditions: str,
    limit: int | None,
    seed: int,
    out: str,
    batch_size: int,
    knockout_mode: str,
    k: int,
    reuse_prefix: bool,
    stack_runs: bool,
    max_rows: int | Literal["auto"],
    chi_average: str,
    device: str | None,
    threads: int | None,
    quiet: bool,
    debug: bool,  # noqa: ARG001 - read by main()
) -> None:
    """Score TASK (vqav2, coco-captions, flickr30k, imagenet-chi) under each condition: the
    paper's Table 1 for one model. Rerun the same command to resume. Under torchrun or
    accelerate launch the batches are shared by the processes (--device cuda: cuda:LOCAL_RANK
    each) and rank 0 writes the table."""
    _quiet_libraries()
    import torch

    from vlm_lens.data import distributed
    from vlm_lens.evaluate import TASKS, evaluate, parse_conditions
    from vlm_lens.report import load_model
    from vlm_lens.zoo.registry import model_defaults

    if task not in TASKS:
        raise click.BadParameter(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    mode: Literal["zero", "mask"] = "zero" if knockout_mode == "zero" else "mask"
    parsed = parse_conditions(conditions, mode)
    items = TASKS[task].read(data, limit=limit, seed=seed)
    if threads is None:
        threads = model_defaults(model_name).threads
    if threads is not None:
        torch.set_num_threads(threads)
    ranks = distributed.current()
    if ranks.active and device == "cuda":
        device = f"cuda:{ranks.local_rank}"
    model = load_model(model_name, device=device)
    result = evaluate(
        model,
        TASKS[task],
        items,
        parsed,
        model_name=model_name,
        batch_size=batch_size,
        out=out,
        progress=not quiet,
        seed=seed,
        k=k,
        chi_average="sample" if chi_average == "sample" else "class",
        knockout_mode=mode,
        reuse_prefix=reuse_prefix,
        stack_runs=stack_runs,
        max_rows=max_rows,
    )
    if ranks.rank != 0:  # every rank has the same result; rank 0 writes it
        return
    json_path, md_path = result.write(out)
    click.echo(result.markdown())
    logs = "predictions.rank*.jsonl" if ranks.active else "predictions.jsonl"
    click.echo(f"wrote {json_path}, {md_path} and {json_path.parent / logs}")


@app.command("info")
@click.argument("name_or_path", metavar="NAME_OR_PATH")
@click.option("--prompt", default=None, help="Sample prompt with <image> (default as narrow-gate).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def info(name_or_path: str, prompt: str | None, debug: bool) -> None:  # noqa: ARG001
    """Show a model's family, the token roles of a sample prompt and its hook names."""
    _quiet_libraries()
    from vlm_lens.experiments.narrow_gate import default_prompt
    from vlm_lens.report import load_model
    from vlm_lens.world import generate_scene

    model = load_model(name_or_path)
    cfg = model.cfg
    text = default_prompt(model, name_or_path, prompt)
    batch = model.prepare(images=generate_scene(0, "test", max_objects=1).image, text=text)
    tokens = model.to_str_tokens(batch)
    lines = [
        f"model: {name_or_path}",
        f"family: {model.family} ({type(model.hf_model).__name__})",
        f"language model: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, "
        f"d_vocab {cfg.d_vocab}",
        f"image placeholder: {model.image_placeholder!r}, "
        f"{batch.layout.counts()['image'][0]} image tokens in the sample",
        f"sample prompt: {text!r} ({len(tokens)} positions)",
        "token roles:",
        *("    " + line for line in batch.layout.summary(0).splitlines()),
    ]
    gates = batch.layout.positions("gate")[0].tolist()
    lines += [f"gate: position {g}, token {tokens[g]!r}" for g in gates]
    names = model.hook_names()
    per_layer = sorted(n[len("blocks.0.") :] for n in names if n.startswith("blocks.0."))
    others = [n for n in names if not n.startswith("blocks.")]
    lines.append(f"hook names per layer (blocks.L.<name>, L = 0..{cfg.n_layers - 1}):")
    lines += ["    " + n for n in per_layer]
    lines.append("other hook names:")
    lines += ["    " + n for n in others]
    click.echo("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (never raises, unless ``--debug``).

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("VLM_LENS_DEBUG") == "1"
    start = time.perf_counter()
    try:
        result = app.main(args=args, prog_name=PROG, standalone_mode=False)
        return int(result) if isinstance(result, int) else 0
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.exceptions.Abort:
        _echo(f"{PROG}: aborted")
        return 130
    except click.ClickException as error:
        if debug:
            raise
        _echo(f"{PROG}: error: {error.format_message()} (see {PROG} --help)")
        return USAGE_ERROR
    except KeyboardInterrupt:
        _echo(f"{PROG}: interrupted after {time.perf_counter() - start:.0f} s")
        return 130
    except ValueError as error:  # ReportInputError and other bad-input errors
        if debug:
            raise
        _echo(f"{PROG}: error: {_first_line(error)}")
        return USAGE_ERROR
    except (VLMLensError, OSError, RuntimeError) as error:
        if debug:
            raise
        _echo(f"{PROG}: error: {_first_line(error)} (rerun with --debug for the traceback)")
        return RUN_ERROR


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


if __name__ == "__main__":
    raise SystemExit(main())
