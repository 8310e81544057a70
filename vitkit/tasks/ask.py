"""Questions about images with a vision-language model: free-form answers, or choices scored by likelihood.

Any checkpoint transformers loads as AutoModelForImageTextToText with a processor and a chat template
(LLaVA, SmolVLM/Idefics3, Qwen2-VL, ...): the prompt is the checkpoint's own chat template around one
user turn holding the image and then the question, and nothing here depends on the model type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from vitkit.errors import UsageError
from vitkit.inputs.data import ImageMeta, Sample
from vitkit.models.backends.hf import HfAssets, processor_max_ratio
from vitkit.models.loading import LoadedModel
from vitkit.outputs.records import RecordLayout
from vitkit.tasks.processor_options import check_processor_options, check_with_model, run_draft_size, with_settings
from vitkit.tasks.vlm_batch import model_pixels, one_image_patches

DEFAULT_MAX_NEW_TOKENS = 64
_TEXT_KEY = "{name}.{question}"  # batch key of a per-question text tensor: input_ids.0, attention_mask.1, ...


def _csv_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    base = {key: record.get(key) for key in ("path", "width", "height", "error")}
    answers = record.get("answers") or []
    return [{**base, "question": a["question"], "answer": a["answer"], "match": record.get("match")}
            for a in answers] or [base]


ASK_LAYOUT = RecordLayout(
    csv_columns=("path", "width", "height", "question", "answer", "match", "error"),
    csv_rows=_csv_rows,
    describe=lambda record: " | ".join(a["answer"] for a in record.get("answers", [])),
)


@dataclass(frozen=True)
class AskOptions:
    questions: tuple[str, ...]
    system: str | None = None  # a system turn before the question; none by default
    choices: tuple[str, ...] = ()  # scored by likelihood instead of generating
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float | None = None  # None: greedy decoding
    seed: int = 0  # for sampling: every batch starts from this seed
    keep: str | None = None  # a choice: records get `match` = its probability >= threshold for every question
    threshold: float = 0.5
    answer_prefix: str = ""  # the reply's first words (caption --prefix): the model continues them
    processor_options: Mapping[str, Any] = field(default_factory=dict)  # --processor-option, for every processor call


def build_messages(question: str, system: str | None) -> list[dict[str, Any]]:
    turns = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    return [*turns, {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def render_prompts(processor: Any, options: AskOptions) -> list[str]:
    if not getattr(processor, "chat_template", None):
        raise UsageError("this model's processor has no chat template, so vitkit cannot phrase a question to it",
                         hint="use an instruction-tuned checkpoint (e.g. smolvlm-256m)")
    prompts = []
    for question in options.questions:
        messages = build_messages(question, options.system)
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        prompts.append(_continued(processor, messages, prompt, options.answer_prefix) if options.answer_prefix
                       else prompt)
    return prompts


def _continued(processor: Any, messages: list[dict[str, Any]], prompt: str, answer_prefix: str) -> str:
    """The prompt with the start of the model's reply already written, as the chat template writes a reply;
    a template that cannot continue a reply gets the text after a space."""
    lead = reply_lead(processor, messages, prompt, answer_prefix)
    return f"{prompt}{' ' if lead is None else lead}{answer_prefix}"


def reply_lead(processor: Any, messages: list[dict[str, Any]], prompt: str, reply_text: str) -> str | None:
    """What the chat template writes between the generation prompt (`prompt`, rendered from `messages`) and
    the text of the assistant's reply: a space after LLaVA's "ASSISTANT:" and SmolVLM's "Assistant:",
    nothing after Qwen's "assistant\n". None where the template cannot continue a reply (or puts anything
    but up to two blanks there)."""
    reply = {"role": "assistant", "content": [{"type": "text", "text": reply_text}]}
    try:
        rendered = processor.apply_chat_template([*messages, reply], continue_final_message=True)
    except Exception:  # templates vary; any that cannot render this gets the caller's fallback
        return None
    if not isinstance(rendered, str) or not rendered.startswith(prompt) or not rendered.endswith(reply_text):
        return None
    lead = rendered[len(prompt):len(rendered) - len(reply_text)]
    return lead if len(lead) <= 2 and not lead.strip() else None


def answers_task_tokens(processor: Any) -> bool:
    """A processor that turns captioning task tokens (Florence-2's <CAPTION>, ...) into the prompts its model
    was trained on and parses the model's answers: such a model answers its tasks, not free questions."""
    prompts = getattr(processor, "task_prompts_without_inputs", None)
    return isinstance(prompts, dict) and "<CAPTION>" in prompts and callable(
        getattr(processor, "post_process_generation", None))


def pad_token_id(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0)


@dataclass(frozen=True)
class PromptPreprocess:
    """Runs in dataloader workers: the checkpoint's processor turns the image and each question's prompt
    into model inputs (pixel tensors once, token ids per question; image tokens expanded as the model needs)."""

    processor: Any
    prompts: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)  # image-processor settings (--processor-option)

    def __call__(self, image: Any, meta: ImageMeta) -> dict[str, torch.Tensor]:
        image_processor = getattr(self.processor, "image_processor", self.processor)
        max_ratio = processor_max_ratio(with_settings(image_processor, self.options))
        if max_ratio is not None:
            from vitkit.models.backends.aspect import squash_long_side

            image = squash_long_side(image, max_ratio)
        inputs: dict[str, torch.Tensor] = {}
        for number, prompt in enumerate(self.prompts):
            encoded = one_image_patches(self.processor(images=[image], text=[prompt], return_tensors="pt",
                                                       **self.options))
            ids_shape = encoded["input_ids"].shape  # (1, L)
            for name, value in encoded.items():
                if not isinstance(value, torch.Tensor):
                    continue
                if value.shape == ids_shape:
                    inputs[_TEXT_KEY.format(name=name, question=number)] = value[0]
                elif number == 0:
                    inputs[name] = value  # (1, ...) pixel tensors, the same for every question
        return inputs


