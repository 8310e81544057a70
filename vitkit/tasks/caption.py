"""Image captioning with an open_clip CoCa model, and caption files written beside the images."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import default_collate

from vitkit.models.backends.open_clip_ import OpenClipAssets
from vitkit.inputs.data import ImagePreprocess, Sample
from vitkit.models.backends.coca_decoding import beam_search_decode, greedy_decode
from vitkit.inputs.discover import InputItem
from vitkit.errors import OutputError, UsageError
from vitkit.models.loading import LoadedModel
from vitkit.outputs.files import atomic_write_path
from vitkit.outputs.records import RecordLayout
from vitkit.runtime.report import Reporter

# open_clip's CoCa.generate defaults to beam search with 6 beams (in 3 diverse groups). Beam search
# gives better captions than greedy decoding; 3 beams keep most of that at about half the CPU cost
# of 6. `--greedy` (one beam) is the fastest.
DEFAULT_BEAMS = 3
DEFAULT_MAX_LENGTH = 30  # tokens, start token included: open_clip's `generate(seq_len=30)`
MIN_NEW_TOKENS = 1  # a caption never comes back empty
SIDECAR_SUFFIX = ".txt"

_SPACE_BEFORE_PUNCTUATION = re.compile(r" ([,.!?;:]|'(?:s|t|re|ve|m|ll|d)\b)")


def _csv_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [{key: record.get(key) for key in ("path", "width", "height", "caption", "error")}]


CAPTION_LAYOUT = RecordLayout(
    csv_columns=("path", "width", "height", "caption", "error"),
    csv_rows=_csv_rows,
    describe=lambda record: record.get("caption", ""),
)


def resolve_beams(beams: int | None, greedy: bool) -> int:
    if greedy and beams not in (None, 1):
        raise UsageError("--greedy and --beams cannot be combined", hint="--greedy is the same as --beams 1")
    if beams is not None and beams < 1:
        raise UsageError(f"--beams must be at least 1, not {beams}")
    return 1 if greedy else beams or DEFAULT_BEAMS


def clean_caption(text: str) -> str:
    """Tokenizer output -> a caption: special tokens and BPE spacing removed, no final ' .'."""
    text = text.split("<end_of_text>")[0].replace("<start_of_text>", "")
    text = " ".join(text.split())
    text = text.removesuffix(" .").strip()
    return _SPACE_BEFORE_PUNCTUATION.sub(r"\1", text)


class CaptionTask:
    layout = CAPTION_LAYOUT

    def __init__(self, model: LoadedModel, max_length: int | None = None, num_beams: int = DEFAULT_BEAMS,
                 prefix: str | None = None, length_penalty: float = 1.0) -> None:
        if not isinstance(model.assets, OpenClipAssets) or not hasattr(model.module, "text_decoder"):
            raise UsageError(f"model {model.spec.id!r} is not a CoCa captioning model", hint="try --model coca-b32")
        tokenizer = model.assets.tokenizer
        if not all(hasattr(tokenizer, name) for name in ("sot_token_id", "eot_token_id", "decode")):
            raise UsageError(f"model {model.spec.id!r} has a tokenizer vitkit cannot decode captions with")
        self.model = model
        self.tokenizer = tokenizer
        self.sot, self.eot = int(tokenizer.sot_token_id), int(tokenizer.eot_token_id)
        self.prefix = " ".join((prefix or "").split())
        self.prefix_ids = self._encode_prefix(self.prefix)
        self.max_length = self._check_max_length(max_length)
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.preprocess = ImagePreprocess(model.assets.transform)
        self.collate_inputs = default_collate
        self.draft_size = model.draft_size

    def _encode_prefix(self, prefix: str) -> list[int]:
        if not prefix:
            return []
        ids = self.tokenizer([prefix])[0].tolist()  # [sot, ...prefix..., eot, 0, 0, ...]
        return ids[1: ids.index(self.eot)] if self.eot in ids else ids[1:]

    def _check_max_length(self, max_length: int | None) -> int:
        """None: open_clip's default, or the model's context length if shorter."""
        module = self.model.module
        limit = min(module.context_length, module.text.context_length)
        max_length = min(DEFAULT_MAX_LENGTH, limit) if max_length is None else max_length
        shortest = len(self.prefix_ids) + 2  # start token, prefix, and room for one more
        if not shortest <= max_length <= limit:
            reason = f"with this --prefix, --max-length must be between {shortest} and {limit}" if self.prefix_ids \
                else f"--max-length must be between {shortest} and {limit} (the model's context length)"
            raise UsageError(f"{reason}, not {max_length}", hint="a token is about 3/4 of a word")
        return max_length

    def forward(self, images: torch.Tensor) -> list[list[int]]:
        """(B, 3, H, W) -> B lists of generated token ids (after the prefix, eot included if reached)."""
        arguments = dict(prefix=self.prefix_ids, min_new_tokens=MIN_NEW_TOKENS)
        if self.num_beams == 1:
            return greedy_decode(self.model.module, images, self.sot, self.eot, self.max_length, **arguments)
        return beam_search_decode(self.model.module, images, self.sot, self.eot, self.max_length, self.num_beams,
                                  self.length_penalty, **arguments)

    def postprocess(self, sequences: list[list[int]], samples: Sequence[Sample]) -> list[dict[str, Any]]:
        return [{"caption": self.caption_text(ids)} for ids in sequences]

    def caption_text(self, ids: Sequence[int]) -> str:
        continuation = self.tokenizer.decode([i for i in ids if i != self.eot])
        return clean_caption(f"{self.prefix} {continuation}")


def sidecar_path(image_path: str) -> Path:
    """photos/cat.jpg -> photos/cat.txt"""
    return Path(image_path).with_suffix(SIDECAR_SUFFIX)


@dataclass(frozen=True)
class SidecarPlan:
    items: list[InputItem]  # to caption, in input order; a colliding input carries its problem
    skipped: int  # inputs left out because their caption file exists

    def skipped_message(self) -> str | None:
        if not self.skipped:
            return None
        return f"{self.skipped} skipped: caption file exists; use --on-exists overwrite to caption them again"


def plan_sidecars(items: Sequence[InputItem], overwrite: bool) -> SidecarPlan:
    """Decide, before any model runs, which inputs to caption when captions go to `<stem>.txt` files.

    Two inputs that share a caption file (cat.jpg and cat.png) never overwrite each other: the later
    one in input order fails with a message naming both. A caption file may not be an input itself.
    """
    inputs = {os.path.realpath(item.path) for item in items if not item.problem}
    owners: dict[str, str] = {}
    planned: list[InputItem] = []
    skipped = 0
    for item in items:
        if item.problem:
            planned.append(item)
            continue
        target = sidecar_path(item.path)
        key = os.path.realpath(target)
        if key in owners or key in inputs:
            clash = f"already belongs to {owners[key]}" if key in owners else "would replace an input"
            planned.append(InputItem(item.path, f"caption file {target} {clash}; rename one of them",
                                     problem_kind="sidecar clash"))
        else:
            owners[key] = item.path
            if not overwrite and target.exists():
                skipped += 1
            else:
                planned.append(item)
    return SidecarPlan(planned, skipped)


class SidecarWriter:
    """A record sink: writes each caption, plus a newline, to the image's caption file, atomically, in UTF-8."""

    per_input = True  # under torchrun, written by the rank that captioned the image

    def __init__(self, reporter: Reporter | None = None) -> None:
        self.reporter = reporter or Reporter(quiet=True)
        self.failed: list[str] = []

    def add(self, record: dict[str, Any]) -> None:
        if "caption" not in record:
            return
        target = sidecar_path(record["path"])
        try:
            with atomic_write_path(target) as temp:
                temp.write_bytes((record["caption"] + "\n").encode("utf-8"))
        except (OutputError, OSError) as exc:
            reason = exc.message if isinstance(exc, OutputError) else f"cannot write {target}: {exc.strerror or exc}"
            self.failed.append(reason)
            self.reporter.message(f"error: {reason}")

    def close(self) -> None:
        if self.failed:
            raise OutputError(f"{len(self.failed)} caption files could not be written (first: {self.failed[0]})",
                              hint="check that the image folders are writable")
