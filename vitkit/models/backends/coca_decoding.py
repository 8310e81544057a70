"""Batched text generation for open_clip's CoCa: greedy decoding and beam search.

open_clip's own `CoCa.generate` depends on transformers' `BeamSearchScorer`, which transformers 5
removed; this module drives CoCa's own modules instead. Images are encoded once per batch, and the
decoder's cross-attention keys and values over the image tokens are computed once per image and
shared by its beams: at ViT-B size they are most of a decoding step's work. Each step re-runs the
text tower and the decoder's self-attention over the sequence so far (no self-attention cache), so
the logits are those of a plain `model(image, text)` forward pass, up to float rounding.

Sequences are lists of token ids *after* the start (sot + prefix): the generated tokens, ending
with `eot` when the model chose to stop, or cut at `max_length` tokens in all (start included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

PAD_ID = 0  # open_clip's CoCa pads with 0; only finished rows are padded, and they are never decoded again


@dataclass(frozen=True)
class ImageContext:
    """What the decoder needs from a batch of B images, computed once per batch."""

    embs: torch.Tensor  # (B, N, W) image tokens the decoder cross-attends to
    cross_kv: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None  # per decoder layer (B, H, N, W/H) keys, values

    def select(self, images: torch.Tensor) -> "ImageContext":
        kv = None if self.cross_kv is None else tuple((k[images], v[images]) for k, v in self.cross_kv)
        return ImageContext(self.embs[images], kv)


def encode_images_for_decoding(model: torch.nn.Module, images: torch.Tensor) -> ImageContext:
    """(B, 3, H, W) -> the image tokens, and the cross-attention keys/values when the decoder allows."""
    _, embs = model._encode_image(images)  # (B, N, W)
    decoder = model.text_decoder
    if not all(_is_plain_cross_block(block) for block in decoder.cross_attn) or not decoder.batch_first:
        return ImageContext(embs, None)
    return ImageContext(embs, tuple(_cross_keys_values(block, embs) for block in decoder.cross_attn))


def _is_plain_cross_block(block: torch.nn.Module) -> bool:
    """open_clip's ResidualAttentionBlock around a torch MultiheadAttention we can split into q, k, v."""
    attn = getattr(block, "attn", None)
    return (isinstance(attn, torch.nn.MultiheadAttention) and attn.batch_first and attn._qkv_same_embed_dim
            and attn.bias_k is None and not attn.add_zero_attn and hasattr(block, "ln_1_kv")
            and all(hasattr(block, name) for name in ("ln_1", "ls_1", "ln_2", "mlp", "ls_2")))


