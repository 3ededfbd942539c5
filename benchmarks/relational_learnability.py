"""Are the relational questions learnable from VQ codes? (issue 15, first bullet)

For each tokenizer (``pixel``: the organism recipe's phase 1 with ``vq_shape_weight=0``, no shape
head, trained on relational scenes' images; ``semantic``: the recipe as shipped,
``vq_shape_weight=0.2``, trained on single-object scenes as the recipe does), this script

1. trains the VQ (`vlm_lens.zoo.native.train_vq`) and checkpoints it;
2. encodes relational train and test scenes (`vlm_lens.world.task_split`) to code grids
   (16 x 16 = 256 codes an image) and caches them;
3. trains a small bidirectional transformer from scratch on (codes, question) -> answer: fresh
   code embeddings plus learned positions, the question's words, a summary token whose final state
   is classified over the answers of the question's kind; checkpointed every 250 steps;
4. reports held-out accuracy per kind next to the majority-answer rate (the majority answer of
   the kind in the train questions, scored on the test questions).

Every stage resumes from its file in ``--work``. One thread, seeded.

Run (about 15 CPU-minutes for ``pixel``):
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/relational_learnability.py
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

ANSWER_LIST = tuple(dict.fromkeys(a for k in world.RELATIONAL_KINDS for a in world.answers_of(k)))
VQ_WEIGHTS = {"pixel": 0.0, "semantic": 0.2}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokenizers", nargs="+", default=["pixel"], choices=list(VQ_WEIGHTS))
    p.add_argument("--work", default=".cache/relational_learnability")
    p.add_argument("--out", default="benchmarks/results/relational_learnability")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vq-steps", type=int, default=300)
    p.add_argument("--vq-scenes", type=int, default=4000)
    p.add_argument("--train-scenes", type=int, default=4000)
    p.add_argument("--test-scenes", type=int, default=500)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------
# Stage 1-2: VQ and codes


def vq_stage(name: str, args: argparse.Namespace, work: Path) -> Path:
    """Train (or load) the VQ of tokenizer `name` and cache the codes of train/test scenes."""
    codes_path = work / f"codes_{name}.pt"
    if codes_path.exists():
        return codes_path
    settings = replace(
        native.Settings(),
        seed=args.seed,
        vq_steps=args.vq_steps,
        vq_shape_weight=VQ_WEIGHTS[name],
    )
    tokenizer = native.build_tokenizer()
    processor = native.build_processor(tokenizer)
    model = native.build_model(native.build_config(tokenizer, settings), settings.seed)
    vq = model.model.vqmodel
    vq_path = work / f"vq_{name}.pt"
    if vq_path.exists():
        saved = torch.load(vq_path)
        vq.load_state_dict(saved["state"])
        stats = saved["stats"]
    else:
        start = time.process_time()
        if name == "pixel":  # the task's own images; no shape labels (the head is off)
            scenes = world.task_split("relational", "train", args.vq_scenes, seed=args.seed)
            shapes = torch.zeros(len(scenes), dtype=torch.long)
        else:  # the shipped recipe: single-object scenes with their shape
            scenes = world.world_split("train", args.vq_scenes, args.seed, max_objects=1)
            shapes = native.shape_indices(scenes)
        held = world.world_split("test", 200, args.seed, max_objects=1)
        stats = native.train_vq(
            vq,
            native.pixel_values(processor, [s.image for s in scenes]),
            shapes,
            native.pixel_values(processor, [s.image for s in held]),
            native.shape_indices(held),
            settings,
        )
        stats["cpu_seconds"] = round(time.process_time() - start, 1)
        stats["trained_on"] = "relational train scenes" if name == "pixel" else "one-object"
        torch.save({"state": vq.state_dict(), "stats": stats}, vq_path)
    vq.eval()
    out: dict[str, Any] = {"stats": stats}
    for split, n in (("train", args.train_scenes), ("test", args.test_scenes)):
        scenes = world.task_split("relational", split, n, seed=args.seed)
        pixels = native.pixel_values(processor, [s.image for s in scenes])
        out[split] = {
            "codes": encode(vq, pixels),
            "qa": [[(qa.question, qa.answer, qa.kind) for qa in s.qa] for s in scenes],
        }
    torch.save(out, codes_path)
    return codes_path


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

    def __init__(self, n_words: int, hidden: int, layers: int, n_codes: int, words: int):
        super().__init__()
        self.side = native.GRID // 2
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

    def forward(self, codes: Tensor, words: Tensor) -> Tensor:
        b, g = len(codes), native.GRID
        e = self.codes(codes).view(b, self.side, 2, self.side, 2, -1)
        e = e.permute(0, 1, 3, 2, 4, 5).reshape(b, self.side, self.side, -1)
        image = (self.patch(e) + self.rows + self.columns).view(b, (g // 2) ** 2, -1)
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


def reader_stage(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    result_path = work / f"result_{name}.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    data = torch.load(work / f"codes_{name}.pt")
    vocab = {w: i + 1 for i, w in enumerate(world.vocabulary(*world.TASKS))}
    length = 16
    train = rows(data["train"], vocab, length)
    test = rows(data["test"], vocab, length)
    codes = {s: data[s]["codes"] for s in ("train", "test")}
    torch.manual_seed(args.seed + 11)
    reader = Reader(len(vocab), args.hidden, args.layers, native.CODEBOOK, length)
    optimiser = torch.optim.AdamW(reader.parameters(), lr=args.lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(args.seed + 12)
    ckpt_path = work / f"reader_{name}.pt"
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
        desc=f"reader ({name})",
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
    per_kind = {}
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
        "tokenizer": name,
        "vq_shape_weight": VQ_WEIGHTS[name],
        "vq": data["stats"],
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
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# Relational questions: learnable from VQ codes?",
        "",
        f"Command: `{command}`",
        "",
        "Held-out (test split) accuracy of a reader trained from scratch on (codes, question) -> "
        f"answer; {args.layers}-layer bidirectional transformer, hidden {args.hidden}, "
        f"{args.steps} steps of {args.batch}, {args.train_scenes} train / {args.test_scenes} test "
        f"scenes; VQ {args.vq_steps} steps. Majority: the train questions' most common answer of "
        "the kind, scored on the test questions.",
        "",
    ]
    header = (
        "| kind | n test | "
        + " | ".join(f"{r['tokenizer']} acc" for r in results)
        + " | majority |"
    )
    lines += [header, "|" + "---|" * (3 + len(results))]
    for kind in world.RELATIONAL_KINDS:
        cells = [r["per_kind"][kind] for r in results]
        acc = " | ".join(
            "undefined" if c["accuracy"] is None else f"{c['accuracy']:.3f}" for c in cells
        )
        first = cells[0]
        majority = (
            ""
            if first["accuracy"] is None
            else f"{first['majority_rate']:.3f} ({first['majority_answer']})"
        )
        lines.append(f"| {kind} | {first['n_test']} | {acc} | {majority} |")
    lines += ["", "VQ statistics:", ""]
    for r in results:
        vq = r["vq"]
        lines.append(
            f"- {r['tokenizer']} (shape weight {r['vq_shape_weight']}): "
            f"trained on {vq.get('trained_on')}, "
            f"test reconstruction rmse (0-255) {vq.get('test_reconstruction_rmse_0_255')}, "
            f"object-code shape accuracy {vq.get('test_object_code_shape_accuracy')}, "
            f"{vq.get('cpu_seconds')} CPU s; reader train loss {r['reader_final_train_loss']}"
        )
    lines += ["", "Answer distribution per kind (2000 relational train scenes):", ""]
    for kind, counts in distribution.items():
        total = sum(counts.values())
        lines.append(
            f"- {kind} (asked of {total}): "
            + ", ".join(f"{a} {c / total:.2f}" for a, c in counts.items())
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    command = (
        "OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/relational_learnability.py "
        + " ".join(sys.argv[1:] if argv is None else argv)
    )
    results = []
    for name in args.tokenizers:
        vq_stage(name, args, work)
        results.append(reader_stage(name, args, work))
        write(results, args, command.strip())  # after each tokenizer: partial results survive


if __name__ == "__main__":
    main()
