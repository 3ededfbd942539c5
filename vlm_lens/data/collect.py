"""`Probe` and `collect`: activations at chosen roles, reduced inside the hook.

A `Probe` names a hook site (``"resid_post"``...), the layers, the positions (any
`vlm_lens.positions.PositionSpec`: a role such as ``"gate"``, ``after("text", "image")``...) and
how the selected positions of each sequence become one vector:

* ``"each"``: exactly one position per sequence (the gate, the last token); anything else is an
  error naming the example.
* ``"mean"``: the mean over the selected positions (the paper's "mean over image tokens").
* ``"random"``: one selected position drawn at random. The draw depends only on the run seed,
  the example's index in the dataset, the probe's positions and its `Probe.draw` number, so it
  is the same whatever the batching and after a resume, and it is the same position at every
  layer and every site of probes that share those.

`collect` runs the model once with one hook per (probe, layer). Each hook reduces its
``[batch, pos, ...]`` activation to ``[batch, ...]`` on the spot and copies it to the CPU as
float32, so the full ``[batch, pos, d_model]`` tensors are never kept. When no logits are
requested the forward stops after the last block a probe needs (``stop_at_layer``).

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.positions import after
    >>> from vlm_lens.testing import build_tiny, sample_image
    >>> tiny = build_tiny("llava")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> img = sample_image(size=tiny.image_size)
    >>> batch = model.prepare(images=[img, img], text=[tiny.prompt, tiny.prompt + " Hm?"])
    >>> out = collect(model, batch, [
    ...     Probe("gate"),
    ...     Probe("image", positions="image", reduce="mean", layers=[-1]),
    ...     Probe("text", positions=after("text", "image"), reduce="random"),
    ... ])
    >>> out["gate"].shape, out["image"].shape, out["text.position"].shape
    (torch.Size([2, 2, 32]), torch.Size([2, 1, 32]), torch.Size([2]))
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from vlm_lens import hooks
from vlm_lens.batch import Batch
from vlm_lens.data.digest import tensor_digest
from vlm_lens.data.hook_state import callable_digest
from vlm_lens.errors import VLMInputError
from vlm_lens.layout import ROLES
from vlm_lens.positions import ALL, PositionSpec, describe, select

REDUCTIONS: tuple[str, ...] = ("each", "mean", "random")
"""Valid values of `Probe.reduce`."""

LOGITS = "logits"
"""Key of the final-position logits in `collect`'s output (when `logit_tokens` is given)."""

POSITION_SUFFIX = ".position"
"""``f"{probe.name}.position"``: the position taken by an ``"each"``/``"random"`` probe, counted
from the first real (non-padding) token of the sequence."""

_NOT_PER_POSITION = ("attn_scores", "pattern")  # [batch, head, q, k]: no position axis at dim 1
_NAME_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


