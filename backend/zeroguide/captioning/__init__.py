"""Text for CLIP segment embeddings (zero-guidance paper, section 3.3), behind one interface.

```python
from backend.zeroguide.captioning import build_captioner
captioner = build_captioner("retrieval", models, {"cache_dir": "~/.cache/zeroguide"})  # fast default
captioner = build_captioner("zerocap", models)                                         # the paper's (GPU)
captions = captioner.caption(segment_embeddings)   # (K, D) unit norm -> list[Caption]
captions[0].text, captions[0].clip_score
```

The names below are imported on first use (PEP 562), so ``backend.zeroguide.captioning.settings``
and ``backend.zeroguide.captioning.registry`` can be imported without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.lazy import lazy_exports

if TYPE_CHECKING:
    from backend.zeroguide.captioning.base import Caption, Captioner, check_embeddings
    from backend.zeroguide.captioning.clip_text import ClipTextEncoder
    from backend.zeroguide.captioning.registry import (
        CAPTIONERS,
        CaptionerEntry,
        build_captioner,
        captioner_names,
        captioner_settings,
        settings_class,
    )
    from backend.zeroguide.captioning.retrieval import RetrievalCaptioner, load_vocabulary
    from backend.zeroguide.captioning.settings import CaptionerSettings, RetrievalSettings, ZeroCapSettings
    from backend.zeroguide.captioning.zerocap import Beam, SteeringTrace, ZeroCapCaptioner

_EXPORTS = {
    "Caption": "base",
    "Captioner": "base",
    "check_embeddings": "base",
    "ClipTextEncoder": "clip_text",
    "CAPTIONERS": "registry",
    "CaptionerEntry": "registry",
    "build_captioner": "registry",
    "captioner_names": "registry",
    "captioner_settings": "registry",
    "settings_class": "registry",
    "RetrievalCaptioner": "retrieval",
    "load_vocabulary": "retrieval",
    "CaptionerSettings": "settings",
    "RetrievalSettings": "settings",
    "ZeroCapSettings": "settings",
    "Beam": "zerocap",
    "SteeringTrace": "zerocap",
    "ZeroCapCaptioner": "zerocap",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
