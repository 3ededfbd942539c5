"""Are the relational questions learnable from VQ codes? (issue 15, first bullet)

Each run is ``TOKENIZER:VQ_STEPS`` (or ``raw``): ``pixel`` is the organism recipe's phase 1 with
``--tokenizer pixel`` (no shape head), trained on relational scenes' images; ``semantic`` is the
recipe as shipped (shape head, weight ``vq_shape_weight``), trained on single-object scenes as
the recipe does; ``raw`` reads the pixel values themselves (no VQ: the reference). For each run
this script

1. trains the VQ (`vlm_lens.zoo.native.train_vq`) and saves it;
2. probes the frozen VQ (`vlm_lens.zoo.native.probes.vq_probes`): shape and colour from one
   object code, and from the whole code grid of a single-object scene next to the same probe on
   the raw pixels, with the majority rate and chance (the training record's "object-code shape
   accuracy" is the shape head's, untrained for the pixel tokenizer, so it is not reported);
3. encodes relational train and test scenes (`vlm_lens.world.task_split`) to code grids
   (16 x 16 = 256 codes an image; ``raw``: the pixel values) and caches them;
4. trains a small bidirectional transformer from scratch on (codes, question) -> answer: fresh
   code embeddings (``raw``: a linear map of each 4 x 4 pixel patch) plus learned positions, the
   question's words, a summary token whose final state is classified over the answers of the
   question's kind; checkpointed every 250 steps;
5. reports held-out accuracy per kind next to the majority-answer rate (the majority answer of
   the kind in the train questions, scored on the test questions).

``--probe-only shipped`` adds the probes of the shipped organism's semantic VQ (no reader).
Every stage resumes from its file in ``--work`` (the VQ from its checkpoint every 100 steps, the
reader every 250; a reader's files are named by every reader setting, so ``--steps 30000`` trains
a new one on the cached codes). The results' ``## What it says`` section (hand-written) is kept
when they are rewritten. One thread, seeded.

Run (one core; about 0.5 CPU s a VQ step, 0.2 CPU s a reader step):
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/relational_learnability.py \\
        --runs pixel:300 pixel:1500 raw --probe-only shipped
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vlm_lens import world
from vlm_lens.zoo import native
from vlm_lens.zoo.native.build import shape_targets
from vlm_lens.zoo.native.probes import vq_probes

ANSWER_LIST = tuple(dict.fromkeys(a for k in world.RELATIONAL_KINDS for a in world.answers_of(k)))
TOKENIZERS = ("pixel", "semantic")
RAW = "raw"
SHIPPED = "shipped"
NOTES = "## What it says"
"""The heading of the hand-written reading in the results file (kept when it is rewritten)."""
SHIPPED_FOLDER = Path(native.__file__).parent.parent / "weights" / "native"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--runs",
        nargs="+",
        default=["pixel:300"],
        help="TOKENIZER:VQ_STEPS (pixel or semantic), or raw (the reader on pixel values)",
    )
    p.add_argument(
        "--probe-only",
        nargs="*",
        default=[],
        choices=[SHIPPED],
        help="VQs probed without a reader: shipped (the organism:native semantic VQ)",
    )
    p.add_argument("--work", default=".cache/relational_learnability")
    p.add_argument("--out", default="benchmarks/results/relational_learnability")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vq-scenes", type=int, default=4000)
    p.add_argument("--train-scenes", type=int, default=4000)
    p.add_argument("--test-scenes", type=int, default=500)
    p.add_argument("--probe-train", type=int, default=2000, help="train scenes of each probe")
    p.add_argument("--probe-test", type=int, default=500, help="test scenes of each probe")
    p.add_argument("--probe-steps", type=int, default=300)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    args = p.parse_args(argv)
    for run in args.runs:
        split_run(run)
    return args


def split_run(run: str) -> tuple[str, int]:
    """``"pixel:1500"`` -> ``("pixel", 1500)``; ``"raw"`` -> ``("raw", 0)``."""
    if run == RAW:
        return RAW, 0
    name, _, steps = run.partition(":")
    if name not in TOKENIZERS or not steps.isdigit() or int(steps) <= 0:
        raise SystemExit(
            f"bad run {run!r}: write TOKENIZER:VQ_STEPS with TOKENIZER one of {TOKENIZERS} and "
            "a positive step count (pixel:1500), or raw"
        )
    return name, int(steps)


def tag_of(run: str) -> str:
    name, steps = split_run(run)
    return RAW if name == RAW else f"{name}{steps}"


# --------------------------------------------------------------------------------------------
# Stages 1-3: VQ, probes and codes


def load_vq(run: str, args: argparse.Namespace, work: Path) -> tuple[Any, Any, dict[str, Any]]:
    """Train (or load) the VQ of `run`: ``(vq, processor, training statistics)``."""
    name, steps = split_run(run)
    settings = replace(native.Settings(), seed=args.seed, vq_steps=steps, tokenizer=name)
    tokenizer = native.build_tokenizer()
    processor = native.build_processor(tokenizer)
    model = native.build_model(native.build_config(tokenizer, settings), settings.seed)
    vq = model.model.vqmodel
    vq_path = work / f"vq_{tag_of(run)}.pt"
    if vq_path.exists():
        saved = torch.load(vq_path)
        vq.load_state_dict(saved["state"])
        vq.eval()
        return vq, processor, saved["stats"]
    start = time.process_time()
    if name == "pixel":  # the task's own images (the shape head is off: its targets are unused)
        scenes = world.task_split("relational", "train", args.vq_scenes, seed=args.seed)
    else:  # the shipped recipe: single-object scenes with their shape
        scenes = world.world_split("train", args.vq_scenes, args.seed, max_objects=1)
    held = world.world_split("test", 200, args.seed, max_objects=1)
    pixels = native.pixel_values(processor, [s.image for s in scenes])
    held_pixels = native.pixel_values(processor, [s.image for s in held])
    checkpointer = native.Checkpointer(work / f"vq_{tag_of(run)}", settings, model=vq)
    stats = native.train_vq(  # checkpointed every settings.checkpoint_every steps; resumes
        vq,
        pixels,
        shape_targets(scenes, pixels),
        held_pixels,
        shape_targets(held, held_pixels),
        settings,
        checkpointer,
    )
    stats["cpu_seconds_this_run"] = round(time.process_time() - start, 1)
    stats["trained_on"] = "relational train scenes" if name == "pixel" else "one-object"
    stats["shape_weight"] = settings.shape_weight
    if settings.shape_weight == 0:  # the untrained head's accuracy measures nothing
        stats.pop("test_object_code_shape_accuracy", None)
    torch.save({"state": vq.state_dict(), "stats": stats}, vq_path)
    vq.eval()
    return vq, processor, stats


def vq_stage(run: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Train the VQ, probe it and cache the codes of the train/test scenes; returns the VQ
    statistics and probes (``raw``: the processor's pixel values, no VQ)."""
    tag = tag_of(run)
    codes_path, probes_path = work / f"codes_{tag}.pt", work / f"probes_{tag}.json"
    if codes_path.exists() and probes_path.exists():
        return json.loads(probes_path.read_text())
    if split_run(run)[0] == RAW:
        vq, processor = None, native.build_processor(native.build_tokenizer())
        summary: dict[str, Any] = {"vq": None, "probes": None}
    else:
        vq, processor, stats = load_vq(run, args, work)
        start = time.process_time()
        probes = vq_probes(
            vq, processor, args.seed, args.probe_train, args.probe_test, args.probe_steps
        )
        probes["cpu_seconds"] = round(time.process_time() - start, 1)
        summary = {"vq": stats, "probes": probes}
    out: dict[str, Any] = {}
    for split, n in (("train", args.train_scenes), ("test", args.test_scenes)):
        scenes = world.task_split("relational", split, n, seed=args.seed)
        pixels = native.pixel_values(processor, [s.image for s in scenes])
        out[split] = {
            "inputs": pixels if vq is None else encode(vq, pixels),
            "qa": [[(qa.question, qa.answer, qa.kind) for qa in s.qa] for s in scenes],
        }
    torch.save(out, codes_path)
    probes_path.write_text(json.dumps(summary, indent=2))
    return summary