@dataclass(frozen=True)
class Probe:
    """What to collect: a hook site at some layers, reduced over some positions.

    Attributes:
        name: key of the result (letters, digits, ``_`` and ``-``).
        site: a kind of `vlm_lens.hooks.LAYER_HOOKS` (``"resid_pre"``, ``"resid_post"``,
            ``"attn_out"``, ``"mlp_out"``, ``"z"``...; not the ``[batch, head, q, k]`` patterns)
            or a callable ``layer -> hook name`` whose tensor is ``[batch, pos, ...]``.
        positions: a `vlm_lens.positions.PositionSpec` (default the gate).
        reduce: ``"each"``, ``"mean"`` or ``"random"`` (see the module docstring).
        layers: layers to collect (negative counts from the end); ``None`` for all.
        draw: for ``"random"``: probes with the same positions, seed and draw pick the same
            position; give different draws for independent picks.

    Example:
        >>> Probe("img", site="mlp_out", positions="image", reduce="mean", layers=[0, -1]).layers
        (0, -1)
    """

    name: str
    site: str | Callable[[int], str] = "resid_post"
    positions: PositionSpec = "gate"
    reduce: str = "each"
    layers: Sequence[int] | None = None
    draw: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name) or self.name == LOGITS:
            raise ValueError(
                f"probe name {self.name!r} must be letters, digits, '_' or '-' and not {LOGITS!r}"
            )
        if isinstance(self.site, str):
            if self.site in _NOT_PER_POSITION:
                raise ValueError(
                    f"site {self.site!r} is [batch, head, q, k], not per position; use "
                    "vlm_lens.analysis for attention, or a site with a position axis"
                )
            if self.site not in hooks.LAYER_HOOKS:
                known = [k for k in hooks.LAYER_HOOKS if k not in _NOT_PER_POSITION]
                raise ValueError(
                    f"unknown site {self.site!r} for probe {self.name!r}; known: "
                    f"{', '.join(known)}, or a callable layer -> hook name"
                )
        elif not callable(self.site):
            raise ValueError(f"site must be a hook kind or a callable, got {self.site!r}")
        if self.reduce not in REDUCTIONS:
            raise ValueError(
                f"unknown reduce {self.reduce!r} for probe {self.name!r}; use one of "
                f"{', '.join(REDUCTIONS)}"
            )
        roles = [self.positions] if isinstance(self.positions, str) else None
        if isinstance(self.positions, (list, tuple)) and all(
            isinstance(r, str) for r in self.positions
        ):
            roles = list(self.positions)
        for role in roles or []:
            if role != ALL and role not in ROLES:
                raise ValueError(
                    f"unknown role {role!r} in probe {self.name!r}; roles are: "
                    f"{', '.join(ROLES)} (or {ALL!r})"
                )
        if self.layers is not None:
            layers = tuple(self.layers)
            if not layers or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in layers
            ):
                raise ValueError(f"layers must be a non-empty list of ints, got {self.layers!r}")
            object.__setattr__(self, "layers", layers)
        if isinstance(self.positions, list):
            object.__setattr__(self, "positions", tuple(self.positions))

    def resolve_layers(self, n_layers: int) -> list[int]:
        """The layer numbers (0..n_layers-1) this probe reads.

        Raises:
            ValueError: for a layer outside the model.
        """
        if self.layers is None:
            return list(range(n_layers))
        out = []
        for layer in self.layers:
            resolved = layer + n_layers if layer < 0 else layer
            if not 0 <= resolved < n_layers:
                raise ValueError(
                    f"probe {self.name!r} asks for layer {layer} but the model has {n_layers}"
                )
            out.append(resolved)
        return out

    def hook_names(self, n_layers: int) -> list[str]:
        """The hook name read at each of `resolve_layers`."""
        site = self.site
        make = (lambda layer: hooks.layer_hook(site, layer)) if isinstance(site, str) else site
        return [make(layer) for layer in self.resolve_layers(n_layers)]

    def describe(self, n_layers: int, model: Any = None) -> dict[str, Any]:
        """A JSON-able description (for a store's manifest and config fingerprint). A callable
        site is described by its hook names; a callable or tensor position spec by its
        ``__name__`` and a digest of its content (`vlm_lens.data.hook_state.callable_digest`:
        code and captured values; `model`, if it captures it, by name).

        Example:
            >>> from vlm_lens.positions import image_token
            >>> a, b = Probe("x", positions=image_token(0)), Probe("x", positions=image_token(1))
            >>> a.describe(2)["positions"], b.describe(2)["positions"]
            ('image_token_0', 'image_token_1')
            >>> a.describe(2)["positions_digest"] != b.describe(2)["positions_digest"]
            True
        """
        site = self.site if isinstance(self.site, str) else getattr(self.site, "__name__", "site")
        out = {
            "name": self.name,
            "site": site,
            "hooks": self.hook_names(n_layers),
            "layers": self.resolve_layers(n_layers),
            "positions": describe(self.positions),
            "reduce": self.reduce,
            "draw": self.draw,
        }
        if isinstance(self.positions, Tensor):
            out["positions_digest"] = tensor_digest(self.positions)
        elif callable(self.positions):
            out["positions_digest"] = callable_digest(self.positions, model)
        return out


