"""Captions from a model that answers task tokens instead of questions (Florence-2: `<CAPTION>`,
`<DETAILED_CAPTION>`, `<MORE_DETAILED_CAPTION>`).

Such a model has no chat template: its processor turns the task token into the prompt the model was
trained on and parses the generated text back (`post_process_generation`). What a processor offers
decides which path a model takes, never its model type or name.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from vitkit.errors import UsageError
from vitkit.inputs.data import Sample
from vitkit.models.loading import LoadedModel
from vitkit.tasks.ask import LeftPadCollate, PromptPreprocess, answers_task_tokens, pad_token_id
from vitkit.tasks.caption import CAPTION_LAYOUT
from vitkit.tasks.processor_options import check_processor_options, check_with_model, run_draft_size

# `caption --detail` -> the model's own captioning task.
CAPTION_TASKS = {"brief": "<CAPTION>", "detailed": "<DETAILED_CAPTION>", "paragraph": "<MORE_DETAILED_CAPTION>"}
# Florence-2's checkpoints ship `num_beams: 3` in their generation_config, and transformers' and
# Microsoft's examples generate with `num_beams=3, do_sample=False`.
DEFAULT_TASK_BEAMS = 3
# The examples' max_new_tokens, cut to what the checkpoint's decoder can hold. Beam search stops at the
# end token, so this only bounds a caption that never ends.
DEFAULT_TASK_MAX_NEW_TOKENS = 1024


class TaskTokenCaptionTask:
    """`vitkit caption --model <Florence-2>`: the detail level's task token for every image, beam search
    with the checkpoint's own generation settings, and the processor's parse of the answer as the caption."""

    layout = CAPTION_LAYOUT

    def __init__(self, model: LoadedModel, detail: str, max_new_tokens: int | None = None,
                 num_beams: int = DEFAULT_TASK_BEAMS, prefix: str | None = None,
                 processor_options: Mapping[str, Any] | None = None) -> None:
        if detail not in CAPTION_TASKS:
            raise UsageError(f"--detail must be one of {', '.join(CAPTION_TASKS)}, not {detail!r}")
        if " ".join((prefix or "").split()):
            raise UsageError(f"model {model.spec.id!r} answers a fixed captioning task and cannot continue a --prefix",
                             hint="drop --prefix, or caption with a CoCa or chat vision-language model")
        self.model = model
        self.processor = model.assets.processor
        self.task_token = CAPTION_TASKS[detail]
        if self.task_token not in self.processor.task_prompts_without_inputs:
            raise UsageError(f"model {model.spec.id!r} has no {self.task_token} task for --detail {detail}",
                             hint=f"its tasks: {', '.join(self.processor.task_prompts_without_inputs)}")
        self.max_new_tokens = self._check_max_new_tokens(max_new_tokens)
        self.num_beams = num_beams
        self.pad_token_id = pad_token_id(self.processor.tokenizer)
        # Every image's prompt has the same length (a fixed number of image tokens, then the task's prompt),
        # so the collate never pads; ask's preprocess and collate run the processor in the workers.
        check_processor_options(self.processor, processor_options or {}, self.task_token)
        self.preprocess = PromptPreprocess(self.processor, (self.task_token,), dict(processor_options or {}))
        self.end_ids = end_token_ids(model, self.processor.tokenizer)
        self.collate_inputs = LeftPadCollate(self.pad_token_id)
        self.draft_size = run_draft_size(model, processor_options or {})
        check_with_model(self, processor_options or {})

    def _check_max_new_tokens(self, max_new_tokens: int | None) -> int:
        """None: the examples' 1024, or as many as the decoder's positions hold after its start token."""
        text_config = getattr(self.model.module.config, "text_config", None)
        positions = getattr(text_config, "max_position_embeddings", None)
        limit = int(positions) - 1 if positions else DEFAULT_TASK_MAX_NEW_TOKENS
        if max_new_tokens is None:
            return min(DEFAULT_TASK_MAX_NEW_TOKENS, limit)
        if not 1 <= max_new_tokens <= limit:
            raise UsageError(f"for this model --max-length (new tokens) must be between 1 and {limit}, "
                             f"not {max_new_tokens}")
        return max_new_tokens

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """-> (B, T) generated ids, the decoder's start token first (an encoder-decoder echoes no prompt)."""
        inputs = {key.removesuffix(".0"): value for key, value in batch.items()}
        # do_sample=False as the examples say; everything else (no_repeat_ngram_size, early stopping,
        # forced start and end tokens) comes from the checkpoint's generation_config.
        return self.model.module.generate(**inputs, num_beams=self.num_beams, do_sample=False,
                                          max_new_tokens=self.max_new_tokens)

    def postprocess(self, outputs: torch.Tensor, samples: Sequence[Sample]) -> list[dict[str, Any]]:
        # Decoded with special tokens, as post_process_generation expects; rows that ended early are cut at
        # their end token first, or the batch's padding would be read as part of their caption.
        rows = [until_end(row, self.end_ids) for row in outputs.tolist()]
        texts = self.processor.batch_decode(rows, skip_special_tokens=False)
        return [{"caption": self.caption_text(text, (sample.width, sample.height))}
                for text, sample in zip(texts, samples)]

    def caption_text(self, text: str, image_size: tuple[int | None, int | None]) -> str:
        parsed = self.processor.post_process_generation(text, task=self.task_token, image_size=image_size)
        return " ".join(str(parsed[self.task_token]).split())


def until_end(row: list[int], ends: set[int]) -> list[int]:
    """A generated row up to its first end token; the first id is the decoder's start token (often an end id)."""
    at = next((i for i, token in enumerate(row[1:], 1) if token in ends), None)
    return row if at is None else row[: at + 1]


def end_token_ids(model: LoadedModel, tokenizer: Any) -> set[int]:
    """Every id generation stops at: the checkpoint's generation_config may list several."""
    configured = getattr(model.module.generation_config, "eos_token_id", None)
    listed = configured if isinstance(configured, (list, tuple)) else [configured]
    return {int(i) for i in (*listed, tokenizer.eos_token_id) if i is not None}
