"""What hooks are active on a model, fingerprinted by content, for a dataset run's identity.

A run collected while hooks are active (``with model.hooks(...)``, an intervention from
`vlm_lens.interventions`, TransformerLens' ``add_hook``, a raw ``register_forward_hook`` on any
submodule, or a global ``register_module_forward_hook``) holds other numbers than a clean run.
`active_hooks` lists every such hook with a digest of *what it does*:

* a function: its module, name, bytecode and constants, default arguments, attributes, the
  values its closure captures, and the module-level values its code reads (numbers, strings,
  tensors and containers of them by content; helper functions of the same module recursively;
  anything else at module level by its type only);
* captured values by content: tensors and arrays by their bytes (`vlm_lens.data.digest`),
  numbers and strings by value, containers, ``functools.partial`` objects, bound methods,
  dataclasses and plain objects attribute by attribute (a `torch.nn.Module`, such as a sparse
  autoencoder, so by its settings and weights; its own hooks are left out); the model being
  run (the `HookedVLM`, its bridge, or any of its modules) by name only, since its weights are
  fingerprinted on their own.

Hooks that TransformerLens, transformers and accelerate install for their own bookkeeping
(`MACHINERY`: TransformerLens wiring its hook points into a block, transformers' output
capture) are left out: they read activations, they do not change them.

So the same intervention built again in a new process (same vectors, masks, layers) has the
same digest, and a different scale, vector or layer a different one. A hook that captures
something vlm_lens cannot read by content (a file handle, a lock, a C object) is refused with
`HookFingerprintError`, naming the hook and the value; a hook can declare its own identity by
carrying a ``vlm_lens_fingerprint`` string attribute (a version string that the user changes
whenever what the hook does changes), which is then used instead of its content.

Example:
    >>> import torch
    >>> def steer(scale):
    ...     vector = torch.ones(4)
    ...     return lambda tensor, hook: tensor + scale * vector
    >>> callable_digest(steer(2.0)) == callable_digest(steer(2.0))
    True
    >>> callable_digest(steer(2.0)) == callable_digest(steer(3.0))
    False
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from vlm_lens.data.digest import new_hasher, update_with_tensor
from vlm_lens.engine.compat import global_module_hooks, module_hooks
from vlm_lens.errors import HookFingerprintError

DECLARED = "vlm_lens_fingerprint"
"""Attribute by which a hook function (or a captured object) declares its own identity."""

MACHINERY = ("transformer_lens", "transformers", "accelerate")
"""Packages whose own hooks (not added through TransformerLens' ``add_hook``/``hooks()``) are
library bookkeeping and left out of `active_hooks`."""

_MAX_DEPTH = 40
_SIMPLE = (type(None), type(Ellipsis), type(NotImplemented), bool, int, float, complex, str, bytes)


def active_hooks(model: Any) -> list[dict[str, str]]:
    """Every hook registered on `model` (and every global module hook), in order.

    Args:
        model: a `vlm_lens.HookedVLM` (or any object with a ``bridge`` module).

    Returns:
        One ``{"module", "kind", "function", "digest"}`` per hook: the module's name in the
        bridge (``"<global>"`` for a global hook), ``"forward"``/``"forward_pre"``/
        ``"backward"``/``"backward_pre"``, the function's qualified name and its digest.
        Empty for a model without hooks.

    Raises:
        HookFingerprintError: for a hook whose state cannot be fingerprinted (see above).

    Example:
        >>> from vlm_lens import HookedVLM, hooks
        >>> from vlm_lens.testing import build_tiny
        >>> tiny = build_tiny("llava")
        >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
        >>> active_hooks(model)
        []
        >>> with model.hooks(fwd_hooks=[(hooks.resid_post(0), lambda t, hook: t * 2)]):
        ...     [(h["module"], h["kind"]) for h in active_hooks(model)]
        [('blocks.0.hook_out', 'forward')]
    """
    root: nn.Module = model.bridge
    owned = _ModelRefs(model, root)
    found = [("<global>", *hook) for hook in global_module_hooks()]
    for name, module in root.named_modules():
        found.extend((name, *hook) for hook in module_hooks(module))
    out = []
    for name, kind, fn, through_lens in found:
        if not through_lens and _is_machinery(fn):
            continue
        fn = inspect.unwrap(fn)  # vlm_lens' shape check (engine.hook_checks) wraps user hooks
        where = f"the {kind} hook {_qualname(fn)} on {name}"
        out.append(
            {
                "module": name,
                "kind": kind,
                "function": _qualname(fn),
                "digest": _digest(fn, where, owned),
            }
        )
    return out


def _is_machinery(fn: Any) -> bool:
    """A hook the libraries install for their own bookkeeping (TransformerLens wiring its hook
    points, transformers capturing outputs, accelerate moving tensors): it reads, it does not
    change the numbers."""
    module = getattr(inspect.unwrap(fn), "__module__", None) or ""
    return module.split(".")[0] in MACHINERY


def callable_digest(fn: Callable[..., Any], model: Any = None) -> str:
    """Digest of a function and everything it captures (see the module docstring).

    Args:
        fn: a function, lambda, ``functools.partial``, bound method or callable object.
        model: the model being run, referred to by name if `fn` captures it.

    Raises:
        HookFingerprintError: when `fn` captures a value that cannot be read by content.
    """
    owned = _ModelRefs(model, getattr(model, "bridge", None))
    return _digest(inspect.unwrap(fn), f"the callable {_qualname(fn)}", owned)


# ---------------------------------------------------------------------------- internals
class _ModelRefs:
    """Names of the objects that make up the model being run (referred to, not hashed)."""

    def __init__(self, model: Any, root: nn.Module | None):
        self.names: dict[int, str] = {}
        if model is not None:
            self.names[id(model)] = "model"
        if root is not None:
            for name, module in root.named_modules():
                self.names.setdefault(id(module), f"model.{name}" if name else "model.bridge")
            for name, tensor in [*root.named_parameters(), *root.named_buffers()]:
                self.names.setdefault(id(tensor), f"model.{name}")


def _digest(fn: Any, where: str, owned: _ModelRefs) -> str:
    hasher = new_hasher()
    _Feeder(hasher, where, owned).feed(fn, "", 0)
    return str(hasher.hexdigest())


class _Feeder:
    def __init__(self, hasher: Any, where: str, owned: _ModelRefs):
        self.hasher = hasher
        self.where = where
        self.owned = owned
        self.seen: dict[int, int] = {}
        self.keep: list[Any] = []  # keeps ids of temporaries unique while hashing

    def put(self, *parts: object) -> None:
        self.hasher.update(("\x1f".join(map(str, parts)) + "\x1e").encode())

    def fail(self, path: str, value: Any, why: str) -> None:
        shown = path.lstrip(".") or "itself"
        raise HookFingerprintError(
            f"{self.where}: {shown} is {why} ({type(value).__module__}."
            f"{type(value).__qualname__}), which vlm_lens cannot fingerprint by content, so a "
            "resumed run could not tell whether the hook changed. Remove the hook for the run, "
            f"capture plain values (numbers, strings, tensors, arrays), or give the hook a "
            f"{DECLARED!r} string attribute that you change whenever what it does changes"
        )

    def feed(self, value: Any, path: str, depth: int) -> None:
        if depth > _MAX_DEPTH:
            self.fail(path, value, f"nested more than {_MAX_DEPTH} levels deep")
        if isinstance(value, _SIMPLE):
            self.put("v", type(value).__name__, repr(value))
            return
        if callable(value) and hasattr(value, "__wrapped__") and not isinstance(value, type):
            value = inspect.unwrap(value)  # decorators (functools.wraps, jaxtyping) hide it
        if id(value) in self.owned.names:
            self.put("model", self.owned.names[id(value)])
            return
        if id(value) in self.seen:
            self.put("ref", self.seen[id(value)])
            return
        self.seen[id(value)] = len(self.seen)
        self.keep.append(value)
        declared = getattr(value, DECLARED, None) if not isinstance(value, type) else None
        if isinstance(declared, str):
            self.put("declared", declared)
            return
        if isinstance(value, enum.Enum):
            self.put("enum", _qualname(type(value)), value.name)
        elif isinstance(value, (torch.dtype, torch.device, torch.Size, slice, range)):
            self.put("torch", type(value).__name__, value)
        elif isinstance(value, Tensor):
            if value.device.type == "meta":
                self.put("meta", value.dtype, tuple(value.shape))
            else:
                self.put("tensor")
                update_with_tensor(self.hasher, value)
        elif isinstance(value, np.ndarray):
            if value.dtype == object:
                self.put("objects", value.shape)
                for i, item in enumerate(value.ravel().tolist()):
                    self.feed(item, f"{path}[{i}]", depth + 1)
            else:
                self.put("array", value.dtype.str, value.shape)
                self.hasher.update(np.ascontiguousarray(value).tobytes())
        elif isinstance(value, np.generic):
            self.put("np", value.dtype.str, repr(value.item()))
        elif isinstance(value, Image.Image):
            self.put("image", value.mode, value.size)
            self.hasher.update(value.tobytes())
        elif isinstance(value, (list, tuple)):
            self.put(type(value).__name__, len(value))
            for i, item in enumerate(value):
                self.feed(item, f"{path}[{i}]", depth + 1)
        elif isinstance(value, (dict, types.MappingProxyType)):
            self.put("dict", _qualname(type(value)), len(value))
            for key, item in value.items():
                self.feed(key, f"{path} key", depth + 1)
                self.feed(item, f"{path}[{key!r}]", depth + 1)
        elif isinstance(value, (set, frozenset)):
            parts = sorted(_digest_of(item, self, f"{path} item", depth) for item in value)
            self.put(type(value).__name__, *parts)
        elif isinstance(value, types.ModuleType):
            self.put("module", value.__name__)
        elif isinstance(value, type):
            self.put("class", _qualname(value))
        elif isinstance(value, functools.partial):
            self.put("partial")
            self.feed(value.func, f"{path}.func", depth + 1)
            self.feed(value.args, f"{path}.args", depth + 1)
            self.feed(value.keywords, f"{path}.keywords", depth + 1)
        elif isinstance(value, types.MethodType):
            self.put("method", value.__func__.__name__)
            self.feed(value.__func__, f"{path}.__func__", depth + 1)
            self.feed(value.__self__, f"{path}.__self__", depth + 1)
        elif isinstance(value, types.FunctionType):
            self.function(value, path, depth)
        elif isinstance(value, types.CodeType):
            self.code(value, path, depth)
        elif isinstance(value, (types.BuiltinFunctionType, types.BuiltinMethodType)):
            self.put("builtin", getattr(value, "__module__", None), _qualname(value))
            owner = getattr(value, "__self__", None)
            if owner is not None and not isinstance(owner, types.ModuleType):
                self.feed(owner, f"{path}.__self__", depth + 1)
        elif isinstance(value, (types.CellType, types.GeneratorType, types.FrameType)):
            self.fail(path, value, "a cell, generator or frame")
        elif dataclasses.is_dataclass(value) or hasattr(value, "__dict__"):
            self.instance(value, path, depth)
        elif hasattr(type(value), "__slots__"):
            self.put("slots", _qualname(type(value)))
            for slot in _slots(type(value)):
                if hasattr(value, slot):
                    self.feed(getattr(value, slot), f"{path}.{slot}", depth + 1)
        else:
            self.fail(path, value, "a value without readable state")

    def function(self, fn: types.FunctionType, path: str, depth: int) -> None:
        self.put("function", fn.__module__, fn.__qualname__)
        self.code(fn.__code__, path, depth)
        self.feed(fn.__defaults__, f"{path}.__defaults__", depth + 1)
        self.feed(fn.__kwdefaults__, f"{path}.__kwdefaults__", depth + 1)
        attributes = {k: v for k, v in vars(fn).items() if k != "__wrapped__"}
        self.feed(attributes, f"{path}.__dict__", depth + 1)
        cells = fn.__closure__ or ()
        for name, cell in zip(fn.__code__.co_freevars, cells, strict=True):
            try:
                content = cell.cell_contents
            except ValueError:  # an empty cell (a name assigned after the function was made)
                self.put("empty cell", name)
                continue
            self.feed(content, f"{path} closure variable {name!r}", depth + 1)
        for name in sorted(_global_names(fn.__code__)):
            if name not in fn.__globals__:
                continue  # a builtin or an attribute name
            self.global_value(name, fn.__globals__[name], fn, f"{path} global {name!r}", depth)

    def global_value(self, name: str, value: Any, fn: types.FunctionType, path: str, depth: int):
        """Module-level values: plain data by content, the module's own functions recursively,
        anything else (classes, modules, other libraries' objects) by type."""
        own = isinstance(value, types.FunctionType) and value.__module__ == fn.__module__
        if own or _is_plain_data(value):
            self.put("global", name)
            self.feed(value, path, depth + 1)
        else:
            shown = value.__name__ if isinstance(value, types.ModuleType) else _qualname(value)
            self.put("global", name, type(value).__qualname__, shown)

    def code(self, code: types.CodeType, path: str, depth: int) -> None:
        self.put("code", code.co_name, code.co_names, code.co_varnames, code.co_freevars)
        self.hasher.update(code.co_code)
        for const in code.co_consts:
            self.feed(const, f"{path} constant", depth + 1)

    def instance(self, value: Any, path: str, depth: int) -> None:
        self.put("object", _qualname(type(value)))
        state = dict(vars(value)) if hasattr(value, "__dict__") else {}
        for slot in _slots(type(value)):
            if hasattr(value, slot):
                state[slot] = getattr(value, slot)
        if isinstance(value, nn.Module):  # its weights (_parameters, _buffers) by content
            state = {k: v for k, v in state.items() if "hooks" not in k}
        for key in sorted(state):
            self.feed(key, f"{path} attribute name", depth + 1)
            self.feed(state[key], f"{path}.{key}", depth + 1)


def _digest_of(value: Any, parent: _Feeder, path: str, depth: int) -> str:
    hasher = new_hasher()
    child = _Feeder(hasher, parent.where, parent.owned)
    child.feed(value, path, depth + 1)
    return str(hasher.hexdigest())


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _is_plain_data(value: Any, depth: int = 0) -> bool:
    if depth > 8:
        return False
    if isinstance(value, (*_SIMPLE, Tensor, np.ndarray, np.generic, torch.dtype, enum.Enum)):
        return True
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(_is_plain_data(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(
            _is_plain_data(k, depth + 1) and _is_plain_data(v, depth + 1) for k, v in value.items()
        )
    return False


def _slots(cls: type) -> list[str]:
    out: list[str] = []
    for klass in cls.__mro__:
        slots = getattr(klass, "__slots__", ())
        out.extend([slots] if isinstance(slots, str) else list(slots))
    return [s for s in out if s not in ("__dict__", "__weakref__")]


def _qualname(value: Any) -> str:
    name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
    if name is None:
        name = type(value).__qualname__
    module = getattr(value, "__module__", None)
    return f"{module}.{name}" if module else str(name)
