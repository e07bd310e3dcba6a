"""What each public HSI + LiDAR/SAR benchmark looks like as it is commonly distributed.

One table, one entry per dataset: the files each role (hsi, lidar, sar, dsm, train, test,
ground_truth) is found in, in order of preference, with the MATLAB variable names ("keys") they
use; the class names and colours; band counts, scene size and ground sampling distance; known
SHA-256 sums of files with distinctive names; and per-class counts where they were verified.
The importer (:mod:`s2fin_cli.datasets.importer`) is generic and reads only this table.

Sources of the facts below: the data themselves where we hold them (/work/shared/data/README.md:
Trento LiDAR + ground truth, Houston2013 official train/test maps, their checksums and counts),
the contest and dataset papers (cited per entry), and the file names/keys used by the public
loaders of these benchmarks (e.g. rs-fusion-datasets, ISPRS_S2FL users). Facts not verified on
the data are marked as such.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from s2fin_cli.classes import RGB, ClassInfo, ClassTable

Role = Literal["hsi", "lidar", "sar", "dsm", "train", "test", "ground_truth"]

IMAGE_ROLES: tuple[Role, ...] = ("hsi", "lidar", "sar", "dsm")
LABEL_ROLES: tuple[Role, ...] = ("train", "test", "ground_truth")
ROLES: tuple[Role, ...] = IMAGE_ROLES + LABEL_ROLES

# The file each role is written to in the output directory.
OUTPUT_NAMES: Mapping[Role, str] = MappingProxyType({
    "hsi": "hsi.tif",
    "lidar": "lidar.tif",
    "sar": "sar.tif",
    "dsm": "dsm.tif",
    "train": "train_labels.tif",
    "test": "test_labels.tif",
    "ground_truth": "ground_truth.tif",
})

ROLE_TITLES: Mapping[Role, str] = MappingProxyType({
    "hsi": "hyperspectral image",
    "lidar": "LiDAR",
    "sar": "SAR",
    "dsm": "DSM",
    "train": "training labels",
    "test": "test labels",
    "ground_truth": "ground truth (all labels)",
})


@dataclass(frozen=True)
class Source:
    """One commonly distributed file form of a role.

    ``names`` are file names, matched case-insensitively anywhere under the source directory
    (shell wildcards allowed). For ``.mat`` files, ``keys`` are the variable names tried in order;
    a key may be a path into a MATLAB struct, e.g. ``hsi.Lidar[0].z``. A file holding a single
    variable is read whatever its name. ``.tif`` files are read with rasterio.

    ``coords``: the variable is an (n, 2) array of (row, col) pixel coordinates instead of a
    label map; the labels are taken from the ground truth at those pixels.
    """

    names: tuple[str, ...]
    keys: tuple[str, ...] = ()
    coords: bool = False
    note: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    citation: str
    gsd: float  # metres
    shape: tuple[int, int] | None  # published (rows, cols); None when not known to us
    class_names: tuple[str, ...]
    class_colors: tuple[RGB, ...]
    bands: Mapping[Role, int]  # published band count per image role
    sources: Mapping[Role, tuple[Source, ...]]
    official_split: bool
    band_names: Mapping[Role, tuple[str, ...]] = field(default_factory=dict)
    # Lower-case file name -> accepted SHA-256 sums.
    sha256: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Verified per-class pixel counts (class 1..N) per label role.
    verified_counts: Mapping[Role, tuple[int, ...]] = field(default_factory=dict)
    gsd_note: str = ""
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.class_colors):
            raise ValueError(f"{self.name}: class names and colours differ in number")
        for role, counts in self.verified_counts.items():
            if len(counts) != len(self.class_names):
                raise ValueError(f"{self.name}: verified {role} counts do not cover every class")

    @property
    def classes(self) -> ClassTable:
        return ClassTable(tuple(ClassInfo(i, n, c) for i, (n, c)
                                in enumerate(zip(self.class_names, self.class_colors, strict=True),
                                             start=1)))

    def expected_files(self, role: Role) -> list[str]:
        return [name for source in self.sources.get(role, ()) for name in source.names]


_S2FL = ("D. Hong, J. Hu, J. Yao, J. Chanussot, X. X. Zhu, \"Multimodal remote sensing benchmark "
         "datasets for land cover classification with a shared and specific feature learning "
         "model,\" ISPRS J. Photogramm. Remote Sens. 178:68-80, 2021")

HOUSTON2013 = DatasetSpec(
    name="houston2013",
    title="2013 IEEE GRSS Data Fusion Contest, University of Houston (CASI HSI + LiDAR DSM)",
    citation=("C. Debes et al., \"Hyperspectral and LiDAR Data Fusion: Outcome of the 2013 GRSS "
              "Data Fusion Contest,\" IEEE JSTARS 7(6):2405-2418, 2014"),
    gsd=2.5,
    shape=(349, 1905),
    class_names=("Healthy grass", "Stressed grass", "Synthetic grass", "Trees", "Soil", "Water",
                 "Residential", "Commercial", "Road", "Highway", "Railway", "Parking lot 1",
                 "Parking lot 2", "Tennis court", "Running track"),
    class_colors=((76, 230, 0), (160, 200, 90), (0, 150, 90), (0, 100, 0), (160, 82, 45),
                  (0, 90, 255), (255, 200, 150), (220, 0, 0), (128, 128, 128), (255, 170, 0),
                  (110, 60, 150), (205, 205, 60), (230, 140, 200), (0, 200, 200),
                  (255, 90, 60)),
    bands={"hsi": 144, "lidar": 1},
    band_names={"lidar": ("DSM elevation",)},
    sources={
        "hsi": (Source(("2013_IEEE_GRSS_DF_Contest_CASI.tif",)),
                Source(("HSI.mat", "Houston_HSI.mat", "Houston2013_HSI.mat", "houston.mat"),
                       ("HSI", "hsi", "houston_hsi", "houston", "data"))),
        "lidar": (Source(("2013_IEEE_GRSS_DF_Contest_LiDAR.tif",)),
                  Source(("LiDAR.mat", "DSM.mat", "Houston_LiDAR.mat", "Houston2013_DSM.mat"),
                         ("LiDAR", "DSM", "lidar", "dsm", "data"))),
        "train": (Source(("2013_IEEE_GRSS_DF_Contest_Samples_TR.tif",)),
                  Source(("TRLabel.mat",), ("TRLabel",)),
                  Source(("TR.mat", "Houston2013_TR.mat"), ("TR", "TR_map")),
                  Source(("houston_gt.mat",), ("houston_gt_tr",))),
        "test": (Source(("2013_IEEE_GRSS_DF_Contest_Samples_VA.tif",)),
                 Source(("TSLabel.mat",), ("TSLabel",)),
                 Source(("TE.mat", "Houston2013_TE.mat"), ("TE", "TE_map")),
                 Source(("houston_gt.mat",), ("houston_gt_te",))),
        "ground_truth": (Source(("gt.mat", "Houston_gt.mat"), ("gt", "GT", "houston_gt")),),
    },
    official_split=True,
    sha256={
        "2013_ieee_grss_df_contest_samples_tr.tif": (
            "c943016242f98a4c1e70fb35842562e654425de5364c58ceb5e1186029c193f7",),
        "2013_ieee_grss_df_contest_samples_va.tif": (
            "9fd0093af69a8f91cc0f3ef7c67dd7f961445223c0a2497bdbed03e7f329a010",),
        "trlabel.mat": ("b0ea556a4a05176f4aeccadf3aee51fee35f70365fdaa810aab85190a41aa7fc",),
        "tslabel.mat": ("43759d8fd94f0030800238eca04e097a22865b1b396ddb8116b635ade5c301ce",),
        # The contest's own files (2013_DFTC.zip), as pinned by rs-fusion-datasets.
        "2013_ieee_grss_df_contest_casi.tif": (
            "1440f38594e8e82cc1944c084fc138ef55a70af54122828e999c4fb438574c14",),
        "2013_ieee_grss_df_contest_lidar.tif": (
            "9f4facce8876ee84642d9cb03536baf0389506de97ddc01b73366fe4521de981",),
    },
    verified_counts={
        "train": (198, 190, 192, 188, 186, 182, 196, 191, 193, 191, 181, 192, 184, 181, 187),
        "test": (1053, 1064, 505, 1056, 1056, 143, 1072, 1053, 1059, 1036, 1054, 1041, 285, 247,
                 473),
    },
    notes=("CASI-1500, 144 bands 380-1050 nm; the official split is TR (training) / VA "
           "(validation, used as the test set).",),
)

TRENTO = DatasetSpec(
    name="trento",
    title="Trento, Italy (AISA Eagle HSI + Optech ALTM 3100EA LiDAR)",
    citation=("B. Rasti, P. Ghamisi, R. Gloaguen, \"Hyperspectral and LiDAR Fusion Using "
              "Extinction Profiles and Total Variation Component Analysis,\" IEEE TGRS "
              "55(7):3997-4007, 2017"),
    gsd=1.0,
    shape=(166, 600),
    class_names=("Apple trees", "Buildings", "Ground", "Woods", "Vineyard", "Roads"),
    class_colors=((120, 200, 60), (220, 30, 30), (200, 160, 100), (0, 110, 40), (150, 60, 160),
                  (128, 128, 128)),
    bands={"hsi": 63, "lidar": 2},
    band_names={"lidar": ("elevation", "second channel (undocumented; possibly intensity)")},
    sources={
        "hsi": (Source(("Italy_hsi.mat",), ("data",)),
                Source(("HSI.mat", "HSI_Trento.mat", "Trento_HSI.mat", "Trento.mat"),
                       ("HSI", "hsi_trento", "HSI_Trento", "trento", "data"))),
        "lidar": (Source(("Italy_lidar.mat",), ("data",)),
                  Source(("LiDAR.mat", "Lidar_Trento.mat", "Trento_LiDAR.mat"),
                         ("LiDAR", "lidar_trento", "Lidar_Trento", "lidar", "data"),
                         note="single-band copies hold channel 1 (elevation) only")),
        "train": (Source(("TRLabel.mat",), ("TRLabel",),
                         note="a fixed split used in the literature, not an official one"),),
        "test": (Source(("TSLabel.mat",), ("TSLabel",),
                        note="a fixed split used in the literature, not an official one"),),
        "ground_truth": (Source(("allgrd.mat",), ("mask_test",)),
                         Source(("Trento_gt.mat", "GT_Trento.mat", "gt.mat"),
                                ("Trento_gt", "gt_trento", "GT_Trento", "gt"))),
    },
    official_split=False,
    sha256={
        "italy_lidar.mat": ("a04dc90368d6a7b4f9d3936024ba9fef4105456c090daa14fff31b8b79e94ab1",),
        "allgrd.mat": ("7e3fb2a2ea22c2661dfc768db3cb93c9643b324e7e64fadedfa57f5edbf1818f",),
        "italy_hsi.mat": ("7b965fd405314b5c91451042e547a1923be6f5a38c6da83969032cff79729280",),
    },
    verified_counts={"ground_truth": (4034, 2903, 479, 9123, 10501, 3174)},
    notes=("HSI: 63 bands, 402.89-989.09 nm. No official train/test split: the ground truth "
           "holds every labeled pixel.",),
)

MUUFL = DatasetSpec(
    name="muufl",
    title="MUUFL Gulfport, University of Southern Mississippi campus (CASI-1500 HSI + LiDAR)",
    citation=("P. Gader et al., \"MUUFL Gulfport Hyperspectral and LiDAR Airborne Data Set,\" "
              "Univ. Florida, Tech. Rep. REP-2013-570, 2013; X. Du, A. Zare, \"Technical Report: "
              "Scene Label Ground Truth Map for MUUFL Gulfport Data Set,\" Univ. Florida, 2017"),
    gsd=1.0,
    gsd_note="nominal; the flight lines were resampled to 0.54 m x 1.0 m",
    shape=(325, 220),
    class_names=("Trees", "Mostly grass", "Mixed ground surface", "Dirt and sand", "Road",
                 "Water", "Building shadow", "Buildings", "Sidewalk", "Yellow curb",
                 "Cloth panels"),
    class_colors=((0, 110, 40), (120, 210, 70), (200, 170, 120), (230, 210, 140),
                  (110, 110, 110), (0, 90, 255), (60, 60, 100), (220, 30, 30), (200, 200, 200),
                  (255, 230, 0), (255, 0, 255)),
    bands={"hsi": 64, "lidar": 2},
    band_names={"lidar": ("first-return elevation", "last-return elevation")},
    sources={
        "hsi": (Source(("muufl_gulfport_campus_1_hsi_220_label.mat",), ("hsi.Data",)),
                Source(("HSI.mat", "MUUFL_HS.mat", "Muufl_hsi.mat", "MUUFL_HSI.mat"),
                       ("HSI", "MUUFL_HS", "hsi", "data")),
                Source(("data_HS_LR.mat",), ("hsi_data",))),
        "lidar": (Source(("muufl_gulfport_campus_1_hsi_220_label.mat",), ("hsi.Lidar[0].z",)),
                  Source(("LiDAR.mat", "Lidar.mat", "MUUFL_LiDAR.mat", "Muufl_lidar.mat"),
                         ("LiDAR", "Lidar", "MUUFL_Lidar", "lidar")),
                  Source(("data_SAR_HR.mat",), ("lidar_data",),
                         note="LiDAR despite the name, in some MUUFL repackagings")),
        "train": (Source(("muufl_tr.mat",), ("training_map",),
                         note="a split used in some papers, not an official one"),),
        "test": (Source(("muufl_ts.mat",), ("testing_map",),
                        note="a split used in some papers, not an official one"),),
        "ground_truth": (Source(("muufl_gulfport_campus_1_hsi_220_label.mat",),
                                ("hsi.sceneLabels.labels",)),
                         Source(("gt.mat", "MUUFL_gt.mat", "Muufl_gt.mat", "labels.mat"),
                                ("gt", "labels", "MUUFL_gt"))),
    },
    official_split=False,
    sha256={
        "muufl_gulfport_campus_1_hsi_220_label.mat": (
            "69420a72866dff4a858ae503e6e2981af46f406a4ad8f4dd642efa43feb59edc",),
    },
    notes=("Unlabeled pixels are -1 in the scene labels; they become 0.",
           "HSI: 64 bands (the 72 recorded, less 4 noisy bands at each end)."),
)

_AUGSBURG_BERLIN_SAR = ("VV intensity", "VH intensity", "Re(C12)", "Im(C12)")

AUGSBURG = DatasetSpec(
    name="augsburg",
    title="HS-SAR-DSM Augsburg (HySpex HSI, Sentinel-1 SAR, DSM)",
    citation=_S2FL,
    gsd=30.0,
    shape=(332, 485),
    class_names=("Forest", "Residential area", "Industrial area", "Low plants", "Allotment",
                 "Commercial area", "Water"),
    class_colors=((0, 110, 40), (230, 80, 80), (150, 150, 150), (150, 220, 80), (230, 180, 60),
                  (180, 0, 90), (0, 90, 255)),
    bands={"hsi": 180, "sar": 4, "dsm": 1},
    band_names={"sar": _AUGSBURG_BERLIN_SAR, "dsm": ("elevation",)},
    sources={
        "hsi": (Source(("data_HS_LR.mat",), ("data_HS_LR",)),
                Source(("augsburg_hsi.mat", "Augsburg_hsi.mat"), ("augsburg_hsi", "hsi"))),
        "sar": (Source(("data_SAR_HR.mat",), ("data_SAR_HR",)),
                Source(("augsburg_sar.mat",), ("augsburg_sar",))),
        "dsm": (Source(("data_DSM.mat",), ("data_DSM",)),),
        "train": (Source(("TrainImage.mat",), ("TrainImage",)),
                  Source(("augsburg_index.mat",), ("augsburg_train",), coords=True)),
        "test": (Source(("TestImage.mat",), ("TestImage",)),
                 Source(("augsburg_index.mat",), ("augsburg_test",), coords=True)),
        "ground_truth": (Source(("augsburg_gt.mat", "Augsburg_gt.mat"), ("augsburg_gt", "gt")),),
    },
    official_split=True,
    sha256={
        # The "augsburg-ouc" repackaging, as pinned by rs-fusion-datasets.
        "augsburg_gt.mat": ("065df71257f06c075ff3b37327c0fba75cc9146015a0f095a093fd12b9eaacbe",),
        "augsburg_hsi.mat": ("2f13839d7840b32f55e0489d6934776dcfded7f678e23a9d8c2c092573946583",),
        "augsburg_index.mat": (
            "8bc57037447cb42dbf3a8478d42d4bc217a53a6a0b349c2d67db8c660bef2f43",),
        "augsburg_sar.mat": ("cd1dbfad2346f47e51d105b05e11aaefc872fe487a94bdc2913f4eaee3f8e82b",),
    },
    notes=("HSI 180 bands (HySpex, resampled to 30 m); SAR: 4 Sentinel-1 dual-pol features "
           "(band meanings per Hong et al. 2021, not verified on the data).",),
)

BERLIN = DatasetSpec(
    name="berlin",
    title="HS-SAR Berlin (simulated EnMAP HSI, Sentinel-1 SAR)",
    citation=_S2FL,
    gsd=13.89,
    gsd_note="the HSI (30 m) was upsampled to the SAR grid",
    shape=(1723, 476),
    class_names=("Forest", "Residential area", "Industrial area", "Low plants", "Soil",
                 "Allotment", "Commercial area", "Water"),
    class_colors=((0, 110, 40), (230, 80, 80), (150, 150, 150), (150, 220, 80), (160, 100, 50),
                  (230, 180, 60), (180, 0, 90), (0, 90, 255)),
    bands={"hsi": 244, "sar": 4},
    band_names={"sar": _AUGSBURG_BERLIN_SAR},
    sources={
        "hsi": (Source(("data_HS_LR.mat",), ("data_HS_LR",)),
                Source(("berlin_hsi.mat", "Berlin_hsi.mat"), ("berlin_hsi", "hsi"))),
        "sar": (Source(("data_SAR_HR.mat",), ("data_SAR_HR",)),
                Source(("berlin_sar.mat",), ("berlin_sar",))),
        "train": (Source(("TrainImage.mat",), ("TrainImage",)),
                  Source(("berlin_index.mat",), ("berlin_train",), coords=True)),
        "test": (Source(("TestImage.mat",), ("TestImage",)),
                 Source(("berlin_index.mat",), ("berlin_test",), coords=True)),
        "ground_truth": (Source(("berlin_gt.mat", "Berlin_gt.mat"), ("berlin_gt", "gt")),),
    },
    official_split=True,
    sha256={
        # The "berlin-ouc" repackaging, as pinned by rs-fusion-datasets.
        "berlin_gt.mat": ("dd9286cd565535857721627878de3cbebffa2dacc625b539474d16cba3a7343e",),
        "berlin_hsi.mat": ("580f397d9f249b4ec3f02b8cc570d910d765afa9f77b17d8a4f4799edee94b1f",),
        "berlin_index.mat": ("1a66ec454ea95bbf5782525d9fcf9a04412a948b7b3aa6919ed324516d42a8b5",),
        "berlin_sar.mat": ("a6cf2f86db7f1a02c340e813a7b46f9c6c58e297e1eb9b5fa19ed49244b2b8a7",),
    },
    notes=("HSI 244 bands (EnMAP simulated from HyMap); SAR: 4 Sentinel-1 dual-pol features "
           "(band meanings per Hong et al. 2021, not verified on the data).",),
)

YELLOW_RIVER = DatasetSpec(
    name="yellow-river",
    title="Yellow River Estuary (hyperspectral + SAR), as distributed with AsyFFNet",
    citation=("W. Li, Y. Gao, M. Zhang, R. Tao, Q. Du, \"Asymmetric Feature Fusion Network for "
              "Hyperspectral and SAR Image Classification,\" IEEE TNNLS, 2022, "
              "doi:10.1109/TNNLS.2022.3149394"),
    gsd=30.0,
    gsd_note="assumed (a spaceborne hyperspectral imager); not stated by the loaders",
    shape=None,
    class_names=("Class 1", "Class 2", "Class 3", "Class 4", "Class 5"),
    class_colors=((0, 110, 40), (150, 220, 80), (200, 170, 120), (230, 80, 80),
                  (0, 90, 255)),
    bands={"hsi": 166, "sar": 3},
    sources={
        # AsyFFNet's own loader (data_loader.py, main_test.py; dataset "HHK"): the HSI and SAR
        # cubes under the key "data", and train/test masks.
        "hsi": (Source(("data_hsi.mat",), ("data",)),),
        "sar": (Source(("data_sar.mat",), ("data",)),),
        "train": (Source(("mask_train.mat",), ("mask_train",)),
                  Source(("data_index.mat",), ("train_index",), coords=True,
                         note="the repackaging with a full ground truth and pixel indexes")),
        "test": (Source(("mask_test.mat",), ("mask_test",)),
                 Source(("data_index.mat",), ("test_index",), coords=True,
                        note="the repackaging with a full ground truth and pixel indexes")),
        "ground_truth": (Source(("data_gt.mat",), ("data",)),),
    },
    official_split=True,
    notes=("166 HSI bands, 3 SAR bands and 5 classes per AsyFFNet's loader (dataset \"HHK\"); "
           "the loaders name neither the classes nor the sensors, so the classes are numbered "
           "and the published scene size is not checked.",
           "The same file names (data_hsi.mat, data_sar.mat, mask_*.mat) hold AsyFFNet's "
           "Augsburg and Berlin copies: import each folder under its own dataset name."),
)

# The Local Climate Zone scheme: built types 1-10, land cover A-G as 11-17.
_LCZ_NAMES = ("Compact high-rise", "Compact mid-rise", "Compact low-rise", "Open high-rise",
              "Open mid-rise", "Open low-rise", "Lightweight low-rise", "Large low-rise",
              "Sparsely built", "Heavy industry", "Dense trees", "Scattered trees",
              "Bush, scrub", "Low plants", "Bare rock or paved", "Bare soil or sand", "Water")
_LCZ_COLORS = ((140, 0, 0), (209, 0, 0), (255, 0, 0), (191, 77, 0), (255, 102, 0),
               (255, 153, 85), (250, 238, 5), (188, 188, 188), (255, 204, 170),
               (85, 85, 85), (0, 106, 0), (0, 170, 0), (100, 133, 37), (185, 219, 121),
               (0, 0, 0), (251, 247, 174), (106, 106, 255))

LCZ_HK = DatasetSpec(
    name="lcz-hk",
    title="LCZ Hong Kong (Sentinel-2 MSI + Sentinel-1 SAR, local climate zones)",
    citation=("D. Hong, L. Gao, N. Yokoya, J. Yao, J. Chanussot, Q. Du, B. Zhang, \"More "
              "Diverse Means Better: Multimodal Deep Learning Meets Remote-Sensing Imagery "
              "Classification,\" IEEE TGRS 59(5):4340-4354, 2021"),
    gsd=10.0,
    gsd_note="assumed (Sentinel-2 10 m bands); not stated by the loaders",
    shape=None,
    class_names=_LCZ_NAMES,
    class_colors=_LCZ_COLORS,
    bands={"hsi": 10, "sar": 4},
    sources={
        # A public loader (HSIDatasetBuilder, "MS_SAR_HK"): one variable per file, read
        # whatever its name; 10 MSI bands, 4 SAR bands, 17 classes.
        "hsi": (Source(("data_MSI.mat",), ("data_MSI", "MSI", "data")),),
        "sar": (Source(("data_SAR.mat",), ("data_SAR", "SAR", "data")),),
        "ground_truth": (Source(("label.mat",), ("label", "gt", "data")),),
    },
    official_split=False,
    notes=("Sentinel-2 (10 bands) as the optical image, Sentinel-1 (4 bands) as SAR, 17 local "
           "climate zones (ids 1-10 the built types, 11-17 the land-cover types A-G) per a "
           "public loader of the data (the dataset is distributed on request by its authors); "
           "the class order and the published scene size are not verified on the data. No "
           "train/test split comes with it (the loader draws one).",),
)

DATASETS: Mapping[str, DatasetSpec] = MappingProxyType(
    {spec.name: spec for spec in (HOUSTON2013, TRENTO, MUUFL, AUGSBURG, BERLIN, YELLOW_RIVER,
                                  LCZ_HK)}
)


def get_spec(name: str) -> DatasetSpec:
    """The spec of ``name`` (case-insensitive); KeyError naming the known datasets otherwise."""
    try:
        return DATASETS[name.lower()]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None
