"""Tokenize once per (split, tokenizer, max length), then batch with dynamic padding."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from benchmark.data.dataset import Split, TextClassificationData


@dataclass(frozen=True)
class TokenizedSplit:
    input_ids: tuple[np.ndarray, ...]  # unpadded, one array per example
    token_type_ids: tuple[np.ndarray, ...] | None  # only for models that take segment ids
    labels: np.ndarray
    pad_token_id: int

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self))

    def subset(self, indices: np.ndarray) -> TokenizedSplit:
        return TokenizedSplit(
            input_ids=tuple(self.input_ids[i] for i in indices),
            token_type_ids=None if self.token_type_ids is None else tuple(self.token_type_ids[i] for i in indices),
            labels=self.labels[indices],
            pad_token_id=self.pad_token_id,
        )


def tokenize_split(tokenizer, split: Split, max_length: int) -> TokenizedSplit:
    encoded = tokenizer(
        list(split.texts),
        list(split.text_pairs) if split.text_pairs is not None else None,
        truncation=True,
        max_length=max_length,
    )
    segments = encoded.get("token_type_ids")
    return TokenizedSplit(
        input_ids=tuple(np.asarray(ids, dtype=np.int64) for ids in encoded["input_ids"]),
        token_type_ids=None if segments is None else tuple(np.asarray(s, dtype=np.int64) for s in segments),
        labels=split.labels,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
    )


@dataclass(frozen=True)
class TokenizedData:
    """The splits a search trains and validates on; the test split is not touched."""

    train: TokenizedSplit
    validation: TokenizedSplit


def split_fingerprint(split: Split) -> str:
    """A digest of the split's texts and pairs: what, with the tokenizer and the length, fixes
    its tokens. A dataset's name does not: its seed and size limits change its examples."""
    digest = hashlib.blake2b(digest_size=16)
    for column in (split.texts, split.text_pairs or ()):
        digest.update(len(column).to_bytes(8, "little"))
        for text in column:
            encoded = text.encode("utf-8", "surrogatepass")
            digest.update(len(encoded).to_bytes(8, "little"))
            digest.update(encoded)
    return digest.hexdigest()


class TokenizationCache:
    """Keeps a dataset's splits tokenized per tokenizer and length, so that trials share the work.

    Keyed by what determines the tokens (the splits' texts, the tokenizer, the length), so one
    cache serves every study and final evaluation of a process (`SHARED`) whatever their data.
    The least recently used entries beyond `max_entries` are dropped.
    """

    def __init__(self, max_entries: int = 32) -> None:
        self._entries: OrderedDict[tuple, TokenizedData] = OrderedDict()
        self._max_entries = max_entries

    def get(self, data: TextClassificationData, tokenizer_key: Hashable, max_length: int,
            load_tokenizer: Callable[[], object]) -> TokenizedData:
        key = (split_fingerprint(data.train), split_fingerprint(data.validation), tokenizer_key, max_length)
        if key not in self._entries:
            tokenizer = load_tokenizer()
            self._entries[key] = TokenizedData(
                *(tokenize_split(tokenizer, getattr(data, split), max_length) for split in ("train", "validation")))
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return self._entries[key]


# The process's cache: a study, the next study and a final evaluation in the same process
# tokenize each split once.
SHARED = TokenizationCache()


def length_grouped(order: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                   batches_per_group: int = 50) -> np.ndarray:
    """`order` rearranged so that each run of `batch_size` holds examples of similar length.

    The shuffled order is cut into groups of `batches_per_group` batches; each group is
    sorted by length and cut into batches, and the batches are shuffled. A batch is padded
    to its longest example, so similar lengths waste less compute on padding, while the
    groups keep the batches as random as the shuffle made them, apart from length.
    """
    group_size = batch_size * batches_per_group
    grouped = [group[np.argsort(-lengths[group], kind="stable")]
               for group in (order[start:start + group_size] for start in range(0, len(order), group_size))]
    flat = np.concatenate(grouped) if grouped else order
    chunks = [flat[start:start + batch_size] for start in range(0, len(flat), batch_size)]
    return np.concatenate([chunks[i] for i in rng.permutation(len(chunks))]) if chunks else flat


def batch_bounds(widths: np.ndarray, batch_size: int, max_tokens: int | None = None) -> list[tuple[int, int]]:
    """(start, end) of each batch of consecutive examples with these padded `widths`: at most
    `batch_size` of them, and where `max_tokens` is set, at most that many padded tokens
    (examples x the batch's widest), but never fewer than one example. Given widths sorted
    ascending, short examples share larger batches than long ones."""
    bounds, start, widest = [], 0, 0
    for end, width in enumerate(widths.tolist()):
        widest = max(widest, width)
        count = end - start + 1
        if count > batch_size or (max_tokens is not None and count > 1 and count * widest > max_tokens):
            bounds.append((start, end))
            start, widest = end, width
    return bounds + [(start, len(widths))] if len(widths) else bounds


def batches(split: TokenizedSplit, order: np.ndarray, batch_size: int, device: torch.device,
            pad_to_multiple_of: int = 1, max_tokens: int | None = None
            ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor, int]]:
    """(model inputs, labels, real token count) per batch of `order`, padded to the longest in
    the batch, rounded up to a multiple of `pad_to_multiple_of`; see batch_bounds for the sizes."""
    ordered_lengths = split.lengths[order]
    widths = -(-ordered_lengths // pad_to_multiple_of) * pad_to_multiple_of
    for start, end in batch_bounds(widths, batch_size, max_tokens):
        indices = order[start:end]
        lengths = ordered_lengths[start:end].tolist()
        width = int(widths[start:end].max())
        input_ids = np.full((len(indices), width), split.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(indices), width), dtype=np.int64)
        for row, (i, length) in enumerate(zip(indices, lengths)):
            input_ids[row, :length] = split.input_ids[i]
            attention_mask[row, :length] = 1
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if split.token_type_ids is not None:
            segments = np.zeros((len(indices), width), dtype=np.int64)
            for row, (i, length) in enumerate(zip(indices, lengths)):
                segments[row, :length] = split.token_type_ids[i]
            inputs["token_type_ids"] = segments
        tensors = {name: to_device(array, device) for name, array in inputs.items()}
        yield tensors, to_device(split.labels[indices], device), int(sum(lengths))


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """The array as a tensor on `device`. To a GPU through page-locked memory, without waiting:
    a copy from pageable memory blocks the host until the GPU has drained its queue, so it
    could not build the next batch while the GPU computes this one."""
    tensor = torch.from_numpy(array)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
