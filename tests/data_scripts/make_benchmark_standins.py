"""Write small synthetic stand-ins of the public benchmarks in their distributed file forms.

Same file names, MATLAB variable names (keys), array layout (rows, cols, bands), band counts,
dtypes and label conventions (-1 unlabeled where the real files use it) as the real downloads;
only the scene is smaller (``shape``) and the values are random. Used by
tests/s2fin_cli/datasets/; also runnable by hand:

    python tests/data_scripts/make_benchmark_standins.py OUT_DIR [--shape 166 600]

writes every form to OUT_DIR/<dataset>/<form>/.
"""

from __future__ import annotations

import argparse
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.io
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning

from s2fin_cli.io.grid import Grid
from s2fin_cli.io.writer import write_raster

Shape = tuple[int, int]


def _labels(shape: Shape, n_classes: int, seed: int) -> np.ndarray:
    """A label map with every class present and ~30 % unlabeled pixels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, n_classes + 1, size=shape).astype(np.uint8)
    labels[rng.random(shape) < 0.3] = 0
    labels.flat[:n_classes] = np.arange(1, n_classes + 1)
    return labels


def _split(gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint train (every 4th labeled pixel) and test (the rest) maps."""
    flat_index = np.arange(gt.size).reshape(gt.shape)
    in_train = (flat_index % 4 == 0) & (gt > 0)
    return np.where(in_train, gt, 0).astype(np.uint8), np.where(~in_train, gt, 0).astype(np.uint8)


def _cube(shape: Shape, bands: int, dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "u":
        return rng.integers(0, 4000, size=(*shape, bands)).astype(dtype)
    return rng.random((*shape, bands)).astype(dtype)


def _minus_one(labels: np.ndarray) -> np.ndarray:
    """Float labels with -1 for unlabeled, as some repackagings store them."""
    return np.where(labels > 0, labels.astype(np.int16), -1).astype(np.float64)


def _mat(path: Path, **variables: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), variables)


def houston2013_mat(root: Path, shape: Shape) -> None:
    gt = _labels(shape, 15, 1)
    train, test = _split(gt)
    _mat(root / "HSI.mat", HSI=_cube(shape, 144, "float32", 2))
    _mat(root / "LiDAR.mat", LiDAR=_cube(shape, 1, "float32", 3)[..., 0])
    _mat(root / "TRLabel.mat", TRLabel=train)
    _mat(root / "TSLabel.mat", TSLabel=test)


def houston2013_dfc_tif(root: Path, shape: Shape) -> None:
    """The contest's own files: a georeferenced CASI/LiDAR pair and plain-TIFF label maps."""
    root.mkdir(parents=True, exist_ok=True)
    utm15 = Grid(CRS.from_epsg(26915), Affine(2.5, 0, 268_000.0, 0, -2.5, 3_290_000.0),
                 shape[1], shape[0])
    plain = Grid(None, Affine.identity(), shape[1], shape[0])
    gt = _labels(shape, 15, 4)
    train, test = _split(gt)
    cube = np.moveaxis(_cube(shape, 144, "uint16", 5), -1, 0)
    small_tiles = {"BLOCKXSIZE": "32", "BLOCKYSIZE": "32"}  # fast for tiny many-band rasters
    write_raster(root / "2013_IEEE_GRSS_DF_Contest_CASI.tif", np.ascontiguousarray(cube), utm15,
                 creation_options=small_tiles)
    write_raster(root / "2013_IEEE_GRSS_DF_Contest_LiDAR.tif",
                 _cube(shape, 1, "float32", 6)[..., 0], utm15)
    with warnings.catch_warnings():  # the label TIFFs have no georeferencing, on purpose
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        write_raster(root / "2013_IEEE_GRSS_DF_Contest_Samples_TR.tif", train, plain)
        write_raster(root / "2013_IEEE_GRSS_DF_Contest_Samples_VA.tif", test, plain)


def houston2013_rsfd_mat(root: Path, shape: Shape) -> None:
    """A repackaging with DSM.mat and float TR/TE maps that mark unlabeled pixels with -1."""
    gt = _labels(shape, 15, 7)
    train, test = _split(gt)
    _mat(root / "Houston2013" / "HSI.mat", HSI=_cube(shape, 144, "float64", 8))
    _mat(root / "Houston2013" / "DSM.mat", DSM=_cube(shape, 1, "float64", 9)[..., 0])
    _mat(root / "Houston2013" / "TR.mat", TR=_minus_one(train))
    _mat(root / "Houston2013" / "TE.mat", TE=_minus_one(test))