def _projection(attn: torch.nn.MultiheadAttention, part: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias of the query (0), key (1) or value (2) projection packed in `in_proj_weight`."""
    width = attn.embed_dim
    rows = slice(part * width, (part + 1) * width)
    return attn.in_proj_weight[rows], None if attn.in_proj_bias is None else attn.in_proj_bias[rows]


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)  # (B, H, L, W/H)


def _cross_keys_values(block: torch.nn.Module, embs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    attn, kv_in = block.attn, block.ln_1_kv(embs)
    keys = F.linear(kv_in, *_projection(attn, 1))
    values = F.linear(kv_in, *_projection(attn, 2))
    return _split_heads(keys, attn.num_heads), _split_heads(values, attn.num_heads)


def _cached_cross_block(block: torch.nn.Module, x: torch.Tensor, keys: torch.Tensor,
                        values: torch.Tensor) -> torch.Tensor:
    """`block(x, k_x=embs, v_x=embs)` with precomputed keys and values; x is (B*G, L, W) for B images.

    Cross-attention has no mask, so the G rows of one image (its beams) are folded into the query
    length and attend to that image's keys once: (B, H, G*L, W/H).
    """
    attn = block.attn
    rows, length, width = x.shape
    images = keys.shape[0]
    queries = F.linear(block.ln_1(x), *_projection(attn, 0)).reshape(images, -1, width)  # (B, G*L, W)
    mixed = F.scaled_dot_product_attention(_split_heads(queries, attn.num_heads), keys, values)
    mixed = mixed.transpose(1, 2).reshape(rows, length, width)
    x = x + block.ls_1(attn.out_proj(mixed))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def next_token_logits(model: torch.nn.Module, tokens: torch.Tensor, context: ImageContext) -> torch.Tensor:
    """(B*G, L) token ids, G rows per image of `context` -> (B*G, V) float32 logits for the next token.

    The same computation as `CoCa.forward(..., output_labels=False)["logits"][:, -1]`, except that
    only the last position goes through the final norm and the (W, V) vocabulary projection.
    """
    group = tokens.shape[0] // context.embs.shape[0]
    _, x = model.text(tokens)  # (B*G, L, W); CoCa's text tower drops its appended CLS token
    decoder = model.text_decoder
    if context.cross_kv is None:
        embs = context.embs.repeat_interleave(group, dim=0)
        return decoder(embs, x)[:, -1].float()
    causal = decoder.attn_mask[: x.shape[1], : x.shape[1]]
    for block, cross, (keys, values) in zip(decoder.resblocks, decoder.cross_attn, context.cross_kv):
        x = block(x, attn_mask=causal)
        x = _cached_cross_block(cross, x, keys, values)
    last = decoder.ln_final(x[:, -1])  # (B*G, W)
    return (last @ decoder.text_projection).float()


def _start_tokens(sot: int, prefix: Sequence[int], rows: int, device: torch.device) -> torch.Tensor:
    return torch.tensor([sot, *prefix], dtype=torch.long, device=device).repeat(rows, 1)  # (rows, S)


def _check_lengths(start_length: int, max_length: int) -> None:
    if max_length <= start_length:
        raise ValueError(f"max_length {max_length} leaves no room after {start_length} start tokens")


def _cut_at_eot(row: list[int], eot: int) -> list[int]:
    return row[: row.index(eot) + 1] if eot in row else row


@torch.inference_mode()
def greedy_decode(model: torch.nn.Module, images: torch.Tensor, sot: int, eot: int, max_length: int,
                  prefix: Sequence[int] = (), min_new_tokens: int = 0) -> list[list[int]]:
    """The most likely token at each step, for every image of the batch at once.

    A row stops growing once it has produced `eot` (it is padded and left out of later steps);
    `eot` is forbidden for the first `min_new_tokens` steps.
    """
    start = len(prefix) + 1
    _check_lengths(start, max_length)
    context = encode_images_for_decoding(model, images)
    batch = images.shape[0]
    tokens = _start_tokens(sot, prefix, batch, images.device)  # (B, S)
    finished = torch.zeros(batch, dtype=torch.bool, device=tokens.device)
    for step in range(max_length - start):
        active = (~finished).nonzero().squeeze(1)  # (A,)
        if active.numel() == 0:
            break
        logits = next_token_logits(model, tokens[active], context.select(active))  # (A, V)
        if step < min_new_tokens:
            logits[:, eot] = -math.inf
        chosen = logits.argmax(dim=-1)  # (A,)
        column = torch.full((batch,), PAD_ID, dtype=torch.long, device=tokens.device)
        column[active] = chosen
        tokens = torch.cat([tokens, column[:, None]], dim=1)
        finished[active] = chosen == eot
    return [_cut_at_eot(row, eot) for row in tokens[:, start:].tolist()]


class _Hypotheses:
    """The best `size` finished sequences of one image, by length-normalised log-probability."""

    def __init__(self, size: int, length_penalty: float) -> None:
        self.size, self.length_penalty = size, length_penalty
        self.kept: list[tuple[float, list[int]]] = []  # best first

    def normalise(self, log_prob: float, length: int) -> float:
        return log_prob / (length ** self.length_penalty)

    def add(self, log_prob: float, tokens: list[int]) -> None:
        self.kept.append((self.normalise(log_prob, len(tokens)), tokens))
        self.kept.sort(key=lambda kept: kept[0], reverse=True)
        del self.kept[self.size:]

    def is_done(self, best_running_log_prob: float, length: int) -> bool:
        # transformers' default stopping rule (early_stopping=False): a full set of finished
        # sequences, the worst of which beats the best running beam's score at its current length.
        return len(self.kept) == self.size and self.kept[-1][0] >= self.normalise(best_running_log_prob, length)

    def best(self) -> list[int]:
        return self.kept[0][1]


def _next_beams(found: _Hypotheses, top_scores: list[float], top_ids: list[int], vocab: int, eot: int,
                generated: Callable[[int], list[int]], beams: int) -> list[tuple[int, int, float]]:
    """One image's step over its best 2K candidates (flat beam * vocab + token ids, best first).

    An `eot` candidate that ranks among the best K finishes its beam's sequence; the best K other
    candidates continue, as (beam, token, sum of log-probs).
    """
    continuing: list[tuple[int, int, float]] = []
    for rank, (score, flat) in enumerate(zip(top_scores, top_ids)):
        beam, token = divmod(flat, vocab)
        if token == eot:
            if rank < beams:
                found.add(score, generated(beam) + [eot])
        elif len(continuing) < beams:
            continuing.append((beam, token, score))
    return continuing


@torch.inference_mode()
def beam_search_decode(model: torch.nn.Module, images: torch.Tensor, sot: int, eot: int, max_length: int,
                       num_beams: int, length_penalty: float = 1.0, prefix: Sequence[int] = (),
                       min_new_tokens: int = 0) -> list[list[int]]:
    """Beam search over images x beams in one batch; per image, the finished sequence with the best
    sum of log-probabilities / (generated tokens ** length_penalty).

    As in transformers, `eot` ends a hypothesis only when it ranks among the `num_beams` best
    candidates of a step, so one beam gives exactly the greedy sequence. Sequences still running
    at `max_length` are finished as they are.
    """
    if num_beams < 1:
        raise ValueError(f"num_beams must be at least 1, not {num_beams}")
    start, batch, beams = len(prefix) + 1, images.shape[0], num_beams
    _check_lengths(start, max_length)
    context = encode_images_for_decoding(model, images)  # shared by each image's beams
    device = images.device
    tokens = _start_tokens(sot, prefix, batch * beams, device)  # (B*K, S); image b owns rows b*K .. b*K+K-1
    scores = [[0.0] + [-math.inf] * (beams - 1) for _ in range(batch)]  # sums of log-probs; beams start equal
    found = [_Hypotheses(beams, length_penalty) for _ in range(batch)]
    done = [False] * batch
    for length in range(1, max_length - start + 1):  # `length` tokens generated after this step
        active = [b for b in range(batch) if not done[b]]
        if not active:
            break
        rows = torch.tensor([b * beams + k for b in active for k in range(beams)], device=device)
        log_probs = next_token_logits(model, tokens[rows], context.select(torch.tensor(active, device=device)))
        log_probs = log_probs.log_softmax(dim=-1)  # (A*K, V)
        if length <= min_new_tokens:
            log_probs[:, eot] = -math.inf
        vocab = log_probs.shape[-1]
        running = torch.tensor([scores[b] for b in active], device=device)  # (A, K)
        candidates = (running.unsqueeze(-1) + log_probs.view(len(active), beams, vocab)).view(len(active), -1)
        top_scores, top_ids = candidates.topk(min(2 * beams, candidates.shape[1]), dim=-1)  # (A, 2K)
        generated = tokens[:, start:].tolist()
        source, column = list(range(batch * beams)), [PAD_ID] * (batch * beams)  # row each row continues, new token
        for b, row_scores, row_ids in zip(active, top_scores.tolist(), top_ids.tolist()):
            continuing = _next_beams(found[b], row_scores, row_ids, vocab, eot,
                                     lambda beam: generated[b * beams + beam], beams)
            for k, (beam, token, score) in enumerate(continuing):
                source[b * beams + k], column[b * beams + k], scores[b][k] = b * beams + beam, token, score
            scores[b][len(continuing):] = [-math.inf] * (beams - len(continuing))  # only for a tiny vocabulary
            done[b] = found[b].is_done(max(scores[b]), length)
        tokens = torch.cat([tokens[source], torch.tensor(column, device=device)[:, None]], dim=1)
    generated = tokens[:, start:].tolist()
    for b in (b for b in range(batch) if not done[b]):
        for k in (k for k in range(beams) if scores[b][k] > -math.inf):
            found[b].add(scores[b][k], generated[b * beams + k])
    return [hypotheses.best() for hypotheses in found]
