"""`s2fin datasets import/list` on synthetic stand-ins of every supported form, and on the real
Trento / Houston2013 files in shared/data when they are present."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import scipy.io
import typer
from affine import Affine
from typer.testing import CliRunner

from s2fin_cli.cli.app import _S2finGroup
from s2fin_cli.cli.datasets_cmd import DatasetName, datasets
from s2fin_cli.datasets import DATASETS, OUTPUT_NAMES, Role, import_dataset
from s2fin_cli.errors import AlignmentError, ConfigError, InputError, LabelError, OutputError

REPO_ROOT = Path(__file__).resolve().parents[3]
REAL_DATA = REPO_ROOT.parent / "shared" / "data"

_spec = importlib.util.spec_from_file_location(
    "make_benchmark_standins", REPO_ROOT / "tests" / "data_scripts" / "make_benchmark_standins.py")
assert _spec is not None and _spec.loader is not None
standins = importlib.util.module_from_spec(_spec)
sys.modules["make_benchmark_standins"] = standins
_spec.loader.exec_module(standins)

SHAPE = (12, 20)
# write_raster tiles 512 x 512: for a tiny many-band raster that is ~150 MB of padding to
# compress per file. Small tiles keep these tests fast; the outputs are otherwise the same.
CO = {"BLOCKXSIZE": "32", "BLOCKYSIZE": "32"}

# (dataset, form) -> role -> (file the importer must pick, key it must read)
_CAMPUS_KEYS: tuple[tuple[Role, str], ...] = (
    ("hsi", "hsi.Data"), ("lidar", "hsi.Lidar[0].z"), ("ground_truth", "hsi.sceneLabels.labels"))

EXPECTED: dict[tuple[str, str], dict[Role, tuple[str, str | None]]] = {
    ("houston2013", "mat"): {"hsi": ("HSI.mat", "HSI"), "lidar": ("LiDAR.mat", "LiDAR"),
                             "train": ("TRLabel.mat", "TRLabel"),
                             "test": ("TSLabel.mat", "TSLabel")},
    ("houston2013", "dfc-tif"): {
        "hsi": ("2013_IEEE_GRSS_DF_Contest_CASI.tif", None),
        "lidar": ("2013_IEEE_GRSS_DF_Contest_LiDAR.tif", None),
        "train": ("2013_IEEE_GRSS_DF_Contest_Samples_TR.tif", None),
        "test": ("2013_IEEE_GRSS_DF_Contest_Samples_VA.tif", None)},
    ("houston2013", "rsfd-mat"): {"hsi": ("Houston2013/HSI.mat", "HSI"),
                                  "lidar": ("Houston2013/DSM.mat", "DSM"),
                                  "train": ("Houston2013/TR.mat", "TR"),
                                  "test": ("Houston2013/TE.mat", "TE")},
    ("trento", "italy"): {"hsi": ("Italy_hsi.mat", "data"), "lidar": ("Italy_lidar.mat", "data"),
                          "ground_truth": ("allgrd.mat", "mask_test")},
    ("trento", "mat"): {"hsi": ("HSI.mat", "HSI"), "lidar": ("LiDAR.mat", "LiDAR"),
                        "ground_truth": ("Trento_gt.mat", "Trento_gt")},
    ("trento", "split"): {"hsi": ("HSI.mat", "HSI"), "lidar": ("LiDAR.mat", "LiDAR"),
                          "train": ("TRLabel.mat", "TRLabel"), "test": ("TSLabel.mat", "TSLabel")},
    ("muufl", "campus"): {
        role: ("MUUFLGulfportSceneLabels/muufl_gulfport_campus_1_hsi_220_label.mat", key)
        for role, key in _CAMPUS_KEYS},
    ("muufl", "mat"): {"hsi": ("HSI.mat", "HSI"), "lidar": ("LiDAR.mat", "LiDAR"),
                       "ground_truth": ("gt.mat", "gt")},
    ("muufl", "tr-ts"): {"hsi": ("HSI.mat", "HSI"), "lidar": ("LiDAR.mat", "LiDAR"),
                         "train": ("muufl_tr.mat", "training_map"),
                         "test": ("muufl_ts.mat", "testing_map")},
    ("augsburg", "s2fl"): {"hsi": ("data_HS_LR.mat", "data_HS_LR"),
                           "sar": ("data_SAR_HR.mat", "data_SAR_HR"),
                           "dsm": ("data_DSM.mat", "data_DSM"),
                           "train": ("TrainImage.mat", "TrainImage"),
                           "test": ("TestImage.mat", "TestImage")},
    ("augsburg", "ouc"): {"hsi": ("Augsburg/augsburg_hsi.mat", "augsburg_hsi"),
                          "sar": ("Augsburg/augsburg_sar.mat", "augsburg_sar"),
                          "ground_truth": ("Augsburg/augsburg_gt.mat", "augsburg_gt"),
                          "train": ("Augsburg/augsburg_index.mat", "augsburg_train"),
                          "test": ("Augsburg/augsburg_index.mat", "augsburg_test")},
    ("berlin", "s2fl"): {"hsi": ("data_HS_LR.mat", "data_HS_LR"),
                         "sar": ("data_SAR_HR.mat", "data_SAR_HR"),
                         "train": ("TrainImage.mat", "TrainImage"),
                         "test": ("TestImage.mat", "TestImage")},
    ("berlin", "ouc"): {"hsi": ("Berlin/berlin_hsi.mat", "berlin_hsi"),
                        "sar": ("Berlin/berlin_sar.mat", "berlin_sar"),
                        "ground_truth": ("Berlin/berlin_gt.mat", "berlin_gt"),
                        "train": ("Berlin/berlin_index.mat", "berlin_train"),
                        "test": ("Berlin/berlin_index.mat", "berlin_test")},
    ("yellow-river", "asyffnet"): {"hsi": ("HHK/data_hsi.mat", "data"),
                                   "sar": ("HHK/data_sar.mat", "data"),
                                   "train": ("HHK/mask_train.mat", "mask_train"),
                                   "test": ("HHK/mask_test.mat", "mask_test")},
    ("yellow-river", "index"): {"hsi": ("YellowRiverEstuary/data_hsi.mat", "data"),
                                "sar": ("YellowRiverEstuary/data_sar.mat", "data"),
                                "ground_truth": ("YellowRiverEstuary/data_gt.mat", "data"),
                                "train": ("YellowRiverEstuary/data_index.mat", "train_index"),
                                "test": ("YellowRiverEstuary/data_index.mat", "test_index")},
    ("lcz-hk", "mat"): {"hsi": ("data_MSI.mat", "MSI"), "sar": ("data_SAR.mat", "SAR"),
                        "ground_truth": ("label.mat", "label")},
}


def _source_array(path: Path, key: str | None) -> np.ndarray:
    """Source data read without the importer: (bands, rows, cols) or (rows, cols)."""
    if key is None:
        with rasterio.open(path) as src:
            data = src.read()
        return data[0] if data.shape[0] == 1 and "Samples" in path.name else data
    top, *rest = key.replace("[0]", "").split(".")
    value: Any = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)[top]
    for field in rest:
        if isinstance(value, np.ndarray):  # the Lidar struct array
            value = value.ravel()[0]
        value = getattr(value, field)
    array = np.asarray(value)
    return np.moveaxis(array, -1, 0) if array.ndim == 3 else array


def _read(path: Path) -> tuple[np.ndarray, Any]:
    with rasterio.open(path) as src:
        return src.read(), src.profile | {"colormap": src.colormap(1) if src.count == 1 and
                                          src.colorinterp[0].name == "palette" else None,
                                          "descriptions": src.descriptions}


@pytest.mark.parametrize(("dataset", "form"), list(EXPECTED))
def test_import_standin(tmp_path: Path, dataset: str, form: str) -> None:
    src = standins.write_standin(tmp_path / "src", dataset, form, SHAPE)
    out = tmp_path / "out"
    result = import_dataset(dataset, src, out, creation_options=CO)
    spec = DATASETS[dataset]
    expected = EXPECTED[(dataset, form)]
    record = json.loads((out / "dataset.json").read_text())
    assert record == json.loads(json.dumps(result.record))
    assert {f["role"]: (f["path"], f["key"]) for f in record["files"]} == expected
    assert set(record["outputs"]) == set(expected)
    assert sorted(p.name for p in out.glob("*.tif")) == sorted(OUTPUT_NAMES[r] for r in expected)
    assert record["classes"] == spec.classes.to_json()

    georeferenced = form == "dfc-tif"
    gt_source: np.ndarray | None = None
    if "ground_truth" in expected:
        gt_source = _source_array(src / expected["ground_truth"][0], expected["ground_truth"][1])
    for role, (name, key) in expected.items():
        data, profile = _read(out / OUTPUT_NAMES[role])
        if georeferenced:
            assert profile["crs"].to_epsg() == 26915
            assert profile["transform"] == Affine(2.5, 0, 268_000.0, 0, -2.5, 3_290_000.0)
        else:
            assert profile["crs"] is None
            assert profile["transform"] == Affine(spec.gsd, 0, 0, 0, -spec.gsd, 0)
        assert data.shape[-2:] == SHAPE
        if role in ("train", "test", "ground_truth"):
            assert profile["dtype"] == "uint8" and data.shape[0] == 1 and profile["nodata"] == 0
            labels = data[0]
            if name.endswith("_index.mat"):  # coordinates into the ground truth
                assert gt_source is not None
                coords = scipy.io.loadmat(str(src / name))[key]
                source = np.zeros_like(gt_source)
                source[coords[:, 0], coords[:, 1]] = gt_source[coords[:, 0], coords[:, 1]]
            else:
                source = _source_array(src / name, key)
            np.testing.assert_array_equal(labels, np.where(source == -1, 0, source))
            assert labels.max() <= len(spec.class_names)
            cmap = profile["colormap"]
            for info in spec.classes:
                assert cmap[info.id][:3] == info.color
            counts = np.bincount(labels.ravel(), minlength=len(spec.class_names) + 1)[1:]
            assert record["label_counts"][role] == {str(i + 1): int(n)
                                                   for i, n in enumerate(counts)}
            assert (out / OUTPUT_NAMES[role]).with_suffix(".qml").exists()
        else:
            source = _source_array(src / name, key)
            if source.ndim == 2:
                source = source[np.newaxis]
            assert data.shape == source.shape
            want = np.float32 if source.dtype == np.float64 else source.dtype
            assert data.dtype == want
            np.testing.assert_array_equal(data, source.astype(want))
            if role in spec.band_names and len(spec.band_names[role]) == data.shape[0]:
                assert profile["descriptions"] == spec.band_names[role]
    if "train" in expected and "test" in expected:
        train = _read(out / "train_labels.tif")[0]
        test = _read(out / "test_labels.tif")[0]
        assert not ((train > 0) & (test > 0)).any()
    missing_roles = {m["role"] for m in record["missing"]}
    assert missing_roles == set(spec.sources) - set(expected)
    if spec.shape is not None:
        assert any("published" in w for w in record["warnings"])  # stand-ins are smaller


def test_published_shape_gives_no_size_warning(tmp_path: Path) -> None:
    spec = DATASETS["trento"]
    standins.write_standin(tmp_path / "src", "trento", "split", spec.shape)
    (tmp_path / "src" / "HSI.mat").unlink()  # keep it fast: labels + 1-band LiDAR only
    result = import_dataset("trento", tmp_path / "src", tmp_path / "out", creation_options=CO)
    assert not any("published" in w for w in result.warnings)
    assert result.record["missing"][0]["role"] == "hsi"
    assert any("hyperspectral image" in n and "Italy_hsi.mat" in n for n in result.notes)


# -- errors and edge cases ------------------------------------------------------------------

def test_nothing_found_names_expected_files(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "README.txt").write_text("nothing here")
    with pytest.raises(InputError, match=r"no augsburg files.*data_HS_LR\.mat.*TrainImage\.mat"):
        import_dataset("augsburg", tmp_path / "src", tmp_path / "out", creation_options=CO)
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="does not exist"):
        import_dataset("augsburg", tmp_path / "nope", tmp_path / "out", creation_options=CO)
    with pytest.raises(ConfigError, match="unknown dataset 'pavia'"):
        import_dataset("pavia", tmp_path / "src", tmp_path / "out", creation_options=CO)


def test_sizes_that_differ(tmp_path: Path) -> None:
    src = standins.write_standin(tmp_path / "src", "muufl", "mat", SHAPE)
    scipy.io.savemat(str(src / "LiDAR.mat"), {"LiDAR": np.zeros((5, 5, 2), np.float32)})
    with pytest.raises(AlignmentError, match="differ in size"):
        import_dataset("muufl", src, tmp_path / "out", creation_options=CO)


def test_label_values_out_of_range(tmp_path: Path) -> None:
    src = standins.write_standin(tmp_path / "src", "trento", "mat", SHAPE)
    gt = np.zeros(SHAPE, np.uint8)
    gt[0, 0] = 9
    scipy.io.savemat(str(src / "Trento_gt.mat"), {"Trento_gt": gt})
    with pytest.raises(LabelError, match=r"label values \[9\] outside 0..6"):
        import_dataset("trento", src, tmp_path / "out", creation_options=CO)


def test_unknown_key_and_single_variable_fallback(tmp_path: Path) -> None:
    src = standins.write_standin(tmp_path / "src", "trento", "mat", SHAPE)
    gt = scipy.io.loadmat(str(src / "Trento_gt.mat"))["Trento_gt"]
    scipy.io.savemat(str(src / "Trento_gt.mat"), {"labels_v2": gt})  # one variable: used
    result = import_dataset("trento", src, tmp_path / "out", creation_options=CO)
    assert [f["key"] for f in result.record["files"] if f["role"] == "ground_truth"] == [
        "labels_v2"]
    scipy.io.savemat(str(src / "Trento_gt.mat"), {"a": gt, "b": gt})  # two: ambiguous
    with pytest.raises(InputError, match=r"holds variables \['a', 'b'\]"):
        import_dataset("trento", src, tmp_path / "out2", creation_options=CO)


def test_checksum_mismatch_warns_or_fails_with_strict(tmp_path: Path) -> None:
    src = standins.write_standin(tmp_path / "src", "trento", "italy", SHAPE)
    result = import_dataset("trento", src, tmp_path / "out", creation_options=CO)
    mismatched = [w for w in result.warnings if "SHA-256" in w]
    assert len(mismatched) == 3 and any("allgrd.mat" in w for w in mismatched)
    assert {f["checksum"] for f in result.record["files"]} == {"mismatch"}
    with pytest.raises(InputError, match=r"SHA-256 .* differs"):
        import_dataset("trento", src, tmp_path / "out2", strict=True, creation_options=CO)
    assert not (tmp_path / "out2" / "hsi.tif").exists()


def test_existing_outputs_refused_then_overwritten(tmp_path: Path) -> None:
    src = standins.write_standin(tmp_path / "src", "berlin", "s2fl", SHAPE)
    import_dataset("berlin", src, tmp_path / "out", creation_options=CO)
    before = (tmp_path / "out" / "hsi.tif").stat().st_mtime_ns
    with pytest.raises(OutputError, match="exists"):
        import_dataset("berlin", src, tmp_path / "out", creation_options=CO)
    assert (tmp_path / "out" / "hsi.tif").stat().st_mtime_ns == before
    import_dataset("berlin", src, tmp_path / "out", overwrite=True, creation_options=CO)


def test_two_equally_near_copies_are_ambiguous(tmp_path: Path) -> None:
    standins.write_standin(tmp_path / "src" / "a", "trento", "italy", SHAPE)
    standins.write_standin(tmp_path / "src" / "b", "trento", "italy", SHAPE)
    with pytest.raises(InputError, match="several candidate"):
        import_dataset("trento", tmp_path / "src", tmp_path / "out", creation_options=CO)
    # A nearer copy wins over a deeper one, which is noted.
    standins.write_standin(tmp_path / "src", "trento", "italy", SHAPE)
    result = import_dataset("trento", tmp_path / "src", tmp_path / "out", creation_options=CO)
    assert result.record["files"][0]["path"] == "Italy_hsi.mat"
    assert any("also matches" in n for n in result.notes)


def test_coordinates_without_ground_truth_and_one_based(tmp_path: Path) -> None:
    src = standins.write_standin(tmp_path / "src", "augsburg", "ouc", SHAPE)
    folder = src / "Augsburg"
    index = scipy.io.loadmat(str(folder / "augsburg_index.mat"))
    gt = scipy.io.loadmat(str(folder / "augsburg_gt.mat"))["augsburg_gt"]
    # MATLAB-made coordinates are 1-based.
    scipy.io.savemat(str(folder / "augsburg_index.mat"),
                     {k: index[k] + 1 for k in ("augsburg_train", "augsburg_test")})
    result = import_dataset("augsburg", src, tmp_path / "out", creation_options=CO)
    assert any("1-based" in n for n in result.notes)
    train = _read(tmp_path / "out" / "train_labels.tif")[0][0]
    test = _read(tmp_path / "out" / "test_labels.tif")[0][0]
    np.testing.assert_array_equal(np.maximum(train, test), gt)
    (folder / "augsburg_gt.mat").unlink()
    result = import_dataset("augsburg", src, tmp_path / "out2", creation_options=CO)
    assert set(result.outputs) == {"hsi", "sar"}
    assert any("no ground truth map" in w for w in result.warnings)
    assert any("no augsburg labels" in w for w in result.warnings)


def test_matlab_v73_file(tmp_path: Path) -> None:
    pytest.importorskip("h5py")
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    hsi = rng.random((*SHAPE, 63)).astype(np.float32)
    gt = rng.integers(0, 7, SHAPE).astype(np.uint8)
    standins.write_v73(src / "Italy_hsi.mat", data=hsi)
    standins.write_v73(src / "allgrd.mat", mask_test=gt)
    result = import_dataset("trento", src, tmp_path / "out", creation_options=CO)
    np.testing.assert_array_equal(_read(tmp_path / "out" / "hsi.tif")[0],
                                  np.moveaxis(hsi, -1, 0))
    np.testing.assert_array_equal(_read(tmp_path / "out" / "ground_truth.tif")[0][0], gt)
    assert result.record["files"][0]["key"] == "data"


def test_spec_table() -> None:
    assert {n: len(s.class_names) for n, s in DATASETS.items()} == {
        "houston2013": 15, "trento": 6, "muufl": 11, "augsburg": 7, "berlin": 8,
        "yellow-river": 5, "lcz-hk": 17}
    assert {d.value for d in DatasetName} == set(DATASETS)
    assert set(standins.FORMS) == set(DATASETS)
    assert {(d, f) for d, forms in standins.FORMS.items() for f in forms} == set(EXPECTED)
    for spec in DATASETS.values():
        assert len(set(spec.class_colors)) == len(spec.class_colors), spec.name
        assert len(set(spec.class_names)) == len(spec.class_names), spec.name
        assert "hsi" in spec.sources and any(r in spec.sources for r in ("lidar", "sar"))
        assert spec.official_split == ("train" in spec.sources and spec.name in (
            "houston2013", "augsburg", "berlin", "yellow-river"))
        for role, counts in spec.verified_counts.items():
            assert role in spec.sources and len(counts) == len(spec.class_names)


# -- real data ------------------------------------------------------------------------------

@pytest.fixture
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not present at {REAL_DATA}")
    return REAL_DATA


# Per-class counts from shared/data/README.md.
HOUSTON_TRAIN = [198, 190, 192, 188, 186, 182, 196, 191, 193, 191, 181, 192, 184, 181, 187]
HOUSTON_TEST = [1053, 1064, 505, 1056, 1056, 143, 1072, 1053, 1059, 1036, 1054, 1041, 285, 247,
                473]
TRENTO_ALL = [4034, 2903, 479, 9123, 10501, 3174]


def _counts(path: Path, n: int) -> list[int]:
    labels = _read(path)[0][0]
    return [int(v) for v in np.bincount(labels.ravel(), minlength=n + 1)[1:]]


def test_real_trento(real_data: Path, tmp_path: Path) -> None:
    result = import_dataset("trento", real_data / "trento", tmp_path / "out", strict=True)
    assert set(result.outputs) == {"lidar", "ground_truth"}
    lidar, profile = _read(tmp_path / "out" / "lidar.tif")
    source = scipy.io.loadmat(str(real_data / "trento" / "Italy_lidar.mat"))["data"]
    assert lidar.shape == (2, 166, 600) and lidar.dtype == np.float32
    np.testing.assert_array_equal(lidar, np.moveaxis(source, -1, 0))
    assert profile["crs"] is None and profile["transform"] == Affine(1, 0, 0, 0, -1, 0)
    assert _counts(tmp_path / "out" / "ground_truth.tif", 6) == TRENTO_ALL
    assert {f["checksum"] for f in result.record["files"]} == {"verified"}
    assert result.record["missing"][0] == {
        "role": "hsi", "expected": DATASETS["trento"].expected_files("hsi")}
    assert any("carry no georeferencing" in n for n in result.notes)


def test_real_houston2013_tif_and_mat(real_data: Path, tmp_path: Path) -> None:
    split = real_data / "houston2013" / "official_split"
    result = import_dataset("houston2013", real_data / "houston2013", tmp_path / "tif",
                            strict=True)
    assert set(result.outputs) == {"train", "test"}
    assert [f["path"] for f in result.record["files"]] == [
        "official_split/2013_IEEE_GRSS_DF_Contest_Samples_TR.tif",
        "official_split/2013_IEEE_GRSS_DF_Contest_Samples_VA.tif"]
    assert _counts(tmp_path / "tif" / "train_labels.tif", 15) == HOUSTON_TRAIN
    assert _counts(tmp_path / "tif" / "test_labels.tif", 15) == HOUSTON_TEST
    assert result.record["label_counts"]["train"]["6"] == 182
    # The .mat copies alone give the same maps.
    mats = tmp_path / "mats"
    mats.mkdir()
    for name in ("TRLabel.mat", "TSLabel.mat"):
        shutil.copy(split / name, mats / name)
    result = import_dataset("houston2013", mats, tmp_path / "mat", strict=True)
    assert {f["checksum"] for f in result.record["files"]} == {"verified"}
    for name in ("train_labels.tif", "test_labels.tif"):
        np.testing.assert_array_equal(_read(tmp_path / "mat" / name)[0],
                                      _read(tmp_path / "tif" / name)[0])
    _, profile = _read(tmp_path / "mat" / "train_labels.tif")
    assert profile["transform"] == Affine(2.5, 0, 0, 0, -2.5, 0)
    assert (profile["height"], profile["width"]) == (349, 1905)


# -- CLI ------------------------------------------------------------------------------------

def _app() -> typer.Typer:
    app = typer.Typer(cls=_S2finGroup)

    @app.callback()
    def _root() -> None:
        """test root"""

    app.add_typer(datasets)
    return app


def test_cli_list() -> None:
    runner = CliRunner()
    result = runner.invoke(_app(), ["datasets", "list"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for spec in DATASETS.values():
        assert spec.name in result.output
    assert "Running track" in result.output
    result = runner.invoke(_app(), ["datasets", "list", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert [d["name"] for d in data] == list(DATASETS)
    assert data[1]["expected_files"]["ground_truth"][0] == "allgrd.mat"


def test_cli_import(tmp_path: Path) -> None:
    runner = CliRunner()
    src = standins.write_standin(tmp_path / "src", "muufl", "campus", SHAPE)
    small_tiles = ["--co", "BLOCKXSIZE=32", "--co", "BLOCKYSIZE=32"]
    result = runner.invoke(_app(), ["datasets", "import", "MUUFL", str(src), "-o",
                                    str(tmp_path / "out"), "--json", *small_tiles])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["dataset"] == "muufl" and set(record["outputs"]) == {
        "hsi", "lidar", "ground_truth"}
    result = runner.invoke(_app(), ["datasets", "import", "muufl", str(src), "-o",
                                    str(tmp_path / "out")])
    assert result.exit_code == OutputError.exit_code
    result = runner.invoke(_app(), ["datasets", "import", "muufl", str(src), "-o",
                                    str(tmp_path / "out"), "--overwrite", *small_tiles],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "hsi.tif" in result.stdout and "missing training labels" in result.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(_app(), ["datasets", "import", "berlin", str(empty), "-o",
                                    str(tmp_path / "o2")])
    assert result.exit_code == InputError.exit_code
    assert "data_HS_LR.mat" in result.output
    result = runner.invoke(_app(), ["datasets", "import", "pavia", str(empty), "-o", "x"])
    assert result.exit_code == 2
