"""Loading from a local folder, offline, through the real `from_pretrained` path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlm_lens import HookedVLM, UnsupportedModelError
from vlm_lens.testing import TINY_FAMILIES, build_tiny, save_tiny

_CHECK = """
import json, sys, torch
from transformers import AutoModelForImageTextToText
from vlm_lens import HookedVLM
from vlm_lens.testing import sample_image
for case in json.loads(sys.argv[1]):
    dtype = getattr(torch, case["dtype"])
    impl = case["attn"]
    kwargs = {} if impl == "sdpa" else {"attn_implementation": impl}  # sdpa is the default
    model = HookedVLM.from_pretrained(case["path"], dtype=dtype, **kwargs)
    assert model.family == case["family"], model.family
    assert model.dtype == dtype, model.dtype
    assert model.attn_implementation == impl, model.attn_implementation
    ref = AutoModelForImageTextToText.from_pretrained(
        case["path"], dtype=dtype, attn_implementation=impl
    ).eval()
    batch = model.prepare(images=sample_image(size=tuple(case["size"])), text=case["prompt"])
    with torch.no_grad():
        ours, theirs = model(batch), ref(**batch.inputs).logits
    assert torch.equal(ours, theirs), (case, (ours - theirs).abs().max())
    print("OK", case["family"], case["dtype"], impl)
"""


def test_from_pretrained_offline(tmp_path: Path) -> None:
    """Every family loads from a saved folder with HF_HUB_OFFLINE=1, in fp32 and bf16, with
    the default (SDPA) and eager attention, and its logits equal those of the same folder
    loaded by transformers with that attention (one fresh process, so that the offline flag is
    read at import)."""
    cases = []
    for family in TINY_FAMILIES:
        tiny = build_tiny(family)
        folder = save_tiny(tiny, tmp_path / family)
        for dtype, attn in (("float32", "sdpa"), ("bfloat16", "sdpa"), ("float32", "eager")):
            cases.append(
                {
                    "path": str(folder),
                    "family": family,
                    "dtype": dtype,
                    "attn": attn,
                    "size": list(tiny.image_size),
                    "prompt": tiny.prompt,
                }
            )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    args = [sys.executable, "-c", _CHECK, json.dumps(cases)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("OK ") == len(cases), done.stdout


def test_from_pretrained_rejects_unsupported_before_loading(tmp_path: Path) -> None:
    folder = save_tiny(build_tiny("llava"), tmp_path / "llava")
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config["architectures"] = ["SomethingElseForConditionalGeneration"]
    config_file.write_text(json.dumps(config))
    (folder / "model.safetensors").unlink()  # loading weights would fail differently
    with pytest.raises(UnsupportedModelError, match="SomethingElse"):
        HookedVLM.from_pretrained(folder)