def shipped_stage(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The probes of the shipped organism's VQ (semantic: shape head weight 0.2, 600 steps on
    single-object scenes), loaded from its folder."""
    path = work / "probes_shipped.json"
    if path.exists():
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded
    from transformers import ChameleonForConditionalGeneration

    model = ChameleonForConditionalGeneration.from_pretrained(SHIPPED_FOLDER)
    vq = model.model.vqmodel.eval()
    record = json.loads((SHIPPED_FOLDER / "training.json").read_text())
    recipe = record.get("settings", {})
    phase = record.get("phases", {}).get("vq", {})
    stats = {
        **{k: v for k, v in phase.items() if k != "test_object_code_shape_accuracy"},
        "trained_on": "one-object (organism:native as shipped)",
        "shape_weight": recipe.get("vq_shape_weight"),
        "shape_head_accuracy": phase.get("test_object_code_shape_accuracy"),
    }
    start = time.process_time()
    processor = native.build_processor(native.build_tokenizer())
    probes = vq_probes(
        vq, processor, args.seed, args.probe_train, args.probe_test, args.probe_steps
    )
    probes["cpu_seconds"] = round(time.process_time() - start, 1)
    summary = {"run": SHIPPED, "vq": stats, "probes": probes, "per_kind": None}
    path.write_text(json.dumps(summary, indent=2))
    return summary


@torch.no_grad()
def encode(vq: Any, pixels: Tensor) -> Tensor:
    """``[n, GRID * GRID]`` code indices (row-major), by the VQ's own nearest-code rule."""
    chunks = []
    for i in range(0, len(pixels), 256):
        _, _, indices = vq.quantize(vq.quant_conv(vq.encoder(pixels[i : i + 256])))
        chunks.append(indices.view(-1, native.GRID * native.GRID))
    return torch.cat(chunks)