def check_probes(model: Any, probes: Sequence[Probe]) -> None:
    """Check that probe names are unique and every hook exists in `model`.

    Raises:
        ValueError: naming the probe and the hook.

    Example:
        >>> check_probes(model, [Probe("gate"), Probe("gate")])  # doctest: +SKIP
        Traceback (most recent call last):
        ValueError: probe names must be unique, got ['gate', 'gate']
    """
    names = [p.name for p in probes]
    if not probes:
        raise ValueError("give at least one Probe")
    if len(set(names)) != len(names):
        raise ValueError(f"probe names must be unique, got {names}")
    known = model.hook_dict  # TransformerLens rebuilds it (and its aliases) on every access
    for probe in probes:
        if not isinstance(probe, Probe):
            raise ValueError(f"expected Probe objects, got {type(probe).__name__}")
        for name in probe.hook_names(model.cfg.n_layers):
            if name not in known:
                raise ValueError(
                    f"probe {probe.name!r}: {name!r} is not a hook point of this model; see "
                    "model.hook_names() or vlm_lens.hooks"
                )


def random_index(n: int, seed: int, example_index: int, positions: str, draw: int = 0) -> int:
    """The ``"random"`` choice among `n` selected positions of one example.

    Depends only on its arguments (NumPy's `SeedSequence` of ``(seed, example_index, a hash of
    positions, draw)``), never on batching.

    Example:
        >>> random_index(16, 0, 5, "image") == random_index(16, 0, 5, "image")
        True
    """
    if seed < 0 or example_index < 0:
        raise ValueError(f"seed and example index must be >= 0, got {seed}, {example_index}")
    salt = zlib.crc32(positions.encode())
    rng = np.random.default_rng([int(seed), int(example_index), salt, int(draw)])
    return int(rng.integers(n))


@torch.no_grad()
def collect(
    model: Any,
    batch: Batch,
    probes: Sequence[Probe],
    *,
    seed: int = 0,
    example_indices: Iterable[int] | None = None,
    logit_tokens: Sequence[int] | None = None,
) -> dict[str, Tensor]:
    """Run `model` once on `batch` and collect every probe, reduced inside its hook.

    Args:
        model: a `vlm_lens.HookedVLM`.
        batch: from ``model.prepare`` (any padding side).
        probes: what to collect.
        seed: run seed for ``"random"`` probes.
        example_indices: dataset index of each sequence (seeds the ``"random"`` draws);
            default ``0..batch-1``.
        logit_tokens: if given, also return the logits at each sequence's last real token
            restricted to these token ids, under ``"logits"`` (``[batch, len(logit_tokens)]``).

    Returns:
        ``{probe.name: [batch, n_layers, *rest]}`` float32 CPU tensors (``rest`` is
        ``(d_model,)`` for the residual sites, ``(head, d_head)`` for ``z``/``q``...; values
        are upcast to float32 before a mean), plus
        ``{probe.name + ".position": [batch]}`` int64 for ``"each"``/``"random"`` probes (the
        position taken, counted from the first real token) and ``"logits"`` if asked.

    Raises:
        VLMInputError: when a sequence has no selected position (or, for ``"each"``, more than
            one), naming the example.
        ValueError: for a hook the model lacks or a bad position spec.

    Example:
        >>> out = collect(model, batch, [Probe("gate", layers=[-1])])  # doctest: +SKIP
        >>> out["gate"].shape, out["gate.position"].shape  # doctest: +SKIP
        (torch.Size([1, 1, 32]), torch.Size([1]))
    """
    probes = list(probes)
    check_probes(model, probes)
    n_layers = model.cfg.n_layers
    size, length = batch.layout.shape
    indices = list(range(size)) if example_indices is None else [int(i) for i in example_indices]
    if len(indices) != size:
        raise ValueError(f"got {len(indices)} example indices for a batch of {size}")
    first_real = (~batch.layout.mask("pad")).to(torch.int64).argmax(dim=1)

    slots: dict[tuple[int, int], Tensor] = {}
    fwd_hooks = []
    out: dict[str, Tensor] = {}
    block_layers: list[int] = []
    all_blocks = True
    for p_i, probe in enumerate(probes):
        rows = _positions(probe, batch, seed, indices)
        if probe.reduce != "mean":
            out[probe.name + POSITION_SUFFIX] = torch.stack(rows).flatten() - first_real
        for l_i, name in enumerate(probe.hook_names(n_layers)):
            fwd_hooks.append((name, _reducer(slots, (p_i, l_i), rows, probe, (size, length))))
            match = re.match(r"blocks\.(\d+)\.", name)
            all_blocks = all_blocks and match is not None
            block_layers.append(int(match.group(1)) if match else n_layers)

    kwargs: dict[str, Any] = {"return_type": None if logit_tokens is None else "logits"}
    stop = max(block_layers) + 1
    if logit_tokens is None and all_blocks and stop < n_layers:
        kwargs["stop_at_layer"] = stop
    logits = model.run_with_hooks(batch, fwd_hooks=fwd_hooks, **kwargs)

    for p_i, probe in enumerate(probes):
        n = len(probe.resolve_layers(n_layers))
        missing = [l_i for l_i in range(n) if (p_i, l_i) not in slots]
        if missing:
            raise RuntimeError(f"probe {probe.name!r}: the hooks of layers {missing} never ran")
        out[probe.name] = torch.stack([slots[(p_i, l_i)] for l_i in range(n)], dim=1)
    if logit_tokens is not None:
        last = batch.layout.mask("last").to(torch.int64).argmax(dim=1).to(logits.device)
        tokens = torch.as_tensor(list(logit_tokens), dtype=torch.long, device=logits.device)
        final = logits[torch.arange(size, device=logits.device), last]
        out[LOGITS] = final[:, tokens].to("cpu", torch.float32)
    return out


