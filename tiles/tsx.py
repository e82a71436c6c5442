"""Tiled's tileset files (``.tsx``): read one to cut its image, write one beside a decoded sheet.

    tileset = read_tsx("level.tsx")     # image path, tile size, margin, spacing, columns, trans key
    write_tsx("decoded.tsx", image="decoded.png", columns=8, count=64, size=(288, 288), margin=1, spacing=2)

Only what a tile sheet needs is read: the ``tileset`` element's ``tilewidth``, ``tileheight``,
``margin``, ``spacing``, ``tilecount`` and ``columns``, and its ``image`` child's ``source`` and
optional ``trans`` colour key (``RRGGBB``: pixels of that colour are transparent). Per-tile
properties, animations and collision shapes are left alone.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TSX_VERSION = "1.10"


class TsxError(ValueError):
    """A .tsx file this module cannot use; the message names the file and the problem."""


@dataclass(frozen=True)
class Tileset:
    path: Path  # the .tsx file
    name: str
    image: Path  # the sheet, resolved against the .tsx file's folder
    tile_width: int
    tile_height: int
    margin: int
    spacing: int
    columns: int | None  # None when the file does not say
    count: int | None
    trans: tuple[int, int, int] | None  # colour key: these pixels are transparent


def _int(element: ElementTree.Element, name: str, path: Path, default: int | None = None) -> int | None:
    raw = element.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise TsxError(f"{path}: {element.tag} {name}={raw!r} is not an integer") from None
    if value < 0:
        raise TsxError(f"{path}: {element.tag} {name}={value} is negative")
    return value


def read_tsx(path: str | Path) -> Tileset:
    """The tileset of a ``.tsx`` file."""
    path = Path(path)
    try:
        root = ElementTree.parse(path).getroot()
    except FileNotFoundError:
        raise TsxError(f"{path}: no such file") from None
    except (ElementTree.ParseError, OSError) as exc:
        raise TsxError(f"{path}: not a readable .tsx (XML) file: {exc}") from None
    if root.tag != "tileset":
        raise TsxError(f"{path}: the root element is <{root.tag}>, not <tileset>")
    image = root.find("image")
    if image is None or not image.get("source"):
        raise TsxError(f"{path}: the tileset has no <image source=...> (image collections are not supported)")
    trans = image.get("trans")
    key = None
    if trans:
        text = trans.lstrip("#")
        if len(text) != 6 or any(ch not in "0123456789abcdefABCDEF" for ch in text):
            raise TsxError(f"{path}: image trans={trans!r} is not a RRGGBB colour")
        key = (int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16))
    return Tileset(
        path=path,
        name=root.get("name", path.stem),
        image=(path.parent / image.get("source")).resolve(),
        tile_width=_int(root, "tilewidth", path, 0),
        tile_height=_int(root, "tileheight", path, 0),
        margin=_int(root, "margin", path, 0),
        spacing=_int(root, "spacing", path, 0),
        columns=_int(root, "columns", path),
        count=_int(root, "tilecount", path),
        trans=key,
    )


def apply_colour_key(rgba: np.ndarray, key: tuple[int, int, int] | None) -> np.ndarray:
    """uint8 [H, W, 4] with alpha 0 wherever the colour equals ``key`` (Tiled's ``trans``)."""
    if key is None:
        return rgba
    out = rgba.copy()
    out[(rgba[..., :3] == np.array(key, dtype=np.uint8)).all(axis=-1), 3] = 0
    return out


def write_tsx(path: str | Path, *, image: str, columns: int, count: int, size: tuple[int, int], margin: int = 0,
              spacing: int = 0, tile: int = 32, name: str | None = None) -> Path:
    """Write a ``.tsx`` describing a sheet ``image`` (a path relative to the .tsx) of ``size``
    (width, height) pixels holding ``count`` tiles of ``tile`` pixels, ``columns`` wide."""
    path = Path(path)
    root = ElementTree.Element("tileset", {
        "version": TSX_VERSION, "name": name or path.stem, "tilewidth": str(tile), "tileheight": str(tile),
        "spacing": str(spacing), "margin": str(margin), "tilecount": str(count), "columns": str(columns),
    })
    ElementTree.SubElement(root, "image", {"source": image, "width": str(size[0]), "height": str(size[1])})
    ElementTree.indent(root)
    path.write_text('<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(root, encoding="unicode") + "\n")
    return path
