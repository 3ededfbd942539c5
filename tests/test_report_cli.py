"""The ``vlm-lens`` command and the narrow-gate report: a run on two models side by side (the
shipped non-native organism and a saved tiny random Chameleon) on the built-in images; the page
is valid, self-contained HTML whose figure data equal the ``--json`` numbers, and it renders in
headless Chromium; a labelled-folder run; ``info``; every bad argument is one error line."""

from __future__ import annotations

import base64
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from vlm_lens.cli import main
from vlm_lens.testing import build_tiny, save_tiny
from vlm_lens.world import world_split

ORGANISM = "organism:nonnative"
SECTIONS = ("attention", "overlap", "gap", "knockout", "patching", "heatmap", "view", "details")
FIGURES = ("fig-attention", "fig-overlap", "fig-gap", "fig-knockout", "fig-patching")
VOID = {"meta", "br", "img", "input", "link", "hr", "col", "area", "base", "source", "wbr"}


class _Balance(HTMLParser):
    """Checks that every non-void element is closed in order."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.doctype = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = self.doctype or decl.lower() == "doctype html"

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
            return
        self.stack.pop()


@pytest.fixture(scope="module", autouse=True)
def _restore_threads():
    """The command sets torch's thread count (``--threads``); give the next modules theirs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``vlm-lens narrow-gate`` on the organism and a tiny Chameleon folder, built-in images."""
    root = tmp_path_factory.mktemp("report")
    tiny = save_tiny(build_tiny("chameleon"), root / "tiny-chameleon")
    html_path, json_path = root / "report.html", root / "results.json"
    args = ["narrow-gate", "--model", ORGANISM, "--model", str(tiny), "--n-images", "8"]
    args += ["--n-pairs", "3", "--out", str(html_path), "--json", str(json_path), "-q"]
    args += ["--threads", "1"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["vlm-lens", *args])
        code = main(args)
    return {
        "code": code,
        "html": html_path.read_text(encoding="utf-8"),
        "json": json.loads(json_path.read_text(encoding="utf-8")),
        "path": html_path,
        "names": [ORGANISM, str(tiny)],
    }


def test_report_is_valid_self_contained_html(report: dict[str, Any]) -> None:
    assert report["code"] == 0
    page = report["html"]
    checker = _Balance()
    checker.feed(page)
    checker.close()
    assert checker.doctype and not checker.errors and not checker.stack
    assert page.count("* plotly.js v") == 1  # the bundle, inlined once
    assert not re.search(r"""<(script|img|iframe)[^>]+src=["']?https?:""", page)
    assert "<link" not in page
    for section in SECTIONS:
        assert f"id='{section}'" in page, section
    for figure in (*FIGURES, "fig-heatmap"):
        assert f'id="{figure}"' in page, figure
    for name in report["names"]:
        assert name in page
    assert "transformer-lens" in page and "built-in synthetic world" in page


def _decode(value: Any) -> np.ndarray:
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return np.asarray(value, dtype=np.float64)


def _traces(page: str, div_id: str) -> list[dict[str, Any]]:
    """The trace list passed to Plotly.newPlot for the figure `div_id`."""
    start = page.index(f'Plotly.newPlot(                        "{div_id}",')
    start = page.index("[", start)
    traces, _ = json.JSONDecoder().raw_decode(page[start:])
    return traces


