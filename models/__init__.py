"""S²Fin network (arXiv 2510.04628, reconstructed): pure PyTorch, no I/O.

Public API:
    S2Fin(config)                      the network; forward(spectral, spatial, active) -> logits
    S2FinConfig                        every hyperparameter; to_dict()/from_dict() JSON round trip
    parameter_table(model)             [(top-level module, n_params), ..., ("total", n)]
    center_crop(x, size)               centre window of [B, C, p, p] patches
    HFSET, AFCM, SSAF, HFRM, LongRangeFusion, ClassifierHead   the blocks, for inspection/tests
See docs/network.md for shapes and for what is confirmed by the paper vs. reconstructed.
"""

from .afcm import AFCM
from .config import S2FinConfig
from .head import ClassifierHead
from .hfrm import HFRM
from .hfset import HFSET, SpectralHighPass
from .layers import center_crop
from .long_range import LongRangeFusion, selective_scan
from .network import S2Fin, parameter_table
from .ssaf import SSAF

__all__ = [
    "AFCM",
    "HFRM",
    "HFSET",
    "SSAF",
    "ClassifierHead",
    "LongRangeFusion",
    "S2Fin",
    "S2FinConfig",
    "SpectralHighPass",
    "center_crop",
    "parameter_table",
    "selective_scan",
]
