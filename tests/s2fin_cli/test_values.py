"""Value summaries of scenes, and the check that a scene looks like the training data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from s2fin_cli.errors import CompatibilityError
from s2fin_cli.io.reader import open_stacked_scene
from s2fin_cli.model_file import load_model_file, save_model_file
from s2fin_cli.values import ValueSummary, bands_off, check_values, summarize_scene
from tests.helpers import scene_arrays, tiny_bundle, utm_grid, write_stacked


def _scene(path: Path, scale: float = 1.0, size: int = 40) -> Path:
    optical, aux = scene_arrays(size, size, 6, 1, seed=4)
    optical = (optical + 5.0) * scale  # positive "reflectances"
    return write_stacked(path, optical, aux, utm_grid(size, size))


def test_summary_is_seeded_per_band_and_round_trips(tmp_path: Path) -> None:
    path = _scene(tmp_path / "s.tif", size=300)  # more blocks than are sampled
    with open_stacked_scene(path) as scene:
        optical, aux = summarize_scene(scene, seed=3)
        again, _ = summarize_scene(scene, seed=3)
    assert optical == again and optical is not None and aux is not None
    assert len(optical.low) == 6 and len(aux.median) == 1
    assert all(lo <= med <= hi for lo, med, hi in zip(optical.low, optical.median, optical.high,
                                                      strict=True))
    assert ValueSummary.from_json(optical.to_json(), 6) == optical
    with pytest.raises(ValueError):
        ValueSummary.from_json({**optical.to_json(), "p50": [1.0]}, 6)


def test_a_rescaled_scene_is_off_and_the_same_scene_is_not(tmp_path: Path) -> None:
    with open_stacked_scene(_scene(tmp_path / "a.tif")) as a, \
            open_stacked_scene(_scene(tmp_path / "b.tif", scale=10_000.0)) as b, \
            open_stacked_scene(_scene(tmp_path / "c.tif", scale=1.3)) as c:
        trained = summarize_scene(a)[0]
        scaled, similar = summarize_scene(b)[0], summarize_scene(c)[0]
    assert trained is not None and scaled is not None and similar is not None
    assert bands_off(trained, trained) == []
    assert bands_off(trained, similar) == []  # 30 % brighter: still the same encoding
    assert bands_off(trained, scaled) == list(range(6))
    with pytest.raises(CompatibilityError, match="6 of 6 band"):
        check_values("optical", trained, scaled)
    check_values("optical", trained, scaled, skip=True)  # a warning only
    check_values("optical", None, scaled)  # nothing stored: nothing to compare


def test_a_few_bands_off_give_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    trained = ValueSummary("float32", (0.0,) * 4, (0.5,) * 4, (1.0,) * 4)
    seen = ValueSummary("float32", (0.0, 0.0, 0.0, 500.0), (0.5, 0.5, 0.5, 600.0),
                        (1.0, 1.0, 1.0, 700.0))
    check_values("optical", trained, seen)
    assert "1 of 4 band(s)" in capsys.readouterr().err


def test_model_file_keeps_the_summaries(tmp_path: Path) -> None:
    path = _scene(tmp_path / "s.tif")
    bundle = tiny_bundle(path)
    with open_stacked_scene(path) as scene:
        optical, aux = summarize_scene(scene)
    assert optical is not None and aux is not None
    bundle.optical = dataclasses.replace(bundle.optical, values=optical)
    bundle.aux = dataclasses.replace(bundle.aux, values=aux)
    loaded = load_model_file(save_model_file(tmp_path / "m.s2fin", bundle))
    assert loaded.optical.values == optical and loaded.aux.values == aux
    with open_stacked_scene(_scene(tmp_path / "x.tif", scale=1e4)) as scaled:
        with pytest.raises(CompatibilityError, match="--skip-value-check"):
            loaded.check_values(scaled)
