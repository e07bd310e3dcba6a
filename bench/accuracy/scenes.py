"""The benchmark's scenes, each as GeoTIFFs that :func:`s2fin_cli.io.reader.open_scene` reads.

* Generated scenes (``urban``, ``agricultural``, ``msi-sar``): :func:`generate_scene` +
  :func:`write_scene` into a temporary folder. Training draws come from ``train_labels.tif``,
  test pixels from ``test_labels.tif`` (disjoint from, and buffered away from, training objects).
* ``sen1floods11``: the Sen1Floods11 sample chip (Sentinel-2 13 bands int16 + Sentinel-1 VV/VH
  dB, EPSG:4326). The images are read in place; the label (-1 ignore, 0 not water, 1 water) is
  rewritten as 0 ignore, 1 not water, 2 water (s2fin reserves 0 for "unlabelled").
* ``eolearn``: the eo-learn TestEOPatch. NDVI (68 dates) becomes a 68-band "optical" raster
  (cloudy observations per the CLM mask set to NaN, which preprocessing fills with the band
  mean), the DEM a 1-band "lidar" raster, LULC the label map; grid from bbox.geojson.
* ``--dataset DIR``: a folder written by ``s2fin datasets import`` (hsi.tif, lidar.tif /
  sar.tif / dsm.tif, and train_labels.tif + test_labels.tif or ground_truth.tif).

Real scenes have one label map: training draws and test pixels both come from it (see
:mod:`bench.accuracy.protocol`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from s2fin_cli.classes import ClassInfo, ClassTable
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.writer import write_raster
from s2fin_cli.synth import PRESETS, SynthConfig, generate_scene, write_scene

REAL_SCENES = ("sen1floods11", "eolearn")
ALL_SCENES = (*PRESETS, *REAL_SCENES)
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclass
class BenchScene:
    """One scene of the benchmark: files, where training and test pixels come from, caveats."""

    key: str
    title: str
    optical: Path
    aux: Path
    aux_kind: str  # "lidar" or "sar"
    pool_labels: Path  # the labels N per class are drawn from
    test_labels: Path | None  # None: test on the other pixels of pool_labels
    classes: ClassTable | None = None  # names for the label ids (None: from the label file)
    description: str = ""
    caveats: list[str] = field(default_factory=list)
    generated: bool = False

    @property
    def split_kind(self) -> str:
        return "separate test labels" if self.test_labels is not None else "one label map"


def generated_scene(preset: str, workdir: Path, *, size: int, scene_seed: int,
                    train_per_class: int) -> BenchScene:
    """A synthetic scene of ``preset`` written to ``workdir/preset``."""
    config = SynthConfig.for_preset(preset, size=size, seed=scene_seed,
                                    train_per_class=train_per_class)
    scene = generate_scene(config)
    out = workdir / preset
    paths = write_scene(scene, out, overwrite=True)
    kind = config.active
    sensors = {"urban": "HSI (VNIR) + LiDAR DSM/intensity",
               "agricultural": "HSI (VNIR-SWIR) + SAR VV/VH",
               "msi-sar": "Sentinel-2-like MSI + Sentinel-1-like SAR"}[preset]
    return BenchScene(
        key=preset, title=f"{preset} (generated)",
        optical=paths["hsi"], aux=paths[kind], aux_kind=kind,
        pool_labels=paths["train_labels"], test_labels=paths["test_labels"],
        classes=config.class_table(),
        description=(f"`s2fin synth` preset `{preset}`: {sensors}, {config.bands} optical bands, "
                     f"{size} x {size} px at {config.pixel_size:g} m, scene seed {scene_seed}, "
                     f"{train_per_class} training-eligible pixels per class "
                     f"(`{config.command('DIR')}`)"),
        generated=True,
    )


def sen1floods11_scene(data_root: Path, workdir: Path) -> BenchScene:
    src = data_root / "sen1floods11_sample"
    s1, s2 = src / "Spain_7370579_S1Hand.tif", src / "Spain_7370579_S2Hand.tif"
    with rasterio.open(src / "Spain_7370579_LabelHand.tif") as ds:
        raw = ds.read(1)
        grid = Grid.of(ds)
    labels = np.where(raw >= 0, raw + 1, 0).astype(np.uint8)  # -1 -> 0, 0 -> 1, 1 -> 2
    classes = ClassTable((ClassInfo(1, "not water", (200, 180, 120)),
                          ClassInfo(2, "water", (40, 110, 220))))
    out = workdir / "sen1floods11"
    out.mkdir(parents=True, exist_ok=True)
    path = write_raster(out / "labels.tif", labels, grid, nodata=0, classes=classes,
                        overwrite=True)
    return BenchScene(
        key="sen1floods11", title="Sen1Floods11 chip (real)",
        optical=s2, aux=s1, aux_kind="sar", pool_labels=path, test_labels=None,
        classes=classes,
        description=("Sen1Floods11 hand-labelled chip Spain_7370579: Sentinel-2 L1C, 13 bands "
                     "(int16 TOA reflectance x 10 000) + Sentinel-1 VV/VH (dB), 512 x 512 px, "
                     "EPSG:4326 (~10 m)"),
        caveats=["binary (water / not water): OA/AA/Kappa of a 2-class problem, not comparable "
                 "with the multi-class scenes",
                 "a single chip: training and test pixels come from the same 5 km x 5 km, so "
                 "the test measures interpolation within one scene, not transfer",
                 "multispectral (13 bands), not hyperspectral; the grid is geographic "
                 "(degrees), so the 9 x 9 patch is ~9 x 9 pixels of ~10 m"],
    )


def _eolearn_grid(src: Path, height: int, width: int) -> Grid:
    geo = json.loads((src / "bbox.geojson").read_text())
    ring = np.asarray(geo["coordinates"][0], np.float64)
    west, east = float(ring[:, 0].min()), float(ring[:, 0].max())
    south, north = float(ring[:, 1].min()), float(ring[:, 1].max())
    transform = Affine((east - west) / width, 0, west, 0, -(north - south) / height, north)
    return Grid(CRS.from_epsg(32633), transform, width, height)


EOLEARN_CLASSES = ClassTable((
    ClassInfo(1, "cultivated land", (255, 255, 0)),
    ClassInfo(2, "forest", (5, 73, 7)),
    ClassInfo(3, "grassland", (170, 255, 0)),
    ClassInfo(4, "shrubland", (139, 69, 19)),
    ClassInfo(8, "artificial surface", (220, 20, 60)),
))


def eolearn_scene(data_root: Path, workdir: Path) -> BenchScene:
    src = data_root / "eolearn_testeopatch"
    ndvi = np.load(src / "data" / "NDVI.npy")[..., 0].astype(np.float32)  # (68, rows, cols)
    cloud = np.load(src / "mask" / "CLM.npy")[..., 0].astype(bool)
    dem = np.load(src / "data_timeless" / "DEM.npy")[..., 0].astype(np.float32)
    lulc = np.load(src / "mask_timeless" / "LULC.npy")[..., 0]
    ndvi[cloud] = np.nan
    grid = _eolearn_grid(src, ndvi.shape[1], ndvi.shape[2])
    out = workdir / "eolearn"
    out.mkdir(parents=True, exist_ok=True)
    dates = json.loads((src / "timestamps.json").read_text())
    optical = write_raster(out / "ndvi.tif", ndvi, grid, nodata=float("nan"),
                           band_descriptions=[f"NDVI {d[:10]}" for d in dates], overwrite=True)
    aux = write_raster(out / "dem.tif", dem[None], grid, nodata=-9999.0,
                       band_descriptions=["DEM (m)"], overwrite=True)
    labels = write_raster(out / "lulc.tif", lulc.astype(np.uint8), grid, nodata=0,
                          classes=EOLEARN_CLASSES, overwrite=True)
    cloudy = 100.0 * float(cloud.mean())
    return BenchScene(
        key="eolearn", title="eo-learn TestEOPatch (real)",
        optical=optical, aux=aux, aux_kind="lidar", pool_labels=labels, test_labels=None,
        classes=EOLEARN_CLASSES,
        description=("eo-learn TestEOPatch (Slovenia): Sentinel-2 NDVI at 68 dates "
                     "(2015-07 to 2017-12) as the optical axis, DEM as the 'active' raster, "
                     f"LULC labels, {ndvi.shape[1]} x {ndvi.shape[2]} px at ~10 m "
                     "(EPSG:32633)"),
        caveats=["the optical axis is an NDVI time series (68 'bands' = dates), not a spectrum: "
                 "HFSET's band-axis frequencies are temporal frequencies here",
                 f"cloudy observations ({cloudy:.1f} % of all date x pixel values, CLM mask) "
                 "are set to NaN and enter the inputs as the band mean",
                 "the DEM stands in for LiDAR (smooth terrain, 664-801 m): weak as a second "
                 "modality",
                 "very imbalanced classes (forest 7 601 px, grassland 1 777, shrubland 358, "
                 "artificial 198, cultivated 11): OA is dominated by forest, read AA and Kappa",
                 "a single 1 km x 1 km patch: training and test pixels are neighbours"],
    )


def dataset_scene(path: Path) -> BenchScene:
    """A folder written by ``s2fin datasets import``."""
    path = Path(path)
    if not (path / "hsi.tif").exists():
        raise FileNotFoundError(f"{path}/hsi.tif not found (expected a folder written by "
                                "`s2fin datasets import`)")
    aux, kind = None, "lidar"
    # The paper pairs Augsburg's HSI with its SAR: SAR before a DSM when a folder has both.
    for name, k in (("lidar.tif", "lidar"), ("sar.tif", "sar"), ("dsm.tif", "lidar")):
        if (path / name).exists():
            aux, kind = path / name, k
            break
    if aux is None:
        raise FileNotFoundError(f"{path} holds no lidar.tif, dsm.tif or sar.tif")
    train, test, gt = path / "train_labels.tif", path / "test_labels.tif", path / "ground_truth.tif"
    if train.exists() and test.exists():
        pool, test_labels = train, test
    elif gt.exists():
        pool, test_labels = gt, None
    else:
        raise FileNotFoundError(f"{path} holds neither train_labels.tif + test_labels.tif nor "
                                "ground_truth.tif")
    record = path / "dataset.json"
    name = path.name
    if record.exists():
        try:
            name = str(json.loads(record.read_text()).get("dataset", name))
        except (ValueError, AttributeError):
            pass
    return BenchScene(
        key=name, title=f"{name} (imported)", optical=path / "hsi.tif", aux=aux, aux_kind=kind,
        pool_labels=pool, test_labels=test_labels,
        description=(f"`s2fin datasets import` folder {path}: {aux.name} as the {kind} "
                     f"modality, {'train/test label maps' if test_labels else 'ground truth'}"),
    )


def build_scene(key: str, workdir: Path, *, data_root: Path, size: int, scene_seed: int,
                train_per_class: int) -> BenchScene:
    if key in PRESETS:
        return generated_scene(key, workdir, size=size, scene_seed=scene_seed,
                               train_per_class=train_per_class)
    if key == "sen1floods11":
        return sen1floods11_scene(data_root, workdir)
    if key == "eolearn":
        return eolearn_scene(data_root, workdir)
    raise ValueError(f"unknown scene {key!r}; choose from {', '.join(ALL_SCENES)}")