def trento_italy(root: Path, shape: Shape) -> None:
    _mat(root / "Italy_hsi.mat", data=_cube(shape, 63, "float32", 10))
    _mat(root / "Italy_lidar.mat", data=_cube(shape, 2, "float32", 11))
    _mat(root / "allgrd.mat", mask_test=_labels(shape, 6, 12))


def trento_mat(root: Path, shape: Shape) -> None:
    _mat(root / "HSI.mat", HSI=_cube(shape, 63, "float64", 13))
    _mat(root / "LiDAR.mat", LiDAR=_cube(shape, 1, "float64", 14)[..., 0])
    _mat(root / "Trento_gt.mat", Trento_gt=_labels(shape, 6, 15))


def trento_split(root: Path, shape: Shape) -> None:
    train, test = _split(_labels(shape, 6, 16))
    _mat(root / "HSI.mat", HSI=_cube(shape, 63, "float32", 17))
    _mat(root / "LiDAR.mat", LiDAR=_cube(shape, 1, "float32", 18)[..., 0])
    _mat(root / "TRLabel.mat", TRLabel=train)
    _mat(root / "TSLabel.mat", TSLabel=test)


def muufl_campus(root: Path, shape: Shape) -> None:
    """GatorSense's struct file: hsi.Data, hsi.Lidar(1).z, hsi.sceneLabels.labels (-1 unlabeled)."""
    gt = _labels(shape, 11, 19).astype(np.int16)
    gt[gt == 0] = -1
    lidar = np.empty((1, 2), dtype=object)
    lidar[0, 0] = {"z": _cube(shape, 2, "float64", 20)}
    lidar[0, 1] = {"z": _cube(shape, 2, "float64", 21)}
    _mat(root / "MUUFLGulfportSceneLabels" / "muufl_gulfport_campus_1_hsi_220_label.mat",
         hsi={"Data": _cube(shape, 64, "float64", 22), "Lidar": lidar,
              "sceneLabels": {"labels": gt.astype(np.float64)}})


def muufl_mat(root: Path, shape: Shape) -> None:
    gt = _labels(shape, 11, 23).astype(np.int16)
    gt[gt == 0] = -1
    _mat(root / "HSI.mat", HSI=_cube(shape, 64, "float32", 24))
    _mat(root / "LiDAR.mat", LiDAR=_cube(shape, 2, "float32", 25))
    _mat(root / "gt.mat", gt=gt)


def muufl_tr_ts(root: Path, shape: Shape) -> None:
    train, test = _split(_labels(shape, 11, 26))
    _mat(root / "HSI.mat", HSI=_cube(shape, 64, "float32", 27))
    _mat(root / "LiDAR.mat", LiDAR=_cube(shape, 2, "float32", 28))
    _mat(root / "muufl_tr.mat", training_map=train)
    _mat(root / "muufl_ts.mat", testing_map=test)


def _s2fl(root: Path, shape: Shape, hsi_bands: int, n_classes: int, dsm: bool, seed: int) -> None:
    train, test = _split(_labels(shape, n_classes, seed))
    _mat(root / "data_HS_LR.mat", data_HS_LR=_cube(shape, hsi_bands, "float64", seed + 1))
    _mat(root / "data_SAR_HR.mat", data_SAR_HR=_cube(shape, 4, "float64", seed + 2))
    if dsm:
        _mat(root / "data_DSM.mat", data_DSM=_cube(shape, 1, "float64", seed + 3)[..., 0])
    _mat(root / "TrainImage.mat", TrainImage=train)
    _mat(root / "TestImage.mat", TestImage=test)


def _ouc(root: Path, shape: Shape, name: str, hsi_bands: int, n_classes: int, seed: int) -> None:
    """The "-ouc" repackaging: a full ground truth plus (n, 2) 0-based train/test coordinates."""
    gt = _labels(shape, n_classes, seed)
    train, test = _split(gt)
    folder = root / name.capitalize()
    _mat(folder / f"{name}_hsi.mat", **{f"{name}_hsi": _cube(shape, hsi_bands, "uint16", seed + 1)})
    _mat(folder / f"{name}_sar.mat", **{f"{name}_sar": _cube(shape, 4, "float64", seed + 2)})
    _mat(folder / f"{name}_gt.mat", **{f"{name}_gt": gt})
    _mat(folder / f"{name}_index.mat", **{
        f"{name}_train": np.argwhere(train > 0).astype(np.int32),
        f"{name}_test": np.argwhere(test > 0).astype(np.int32),
        f"{name}_all": np.argwhere(gt > 0).astype(np.int32),
    })