def test_figure_data_equal_the_json_numbers(report: dict[str, Any]) -> None:
    page, data = report["html"], report["json"]
    models = data["models"]
    assert [m["model"] for m in models] == report["names"]
    assert data["data"]["n_images"] == 8 and len(data["data"]["labels"]) == 8
    bars = _traces(page, "fig-attention")
    for col, model in enumerate(models):
        axis = "x" if col == 0 else f"x{col + 1}"
        rows = model["attention_share"]
        for bar in (b for b in bars if b.get("xaxis", "x") == axis):
            expected = [r["share"] for r in rows if r["group"] == bar["name"]]
            np.testing.assert_allclose(_decode(bar["y"]), expected, rtol=1e-12)
        by_layer: dict[int, float] = {}
        for r in rows:
            by_layer[r["layer"]] = by_layer.get(r["layer"], 0.0) + r["share"]
        np.testing.assert_allclose(list(by_layer.values()), 1.0)
    knock = _traces(page, "fig-knockout")
    first = [t for t in knock if t["type"] == "bar" and t.get("xaxis", "x") == "x"]
    agreement = next(t for t in first if t["name"] == "agreement with baseline")
    np.testing.assert_allclose(
        _decode(agreement["y"]), [r["agreement"] for r in models[0]["knockout"]]
    )
    organism = models[0]
    assert organism["knockout_accuracy"] == "greedy answers to the colour question"
    assert [r["condition"] for r in organism["knockout"]] == [
        "baseline",
        "gate",
        "image->text",
        "random",
    ]
    assert organism["overlap"] and organism["modality_gap"] and organism["patching"]
    assert organism["heatmap"]["grid"] == [8, 8] and len(organism["heatmap"]["per_token"]) == 64
    assert organism["config"]["n_image_tokens"] == 64


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _browser(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    flags += ["--virtual-time-budget=5000", "--window-size=1280,2400"]
    return subprocess.run(
        [binary, *flags, *args], capture_output=True, text=True, timeout=180, check=False
    )


def test_report_renders_in_headless_chromium(report: dict[str, Any], tmp_path: Path) -> None:
    binary = _chromium()
    if binary is None:
        reason = "no chromium on PATH: install Debian's chromium package (.ci/run does)"
        if os.environ.get("VLM_LENS_REQUIRE_CHROMIUM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    url = report["path"].resolve().as_uri()
    shot = tmp_path / "report.png"
    run = _browser(binary, "--dump-dom", f"--screenshot={shot}", url)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    # plotly draws each figure into <svg class="main-svg"> elements once its script ran
    for figure in (*FIGURES, "fig-heatmap"):
        chunk = run.stdout.split(f'id="{figure}"', 1)[1][:200_000]
        assert 'class="main-svg"' in chunk, figure
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 10  # not a blank page
    assert (pixels < 200).mean() > 0.02  # ink: text, bars, lines


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """World scenes saved as DIR/<colour>/*.png."""
    root = tmp_path_factory.mktemp("images")
    for scene in world_split("test", 8, seed=1, max_objects=1):
        folder = root / scene.objects[0].colour
        folder.mkdir(exist_ok=True)
        scene.image.save(folder / f"{scene.index}.png")
    return root


def test_labelled_folder_run(labelled: Path, tmp_path: Path, capsys) -> None:
    out, js = tmp_path / "r.html", tmp_path / "r.json"
    args = ["narrow-gate", "--model", ORGANISM, "--images", str(labelled), "--out", str(out)]
    args += ["--json", str(js), "--n-images", "8", "--no-attention-view", "-q"]
    code, stdout, _ = _run(args, capsys)
    assert code == 0 and "wrote" in stdout
    data = json.loads(js.read_text())
    labels = data["data"]["labels"]
    assert sorted(set(labels)) == sorted(p.name for p in labelled.iterdir())
    for name, label in zip(data["data"]["names"], labels, strict=True):
        assert name.split("/")[0] == label
    model = data["models"][0]
    assert model["knockout_accuracy"] == "top-1 = target token"
    assert model["overlap"] is not None
    assert "id='view'" not in out.read_text()


HOSTILE_LABEL = "<img src=x onerror=alert(1)>"
HOSTILE_FILE = "<svg onload=alert(2)>'\"&.png"
HOSTILE_PROMPT = "<image></script><script>alert(3)</script> what colour?"


def test_hostile_labels_file_names_and_prompt_stay_text(tmp_path: Path, capsys) -> None:
    """Label folders, file names and the prompt are user strings: the page shows them as text
    (escaped for HTML, attributes and inside script elements) and runs none of them."""
    root = tmp_path / "images"
    for i, scene in enumerate(world_split("test", 6, seed=1, max_objects=1)):
        folder = root / (HOSTILE_LABEL if i % 2 else "plain")
        folder.mkdir(parents=True, exist_ok=True)
        scene.image.save(folder / (HOSTILE_FILE if i < 2 else f"{scene.index}.png"))
    out = tmp_path / "r.html"
    args = ["narrow-gate", "--model", ORGANISM, "--images", str(root), "--out", str(out)]
    args += ["--n-images", "6", "--n-pairs", "2", "--prompt", HOSTILE_PROMPT, "-q"]
    code, _, err = _run(args, capsys)
    assert code == 0, err
    page = out.read_text(encoding="utf-8")
    for evil in (HOSTILE_LABEL, HOSTILE_FILE, "<script>alert(3)</script>", "<svg onload"):
        assert evil not in page
    assert "alert(1)" in page and "alert(3)" in page  # the label and the prompt, as text
    parser = _Balance()
    parser.feed(page)
    assert parser.errors == [] and parser.stack == []


def test_info_lists_family_roles_and_hooks(capsys) -> None:
    code, out, _ = _run(["info", ORGANISM], capsys)
    assert code == 0
    assert "family: llava" in out and "gate: position" in out and "[1:65] image x64" in out
    assert "hook_resid_pre" in out and "hook_image_embeds" in out


def test_entry_points() -> None:
    scripts = {e.name: e.value for e in metadata.entry_points(group="console_scripts")}
    assert scripts.get("vlm-lens") == "vlm_lens.cli:main"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["vlm_lens", "--help"])
        with pytest.raises(SystemExit) as done:
            runpy.run_module("vlm_lens", run_name="__main__")
    assert done.value.code == 0


def _bad_inputs(root: Path) -> dict[str, tuple[list[str], str]]:
    (root / "empty").mkdir()
    (root / "broken").mkdir()
    (root / "broken" / "cat.jpg").write_bytes(b"not an image")
    (root / "mixed" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "mixed" / "top.png")
    Image.new("RGB", (8, 8)).save(root / "mixed" / "cat" / "a.png")
    (root / "notamodel").mkdir()
    (root / "file.txt").write_text("x")
    ng = ["narrow-gate", "--out", str(root / "x.html")]
    return {
        "missing folder": ([*ng, "--images", str(root / "nope")], "does not exist"),
        "not a folder": ([*ng, "--images", str(root / "file.txt")], "is not a folder"),
        "empty folder": ([*ng, "--images", str(root / "empty")], "holds no images"),
        "unreadable image": ([*ng, "--images", str(root / "broken")], "cannot read image"),
        "mixed folder": ([*ng, "--images", str(root / "mixed")], "label subfolder"),
        "unknown organism": ([*ng, "--model", "organism:nosuch"], "unknown organism"),
        "missing model folder": ([*ng, "--model", str(root / "nomodel")], "does not exist"),
        "folder without a model": ([*ng, "--model", str(root / "notamodel")], "cannot load"),
        "invalid hub id": ([*ng, "--model", "not a//model"], "cannot load model"),
        "model twice": ([*ng, "--model", ORGANISM, "--model", ORGANISM], "given twice"),
        "bad number": ([*ng, "--n-images", "x"], "--n-images"),
        "bad site": ([*ng, "--patch-site", "mlp"], "--patch-site"),
        "unknown option": ([*ng, "--frobnicate"], "--frobnicate"),
        "info unknown model": (["info", "organism:nosuch"], "unknown organism"),
        "bad heatmap layer": ([*ng, "--model", ORGANISM, "--heatmap-layer", "7"], "0..2"),
        "out is a folder": (["narrow-gate", "--out", str(root / "empty")], "is a folder"),
        "json folder missing": ([*ng, "--json", str(root / "no" / "x.json")], "does not exist"),
    }


def test_bad_arguments_give_one_line(tmp_path: Path, capsys) -> None:
    for case, (args, needle) in _bad_inputs(tmp_path).items():
        code, out, err = _run(args, capsys)
        assert code == 2, (case, code, err)
        lines = [line for line in err.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("vlm-lens: error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], (case, err)
        assert needle in errors[0], (case, errors[0])
        assert "Traceback" not in out + err, case


def test_inapplicable_analyses_are_skipped_and_bugs_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without labels χ is skipped with its reason; an error that is not an inapplicable
    analysis (a bug) stops the report instead of being shown as a skip."""
    from vlm_lens import HookedVLM
    from vlm_lens.experiments import narrow_gate as report_run
    from vlm_lens.experiments.images import ImageSet
    from vlm_lens.testing import sample_image

    tiny = build_tiny("chameleon")
    model = HookedVLM.from_hf(tiny.model, tiny.processor)
    images = [sample_image(seed=i, size=tiny.image_size) for i in range(4)]
    unlabelled = ImageSet(tuple(images), None, tuple(f"{i}.png" for i in range(4)), "test")
    result = report_run.run_narrow_gate(model, unlabelled, name="tiny", settings=None)
    assert result.overlap is None
    assert "labels" in result.skipped["neighbourhood overlap"]
    one = ImageSet((images[0],), ("a",), ("0.png",), "test")
    single = report_run.run_narrow_gate(model, one, name="tiny")
    assert single.gap is None and "at least 4 points" in single.skipped["modality gap"]

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("a bug in the modality gap")  # was shown as a skip before

    monkeypatch.setattr(report_run, "modality_gap", broken)
    with pytest.raises(ValueError, match="a bug in the modality gap"):
        report_run.run_narrow_gate(model, unlabelled, name="tiny")
