"""Instruction tokenizers: the UTF-8 byte tokenizer that ships with the package, or a backbone's own.

A byte-level vocabulary needs no vocabulary file and nothing downloaded, covers
every language and never meets an unknown token. Instructions are short
("put the red cube in the bin"), so byte sequences stay small. A policy with a
pretrained text tower (``PolicyConfig.text_backbone``) reads the tokens of that
tower's tokenizer instead; ``encode`` is the one function the dataset loader and the
policy server call, so both tokenise the same way.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
BYTE_OFFSET = 3
VOCAB_SIZE = BYTE_OFFSET + 256


def encode(text: str, max_len: int, tokenizer: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Text -> (tokens (max_len,) int64, mask (max_len,) bool).

    ``tokenizer`` empty: BOS, the lower-cased UTF-8 bytes, EOS; truncated (EOS kept) or
    padded with PAD_ID. Otherwise the tokenizer of that backbone (Hub id or directory),
    truncated or right-padded to ``max_len``.
    """
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    if tokenizer:
        return _encode_pretrained(text, max_len, load_tokenizer(tokenizer))
    body = [b + BYTE_OFFSET for b in text.strip().lower().encode("utf-8")][: max_len - 2]
    ids = [BOS_ID, *body, EOS_ID]
    tokens = np.full(max_len, PAD_ID, dtype=np.int64)
    tokens[: len(ids)] = ids
    return tokens, tokens != PAD_ID


def decode(tokens: np.ndarray) -> str:
    """Byte tokens -> text (specials dropped)."""
    data = bytes(int(t) - BYTE_OFFSET for t in np.asarray(tokens).ravel() if int(t) >= BYTE_OFFSET)
    return data.decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=8)
def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """Load the ``transformers`` tokenizer of backbone ``name`` (cached per process: the loader calls per sample).

    Decoder language models (SmolVLM's) have no pad token: their end-of-sequence token pads.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name)
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": tok.eos_token})
    return tok


def _encode_pretrained(text: str, max_len: int, tok: PreTrainedTokenizerBase) -> tuple[np.ndarray, np.ndarray]:
    enc = tok(text.strip(), max_length=max_len, truncation=True, padding="max_length", padding_side="right",
              return_tensors="np")
    return enc["input_ids"][0].astype(np.int64), enc["attention_mask"][0].astype(bool)
