"""Exceptions raised by vlm_lens, all in one place. Each message names the problem and the fix.

Every error derives from `VLMLensError`; those about bad input also derive from ``ValueError``.

Example:
    >>> from vlm_lens.errors import VLMInputError, VLMLensError
    >>> issubclass(VLMInputError, VLMLensError) and issubclass(VLMInputError, ValueError)
    True
"""

from __future__ import annotations


class VLMLensError(Exception):
    """Base class of every vlm_lens error."""


class VLMInputError(VLMLensError, ValueError):
    """Inputs that would make the model run on something other than what the user meant.

    Raised for a prompt without an image placeholder when images are given, an image count that
    does not match the placeholders, a batch whose layout does not match its ids, or inputs on
    another device than the model.
    """


class UnsupportedModelError(VLMLensError, ValueError):
    """A model whose architecture no registered family adapter handles."""


class ReportInputError(VLMLensError, ValueError):
    """Bad input to the report (a missing folder, an unreadable image); the message names the
    fix."""


class AnalysisSkipped(VLMLensError):
    """An analysis that does not apply to these inputs (no labels, no text after the gate...);
    the report leaves it out and says why. Any other error stops the report."""


class StoreConfigError(VLMLensError, ValueError):
    """A store folder that holds another run (a different config) or is not a store.

    Example:
        >>> from vlm_lens.data import ActivationStore
        >>> ActivationStore("no/such/folder")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        vlm_lens.errors.StoreConfigError: no/such/folder is not an activation store ...
    """


class UninformativeMetricWarning(UserWarning):
    """A metric computed on inputs too small for it to say much: χ with a class of at most k
    samples (its members cannot reach χ = 1), or clustering with too few points per modality
    for two clusters. The value is still returned; the message names the limit and the fix.

    Example:
        >>> import warnings
        >>> from vlm_lens.errors import UninformativeMetricWarning
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("error", UninformativeMetricWarning)
        ...     try:
        ...         warnings.warn("k too large", UninformativeMetricWarning, stacklevel=1)
        ...     except UninformativeMetricWarning as w:
        ...         print(w)
        k too large
    """


class StoreDamagedError(StoreConfigError):
    """A store file that fails its checks: a chunk that is truncated, has flipped bytes (its
    checksum differs), holds other examples than its name says, or was written by another run,
    or a manifest that is not valid. The message names the file and the fix (rerun
    `vlm_lens.data.run_dataset` with the same arguments: it recomputes damaged chunks).

    Example:
        >>> issubclass(StoreDamagedError, StoreConfigError)
        True
    """


class HookFingerprintError(VLMLensError, ValueError):
    """A hook active on the model whose state cannot be fingerprinted, so a dataset run could
    not tell a resumed run with another hook from the same run (see
    `vlm_lens.data.hook_state`)."""