@dataclass(frozen=True)
class LeftPadCollate:
    """Token ids are padded on the left, as generation needs (every row's last token is its prompt's
    last); pixel tensors are concatenated, zero-padded to the batch's largest where their sizes differ
    (Idefics3's sub-image count), which those models ignore as padding."""

    pad_token_id: int

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch = {}
        for key in items[0]:
            values = [item[key] for item in items]
            if "." in key:
                pad = self.pad_token_id if key.startswith("input_ids.") else 0
                batch[key] = _left_pad(values, pad)
            else:
                batch[key] = _zero_pad_cat(values)
        return batch


def _left_pad(rows: list[torch.Tensor], pad: int) -> torch.Tensor:
    length = max(len(row) for row in rows)
    return torch.stack([torch.cat([row.new_full((length - len(row),), pad), row]) for row in rows])


def _zero_pad_cat(values: list[torch.Tensor]) -> torch.Tensor:
    shape = [max(v.shape[d] for v in values) for d in range(1, values[0].dim())]
    padded = []
    for value in values:
        widths = [w for d in reversed(range(1, value.dim())) for w in (0, shape[d - 1] - value.shape[d])]
        padded.append(torch.nn.functional.pad(value, widths) if any(widths) else value)
    return torch.cat(padded)


@dataclass
class AskTask:
    model: LoadedModel
    options: AskOptions
    layout: RecordLayout = field(default=ASK_LAYOUT)

    def __post_init__(self) -> None:
        if not isinstance(self.model.assets, HfAssets) or not hasattr(self.model.module, "generate"):
            raise UsageError(f"model {self.model.spec.id!r} is not a vision-language model",
                             hint="try --model smolvlm-256m (`vitkit models list --task ask`)")
        self.processor = self.model.assets.processor
        if answers_task_tokens(self.processor):
            raise UsageError(f"model {self.model.spec.id!r} answers fixed tasks (<CAPTION>, <OD>, ...), "
                             "not free questions",
                             hint=f"caption with it: vitkit caption IMAGES --model {self.model.spec.id} "
                                  "--detail brief|detailed|paragraph")
        if self.options.choices and self.options.answer_prefix:
            raise UsageError("choices are scored as the whole reply; they cannot follow an answer prefix")
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"
        self.pad_token_id = pad_token_id(tokenizer)
        prompts = render_prompts(self.processor, self.options)
        check_processor_options(self.processor, self.options.processor_options, prompts[0])
        self.preprocess = PromptPreprocess(self.processor, tuple(prompts), dict(self.options.processor_options))
        self.collate_inputs = LeftPadCollate(self.pad_token_id)
        self.draft_size = run_draft_size(self.model, self.options.processor_options)
        check_with_model(self, self.options.processor_options)
        self.choice_ids = [self._choice_ids(prompt, question) for prompt, question in zip(prompts, self.options.questions)]

    def _choice_ids(self, prompt: str, question: str) -> list[list[int]]:
        from vitkit.tasks.ask_choices import choice_token_ids

        ids = choice_token_ids(self.processor, prompt, build_messages(question, self.options.system),
                               self.options.choices)
        if any(not choice for choice in ids):
            raise UsageError("every choice needs at least one token", hint="drop empty choices from --choices")
        return ids

    def forward(self, batch: dict[str, torch.Tensor]) -> list[Any]:
        """-> per question: (B, T) generated token ids, or (B, C) choice probabilities."""
        pixels = {key: value for key, value in batch.items() if "." not in key}
        results = []
        for number in range(len(self.options.questions)):
            suffix = f".{number}"
            text = {key.removesuffix(suffix): value for key, value in batch.items() if key.endswith(suffix)}
            if self.options.choices:
                from vitkit.tasks.ask_choices import choice_probabilities

                results.append(choice_probabilities(self.model.module, pixels, text, self.choice_ids[number],
                                                    self.pad_token_id))
            else:
                results.append(self._generate(pixels, text))
        return results

    def _generate(self, pixels: dict[str, torch.Tensor], text: dict[str, torch.Tensor]) -> torch.Tensor:
        sampling = self.options.temperature is not None and self.options.temperature > 0
        settings: dict[str, Any] = dict(do_sample=sampling, max_new_tokens=self.options.max_new_tokens,
                                        pad_token_id=self.pad_token_id, use_cache=True)
        if not sampling:  # a checkpoint's generation_config may ask for sampling settings that greedy ignores
            settings.update(temperature=None, top_p=None, top_k=None)
            output = self.model.module.generate(**model_pixels(pixels), **text, **settings)
            return output[:, text["input_ids"].shape[1]:]
        return self._sample(pixels, text, settings)

    def _sample(self, pixels: dict[str, torch.Tensor], text: dict[str, torch.Tensor],
                settings: dict[str, Any]) -> torch.Tensor:
        """Each image alone, unpadded, from the same seed: its answer depends on the seed and the image, never
        on its batch-mates (generate() draws one stream for a whole batch and takes no generator), and the
        caller's global random state is restored afterwards."""
        mask = text["attention_mask"].bool()
        rows = []
        for row in range(mask.shape[0]):
            alone = {name: value[row][mask[row]][None] for name, value in text.items()}
            image = model_pixels({name: value[row:row + 1] for name, value in pixels.items()})
            with _isolated_random_state(self.model.device):
                torch.manual_seed(self.options.seed)
                output = self.model.module.generate(**image, **alone, **settings,
                                                    temperature=self.options.temperature)
            rows.append(output[0, alone["input_ids"].shape[1]:])
        from vitkit.tasks.ask_choices import right_pad

        return right_pad(rows, self.pad_token_id)  # (B, T): the new tokens only; decoding skips the pad token

    def postprocess(self, outputs: list[torch.Tensor], samples: Sequence[Sample]) -> list[dict[str, Any]]:
        records = []
        for row in range(len(samples)):
            answers = [self._answer(question, result[row]) for question, result in zip(self.options.questions, outputs)]
            record: dict[str, Any] = {"answers": answers}
            if self.options.keep is not None:
                record["match"] = all(a["scores"][self.options.keep] >= self.options.threshold for a in answers)
            records.append(record)
        return records

    def _answer(self, question: str, result: torch.Tensor) -> dict[str, Any]:
        if not self.options.choices:
            return {"question": question, "answer": self.decode(result)}
        scores = {choice: float(p) for choice, p in zip(self.options.choices, result.tolist())}
        return {"question": question, "answer": max(scores, key=scores.__getitem__), "scores": scores}

    def decode(self, ids: torch.Tensor) -> str:
        return self.processor.decode(ids, skip_special_tokens=True).strip()


