"""Instruction tokenizer that ships with the package: UTF-8 bytes plus specials.

A byte-level vocabulary needs no vocabulary file and nothing downloaded, covers
every language and never meets an unknown token. Instructions are short
("put the red cube in the bin"), so byte sequences stay small.
"""

from __future__ import annotations

import numpy as np

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
BYTE_OFFSET = 3
VOCAB_SIZE = BYTE_OFFSET + 256


def encode(text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Text -> (tokens (max_len,) int64, mask (max_len,) bool).

    BOS, the lower-cased UTF-8 bytes, EOS; truncated (EOS kept) or padded with PAD_ID.
    """
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    body = [b + BYTE_OFFSET for b in text.strip().lower().encode("utf-8")][: max_len - 2]
    ids = [BOS_ID, *body, EOS_ID]
    tokens = np.full(max_len, PAD_ID, dtype=np.int64)
    tokens[: len(ids)] = ids
    return tokens, tokens != PAD_ID


def decode(tokens: np.ndarray) -> str:
    """Tokens -> text (specials dropped)."""
    data = bytes(int(t) - BYTE_OFFSET for t in np.asarray(tokens).ravel() if int(t) >= BYTE_OFFSET)
    return data.decode("utf-8", errors="replace")
