"""Closed questions: each choice scored by the model's log-likelihood of its tokens after the prompt.

score(choice) = sum over the choice's tokens t_j of log p(t_j | image, prompt, t_<j), teacher-forced;
the probabilities are the softmax of those scores over the choices. Every (image, choice) pair is one
row of a single forward pass. Rows are right-padded, so positions count from each prompt's first token
exactly as in an unpadded call, with no position ids to pass (some models derive their own).
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch

from vitkit.tasks.vlm_batch import model_pixels


def choice_token_ids(processor: Any, prompt: str, messages: list[dict[str, Any]],
                     choices: Sequence[str]) -> list[list[int]]:
    """The tokens of each choice as the model would write it as its reply to `prompt` (rendered from
    `messages` with the generation prompt): after what the chat template puts before a reply
    (`reply_lead`; nothing where it cannot say), tokenised together with the prompt, so a token that would
    merge across the boundary is the one the model would have produced. Falls back to the choice (after
    its lead) tokenised alone."""
    from vitkit.tasks.ask import reply_lead

    tokenizer = processor.tokenizer
    before = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = []
    for choice in choices:
        reply = (reply_lead(processor, messages, prompt, choice) or "") + choice
        joined = tokenizer(prompt + reply, add_special_tokens=False)["input_ids"]
        if joined[:len(before)] == before and len(joined) > len(before):
            ids.append(joined[len(before):])
        else:
            ids.append(tokenizer(reply, add_special_tokens=False)["input_ids"])
    return ids


def choice_probabilities(module: torch.nn.Module, pixels: dict[str, torch.Tensor], text: dict[str, torch.Tensor],
                         choice_ids: list[list[int]], pad_token_id: int) -> torch.Tensor:
    """Left-padded prompts of B images -> (B, C) probabilities of the C choices."""
    mask = text["attention_mask"].bool()  # (B, L)
    images, count = mask.shape[0], len(choice_ids)
    rows, starts = [], []
    for image in range(images):
        for ids in choice_ids:
            prompt = {name: value[image][mask[image]] for name, value in text.items()}
            choice = torch.tensor(ids, dtype=prompt["input_ids"].dtype, device=mask.device)
            rows.append({name: torch.cat([value, choice if name == "input_ids" else _extend(name, value, len(ids))])
                         for name, value in prompt.items()})
            starts.append(len(prompt["input_ids"]))
    batch = {name: right_pad([row[name] for row in rows], pad_token_id if name == "input_ids" else 0)
             for name in rows[0]}
    repeated = model_pixels({name: value.repeat_interleave(count, dim=0) for name, value in pixels.items()})
    # Position p predicts token p + 1: the choice's tokens are predicted from start - 1 on.
    needed = sorted({start - 1 + j for start, ids in zip(starts, choice_ids * images) for j in range(len(ids))})
    arguments = {}
    if "logits_to_keep" in inspect.signature(module.forward).parameters:  # logits for those positions only
        arguments["logits_to_keep"] = torch.tensor(needed, device=mask.device)
    logits = module(**repeated, **batch, **arguments).logits.float()  # (B*C, K, V), K = len(needed) or L
    log_probs = logits.log_softmax(dim=-1)
    column = {position: k for k, position in enumerate(needed)} if arguments else None
    scores = torch.stack([
        sum(log_probs[row, column[start - 1 + j] if column else start - 1 + j, token] for j, token in enumerate(ids))
        for row, (start, ids) in enumerate(zip(starts, choice_ids * images))
    ])
    return scores.view(images, count).softmax(dim=-1)


def _extend(name: str, value: torch.Tensor, length: int) -> torch.Tensor:
    """Per-token companions of input_ids (the attention mask; token type ids) for appended text tokens."""
    fill = 1 if name == "attention_mask" else 0
    return value.new_full((length,), fill)


def right_pad(rows: list[torch.Tensor], pad: int) -> torch.Tensor:
    length = max(len(row) for row in rows)
    return torch.stack([torch.cat([row, row.new_full((length - len(row),), pad)]) for row in rows])