def _isolated_random_state(device: torch.device):
    """torch.manual_seed reseeds the CPU and every accelerator of the device's kind: all are restored after."""
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    count = getattr(torch, device.type).device_count()
    return torch.random.fork_rng(devices=list(range(count)), device_type=device.type)


# `caption --detail`: what a VLM is asked for a caption.
CAPTION_PROMPTS = {"brief": "Describe this image in one sentence.", "detailed": "Describe this image in detail.",
                   "paragraph": "Describe this image in a paragraph."}


class VlmCaptionTask(AskTask):
    """`vitkit caption --model <VLM>`: the caption prompt of `detail` asked of every image; caption records."""

    def __init__(self, model: LoadedModel, detail: str, max_new_tokens: int, prefix: str | None,
                 processor_options: Mapping[str, Any] | None = None) -> None:
        from vitkit.tasks.caption import CAPTION_LAYOUT

        if detail not in CAPTION_PROMPTS:
            raise UsageError(f"--detail must be one of {', '.join(CAPTION_PROMPTS)}, not {detail!r}")
        self.prefix = " ".join((prefix or "").split())
        options = AskOptions((CAPTION_PROMPTS[detail],), max_new_tokens=max_new_tokens, answer_prefix=self.prefix,
                             processor_options=dict(processor_options or {}))
        super().__init__(model, options, CAPTION_LAYOUT)

    def postprocess(self, outputs: list[torch.Tensor], samples: Sequence[Sample]) -> list[dict[str, Any]]:
        return [{"caption": " ".join(f"{self.prefix} {self.decode(ids)}".split())} for ids in outputs[0]]


