"""Class tables: ids, names and colours carried from labels to the model file to the map.

Class ids in every raster s2fin writes are 1..N; 0 means unlabeled (labels) or nodata (maps).
The table travels inside the model file so a map can be styled without the training labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

RGB = tuple[int, int, int]

# A qualitative palette whose closest pair of colours is 16.2 apart in CIEDE2000 (a test keeps
# it at least 15): Tableau 10, then ten colours chosen greedily (farthest point in CIEDE2000 from
# those already chosen, over an sRGB grid of step 15 with L* in 30..88). Tableau 20's light tones
# were only 12.1 from each other.
_PALETTE: tuple[RGB, ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (75, 75, 0), (240, 210, 210), (0, 105, 90), (0, 0, 240), (0, 240, 180),
    (165, 180, 255), (150, 0, 105), (180, 195, 180), (165, 120, 0), (75, 75, 105),
)


def default_color(class_id: int) -> RGB:
    """A distinct colour for ``class_id`` (cycles with a shade change past the palette)."""
    base = _PALETTE[(class_id - 1) % len(_PALETTE)]
    cycle = (class_id - 1) // len(_PALETTE)
    factor = 0.7**cycle
    return (int(base[0] * factor), int(base[1] * factor), int(base[2] * factor))


@dataclass(frozen=True)
class ClassInfo:
    """One land-cover class: its id in rasters (>= 1), a display name and an RGB colour."""

    id: int
    name: str
    color: RGB

    def __post_init__(self) -> None:
        if self.id < 1:
            raise ValueError(f"class ids start at 1 (0 is unlabeled/nodata), got {self.id}")


@dataclass(frozen=True)
class ClassTable:
    """An ordered set of classes with unique ids, sorted by id."""

    classes: tuple[ClassInfo, ...]

    def __post_init__(self) -> None:
        ids = [c.id for c in self.classes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate class ids in {ids}")
        object.__setattr__(self, "classes", tuple(sorted(self.classes, key=lambda c: c.id)))

    @classmethod
    def from_ids(cls, ids: Iterable[int], names: Mapping[int, str] | None = None) -> ClassTable:
        """A table for ``ids`` with the given names (``class N`` otherwise) and default colours."""
        names = names or {}
        return cls(
            tuple(ClassInfo(int(i), names.get(int(i), f"class {int(i)}"), default_color(int(i)))
                  for i in sorted(set(int(i) for i in ids)))
        )

    def __len__(self) -> int:
        return len(self.classes)

    def __iter__(self) -> Iterator[ClassInfo]:
        return iter(self.classes)

    @property
    def ids(self) -> list[int]:
        return [c.id for c in self.classes]

    @property
    def max_id(self) -> int:
        return max(self.ids) if self.classes else 0

    def name_of(self, class_id: int) -> str:
        for c in self.classes:
            if c.id == class_id:
                return c.name
        raise KeyError(class_id)

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """A rasterio colour map: 0 transparent black, each class its colour."""
        cmap: dict[int, tuple[int, int, int, int]] = {0: (0, 0, 0, 0)}
        for c in self.classes:
            cmap[c.id] = (*c.color, 255)
        return cmap

    def to_json(self) -> list[dict[str, Any]]:
        return [{"id": c.id, "name": c.name, "color": list(c.color)} for c in self.classes]

    @classmethod
    def from_json(cls, data: Any) -> ClassTable:
        """Parse :meth:`to_json` output; raises ValueError on anything malformed."""
        if not isinstance(data, list):
            raise ValueError("class table must be a list")
        out = []
        for item in data:
            if not isinstance(item, dict):
                raise ValueError("class entries must be objects")
            color = item.get("color")
            if (not isinstance(color, list) or len(color) != 3
                    or not all(isinstance(v, int) and 0 <= v <= 255 for v in color)):
                raise ValueError(f"bad colour in class entry {item!r}")
            cid, name = item.get("id"), item.get("name")
            if not isinstance(cid, int) or not isinstance(name, str):
                raise ValueError(f"bad id or name in class entry {item!r}")
            out.append(ClassInfo(cid, name, (color[0], color[1], color[2])))
        return cls(tuple(out))
