"""The model file: exact round trip; foreign or damaged files refused with ModelFileError."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from s2fin_cli.errors import ModelFileError
from s2fin_cli.model_file import FORMAT_VERSION, ModelBundle, load_model_file, save_model_file
from tests.helpers import tiny_bundle, torch_threads, utm_grid, write_scene


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelBundle]:
    d = tmp_path_factory.mktemp("model")
    scene = write_scene(d / "scene.tif", utm_grid(16, 16), bands=6)
    bundle = tiny_bundle(scene, num_classes=3, class_ids=[2, 5, 9])
    bundle.provenance = {"seed": 0, "created": "2026-01-01T00:00:00+00:00"}
    bundle.metrics = {"validation": {"oa": 0.5, "aa": 0.5, "kappa": 0.25}}
    return save_model_file(d / "model.s2fin", bundle), bundle


def _raw(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


def test_round_trip_gives_identical_logits(saved: tuple[Path, ModelBundle]) -> None:
    path, bundle = saved
    loaded = load_model_file(path)
    assert loaded.config == bundle.config
    assert loaded.classes == bundle.classes and loaded.classes.ids == [2, 5, 9]
    assert loaded.optical == bundle.optical and loaded.aux == bundle.aux
    assert loaded.provenance == bundle.provenance and loaded.metrics == bundle.metrics
    for k, v in bundle.state_dict.items():
        assert torch.equal(loaded.state_dict[k], v), k
    cfg = bundle.config
    torch.manual_seed(0)
    x = (torch.randn(4, cfg.bands, cfg.spectral_window, cfg.spectral_window),
         torch.randn(4, cfg.reduced_bands, cfg.patch_size, cfg.patch_size),
         torch.randn(4, cfg.active_bands, cfg.patch_size, cfg.patch_size))
    with torch_threads(1), torch.no_grad():
        assert torch.equal(bundle.build_model()(*x), loaded.build_model()(*x))
    for name in ("optical_mean", "pca_components"):
        assert (getattr(loaded.preprocessor, name) == getattr(bundle.preprocessor, name)).all()


def test_modified_metadata_fails_the_checksum(saved: tuple[Path, ModelBundle],
                                              tmp_path: Path) -> None:
    meta, tensors = _raw(saved[0])
    doc = json.loads(meta["s2fin"])
    doc["classes"][0]["name"] = "renamed"
    meta["s2fin"] = json.dumps(doc, sort_keys=True)
    save_file(tensors, str(tmp_path / "m.s2fin"), metadata=meta)
    with pytest.raises(ModelFileError, match="checksum"):
        load_model_file(tmp_path / "m.s2fin")


def test_modified_weights_fail_the_checksum(saved: tuple[Path, ModelBundle],
                                            tmp_path: Path) -> None:
    data = bytearray(saved[0].read_bytes())
    header = struct.unpack("<Q", data[:8])[0]
    data[8 + header + 100] ^= 0xFF  # a byte inside the tensor data
    (tmp_path / "m.s2fin").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum"):
        load_model_file(tmp_path / "m.s2fin")


def test_pickle_is_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "model.s2fin"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (marker.write_text, ("pwned",))

    torch.save({"model": Evil()}, path)
    with pytest.raises(ModelFileError, match="not an s2fin model file"):
        load_model_file(path)
    assert not marker.exists()


def test_truncated_file_is_refused(saved: tuple[Path, ModelBundle], tmp_path: Path) -> None:
    data = saved[0].read_bytes()
    for n in (4, 100, len(data) // 2, len(data) - 1):
        (tmp_path / "t.s2fin").write_bytes(data[:n])
        with pytest.raises(ModelFileError):
            load_model_file(tmp_path / "t.s2fin")


def test_plain_safetensors_is_refused(tmp_path: Path) -> None:
    save_file({"weight": torch.zeros(3)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ModelFileError, match="without s2fin metadata"):
        load_model_file(tmp_path / "plain.safetensors")


def test_newer_format_version_is_refused(saved: tuple[Path, ModelBundle],
                                         tmp_path: Path) -> None:
    meta, tensors = _raw(saved[0])
    meta["format_version"] = str(FORMAT_VERSION + 1)
    save_file(tensors, str(tmp_path / "new.s2fin"), metadata=meta)
    with pytest.raises(ModelFileError, match="newer"):
        load_model_file(tmp_path / "new.s2fin")


def test_weights_that_do_not_fit_the_config_are_refused(saved: tuple[Path, ModelBundle],
                                                        tmp_path: Path) -> None:
    bundle = saved[1]
    broken = ModelBundle(bundle.config, {k: v for i, (k, v) in
                                         enumerate(bundle.state_dict.items()) if i},
                         bundle.preprocessor, bundle.classes, bundle.optical, bundle.aux)
    save_model_file(tmp_path / "b.s2fin", broken)
    with pytest.raises(ModelFileError, match="do not fit"):
        load_model_file(tmp_path / "b.s2fin")
