"""Load a checkpoint's processor, or say exactly why not (`HookedVLM.from_pretrained` calls it).

A local folder's processor files (``tokenizer.json``, ``preprocessor_config.json``...) are read
as JSON first, so a broken one raises at load naming the file and the parse error (it used to be
swallowed and surface later as "this HookedVLM has no processor"). A local folder with processor
files that still fail to load raises with the loader's error; one without any loads no
processor, with a warning. A hub checkpoint whose processor fails to load warns with the error.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "tokenizer.json").write_text('{"model": ')
    >>> try:
    ...     check_processor_files(folder)
    ... except VLMInputError as error:
    ...     print("tokenizer.json is not valid JSON (Expecting value" in str(error))
    True
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from vlm_lens.errors import VLMInputError

PROCESSOR_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "chat_template.json",
)
"""The JSON files a processor may load from; each that a folder has must parse."""

_SENTENCEPIECE = ("tokenizer.model", "spiece.model")


def check_processor_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Parse every `PROCESSOR_FILES` file in `folder`; returns those present.

    Raises:
        VLMInputError: naming the first file that is not valid JSON and the parse error.
    """
    root = Path(folder)
    names = (*PROCESSOR_FILES, *_SENTENCEPIECE)
    present = [root / name for name in names if (root / name).is_file()]
    for path in present:
        if path.suffix != ".json":
            continue
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise VLMInputError(
                f"{path} is not valid JSON ({error}); the processor cannot load from it. Restore "
                "the file (save the processor again with processor.save_pretrained(folder), or "
                "copy it from the original checkpoint)"
            ) from None
    return present


def load_processor(adapter_cls: Any, name_or_path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """``adapter_cls.load_processor(name_or_path, **kwargs)``, checked as the module says.

    Returns:
        The processor, or ``None`` (with a warning) where the checkpoint has none.

    Raises:
        VLMInputError: for a local folder with a broken or unloadable processor file.
    """
    local = Path(name_or_path).is_dir()
    present = check_processor_files(name_or_path) if local else []
    try:
        return adapter_cls.load_processor(name_or_path, **kwargs)
    except Exception as error:
        if present:
            names = ", ".join(p.name for p in present)
            raise VLMInputError(
                f"the processor of {name_or_path} failed to load from {names}: "
                f"{type(error).__name__}: {error}. Fix or restore those files (save the processor "
                "again with processor.save_pretrained(folder))"
            ) from error
        if not isinstance(error, (OSError, ValueError, TypeError, KeyError)):
            raise
        warnings.warn(
            f"{name_or_path} loaded without a processor ({type(error).__name__}: {error}); "
            "model.prepare will refuse images and text. Pass one with "
            "HookedVLM.from_hf(model, processor), or build inputs with model.batch_from_inputs",
            stacklevel=3,
        )
        return None
