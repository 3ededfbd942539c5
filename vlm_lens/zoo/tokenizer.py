"""A word-level tokenizer for the model organisms: one token per world word.

The world's text is a closed vocabulary (`vlm_lens.world.vocabulary`), so the organisms use
one token per word or punctuation mark: answers are one or two tokens and prompts stay short.

Example:
    >>> tok = word_tokenizer(["what", "colour", "?"], ["<s>", "</s>", "<pad>", "<unk>"],
    ...                      add_bos="<s>", bos_token="<s>", eos_token="</s>",
    ...                      pad_token="<pad>", unk_token="<unk>")
    >>> tok("what colour?").input_ids
    [0, 4, 5, 6]
    >>> tok.decode([4, 5, 6])
    'what colour ?'
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast


def word_tokenizer(
    words: Sequence[str],
    specials: Sequence[str],
    extra_specials: Sequence[str] = (),
    *,
    add_bos: str | None = None,
    **named_tokens: str,
) -> PreTrainedTokenizerFast:
    """A `PreTrainedTokenizerFast` with ids ``specials, words, extra_specials`` in that order.

    Text is split on whitespace and punctuation (as `vlm_lens.world.tokenize` does);
    special tokens (image placeholders, VQ code names) are never split.

    Args:
        words: the plain vocabulary.
        specials: special tokens first (``<s>``, ``</s>``, ``<pad>``, ``<unk>``, ``<image>``...);
            one of them must be named ``unk_token`` in `named_tokens`.
        extra_specials: further special tokens after the words (e.g. VQ code tokens).
        add_bos: a token prepended to every encoded text.
        **named_tokens: ``bos_token=``, ``image_token=``... passed to the HF tokenizer.

    Returns:
        The tokenizer (padding on the left, as generation wants).
    """
    unk = named_tokens.get("unk_token")
    if unk is None or unk not in specials:
        raise ValueError("name one of `specials` as unk_token=")
    vocab: dict[str, int] = {}
    for token in [*specials, *words, *extra_specials]:
        if token in vocab:
            raise ValueError(f"token {token!r} appears twice")
        vocab[token] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in [*specials, *extra_specials]]
    )
    if add_bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{add_bos} $A",
            pair=f"{add_bos} $A {add_bos} $B",
            special_tokens=[(add_bos, vocab[add_bos])],
        )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **named_tokens)
    tokenizer.padding_side = "left"
    return tokenizer
