"""What a model is, as data: capabilities (named after the commands that use them), library names and `ModelSpec`.

Kept free of heavy imports: the registry, the backends and `vitkit models list` all read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# What a command needs a model to be able to do. Each value is the name of the command that needs it,
# so that errors and `vitkit models list --task` speak the user's words; `search` is what `index`,
# `search` and `dedup` need (image and text vectors in one space), `embed` image vectors alone.
CLASSIFY = "classify"
LABEL = "label"
SEARCH = "search"
EMBED = "embed"
ATTENTION = "attention"
CAPTION = "caption"
DETECT = "detect"
SEGMENT = "segment"
INPAINT = "inpaint"
DEPTH = "depth"
POSE = "pose"
ASK = "ask"
CAPABILITIES = (CLASSIFY, LABEL, SEARCH, EMBED, ATTENTION, CAPTION, DETECT, SEGMENT, INPAINT, DEPTH, POSE, ASK)

# The commands that use a capability, where that is not the capability's own name.
COMMANDS_FOR_CAPABILITY = {SEARCH: ("index", "search", "dedup")}
# ... and the other way round: the capability each command needs (`embed` is a library function too).
CAPABILITY_OF_COMMAND = {**{c: c for c in CAPABILITIES},
                         **{command: c for c, commands in COMMANDS_FOR_CAPABILITY.items() for command in commands}}

TIMM = "timm"
OPEN_CLIP = "open_clip"
TRANSFORMERS = "transformers"

CLIP_CAPABILITIES = frozenset({LABEL, SEARCH, EMBED})
# Any timm model: a classifier head where it has one; pooled features and the ViT blocks' attention always.
TIMM_CAPABILITIES = frozenset({CLASSIFY, EMBED, ATTENTION})
# A vision-language model (image + text in, text out) answers questions and captions by being asked to.
VLM_CAPABILITIES = frozenset({ASK, CAPTION})


def describe_capability(capability: str) -> str:
    """`search (index, search, dedup)` for a capability several commands use; else the name."""
    commands = COMMANDS_FOR_CAPABILITY.get(capability)
    return f"{capability} ({', '.join(commands)})" if commands else capability


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to load a model, and nothing that needs the weights."""

    id: str  # what the user sees: a catalogue alias or the reference as typed
    backend: str
    source: str  # the library-native reference handed to the backend
    capabilities: frozenset[str]
    description: str = ""
    params_millions: float | None = None
    local_path: str | None = None
    extra: tuple[tuple[str, str], ...] = field(default=())
    hub_repo: str | None = None  # the Hugging Face repo the weights come from, when known without the library

    @property
    def is_local(self) -> bool:
        return self.local_path is not None

    def describe_source(self) -> str:
        return self.source if self.source == self.id else f"{self.id} ({self.source})"
