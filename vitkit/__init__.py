"""vitkit: vision transformers for folders of images, as a library and a command-line tool.

    import vitkit
    for record in vitkit.classify("photos/", model="vit-s16", top_k=3):
        print(record.path, record.predictions[0].label)

The functions (one per command: classify, label, embed, detect, segment, inpaint, depth, pose, caption,
ask, attention, index, search, dedup; and load_model) live in vitkit/api.py and load on first use, so
`import vitkit` and `vitkit --help` stay quick (torch is imported when a model loads).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["classify", "label", "embed", "detect", "segment", "inpaint", "depth", "pose", "caption", "ask", "attention",
           "index", "search", "dedup",
           "load_model",
           "Record", "VitkitError"]


def __getattr__(name: str) -> Any:
    if name in ("Record",):
        from vitkit.outputs.records import Record

        return Record
    if name == "VitkitError":
        from vitkit.errors import VitkitError

        return VitkitError
    if name in __all__:
        from vitkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'vitkit' has no attribute {name!r}")
