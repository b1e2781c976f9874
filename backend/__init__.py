"""Label Studio ML backend for image segmentation pre-labelling.

Layers (dependencies point one way): ``backend.service`` -> methods
(``backend.zeroguide``, ``backend.fmbseg``) -> ``backend.models``.
See docs/architecture.md.
"""

__version__ = "0.1.0"
