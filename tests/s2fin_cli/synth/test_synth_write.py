"""write_scene and the synth command: GeoTIFFs re-read with rasterio and gdalinfo."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
import typer
from typer.testing import CliRunner

from s2fin_cli.errors import OutputError
from s2fin_cli.synth import SynthConfig, SynthScene, generate_scene, write_scene


@pytest.fixture(scope="module")
def urban() -> SynthScene:
    return generate_scene(SynthConfig.for_preset("urban", size=64, bands=32, seed=3,
                                                 nodata_edge=0.05))


@pytest.fixture(scope="module")
def written(urban: SynthScene, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_scene(urban, tmp_path_factory.mktemp("scene") / "urban")


def test_files_and_metadata(urban: SynthScene, written: dict[str, Path]) -> None:
    names = {p.name for p in written.values()}
    assert names == {"hsi.tif", "lidar.tif", "ground_truth.tif", "train_labels.tif",
                     "test_labels.tif", "scene.json"}
    for role in ("hsi", "lidar", "ground_truth", "train_labels", "test_labels"):
        with rasterio.open(written[role]) as src:
            assert src.crs.to_epsg() == 32632
            assert src.transform == urban.grid.transform
            assert (src.width, src.height) == (64, 64)
    with rasterio.open(written["hsi"]) as src:
        assert src.dtypes[0] == "int16" and src.nodata == -32768 and src.count == 32
        assert src.descriptions[11] == f"b012 {urban.wavelengths[11]:.1f} nm"
        assert src.tags()["scale_factor"] == "0.0001"
        assert float(src.tags(12)["wavelength"]) == pytest.approx(urban.wavelengths[11])
        data = src.read()
        masked = src.read(1, masked=True)
    invalid = ~urban.valid
    assert (data[:, invalid] == -32768).all()
    assert masked.mask.sum() == invalid.sum()
    np.testing.assert_allclose(data[:, urban.valid] * 1e-4, urban.optical[:, urban.valid],
                               atol=0.6e-4)
    with rasterio.open(written["lidar"]) as src:
        assert src.dtypes[0] == "float32" and src.nodata == -9999
        assert src.descriptions == ("DSM (m)", "intensity")
        np.testing.assert_array_equal(src.read(), urban.active)
    for role, array in (("ground_truth", urban.ground_truth), ("train_labels", urban.train_labels),
                        ("test_labels", urban.test_labels)):
        with rasterio.open(written[role]) as src:
            assert src.dtypes[0] == "uint8" and src.nodata == 0
            np.testing.assert_array_equal(src.read(1), array)
            cmap = src.colormap(1)
            for c in urban.classes:
                assert cmap[c.id][:3] == c.color
        assert written[role].with_suffix(".qml").exists()
    meta = json.loads(written["scene"].read_text())
    assert meta["seed"] == 3 and meta["preset"] == "urban"
    assert meta["command"].startswith("s2fin synth ")
    assert [c["name"] for c in meta["classes"]] == [c.name for c in urban.classes]
    assert meta["optical"]["wavelength_nm"][11] == pytest.approx(urban.wavelengths[11])


@pytest.mark.skipif(shutil.which("gdalinfo") is None, reason="gdalinfo not installed")
def test_gdalinfo_reads_crs_and_nodata(written: dict[str, Path]) -> None:
    def info(path: Path) -> dict:  # type: ignore[type-arg]
        out = subprocess.run(["gdalinfo", "-json", str(path)], check=True, capture_output=True,
                             text=True, timeout=60)
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    hsi = info(written["hsi"])
    assert 'ID["EPSG",32632]' in hsi["coordinateSystem"]["wkt"]
    assert hsi["bands"][0]["noDataValue"] == -32768
    assert hsi["bands"][0]["description"].startswith("b001 ")
    assert info(written["lidar"])["bands"][0]["noDataValue"] == -9999
    labels = info(written["train_labels"])
    assert labels["bands"][0]["noDataValue"] == 0
    assert labels["bands"][0]["colorInterpretation"] == "Palette"


def test_existing_outputs_are_refused(urban: SynthScene, tmp_path: Path) -> None:
    write_scene(urban, tmp_path)
    before = (tmp_path / "hsi.tif").stat().st_mtime_ns
    with pytest.raises(OutputError):
        write_scene(urban, tmp_path)
    assert (tmp_path / "hsi.tif").stat().st_mtime_ns == before
    write_scene(urban, tmp_path, overwrite=True)


def test_float32_optical_uses_nan_nodata(urban: SynthScene, tmp_path: Path) -> None:
    paths = write_scene(urban, tmp_path, optical_dtype="float32")
    with rasterio.open(paths["hsi"]) as src:
        assert src.dtypes[0] == "float32" and np.isnan(src.nodata)
        assert "scale_factor" not in src.tags()


def _app() -> typer.Typer:
    from s2fin_cli.cli import app as app_module
    from s2fin_cli.cli.synth_cmd import synth

    if "synth" in app_module._COMMANDS:
        return app_module.app
    local = typer.Typer(cls=app_module._S2finGroup, add_completion=False)
    local.command("synth")(synth)
    local.command("noop")(lambda: None)  # a group, so that "synth" is a subcommand
    return local


def test_cli_writes_a_sar_scene_and_refuses_to_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["synth", str(tmp_path / "s"), "--preset", "agricultural", "--size", "48",
            "--bands", "24", "--seed", "5", "--sar-bands", "4"]
    result = runner.invoke(_app(), args)
    assert result.exit_code == 0, result.output
    with rasterio.open(tmp_path / "s" / "sar.tif") as src:
        assert src.descriptions == ("VV (dB)", "VH (dB)", "HH (dB)", "HV (dB)")
        assert src.tags()["units"] == "dB"
    meta = json.loads((tmp_path / "s" / "scene.json").read_text())
    assert meta["config"]["sar_bands"] == 4
    again = runner.invoke(_app(), args)
    assert again.exit_code == OutputError.exit_code
    assert "exists" in again.output


def test_cli_rejects_bad_band_count(tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), ["synth", str(tmp_path / "m"), "--preset", "msi-sar",
                                         "--bands", "11", "--size", "48"])
    assert result.exit_code == 9  # ConfigError
