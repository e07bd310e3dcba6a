"""Scene configuration, the three presets and their class catalogues."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from rasterio.crs import CRS
from rasterio.errors import CRSError

from s2fin_cli.classes import ClassInfo, ClassTable
from s2fin_cli.errors import ConfigError
from s2fin_cli.synth.spectra import MSI_BAND_SETS

PRESETS = ("urban", "agricultural", "msi-sar")
OPTICAL_KINDS = ("vnir", "vnir-swir", "msi")
ACTIVE_KINDS = ("lidar", "sar")
SAR_POLARIZATIONS = {2: ("VV", "VH"), 4: ("VV", "VH", "HH", "HV")}
ORIGIN_EPSG = 32632  # the CRS of SynthConfig.origin


@dataclass(frozen=True)
class ClassSpec:
    """A class of a preset: the key the layout uses, name, colour and the confusion it creates."""

    key: str
    name: str
    color: tuple[int, int, int]
    confusion: str


_URBAN_CLASSES = (
    ClassSpec("road", "Road", (140, 140, 140),
              "asphalt at ground level; the same spectrum as bitumen roofs and parking lots"),
    ClassSpec("parking", "Parking lot", (70, 70, 90),
              "the road's asphalt at the road's height, told apart only by spatial texture "
              "(bay markings, parked cars) and shape"),
    ClassSpec("roof_bitumen", "Roof (bitumen)", (190, 60, 60),
              "the road's asphalt 4-25 m up: only the height (LiDAR) separates it"),
    ClassSpec("roof_concrete", "Roof (concrete)", (235, 170, 150),
              "bright flat roof; spectrally the membrane roof's twin"),
    # Light grey-white (was #f5cd46, a yellow CIEDE2000 5.9 from Row crops): every preset's
    # closest pair of colours is at least 15 apart (tests/reliability/test_io_findings.py).
    ClassSpec("roof_membrane", "Roof (membrane)", (225, 225, 235),
              "the concrete continuum plus narrow C-H absorptions (915, 1210, 1730, 2310 nm): "
              "only fine spectral detail separates it"),
    ClassSpec("trees", "Trees", (25, 100, 35),
              "leaves like grass and shrubs; 6-22 m crowns: height and roughness"),
    ClassSpec("shrubs", "Shrubs", (120, 175, 60),
              "leaves like grass and trees; 0.5-3 m: height and roughness"),
    ClassSpec("grass", "Grass", (175, 235, 125),
              "leaves like shrubs and trees at ground level; smooth meadow texture"),
    ClassSpec("row_crops", "Row crops", (215, 190, 50),
              "alternating vegetation and soil rows: a mixture spectrum between grass and bare "
              "soil, told apart by the row texture"),
    ClassSpec("bare_soil", "Bare soil", (150, 105, 55),
              "the soil between crop rows, without the rows"),
    ClassSpec("water", "Water", (40, 110, 220),
              "dark like shadowed asphalt in the NIR; flat and low"),
)

_AGRI_CLASSES = (
    ClassSpec("meadow", "Meadow", (175, 235, 125),
              "leaves like cereal, hedgerows and forest; smooth texture, low"),
    ClassSpec("cereal", "Cereal", (235, 215, 110),
              "a canopy spectrally close to meadow; tramlines every 12-24 m and a different "
              "SAR response (vertical stems)"),
    ClassSpec("row_crops", "Row crops", (215, 160, 40),
              "vegetation and soil rows 1.5-3 m apart: a vegetation/soil mixture, told apart "
              "by texture"),
    ClassSpec("vineyard", "Vineyard", (150, 50, 130),
              "1.6-2 m tall rows 2.5-3 m apart over soil or dry grass: texture and height "
              "(SAR volume / trellis returns)"),
    ClassSpec("soil_clay", "Bare soil (clay)", (160, 110, 60),
              "the same soil continuum as the calcareous soil; a narrow Al-OH absorption at "
              "2205 nm only"),
    ClassSpec("soil_carbonate", "Bare soil (calcareous)", (230, 225, 205),
              "the clay soil's continuum; a narrow carbonate absorption at 2338 nm only"),
    ClassSpec("forest", "Forest", (25, 100, 35),
              "leaves like meadow; tall rough canopy (SAR volume scattering)"),
    ClassSpec("hedgerow", "Hedgerows & shrubs", (100, 160, 70),
              "leaves like forest and meadow; intermediate height, linear shapes"),
    ClassSpec("water", "Water", (40, 110, 220), "dark, smooth: low SAR backscatter"),
    ClassSpec("road", "Road & track", (140, 140, 140),
              "asphalt and gravel; narrow linear objects, mixed pixels at the edges"),
    ClassSpec("farm_building", "Farm building", (200, 60, 60),
              "metal roofs: bright in the optical, double-bounce in SAR"),
)

_MSI_CLASSES = (
    *(c for c in _AGRI_CLASSES if c.key not in ("soil_clay", "soil_carbonate")),
    ClassSpec("bare_soil", "Bare soil", (160, 110, 60),
              "the soil between crop rows, without the rows (10 m pixels hide the rows)"),
)

PRESET_CLASSES: dict[str, tuple[ClassSpec, ...]] = {
    "urban": _URBAN_CLASSES,
    "agricultural": _AGRI_CLASSES,
    "msi-sar": _MSI_CLASSES,
}

_PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    # Munich-like, UTM 32N, 1 m: an urban fringe with HSI (VNIR, Houston-2013-like) + LiDAR.
    "urban": {"optical": "vnir", "bands": 144, "active": "lidar", "pixel_size": 1.0,
              "origin": (691200.0, 5335800.0), "oversample": 1},
    # Augsburg-like: HSI (VNIR-SWIR, 180 bands) + SAR at 1 m.
    "agricultural": {"optical": "vnir-swir", "bands": 180, "active": "sar", "pixel_size": 1.0,
                     "origin": (640320.0, 5357760.0), "oversample": 1},
    # Upper Rhine plain, Sentinel-2-like MSI + Sentinel-1-like SAR at 10 m (rendered at 2.5 m).
    "msi-sar": {"optical": "msi", "bands": 12, "active": "sar", "pixel_size": 10.0,
                "origin": (402560.0, 5318720.0), "oversample": 4},
}


@dataclass(frozen=True)
class SynthConfig:
    """Everything that defines a synthetic scene; same config (and seed) -> identical arrays.

    Use :meth:`for_preset` to get the preset's defaults for the fields left out.
    """

    preset: str = "urban"
    height: int = 256
    width: int = 256
    seed: int = 0
    difficulty: float = 0.5
    optical: str = "vnir"
    bands: int = 144
    active: str = "lidar"
    lidar_intensity: bool = True
    sar_bands: int = 2
    sar_db: bool = True
    sar_looks: float | None = None  # None: from the difficulty (13 looks at 0 .. 1 look at 1)
    sar_resolution_m: float | None = None  # None: 4 x pixel size, at least 4 m
    pixel_size: float = 1.0
    oversample: int = 1
    epsg: int = 32632
    # Upper-left corner (x, y) in ORIGIN_EPSG (UTM 32N metres): the place the scene shows. With
    # another --epsg the same place is expressed in that CRS (see synth.scene.scene_grid).
    origin: tuple[float, float] = (691200.0, 5335800.0)
    psf_sigma: float | None = None  # optical PSF in output pixels; None: 0.45 + 0.3 * difficulty
    train_per_class: int = 30
    train_fraction: float = 0.35  # share of each class's objects reserved for training
    label_buffer: int = 5  # test pixels keep this many pixels away from training objects
    nodata_edge: float = 0.0  # fraction of the scene lost to a swath edge (optical nodata)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_preset(cls, preset: str = "urban", *, size: int | None = None,
                   **overrides: Any) -> SynthConfig:
        """The preset's defaults with ``overrides`` (None values are ignored); ``size`` sets both
        height and width unless they are given."""
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}",
                              hint=f"choose one of {', '.join(PRESETS)}")
        values: dict[str, Any] = {"preset": preset, **_PRESET_DEFAULTS[preset]}
        optical = overrides.get("optical")
        if optical is not None and optical != values["optical"] and overrides.get("bands") is None:
            values["bands"] = 12 if optical == "msi" else 128
        if size is not None:
            values["height"] = values["width"] = size
        for key, value in overrides.items():
            if value is not None:
                values[key] = value
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown synth settings {sorted(unknown)}")
        if "origin" in values:
            values["origin"] = (float(values["origin"][0]), float(values["origin"][1]))
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values out of range or contradicting each other."""
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}",
                              hint=f"choose one of {', '.join(PRESETS)}")
        self._check_sensors()
        ranges = [
            (48 <= self.height <= 8192 and 48 <= self.width <= 8192,
             f"scene size {self.height}x{self.width} is out of range",
             "48 to 8192 pixels per side"),
            (0.0 <= self.difficulty <= 1.0, f"difficulty {self.difficulty} is outside 0..1", None),
            (0.1 <= self.pixel_size <= 100.0, f"pixel size {self.pixel_size} m is out of range",
             "0.1 to 100"),
            (1 <= self.oversample <= 8, f"oversample {self.oversample} is out of range", "1 to 8"),
            (self.train_per_class >= 1, "--train-per-class must be at least 1", None),
            (0 <= self.seed < (1 << 63), f"--seed must be in 0..{(1 << 63) - 1}, got {self.seed}",
             None),
            (0.05 <= self.train_fraction <= 0.8,
             f"train fraction {self.train_fraction} is out of range", "0.05 to 0.8"),
            (0 <= self.label_buffer <= 64, f"label buffer {self.label_buffer} is out of range",
             "0 to 64"),
            (0.0 <= self.nodata_edge <= 0.3, f"nodata edge {self.nodata_edge} is out of range",
             "0 to 0.3"),
            (self.psf_sigma is None or 0.0 <= self.psf_sigma <= 5.0,
             f"PSF sigma {self.psf_sigma} is out of range", "0 to 5 pixels"),
        ]
        for ok, message, hint in ranges:
            if not ok:
                raise ConfigError(message, hint=hint)
        self.crs()

    def _check_sensors(self) -> None:
        if self.optical not in OPTICAL_KINDS:
            raise ConfigError(f"unknown optical sensor {self.optical!r}",
                              hint=f"choose one of {', '.join(OPTICAL_KINDS)}")
        if self.optical == "msi":
            if self.bands not in MSI_BAND_SETS:
                raise ConfigError(f"{self.bands} multispectral bands is not a Sentinel-2 set",
                                  hint="use 10, 12 or 13")
        elif not 8 <= self.bands <= 512:
            raise ConfigError(f"{self.bands} hyperspectral bands is out of range",
                              hint="8 to 512")
        if self.active not in ACTIVE_KINDS:
            raise ConfigError(f"unknown active sensor {self.active!r}", hint="lidar or sar")
        if self.sar_bands not in SAR_POLARIZATIONS:
            raise ConfigError(f"{self.sar_bands} SAR bands",
                              hint="2 (VV, VH) or 4 (VV, VH, HH, HV)")
        if self.sar_looks is not None and not 1.0 <= self.sar_looks <= 100.0:
            raise ConfigError(f"{self.sar_looks} SAR looks is out of range", hint="1 to 100")

    def crs(self) -> CRS:
        """The grid's CRS; :class:`ConfigError` (exit 9) for an EPSG code PROJ does not know."""
        try:
            return CRS.from_epsg(self.epsg)
        except (CRSError, ValueError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise ConfigError(f"--epsg {self.epsg} is not a CRS PROJ knows ({reason})",
                              hint="e.g. 32632 (UTM zone 32N), 3035 (LAEA Europe) or 4326 "
                                   "(WGS 84, degrees)") from None

    @property
    def class_specs(self) -> tuple[ClassSpec, ...]:
        return PRESET_CLASSES[self.preset]

    def class_table(self) -> ClassTable:
        return ClassTable(tuple(ClassInfo(i, c.name, c.color)
                                for i, c in enumerate(self.class_specs, start=1)))

    def class_id(self, key: str) -> int:
        for i, c in enumerate(self.class_specs, start=1):
            if c.key == key:
                return i
        raise KeyError(key)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["origin"] = list(self.origin)
        return data

    def command(self, out_dir: str) -> str:
        """A ``s2fin synth`` command line that regenerates this scene."""
        defaults = SynthConfig.for_preset(self.preset)
        parts = ["s2fin", "synth", out_dir, "--preset", self.preset]
        if (self.height, self.width) != (defaults.height, defaults.width):
            parts += (["--size", str(self.height)] if self.height == self.width
                      else ["--height", str(self.height), "--width", str(self.width)])
        options = (("optical", "--optical"), ("bands", "--bands"), ("active", "--active"),
                   ("difficulty", "--difficulty"), ("train_per_class", "--train-per-class"),
                   ("label_buffer", "--label-buffer"), ("pixel_size", "--pixel-size"),
                   ("sar_bands", "--sar-bands"), ("sar_looks", "--sar-looks"),
                   ("nodata_edge", "--nodata-edge"), ("epsg", "--epsg"))
        parts += ["--seed", str(self.seed)]
        for attr, flag in options:
            value = getattr(self, attr)
            if value != getattr(defaults, attr) and value is not None:
                parts += [flag, str(value)]
        if not self.lidar_intensity:
            parts.append("--no-lidar-intensity")
        if not self.sar_db:
            parts.append("--sar-linear")
        return " ".join(parts)
