"""The model file: one safetensors file whose JSON metadata makes it self-describing.

Layout (format version 1; version 2 adds derived inputs, ``preprocessing.derived``; version 3
the height above ground's ground rule and place, ``derived.ground`` and ``derived.replace_dsm``):

- tensors ``model.*``: the network's state dict; ``preprocessing.*``: normalisation and PCA.
- metadata ``format`` = ``s2fin-model``, ``format_version``, ``s2fin`` (a JSON document: network
  config, patch geometry, per-modality band counts/names/nodata, class table, provenance,
  metrics) and ``checksum`` (SHA-256 over that JSON and every tensor's name, dtype, shape and
  bytes), so a file modified after s2fin wrote it is refused.

Loading parses the safetensors header and raw tensor bytes only: no pickle, no code execution,
whatever the file holds. Everything in the metadata is validated before a network is built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as safetensors_load
from safetensors.torch import save_file
from torch import Tensor

from models import S2Fin, S2FinConfig, parameter_table
from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import CompatibilityError, InputError, ModelFileError
from s2fin_cli.hashing import file_sha256, tensors_digest
from s2fin_cli.io.reader import Scene
from s2fin_cli.io.writer import atomic_output
from s2fin_cli.patches import PatchGeometry
from s2fin_cli.preprocessing import DerivedInputs, Preprocessor
from s2fin_cli.values import ValueSummary, check_values, summarize_scene

FORMAT_NAME = "s2fin-model"
# The newest format written and read. 2: the preprocessing may derive inputs from the LiDAR
# (metadata ``preprocessing.derived``); 3: the height above ground names its ground rule and
# whether it replaces the DSM (``derived.ground``, ``derived.replace_dsm``; a version-2 file
# appended it over the minimum). A file is written with the oldest version that holds it
# (:func:`_format_version`), so an older s2fin still reads the rest.
FORMAT_VERSION = 3
DEFAULT_MODEL_PATH = Path("model.s2fin")
_MODEL_PREFIX = "model."
_PRE_PREFIX = "preprocessing."


class InputFile(TypedDict):
    """A file a model was trained from."""

    path: str
    name: str
    sha256: str


class Provenance(TypedDict, total=False):
    """How a model was made (``s2fin train`` writes every key; older files may lack some)."""

    created: str  # ISO 8601, UTC
    inputs: dict[str, InputFile]  # scene / optical / lidar / sar / labels / test_labels
    protocol: dict[str, Any]  # the sampling protocol, its description, the split and counts
    seed: int
    settings: dict[str, Any]  # TrainSettings.to_json()
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    checkpoint_selection: str  # "validation" or "last epoch"
    history: list[dict[str, Any]]  # one record per epoch
    device: str
    versions: dict[str, str]
    wall_seconds: float
    distributed: dict[str, Any]  # world size, backend, batch per rank (DDP runs only)
    self_training: dict[str, Any]  # pseudo-labels and the first fit (--semi runs only)


class ClassScore(TypedDict):
    id: int
    name: str
    support: int
    accuracy: float | None  # producer's accuracy; None without support


class ScoreSummary(TypedDict):
    """The accuracy of a model on one labelled set, as the model file keeps it."""

    oa: float | None
    aa: float | None
    kappa: float | None
    n_samples: int
    per_class: list[ClassScore]


class ModelMetrics(TypedDict, total=False):
    validation: ScoreSummary  # the blocked validation split (selected the epoch)
    test: ScoreSummary  # --test-labels (never used for selection)


@dataclass(frozen=True)
class ModalitySpec:
    """What the model expects of one input modality."""

    kind: str  # "optical", "lidar" or "sar"
    bands: int
    band_names: tuple[str, ...]
    nodata: float | None
    # What the training data's values looked like (absent in files of s2fin before 0.2).
    values: ValueSummary | None = None

    def to_json(self) -> dict[str, Any]:
        # JSON has no NaN: a NaN nodata (common for float rasters) is stored as null.
        nodata = self.nodata if self.nodata is None or math.isfinite(self.nodata) else None
        out = {"kind": self.kind, "bands": self.bands, "band_names": list(self.band_names),
               "nodata": nodata}
        if self.values is not None:
            out["values"] = self.values.to_json()
        return out

    @classmethod
    def from_json(cls, data: Any) -> ModalitySpec:
        if not isinstance(data, dict):
            raise ValueError("modality must be an object")
        kind, bands, names = data.get("kind"), data.get("bands"), data.get("band_names")
        nodata = data.get("nodata")
        if kind not in ("optical", "lidar", "sar") or not isinstance(bands, int) or bands < 1:
            raise ValueError(f"bad modality {data!r}")
        if not isinstance(names, list) or len(names) != bands or not all(
                isinstance(n, str) for n in names):
            raise ValueError(f"bad band names for modality {kind}")
        if nodata is not None and not isinstance(nodata, int | float):
            raise ValueError(f"bad nodata for modality {kind}")
        values = data.get("values")
        return cls(kind, bands, tuple(names), None if nodata is None else float(nodata),
                   None if values is None else ValueSummary.from_json(values, bands))


@dataclass
class ModelBundle:
    """Everything needed to classify a scene: network, preprocessing, classes, provenance."""

    config: S2FinConfig
    state_dict: dict[str, Tensor]
    preprocessor: Preprocessor
    classes: ClassTable  # output index i is classes.classes[i]
    optical: ModalitySpec
    aux: ModalitySpec
    provenance: Provenance = field(default_factory=lambda: Provenance())
    metrics: ModelMetrics = field(default_factory=lambda: ModelMetrics())
    # SHA-256 of the file it was loaded from (None for a bundle built in memory).
    file_sha256: str | None = None

    @property
    def geometry(self) -> PatchGeometry:
        return PatchGeometry(self.config.patch_size, self.config.spectral_window)

    def build_model(self, device: torch.device | str = "cpu") -> S2Fin:
        """The network with its trained weights, in eval mode, on ``device``."""
        model = S2Fin(self.config)
        model.load_state_dict(self.state_dict, strict=True)
        return model.to(device).eval()

    def check_scene(self, scene: Scene) -> None:
        """Refuse a scene whose modalities do not match what the model was trained on."""
        if scene.optical.count != self.optical.bands:
            raise CompatibilityError(
                f"the model expects {self.optical.bands} optical bands and the scene has "
                f"{scene.optical.count}", hint="use a scene from the sensor the model was "
                "trained on, or retrain")
        if scene.aux_kind != self.aux.kind:
            raise CompatibilityError(f"the model was trained with {self.aux.kind} and the scene "
                                     f"gives {scene.aux_kind}",
                                     hint=f"pass the auxiliary raster as --{self.aux.kind}")
        if scene.aux.count != self.aux.bands:
            raise CompatibilityError(
                f"the model expects {self.aux.bands} {self.aux.kind} band(s) and the scene has "
                f"{scene.aux.count}")

    def check_values(self, scene: Scene, *, skip: bool = False) -> None:
        """Refuse a scene whose values do not look like the training data's (another scale or
        unit; see :mod:`s2fin_cli.values`); ``skip`` turns the refusal into a warning."""
        if self.optical.values is None and self.aux.values is None:
            return  # a model file from before value summaries
        optical, aux = summarize_scene(scene)
        check_values("optical", self.optical.values, optical, skip=skip)
        check_values(self.aux.kind, self.aux.values, aux, skip=skip)

    def metadata_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "architecture": self.config.to_dict(),
            "patch": {"patch_size": self.config.patch_size,
                      "spectral_window": self.config.spectral_window},
            "modalities": {"optical": self.optical.to_json(), "aux": self.aux.to_json()},
            "classes": self.classes.to_json(),
            "preprocessing": {
                "reduced_bands": self.preprocessor.reduced_bands,
                "pca_explained_variance": [round(float(v), 6)
                                           for v in self.preprocessor.pca_explained],
                **({"derived": self.preprocessor.derived.to_json()}
                   if self.preprocessor.derived.active else {}),
            },
            "provenance": self.provenance,
            "metrics": self.metrics,
        }


def _tensors(bundle: ModelBundle) -> dict[str, Tensor]:
    tensors = {_MODEL_PREFIX + k: v.detach().to("cpu").contiguous()
               for k, v in bundle.state_dict.items()}
    tensors.update({_PRE_PREFIX + k: v for k, v in bundle.preprocessor.tensors().items()})
    return tensors


def _checksum(document: str, tensors: dict[str, Tensor]) -> str:
    return tensors_digest(tensors, prefix=document)


def save_model_file(path: str | os.PathLike[str], bundle: ModelBundle, *,
                    overwrite: bool = False) -> Path:
    """Write ``bundle`` atomically to ``path``."""
    tensors = _tensors(bundle)
    document = json.dumps(bundle.metadata_json(), sort_keys=True, allow_nan=False)
    version = _format_version(bundle.preprocessor.derived)
    metadata = {"format": FORMAT_NAME, "format_version": str(version), "s2fin": document,
                "checksum": _checksum(document, tensors)}
    final = Path(path)
    with atomic_output(final, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return final


def _format_version(derived: DerivedInputs) -> int:
    """The oldest format that holds a file with these derived inputs (a reader of an older
    version refuses it: "upgrade s2fin", rather than computing other inputs)."""
    if derived.height_window:
        return 3  # ground and replace_dsm
    return 2 if derived.active else 1


# A model file read from a pipe (``-m <(cat model.s2fin)``) is held in memory: at most this big.
MAX_STREAMED_MODEL_BYTES = 1 << 30


def _read_raw(path: Path) -> tuple[dict[str, str], dict[str, Tensor], str]:
    """The metadata, the tensors and the SHA-256 of the bytes read."""
    if not path.exists():
        raise InputError(f"model file {path} does not exist",
                         hint="train one with s2fin train, or pass -m PATH")
    if path.is_dir():
        raise InputError(f"model file {path} is a directory")
    try:
        if path.is_file():
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                _check_format(path, metadata)
                tensors = {name: f.get_tensor(name) for name in f.keys()}
            sha256 = file_sha256(path)
        else:  # a pipe or another stream: safetensors maps files, so read it into memory
            metadata, tensors, sha256 = _read_stream(path)
    except SafetensorError as exc:
        raise ModelFileError(f"{path.name} is not an s2fin model file (not readable as "
                             f"safetensors: {str(exc).splitlines()[0]})",
                             hint="is it truncated, or a pickle/.pt file? those are never "
                             "loaded") from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path.name} cannot be read as an s2fin model file: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                             ) from None
    return metadata, tensors, sha256


def _check_format(path: Path, metadata: dict[str, str]) -> None:
    if metadata.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path.name} is a safetensors file without s2fin metadata",
                             hint="only files written by s2fin train can be loaded")


def _read_stream(path: Path) -> tuple[dict[str, str], dict[str, Tensor], str]:
    """A safetensors stream: 8 bytes of header length, the JSON header, the tensor bytes."""
    with open(path, "rb") as f:
        data = f.read(MAX_STREAMED_MODEL_BYTES + 1)
    if len(data) > MAX_STREAMED_MODEL_BYTES:
        raise ModelFileError(f"{path.name} is a stream larger than "
                             f"{MAX_STREAMED_MODEL_BYTES >> 20} MB", hint="pass a file")
    if len(data) < 8:
        raise ValueError("the stream is too short for a safetensors header")
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size]) if 8 + size <= len(data) else None
    if not isinstance(header, dict):
        raise ValueError("truncated or invalid safetensors header")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ValueError("invalid safetensors metadata")
    _check_format(path, metadata)
    return metadata, safetensors_load(data), hashlib.sha256(data).hexdigest()


def load_model_file(path: str | os.PathLike[str]) -> ModelBundle:
    """Read and validate a model file; every problem is a one-line :class:`ModelFileError`."""
    p = Path(path)
    metadata, tensors, sha256 = _read_raw(p)
    version_text = metadata.get("format_version", "")
    if not version_text.isdigit():
        raise ModelFileError(f"{p.name} has no valid format version")
    if int(version_text) > FORMAT_VERSION:
        raise ModelFileError(f"{p.name} uses model format {version_text}, newer than this s2fin "
                             f"reads ({FORMAT_VERSION})", hint="upgrade s2fin")
    document = metadata.get("s2fin", "")
    if _checksum(document, tensors) != metadata.get("checksum"):
        raise ModelFileError(f"{p.name} fails its checksum: it was modified after s2fin wrote it",
                             hint="use the original file or retrain")
    try:
        meta = json.loads(document)
        config = S2FinConfig.from_dict(meta["architecture"])
        classes = ClassTable.from_json(meta["classes"])
        optical = ModalitySpec.from_json(meta["modalities"]["optical"])
        aux = ModalitySpec.from_json(meta["modalities"]["aux"])
        derived = DerivedInputs.from_json(meta.get("preprocessing", {}).get("derived"))
        pre = Preprocessor.from_tensors(
            {k[len(_PRE_PREFIX):]: v for k, v in tensors.items() if k.startswith(_PRE_PREFIX)},
            derived)
        provenance = cast(Provenance, meta.get("provenance", {}))
        metrics = cast(ModelMetrics, meta.get("metrics", {}))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{p.name} has invalid s2fin metadata: {exc}") from None
    problems = []
    if len(classes) != config.num_classes:
        problems.append(f"{len(classes)} classes for {config.num_classes} outputs")
    if optical.bands != config.bands or pre.bands != config.bands:
        problems.append("optical band counts disagree")
    if aux.bands != pre.raw_aux_bands or pre.aux_bands != config.active_bands:
        problems.append("auxiliary band counts disagree")
    if pre.reduced_bands != config.reduced_bands:
        problems.append("PCA size disagrees with the network")
    if problems:
        raise ModelFileError(f"{p.name} is inconsistent: {'; '.join(problems)}")
    state = {k[len(_MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(_MODEL_PREFIX)}
    bundle = ModelBundle(config, state, pre, classes, optical, aux, provenance, metrics,
                         file_sha256=sha256)
    try:
        bundle.build_model("cpu")
    except RuntimeError as exc:
        raise ModelFileError(f"{p.name}: weights do not fit the network it describes "
                             f"({str(exc).splitlines()[0]})") from None
    return bundle


def describe_model_file(path: Path) -> dict[str, Any]:
    """What ``s2fin inspect model.s2fin`` shows."""
    bundle = load_model_file(path)
    model = S2Fin(bundle.config)
    table = parameter_table(model)
    cfg = bundle.config
    switches = [f.name.removeprefix("use_") for f in dataclasses.fields(cfg)
                if f.name.startswith("use_") and not getattr(cfg, f.name)]
    summary: dict[str, object] = {
        "inputs": f"{bundle.optical.bands} optical bands (PCA to {cfg.reduced_bands}) + "
                  f"{bundle.aux.bands} {bundle.aux.kind} band(s)"
                  + (f" + derived: {bundle.preprocessor.derived.describe()}"
                     if bundle.preprocessor.derived.active else ""),
        "patch": f"{cfg.patch_size} x {cfg.patch_size}, spectral window "
                 f"{cfg.spectral_window} x {cfg.spectral_window}",
        "classes": ", ".join(f"{c.id}={c.name}" for c in bundle.classes),
        "parameters": f"{table[-1][1]:,}",
        "modules off": ", ".join(switches) or "none (full S²Fin)",
    }
    for key in ("created", "seed", "protocol", "epochs_run", "best_epoch"):
        value = bundle.provenance.get(key)
        if isinstance(value, dict):  # e.g. the protocol: its one-line description
            value = value.get("description")
        if value is not None:
            summary[key.replace("_", " ")] = value
    for key in ("validation", "test"):
        m = bundle.metrics.get(key)
        if isinstance(m, dict) and "oa" in m:
            summary[f"{key} OA / AA / kappa"] = (
                f"{m['oa']:.4f} / {m.get('aa', float('nan')):.4f} / "
                f"{m.get('kappa', float('nan')):.4f}")
    return {
        "kind": "model",
        "path": str(path),
        "summary": summary,
        "parameters": [{"module": n, "parameters": c} for n, c in table],
        "metadata": bundle.metadata_json(),
        "warnings": [],
    }