# --------------------------------------------------------------------------------------------
# Stage 3: the reader


class Reader(nn.Module):
    """Bidirectional transformer over [summary, code patches..., question words...] -> answer.

    Each code gets a fresh embedding (``hidden // 2`` wide); the embeddings of each 2 x 2 block of
    the code grid are concatenated and mapped to one token (8 x 8 = 64 image tokens: a quarter
    of the sequence, so four times the steps in the same CPU time), with row and column position
    embeddings; the words get their own positions.
    """

    def __init__(
        self, n_words: int, hidden: int, layers: int, n_codes: int, words: int, raw: bool = False
    ):
        super().__init__()
        self.side = native.GRID // 2
        self.raw = raw
        if raw:  # a 4 x 4 pixel patch (the pixels of a 2 x 2 block of codes) -> one token
            self.pixel_patch = nn.Linear(3 * 4 * 4, hidden)
        else:
            self.codes = nn.Embedding(n_codes, hidden // 2)
            self.patch = nn.Linear(4 * (hidden // 2), hidden)
        self.words = nn.Embedding(n_words + 1, hidden)  # id 0: padding
        self.summary = nn.Parameter(torch.zeros(1, 1, hidden))
        self.rows = nn.Parameter(torch.randn(self.side, 1, hidden) * 0.02)
        self.columns = nn.Parameter(torch.randn(1, self.side, hidden) * 0.02)
        self.word_position = nn.Parameter(torch.randn(1, words, hidden) * 0.02)
        layer = nn.TransformerEncoderLayer(
            hidden, 4, 2 * hidden, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, len(ANSWER_LIST))

    def patches(self, inputs: Tensor) -> Tensor:
        """``[b, side, side, hidden]`` image tokens of code grids ``[b, GRID * GRID]`` (or
        pixel values ``[b, 3, 32, 32]`` when `raw`)."""
        b, s = len(inputs), self.side
        if self.raw:
            p = inputs.view(b, 3, s, 4, s, 4).permute(0, 2, 4, 1, 3, 5).reshape(b, s, s, -1)
            return self.pixel_patch(p)
        e = self.codes(inputs).view(b, s, 2, s, 2, -1)
        return self.patch(e.permute(0, 1, 3, 2, 4, 5).reshape(b, s, s, -1))

    def forward(self, inputs: Tensor, words: Tensor) -> Tensor:
        b = len(inputs)
        image = (self.patches(inputs) + self.rows + self.columns).view(b, self.side**2, -1)
        text = self.words(words) + self.word_position[:, : words.shape[1]]
        x = torch.cat([self.summary.expand(b, -1, -1), image, text], 1)
        pad = torch.cat([torch.zeros(b, 1 + image.shape[1], dtype=torch.bool), words == 0], 1)
        return self.head(self.norm(self.encoder(x, src_key_padding_mask=pad)[:, 0]))


def rows(data: dict[str, Any], vocab: dict[str, int], length: int) -> tuple[Tensor, ...]:
    """``(scene index, word ids [n, length], answer index, kind index, answer-set mask)``."""
    scene, words, answer, kind = [], [], [], []
    for i, qas in enumerate(data["qa"]):
        for question, ans, k in qas:
            ids = [vocab[w] for w in world.tokenize(question)]
            scene.append(i)
            words.append(ids + [0] * (length - len(ids)))
            answer.append(ANSWER_LIST.index(ans))
            kind.append(world.RELATIONAL_KINDS.index(k))
    masks = torch.tensor(
        [[a in world.answers_of(k) for a in ANSWER_LIST] for k in world.RELATIONAL_KINDS]
    )
    kinds = torch.tensor(kind)
    return torch.tensor(scene), torch.tensor(words), torch.tensor(answer), kinds, masks[kinds]


def reader_key(run: str, args: argparse.Namespace) -> str:
    """The cache name of `run`'s reader: the run and every reader setting (another reader
    recipe trains anew on the same cached codes)."""
    return f"{tag_of(run)}-r{args.steps}-l{args.layers}-h{args.hidden}-b{args.batch}-lr{args.lr:g}"


def reader_stage(
    run: str, summary: dict[str, Any], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    name, vq_steps = split_run(run)
    tag = tag_of(run)
    key = reader_key(run, args)
    result_path = work / f"result_{key}.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    data = torch.load(work / f"codes_{tag}.pt")
    vocab = {w: i + 1 for i, w in enumerate(world.vocabulary(*world.TASKS))}
    length = 16
    train = rows(data["train"], vocab, length)
    test = rows(data["test"], vocab, length)
    codes = {s: data[s]["inputs"] for s in ("train", "test")}
    torch.manual_seed(args.seed + 11)
    reader = Reader(len(vocab), args.hidden, args.layers, native.CODEBOOK, length, name == RAW)
    optimiser = torch.optim.AdamW(reader.parameters(), lr=args.lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(args.seed + 12)
    ckpt_path = work / f"reader_{key}.pt"
    step, losses = 0, []
    if ckpt_path.exists():
        saved = torch.load(ckpt_path)
        reader.load_state_dict(saved["reader"])
        optimiser.load_state_dict(saved["optimiser"])
        generator.set_state(saved["generator"])
        step, losses = saved["step"], saved["losses"]
    start = time.process_time()
    bar = tqdm(
        range(step, args.steps),
        desc=f"reader ({tag})",
        unit="step",
        initial=step,
        total=args.steps,
    )
    for step in bar:
        lr = (
            args.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        )
        for group in optimiser.param_groups:
            group["lr"] = lr
        pick = torch.randint(len(train[0]), (args.batch,), generator=generator)
        logits = reader(codes["train"][train[0][pick]], train[1][pick])
        logits = logits.masked_fill(~train[4][pick], -1e9)
        loss = nn.functional.cross_entropy(logits, train[2][pick])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
        if (step + 1) % 250 == 0 or step + 1 == args.steps:
            torch.save(
                {
                    "reader": reader.state_dict(),
                    "optimiser": optimiser.state_dict(),
                    "generator": generator.get_state(),
                    "step": step + 1,
                    "losses": losses,
                },
                ckpt_path,
            )
    reader.eval()
    with torch.no_grad():
        predicted = []
        for i in range(0, len(test[0]), 256):
            sl = slice(i, i + 256)
            logits = reader(codes["test"][test[0][sl]], test[1][sl]).masked_fill(~test[4][sl], -1e9)
            predicted.append(logits.argmax(-1))
        correct = torch.cat(predicted) == test[2]
    per_kind: dict[str, dict[str, Any]] = {}
    for k, kind in enumerate(world.RELATIONAL_KINDS):
        train_answers = Counter(train[2][train[3] == k].tolist())
        held = test[3] == k
        n = int(held.sum())
        if n == 0 or not train_answers:
            per_kind[kind] = {"n_test": n, "accuracy": None, "why": "no questions of this kind"}
            continue
        majority = train_answers.most_common(1)[0][0]
        per_kind[kind] = {
            "n_test": n,
            "accuracy": round(correct[held].float().mean().item(), 4),
            "majority_answer": ANSWER_LIST[majority],
            "majority_rate": round((test[2][held] == majority).float().mean().item(), 4),
        }
    result = {
        "run": tag,
        "tokenizer": name,
        "vq_steps": vq_steps,
        "vq": summary["vq"],
        "probes": summary["probes"],
        "reader_steps": args.steps,
        "reader_final_train_loss": round(sum(losses[-100:]) / len(losses[-100:]), 4),
        "reader_cpu_seconds_this_run": round(time.process_time() - start, 1),
        "overall_accuracy": round(correct.float().mean().item(), 4),
        "per_kind": per_kind,
    }
    result_path.write_text(json.dumps(result, indent=2))
    return result


def answer_distribution(args: argparse.Namespace) -> dict[str, dict[str, int]]:
    scenes = world.task_split("relational", "train", 2000, seed=args.seed)
    out: dict[str, Counter[str]] = {k: Counter() for k in world.RELATIONAL_KINDS}
    for scene in scenes:
        for qa in scene.qa:
            out[qa.kind][qa.answer] += 1
    return {k: dict(sorted(v.items(), key=lambda kv: -kv[1])) for k, v in out.items()}


def write(results: list[dict[str, Any]], args: argparse.Namespace, command: str) -> None:
    distribution = answer_distribution(args)
    record = {
        "command": command,
        "args": vars(args),
        "answer_distribution_train_2000": distribution,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    notes = ""  # the hand-written reading of the results (dated) survives a rewrite
    if out.with_suffix(".md").exists():
        text = out.with_suffix(".md").read_text()
        notes = text[text.index(NOTES) :] if NOTES in text else ""
    if out.with_suffix(".json").exists():
        old = json.loads(out.with_suffix(".json").read_text())
        if "what_it_says" in old:
            record["what_it_says"] = old["what_it_says"]
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# Relational questions: learnable from VQ codes?",
        "",
        f"Command: `{command}`",
        "",
        "Held-out (test split) accuracy of a reader trained from scratch on (codes, question) -> "
        f"answer; {args.layers}-layer bidirectional transformer, hidden {args.hidden}, "
        f"{args.steps} steps of {args.batch}, {args.train_scenes} train / {args.test_scenes} test "
        "scenes. Columns: `TOKENIZER STEPS` (the VQ's training steps), `raw` (the reader on the "
        "pixel values). Majority: the train questions' most common answer of the kind, scored on "
        "the test questions. `pending`: the reader has not finished.",
        "",
    ]
    read = [r for r in results if r["run"] != SHIPPED]  # the shipped VQ is probed only
    names = [r["run"] for r in read]
    lines += ["| kind | n test | " + " | ".join(names) + " | majority |"]
    lines += ["|" + "---|" * (3 + len(read))]
    done = [r for r in read if r.get("per_kind")]
    for kind in world.RELATIONAL_KINDS:
        cells = []
        for r in read:
            c = (r.get("per_kind") or {}).get(kind)
            cells.append(
                "pending"
                if c is None
                else "undefined"
                if c["accuracy"] is None
                else f"{c['accuracy']:.3f}"
            )
        first = done[0]["per_kind"][kind] if done else None
        n = "" if first is None else str(first["n_test"])
        majority = (
            ""
            if first is None or first["accuracy"] is None
            else f"{first['majority_rate']:.3f} ({first['majority_answer']})"
        )
        lines.append(f"| {kind} | {n} | {' | '.join(cells)} | {majority} |")
    probed = [r for r in results if r.get("probes")]
    if probed:
        p0 = probed[0]["probes"]
        lines += [
            "",
            "Linear probes on the frozen VQ (`vlm_lens.zoo.native.probes`; held-out accuracy, "
            f"{p0['train_scenes']} train / {p0['test_scenes']} test scenes, {p0['steps']} steps; "
            f"chance {p0['chance']}): the attribute of the object a code covers from that one "
            "code (relational scenes), next to the same probe on that code's own 2 x 2 pixel "
            "patch (12 values), and of a single-object scene's object from the whole code grid, "
            "next to the same probe on the raw pixels. Majority: the train labels' most common "
            "class on the test labels (codes of large shapes outnumber the rest).",
            "",
            "| VQ | attribute | one object code | its patch's pixels | majority | whole grid | "
            "raw pixels | majority |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in probed:
            p = r["probes"]
            for attribute, suffix in (("shape", ""), ("colour", "_colour")):
                patch = p.get(f"object_patch_pixels{suffix}")
                lines.append(
                    f"| {r['run']} | {attribute} | {p[f'object_code{suffix}']:.3f} | "
                    + ("" if patch is None else f"{patch:.3f}")
                    + f" | {p[f'object_code{suffix}_majority']:.3f} | "
                    f"{p[f'grid_codes{suffix}']:.3f} | {p[f'grid_pixels{suffix}']:.3f} | "
                    f"{p[f'grid{suffix}_majority']:.3f} |"
                )
    lines += ["", "VQ and reader statistics:", ""]
    for r in results:
        vq = r.get("vq") or {}
        reader = (
            "probed only"
            if r["run"] == SHIPPED
            else f"reader train loss {r['reader_final_train_loss']}, "
            f"{r['reader_cpu_seconds_this_run']} CPU s (last invocation)"
            if r.get("per_kind")
            else "reader pending"
        )
        lines.append(
            f"- {r['run']}: "
            + (
                f"VQ {vq.get('steps')} steps on {vq.get('trained_on')} (shape weight "
                f"{vq.get('shape_weight')}), test reconstruction rmse (0-255) "
                f"{vq.get('test_reconstruction_rmse_0_255')}, codes used "
                f"{vq.get('codes_used_on_test')}, perplexity {vq.get('code_perplexity_on_test')}, "
                f"{vq.get('cpu_seconds', vq.get('cpu_seconds_this_run'))} CPU s; "
                if vq
                else "no VQ; "
            )
            + reader
        )
    lines += ["", "Answer distribution per kind (2000 relational train scenes):", ""]
    for kind, counts in distribution.items():
        total = sum(counts.values())
        lines.append(
            f"- {kind} (asked of {total}): "
            + ", ".join(f"{a} {c / total:.2f}" for a, c in counts.items())
        )
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text + ("\n" + notes if notes else ""))


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    command = (
        "OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/relational_learnability.py "
        + " ".join(sys.argv[1:] if argv is None else argv)
    )
    results: list[dict[str, Any]] = [shipped_stage(args, work) for _ in args.probe_only]
    for run in args.runs:
        summary = vq_stage(run, args, work)
        pending = {"run": tag_of(run), **summary, "per_kind": None}
        write([*results, pending], args, command.strip())  # the probes, before the reader
        result = reader_stage(run, summary, args, work)
        result.update(vq=summary["vq"], probes=summary["probes"])
        results.append(result)
        write(results, args, command.strip())  # after each run: partial results survive


if __name__ == "__main__":
    main()