def augsburg_s2fl(root: Path, shape: Shape) -> None:
    _s2fl(root, shape, 180, 7, True, 30)


def augsburg_ouc(root: Path, shape: Shape) -> None:
    _ouc(root, shape, "augsburg", 180, 7, 40)


def berlin_s2fl(root: Path, shape: Shape) -> None:
    _s2fl(root, shape, 244, 8, False, 50)


def berlin_ouc(root: Path, shape: Shape) -> None:
    _ouc(root, shape, "berlin", 244, 8, 60)


def yellow_river_asyffnet(root: Path, shape: Shape) -> None:
    """AsyFFNet's files (dataset "HHK"): cubes under "data", train/test masks."""
    train, test = _split(_labels(shape, 5, 70))
    _mat(root / "HHK" / "data_hsi.mat", data=_cube(shape, 166, "float64", 71))
    _mat(root / "HHK" / "data_sar.mat", data=_cube(shape, 3, "float64", 72))
    _mat(root / "HHK" / "mask_train.mat", mask_train=train)
    _mat(root / "HHK" / "mask_test.mat", mask_test=test)


def yellow_river_index(root: Path, shape: Shape) -> None:
    """The repackaging with a full ground truth and (n, 2) pixel indexes."""
    gt = _labels(shape, 5, 80)
    train, test = _split(gt)
    folder = root / "YellowRiverEstuary"
    _mat(folder / "data_hsi.mat", data=_cube(shape, 166, "float32", 81))
    _mat(folder / "data_sar.mat", data=_cube(shape, 3, "float32", 82))
    _mat(folder / "data_gt.mat", data=gt)
    _mat(folder / "data_index.mat", train_index=np.argwhere(train > 0).astype(np.int32),
         test_index=np.argwhere(test > 0).astype(np.int32),
         all_index=np.argwhere(gt > 0).astype(np.int32))


def lcz_hk_mat(root: Path, shape: Shape) -> None:
    """One variable per file (its name not fixed by the loader): MSI, SAR, 17-class labels."""
    _mat(root / "data_MSI.mat", MSI=_cube(shape, 10, "float64", 91))
    _mat(root / "data_SAR.mat", SAR=_cube(shape, 4, "float64", 92))
    _mat(root / "label.mat", label=_labels(shape, 17, 93))


# dataset -> form -> writer
FORMS: dict[str, dict[str, Callable[[Path, Shape], None]]] = {
    "houston2013": {"mat": houston2013_mat, "dfc-tif": houston2013_dfc_tif,
                    "rsfd-mat": houston2013_rsfd_mat},
    "trento": {"italy": trento_italy, "mat": trento_mat, "split": trento_split},
    "muufl": {"campus": muufl_campus, "mat": muufl_mat, "tr-ts": muufl_tr_ts},
    "augsburg": {"s2fl": augsburg_s2fl, "ouc": augsburg_ouc},
    "berlin": {"s2fl": berlin_s2fl, "ouc": berlin_ouc},
    "yellow-river": {"asyffnet": yellow_river_asyffnet, "index": yellow_river_index},
    "lcz-hk": {"mat": lcz_hk_mat},
}


def write_standin(root: Path, dataset: str, form: str, shape: Shape = (12, 20)) -> Path:
    """Write one form under ``root`` (created) and return ``root``."""
    FORMS[dataset][form](root, shape)
    return root


def write_v73(path: Path, **arrays: np.ndarray) -> None:
    """A MATLAB v7.3 (HDF5) file as MATLAB writes it: 512-byte header, axes reversed."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as fh:
        for name, array in arrays.items():
            fh.create_dataset(name, data=np.ascontiguousarray(array.T))
            fh[name].attrs["MATLAB_class"] = np.bytes_(
                {"f": "double" if array.dtype == np.float64 else "single",
                 "u": "uint8"}.get(array.dtype.kind, "double"))
    text = (b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 "
            b"HDF5 schema 1.00 .")
    header = text.ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0200) + b"IM"
    with path.open("r+b") as fh:
        fh.write(header)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--shape", type=int, nargs=2, default=(12, 20), metavar=("ROWS", "COLS"))
    args = parser.parse_args()
    for dataset, forms in FORMS.items():
        for form in forms:
            write_standin(args.out_dir / dataset / form, dataset, form, tuple(args.shape))
            print(args.out_dir / dataset / form)


if __name__ == "__main__":
    main()
