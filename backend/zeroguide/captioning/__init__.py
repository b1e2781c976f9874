"""Text for CLIP segment embeddings (zero-guidance paper, section 3.3), behind one interface.

```python
from backend.zeroguide.captioning import build_captioner
captioner = build_captioner("retrieval", models, cache_dir="~/.cache/zeroguide")  # fast default
captioner = build_captioner("zerocap", models)                                     # the paper's (GPU)
captions = captioner.caption(segment_embeddings)   # (K, D) unit norm -> list[Caption]
captions[0].text, captions[0].clip_score
```
"""

from backend.zeroguide.captioning.base import CAPTIONER_NAMES, Caption, Captioner, build_captioner, check_embeddings
from backend.zeroguide.captioning.clip_text import ClipTextEncoder
from backend.zeroguide.captioning.retrieval import RetrievalCaptioner, RetrievalSettings, load_vocabulary
from backend.zeroguide.captioning.zerocap import Beam, SteeringTrace, ZeroCapCaptioner, ZeroCapSettings

__all__ = [
    "CAPTIONER_NAMES",
    "Beam",
    "Caption",
    "Captioner",
    "ClipTextEncoder",
    "RetrievalCaptioner",
    "RetrievalSettings",
    "SteeringTrace",
    "ZeroCapCaptioner",
    "ZeroCapSettings",
    "build_captioner",
    "check_embeddings",
    "load_vocabulary",
]