def resolve_questions(questions: str | Sequence[str] | None, questions_file: str | None) -> tuple[str, ...]:
    """--question (repeatable) then --questions-file's lines (blank lines and '#' comments skipped)."""
    given = [questions] if isinstance(questions, str) else list(questions or ())
    if questions_file is not None:
        try:
            with open(questions_file, encoding="utf-8") as stream:
                given += [line.strip() for line in stream if line.strip() and not line.lstrip().startswith("#")]
        except OSError as exc:
            raise UsageError(f"cannot read --questions-file {questions_file}: {exc.strerror or exc}") from None
    given = [q.strip() for q in given if q.strip()]
    if not given:
        raise UsageError("no question given", hint='add --question "..." or --questions-file FILE')
    return tuple(given)


def resolve_choices(choices: str | Sequence[str] | None, keep: str | None, threshold: float | None) -> tuple[str, ...]:
    listed = choices.split(",") if isinstance(choices, str) else list(choices or ())
    names = tuple(c.strip() for c in listed if c.strip())
    if choices is not None and len(names) < 2:
        raise UsageError("--choices needs at least two choices", hint="e.g. --choices yes,no")
    if len(set(names)) != len(names):
        raise UsageError("--choices has a choice twice")
    if keep is not None and keep not in names:
        raise UsageError(f"--keep {keep!r} is not one of the choices",
                         hint=f"use one of {', '.join(names) or '--choices'}")
    if threshold is not None and keep is None:
        raise UsageError("--threshold applies to --keep's choice", hint="add --keep CHOICE (e.g. --keep yes)")
    return names
