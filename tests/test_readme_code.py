"""Every ```python block of the README and of the docs' pattern pages runs.

Each block runs in a fresh namespace, in a temporary working folder, on the model organisms
(`organism:native`, `organism:nonnative`) or the tiny models of `vlm_lens.testing`: a block
defines its own inputs. A block whose first line is ``# (continues the block above)`` runs in
the namespace of the block before it on the same page, which the reader sees just above it.
Blocks that show a hub id (``facebook/chameleon-7b``) show it in a comment next to the organism
that stands in for it (a hub id in code would fail here: nothing downloads). Code that is not
Python (shell commands, trees) is fenced with another language; any other fence language fails
the test, so that no block is skipped silently.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "patterns").glob("*.md"))]
CONTINUES = "# (continues the block above)"
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M
)
OTHER_LANGUAGES = {"", "bash", "console", "text", "yaml", "toml", "json", "html", "markdown"}


def code_blocks(page: Path) -> list[tuple[int, str, str]]:
    """(line, language, code) of every fenced block of `page`, in order."""
    text = page.read_text()
    return [
        (text.count("\n", 0, m.start()) + 1, m["lang"].strip(), m["body"])
        for m in FENCE.finditer(text)
    ]


def python_blocks(page: Path) -> list[tuple[int, str]]:
    return [(line, code) for line, lang, code in code_blocks(page) if lang == "python"]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_fence_is_python_or_declared_other(page: Path) -> None:
    for line, lang, _ in code_blocks(page):
        assert lang == "python" or lang in OTHER_LANGUAGES, (
            f"{page.name}:{line}: a ```{lang} block would not be run by this test; fence Python "
            f"as ```python, anything else as one of {sorted(OTHER_LANGUAGES)}"
        )


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(page)
    assert blocks, f"{page.name} has no ```python block; drop it from PAGES or add one"
    monkeypatch.chdir(tmp_path)  # blocks may write files ("runs/vqa", "data/...")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    namespace: dict[str, object] = {}
    for line, code in blocks:
        if not code.startswith(CONTINUES):
            namespace = {"__name__": "__readme__"}
        try:
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
        except Exception as error:  # name the block, keep the traceback
            raise AssertionError(f"the ```python block at {page.name}:{line} failed") from error


def test_first_block_of_a_page_does_not_continue() -> None:
    for page in PAGES:
        blocks = python_blocks(page)
        if blocks:
            assert not blocks[0][1].startswith(CONTINUES), f"{page.name}: nothing above it"
