"""S2FinConfig: JSON round trip and strict validation of model-file metadata."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models import S2Fin, S2FinConfig


def test_json_round_trip_of_defaults_and_custom_values() -> None:
    for cfg in (
        S2FinConfig(),
        S2FinConfig(
            bands=180,
            active_bands=4,
            num_classes=7,
            patch_size=13,
            spectral_window=7,
            dropout=0.25,
            use_hfrm=False,
            tau_init=0.45,
        ),
    ):
        text = json.dumps(cfg.to_dict())
        assert S2FinConfig.from_dict(json.loads(text)) == cfg


@settings(max_examples=40, deadline=None)
@given(
    bands=st.integers(1, 300),
    patch=st.sampled_from([3, 5, 7, 9, 11, 13, 15]),
    window_index=st.integers(0, 7),
    dropout=st.floats(0.0, 0.95),
    tau=st.floats(0.01, 0.99),
    switches=st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_round_trip_property(
    bands: int, patch: int, window_index: int, dropout: float, tau: float, switches: list[bool]
) -> None:
    window = min(2 * window_index + 1, patch)
    cfg = S2FinConfig(
        bands=bands,
        patch_size=patch,
        spectral_window=window,
        dropout=dropout,
        tau_init=tau,
        use_hfset=switches[0],
        use_afcm=switches[1],
        use_ssaf=switches[2],
        use_hfrm=switches[3],
        use_long_range=switches[4],
    )
    assert S2FinConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_missing_keys_take_defaults_and_integral_floats_are_accepted() -> None:
    cfg = S2FinConfig.from_dict({"bands": 50, "ffn_ratio": 3})
    assert cfg.bands == 50 and cfg.ffn_ratio == 3.0 and isinstance(cfg.ffn_ratio, float)
    assert cfg.num_classes == S2FinConfig().num_classes


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bandz": 10}, "unknown key"),
        ({"bands": "144"}, "bands must be of type int"),
        ({"bands": 144.0}, "bands must be of type int"),
        ({"bands": True}, "bands must be of type int"),
        ({"use_afcm": 1}, "use_afcm must be of type bool"),
        ({"dropout": "0.1"}, "dropout must be of type float"),
        ({"dropout": float("nan")}, "dropout must be finite"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"bands": 0}, "bands must be >= 1"),
        ({"num_classes": 1}, "num_classes"),
        ({"patch_size": 10}, "patch_size must be odd"),
        ({"patch_size": 1}, "patch_size"),
        ({"spectral_window": 13}, "spectral_window"),
        ({"spectral_window": 4}, "spectral_window"),
        ({"dim": 30, "heads": 4}, "divisible by heads"),
        ({"ssm_heads": 3}, "divisible"),
        ({"tau_init": 0.0}, "tau_init must be in"),
        ({"filter_temperature": -1.0}, "filter_temperature"),
        ({"long_range_depth": -1}, "long_range_depth"),
    ],
)
def test_from_dict_rejects_bad_metadata(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        S2FinConfig.from_dict(data)


def test_from_dict_rejects_non_dicts() -> None:
    with pytest.raises(ValueError, match="expects a dict"):
        S2FinConfig.from_dict([("bands", 3)])  # type: ignore[arg-type]


def test_model_keeps_its_config() -> None:
    cfg = S2FinConfig(
        bands=10, reduced_bands=3, num_classes=4, patch_size=7, spectral_window=3, dim=16, heads=2
    )
    assert S2Fin(cfg).config.to_dict() == cfg.to_dict()