def _positions(probe: Probe, batch: Batch, seed: int, indices: list[int]) -> list[Tensor]:
    """Per sequence: the index (``[1]``) or indices (``[n]``, for mean) of the positions."""
    mask = select(probe.positions, batch.layout)
    label = describe(probe.positions)
    rows = []
    for b, row in enumerate(mask):
        selected = row.nonzero().flatten()
        n = len(selected)
        if n == 0 or (probe.reduce == "each" and n != 1):
            hint = (
                "use reduce='mean' or 'random', or a spec with one position per sequence"
                if n
                else "check the prompt (model.prepare(...).layout.summary()) or the spec"
            )
            raise VLMInputError(
                f"probe {probe.name!r} (reduce={probe.reduce!r}) found {n} position(s) with "
                f"{label!r} in example {indices[b]}; {hint}"
            )
        if probe.reduce == "random":
            k = random_index(n, seed, indices[b], label, probe.draw)
            selected = selected[k : k + 1]
        rows.append(selected)
    return rows


def _reducer(
    slots: dict[tuple[int, int], Tensor],
    key: tuple[int, int],
    rows: list[Tensor],
    probe: Probe,
    shape: tuple[int, int],
) -> Callable[..., None]:
    # Means over runs of consecutive positions (an image span) read slice views instead of
    # gathered copies: the same values in the same summation order, without the copy.
    spans = _consecutive_runs(rows) if probe.reduce == "mean" else None
    same_span = spans[0][1] if spans and len({span for _, span in spans}) == 1 else None

    def hook(activation: Float[Tensor, "batch pos ..."], hook: Any) -> None:
        if tuple(activation.shape[:2]) != shape:
            raise ValueError(
                f"probe {probe.name!r}: hook {hook.name!r} gives shape "
                f"{tuple(activation.shape)}, not [batch, pos, ...] = {shape}"
            )
        device = activation.device
        if probe.reduce == "mean" and same_span is not None:  # one slice view, no gather
            value = activation[:, same_span[0] : same_span[1]].float().mean(dim=1)
        elif probe.reduce == "mean" and spans is not None:  # a slice view per sequence
            value = torch.stack([activation[b, s:e].float().mean(dim=0) for b, (s, e) in spans])
        elif probe.reduce == "mean":
            parts = [
                activation[b, idx.to(device)].float().mean(dim=0) for b, idx in enumerate(rows)
            ]
            value = torch.stack(parts)
        else:
            index = torch.cat(rows).to(device)
            value = activation[torch.arange(shape[0], device=device), index].float()
        slots[key] = value.to("cpu")

    return hook


def _consecutive_runs(rows: list[Tensor]) -> list[tuple[int, tuple[int, int]]] | None:
    """``[(b, (start, end))]`` when every row's positions are one run ``start..end-1``."""
    runs = []
    for b, idx in enumerate(rows):
        start, stop = int(idx[0]), int(idx[-1]) + 1
        if stop - start != len(idx) or not bool((idx.diff() == 1).all()):
            return None
        runs.append((b, (start, stop)))
    return runs
