"""QM9 (Ramakrishnan et al., Sci. Data 2014) read from its raw files without rdkit.

Two raw layouts are understood, both under ``root/raw/``:

- the original release (figshare collection 978904): ``dsgdb9nsd.xyz.tar.bz2``, read member by
  member with :mod:`tarfile` (nothing is extracted to disk), or the ``dsgdb9nsd_*.xyz`` files
  extracted from it. Energies there are in Hartree.
- torch_geometric's raw layout: ``gdb9.sdf`` (geometries, 4 decimals) and ``gdb9.sdf.csv``
  (targets; its atomization energies are in kcal/mol with 1 Ha = 627.509 kcal/mol).

Both need ``uncharacterized.txt`` to skip the 3,054 molecules whose geometry failed QM9's
consistency check; they are skipped by their QM9 index, never by their position in a file. When
both layouts are present the xyz files win (full-precision coordinates).

Every molecule becomes ``Data(z, pos, y, idx, name)``: ``z`` ``(N,)`` long, ``pos`` ``(N, 3)`` in
Å, ``y`` ``(1, 19)`` with the targets of ``torch_geometric.datasets.QM9`` in its order and units
(see :data:`TARGETS`, :data:`UNITS`), ``idx`` the QM9 index (1-based, as in ``gdb 1``; PyG's
``idx`` is the 0-based SDF position) and ``name`` ``"gdb_<idx>"``.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import math
import os
import tarfile
import urllib.request
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torch_geometric.data import Data

from ..atomic import atomic_torch_save
from .base import GraphDataset

HAR2EV = 27.211386246
"""eV per Hartree (torch_geometric's value, CODATA 2018)."""
KCALMOL2EV = 0.04336414
"""torch_geometric's factor for the ``.sdf.csv`` atomization energies: ``HAR2EV / 627.509``
rounded, because those kcal/mol values were made with 1 Ha = 627.509 kcal/mol."""

TARGETS = (
    "mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "cv",
    "U0_atom", "U_atom", "H_atom", "G_atom", "A", "B", "C",
)  # fmt: skip
"""Names of the 19 columns of ``y``, in torch_geometric's order."""
UNITS = (
    "D", "a0^3", "eV", "eV", "eV", "a0^2", "eV", "eV", "eV", "eV", "eV", "cal/(mol K)",
    "eV", "eV", "eV", "eV", "GHz", "GHz", "GHz",
)  # fmt: skip
"""Unit of each column of ``y``."""

ATOMREF_HARTREE: dict[int, tuple[float, float, float, float]] = {
    1: (-0.500273, -0.498857, -0.497912, -0.510927),
    6: (-37.846772, -37.845355, -37.844411, -37.861317),
    7: (-54.583861, -54.582445, -54.581501, -54.598897),
    8: (-75.064579, -75.063163, -75.062219, -75.079532),
    9: (-99.718730, -99.717314, -99.716370, -99.733544),
}
"""Energies of the free atoms (U0, U, H, G at B3LYP/6-31G(2df,p)) in Hartree, from QM9's
``atomref.txt``; the atomization energies are the molecule's minus the sum of its atoms'."""

ELEMENTS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
"""The elements of QM9 by symbol."""

# the 15 properties of an xyz property line, after "gdb <index>"
_XYZ_FIELDS = (
    "A", "B", "C", "mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "cv",
)  # fmt: skip
_HARTREE_FIELDS = {"homo", "lumo", "gap", "zpve", "U0", "U", "H", "G"}
# .sdf.csv column → target name
_CSV_COLUMNS = {
    "mu": "mu", "alpha": "alpha", "homo": "homo", "lumo": "lumo", "gap": "gap", "r2": "r2",
    "zpve": "zpve", "u0": "U0", "u298": "U", "h298": "H", "g298": "G", "cv": "cv",
    "u0_atom": "U0_atom", "u298_atom": "U_atom", "h298_atom": "H_atom",
    "g298_atom": "G_atom", "A": "A", "B": "B", "C": "C",
}  # fmt: skip

XYZ_ARCHIVE = "dsgdb9nsd.xyz.tar.bz2"
XYZ_PATTERN = "dsgdb9nsd_*.xyz"
SDF_FILES = ("gdb9.sdf", "gdb9.sdf.csv")
UNCHARACTERIZED = "uncharacterized.txt"
XYZ_URL = "https://ndownloader.figshare.com/files/3195389"
UNCHARACTERIZED_URL = "https://ndownloader.figshare.com/files/3195404"
SDF_URL = "https://deepchemdata.s3-us-west-1.amazonaws.com/datasets/molnet_publish/qm9.zip"
FIGSHARE_DOI = "https://doi.org/10.6084/m9.figshare.978904"

_CACHE_VERSION = 1


class Molecule(NamedTuple):
    """One parsed QM9 molecule: QM9 index, atomic numbers, positions (Å), 19 targets."""

    idx: int
    z: list[int]
    pos: list[list[float]]
    y: list[float]


# ---------------------------------------------------------------------------------- parsing


def parse_number(token: str, where: str, field: str) -> float:
    """A finite float, reading Mathematica's ``*^`` exponent (``7.9254*^-6``) as ``e``;
    errors (malformed or non-finite numbers) name ``where`` (file, record, line) and ``field``."""
    try:
        value = float(token.replace("*^", "e"))
    except ValueError:
        raise ValueError(f"{where}: malformed number {token!r} in field `{field}`") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: non-finite number {token!r} in field `{field}`")
    return value


def _is_atom_line(line: str) -> bool:
    """Whether ``line`` starts like a QM9 atom line, ``symbol x y z ...``."""
    tokens = line.split()
    return len(tokens) >= 4 and tokens[0] in ELEMENTS


def _atom(tokens: list[str], where: str) -> tuple[int, list[float]]:
    if len(tokens) < 4 or tokens[0] not in ELEMENTS:
        raise ValueError(
            f"{where}: expected an atom line `symbol x y z ...` of a QM9 element "
            f"({', '.join(ELEMENTS)}), got {' '.join(tokens)!r}"
        )
    xyz = [parse_number(t, where, axis) for t, axis in zip(tokens[1:4], "xyz", strict=True)]
    return ELEMENTS[tokens[0]], xyz


def _targets(props: dict[str, float], z: list[int], where: str) -> list[float]:
    """The 19 targets in torch_geometric's order and units from the 15 raw xyz properties."""
    out = {k: v * HAR2EV if k in _HARTREE_FIELDS else v for k, v in props.items()}
    for k, name in enumerate(("U0", "U", "H", "G")):
        try:
            atoms = sum(ATOMREF_HARTREE[zi][k] for zi in z)
        except KeyError as err:
            raise ValueError(
                f"{where}: no QM9 reference energy for element Z={err.args[0]}"
            ) from None
        out[f"{name}_atom"] = (props[name] - atoms) * HAR2EV
    return [out[name] for name in TARGETS]


def parse_xyz(text: str, source: str) -> Molecule:
    """Parse one QM9 ``dsgdb9nsd_*.xyz`` record; ``source`` names it in errors."""
    lines = text.splitlines()
    try:
        n = int(lines[0])
    except (IndexError, ValueError):
        first = lines[0] if lines else ""
        raise ValueError(f"{source}, line 1: expected the atom count, got {first!r}") from None
    if n < 1:
        raise ValueError(f"{source}, line 1: the atom count must be positive, got {n}")
    head = lines[1].split() if len(lines) > 1 else []
    if len(head) < 2 + len(_XYZ_FIELDS) or head[0] != "gdb" or not head[1].isdigit():
        raise ValueError(
            f"{source}, line 2: expected `gdb <index>` and {len(_XYZ_FIELDS)} properties "
            f"({' '.join(_XYZ_FIELDS)}), got {lines[1] if len(lines) > 1 else ''!r}"
        )
    idx = int(head[1])
    record = f"{source} (record gdb {idx})"
    props = {
        field: parse_number(token, f"{record}, line 2", field)
        for field, token in zip(_XYZ_FIELDS, head[2 : 2 + len(_XYZ_FIELDS)], strict=True)
    }
    atom_lines = lines[2 : 2 + n]
    if len(atom_lines) < n:
        raise ValueError(
            f"{record}: truncated, declares {n} atoms but has only {len(atom_lines)} atom lines"
        )
    z, pos = [], []
    for k, line in enumerate(atom_lines):
        zi, xyz = _atom(line.split(), f"{record}, line {k + 3} (atom {k + 1} of {n})")
        z.append(zi)
        pos.append(xyz)
    if len(lines) > 2 + n and _is_atom_line(lines[2 + n]):
        extra = next(
            (k for k in range(2 + n, len(lines)) if not _is_atom_line(lines[k])), len(lines)
        )
        raise ValueError(
            f"{record}, line {n + 3}: line 1 declares {n} atoms but the record has "
            f"{extra - 2} atom lines (lines 3-{extra})"
        )
    return Molecule(idx, z, pos, _targets(props, z, record))


def parse_sdf(text: str, source: str) -> Iterator[tuple[str, list[int], list[list[float]]]]:
    """Yield ``(name, z, pos)`` for each molecule of a V2000 SDF file (bonds are ignored)."""
    lines = text.splitlines()
    start = 0
    while start < len(lines) and lines[start].strip():
        name = lines[start].strip()
        where = f"{source}, molecule {name!r}"
        try:
            counts = lines[start + 3]
            n = int(counts[0:3])
        except (IndexError, ValueError):
            raise ValueError(f"{where}, line {start + 4}: expected the V2000 counts line") from None
        z, pos = [], []
        for k in range(n):
            row = start + 4 + k
            if row >= len(lines) or lines[row].startswith(("M  END", "$$$$")):
                raise ValueError(f"{where}: truncated, declares {n} atoms but has only {k}")
            line = lines[row]
            at = f"{where}, line {row + 1}"
            symbol = line[31:34].strip()
            if symbol not in ELEMENTS:
                raise ValueError(f"{at}: {symbol!r} is not a QM9 element ({', '.join(ELEMENTS)})")
            z.append(ELEMENTS[symbol])
            columns = zip((0, 10, 20), "xyz", strict=True)
            pos.append([parse_number(line[a : a + 10], at, axis) for a, axis in columns])
        yield name, z, pos
        end = start + 4 + n
        while end < len(lines) and lines[end].strip() != "$$$$":
            end += 1
        start = end + 1


def read_sdf_csv(path: Path) -> dict[str, list[float]]:
    """Targets of ``gdb9.sdf.csv`` by ``mol_id``, converted like torch_geometric does."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("mol_id", *_CSV_COLUMNS) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing} (header: {reader.fieldnames})")
        out = {}
        for row in reader:
            where = f"{path}, line {reader.line_num} ({row['mol_id']})"
            values = {
                name: parse_number(row[column] or "", where, column)
                for column, name in _CSV_COLUMNS.items()
            }
            for name in values:
                if name in _HARTREE_FIELDS:
                    values[name] *= HAR2EV
                elif name.endswith("_atom"):
                    values[name] *= KCALMOL2EV
            out[row["mol_id"]] = [values[name] for name in TARGETS]
    return out


def read_uncharacterized(path: Path) -> set[int]:
    """QM9 indices listed in ``uncharacterized.txt``: every row whose first token is an int
    (the header length differs between copies of the file)."""
    out = set()
    for line in Path(path).read_text().splitlines():
        tokens = line.split()
        if tokens and tokens[0].isdigit():
            out.add(int(tokens[0]))
    if not out:
        raise ValueError(f"{path}: no molecule indices found (rows starting with an integer)")
    return out


# ---------------------------------------------------------------------------------- data set


class QM9(GraphDataset):
    """QM9 molecules with the 19 targets of ``torch_geometric.datasets.QM9``.

    Args:
        root: data directory; raw files are read from ``root/raw/`` and the processed cache is
            written to ``root/processed/``.
        skip_uncharacterized: leave out the molecules listed in ``raw/uncharacterized.txt``.
        raw_dir: read the raw files from here instead of ``root/raw/`` (e.g. the sample
            records in the repository's ``datasets/qm9/xyz``).
        uncharacterized_file: the list of molecules to skip (default
            ``<raw dir>/uncharacterized.txt``).
        transform: applied to each ``Data`` on access.
        dtype: floating dtype of ``pos`` and ``y`` (the cache keeps float64).
        download: fetch the original release and ``uncharacterized.txt`` from figshare when the
            raw files are missing (never done unless asked).
        force_reload: re-process even when a matching cache exists.

    The cache ``processed/qm9_<variant>_<key>.pt`` is keyed by the names, sizes and modification
    times of the raw files used, so a changed raw set is processed again. Indexing follows PyG
    (:mod:`relaxgnn.data.base`): an int gives a ``Data``; a slice, list, tensor or mask gives
    a view, whose :attr:`y`, :attr:`qm9_indices`, :meth:`mean` and :meth:`std` are its own.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        skip_uncharacterized: bool = True,
        transform: Callable[[Data], Data] | None = None,
        dtype: torch.dtype = torch.float32,
        download: bool = False,
        force_reload: bool = False,
        raw_dir: str | os.PathLike | None = None,
        uncharacterized_file: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(transform)
        self.root = Path(root)
        self._raw_dir = Path(raw_dir) if raw_dir is not None else self.root / "raw"
        self._uncharacterized = Path(uncharacterized_file) if uncharacterized_file is not None \
            else None
        self.skip_uncharacterized = skip_uncharacterized
        self.dtype = dtype
        if download and self._find_raw() is None:
            self.download()
        found = self._find_raw()
        if found is None:
            raise FileNotFoundError(self._missing_message())
        self.layout, files = found
        if skip_uncharacterized:
            skip_file = self.uncharacterized_path
            if not skip_file.is_file():
                raise FileNotFoundError(
                    f"QM9: {skip_file} is missing; it lists the molecules to skip. Place "
                    f"{UNCHARACTERIZED} from {UNCHARACTERIZED_URL} there, or pass "
                    f"skip_uncharacterized=False."
                )
            files = [*files, skip_file]
        variant = "characterized" if skip_uncharacterized else "all"
        self.processed_path = self.processed_dir / f"qm9_{variant}_{_fingerprint(files)}.pt"
        self._store = None if force_reload else _load_cache(self.processed_path)
        if self._store is None:
            self._store = self._process()
            atomic_torch_save(self._store, self.processed_path)
            for stale in self.processed_dir.glob(f"qm9_{variant}_*.pt"):
                if stale != self.processed_path:
                    stale.unlink(missing_ok=True)

    # -- files

    @property
    def raw_dir(self) -> Path:
        return self._raw_dir

    @property
    def uncharacterized_path(self) -> Path:
        """The list of molecules to skip."""
        return self._uncharacterized or self.raw_dir / UNCHARACTERIZED

    @property
    def processed_dir(self) -> Path:
        return self.root / "processed"

    def _find_raw(self) -> tuple[str, list[Path]] | None:
        """``(layout, files)`` of the raw data under ``raw/``, preferring the xyz release."""
        archive = self.raw_dir / XYZ_ARCHIVE
        if archive.is_file():
            return "xyz-archive", [archive]
        loose = sorted(self.raw_dir.glob(XYZ_PATTERN))
        if loose:
            return "xyz", loose
        sdf = [self.raw_dir / name for name in SDF_FILES]
        if all(p.is_file() for p in sdf):
            return "sdf", sdf
        return None

    def _missing_message(self) -> str:
        return (
            f"QM9 raw files not found in {self.raw_dir}. Place there either\n"
            f"  - the original release: {XYZ_ARCHIVE} from {XYZ_URL} ({FIGSHARE_DOI}), "
            f"or the {XYZ_PATTERN} files extracted from it, or\n"
            f"  - torch_geometric's raw layout: {SDF_FILES[0]} and {SDF_FILES[1]} "
            f"(inside {SDF_URL}),\n"
            f"together with {UNCHARACTERIZED} from {UNCHARACTERIZED_URL} "
            f"(needed unless skip_uncharacterized=False); or pass download=True to fetch "
            f"{XYZ_ARCHIVE} and {UNCHARACTERIZED}."
        )

    def download(self) -> None:
        """Fetch ``dsgdb9nsd.xyz.tar.bz2`` and ``uncharacterized.txt`` from figshare into
        ``raw/`` (each written to a temporary file and renamed when complete)."""
        self.raw_dir.mkdir(parents=True, exist_ok=True)
        for name, url in ((XYZ_ARCHIVE, XYZ_URL), (UNCHARACTERIZED, UNCHARACTERIZED_URL)):
            target = self.raw_dir / name
            if target.is_file():
                continue
            part = target.with_name(target.name + ".part")
            try:
                urllib.request.urlretrieve(url, part)
                os.replace(part, target)
            finally:
                part.unlink(missing_ok=True)

    # -- processing

    def _molecules(self) -> Iterator[Molecule]:
        if self.layout == "xyz-archive":
            for source, data in _archive_members(self.raw_dir / XYZ_ARCHIVE):
                yield parse_xyz(_decode(data, source), source)
        elif self.layout == "xyz":
            for path in sorted(self.raw_dir.glob(XYZ_PATTERN)):
                yield parse_xyz(_decode(path.read_bytes(), str(path)), str(path))
        else:
            sdf, table = (self.raw_dir / name for name in SDF_FILES)
            targets = read_sdf_csv(table)
            for name, z, pos in parse_sdf(_decode(sdf.read_bytes(), str(sdf)), str(sdf)):
                if not (name.startswith("gdb_") and name[4:].isdigit()):
                    raise ValueError(f"{sdf}: molecule name {name!r} is not `gdb_<index>`")
                if name not in targets:
                    raise ValueError(f"{table}: no row for molecule {name!r} of {sdf}")
                yield Molecule(int(name[4:]), z, pos, targets[name])

    def _process(self) -> dict[str, Tensor]:
        skip = set()
        if self.skip_uncharacterized:
            skip = read_uncharacterized(self.uncharacterized_path)
        kept: dict[int, Molecule] = {}
        for mol in self._molecules():
            if mol.idx in kept:
                raise ValueError(
                    f"QM9 raw data in {self.raw_dir}: two records of molecule {mol.idx}"
                )
            if mol.idx not in skip:
                kept[mol.idx] = mol
        if not kept:
            raise ValueError(f"QM9 raw data in {self.raw_dir} holds no molecules")
        mols = [kept[i] for i in sorted(kept)]
        sizes = torch.tensor([len(m.z) for m in mols])
        return {
            "z": torch.tensor([zi for m in mols for zi in m.z], dtype=torch.long),
            "pos": torch.tensor([p for m in mols for p in m.pos], dtype=torch.float64),
            "ptr": torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)]),
            "y": torch.tensor([m.y for m in mols], dtype=torch.float64),
            "idx": torch.tensor([m.idx for m in mols], dtype=torch.long),
        }

    # -- access

    def len(self) -> int:
        return self._store["idx"].numel()

    def get(self, idx: int) -> Data:
        store = self._store
        lo, hi = int(store["ptr"][idx]), int(store["ptr"][idx + 1])
        qm9_index = int(store["idx"][idx])
        return Data(
            z=store["z"][lo:hi],
            pos=store["pos"][lo:hi].to(self.dtype),
            y=store["y"][idx : idx + 1].to(self.dtype),
            idx=qm9_index,
            name=f"gdb_{qm9_index}",
        )

    @property
    def y(self) -> Tensor:
        """All targets, ``(len(self), 19)``."""
        return self.select(self._store["y"]).to(self.dtype)

    @property
    def qm9_indices(self) -> Tensor:
        """The QM9 index of each item, ``(len(self),)`` (``indices()`` is PyG's: the positions
        of a view's items in the whole data set)."""
        return self.select(self._store["idx"])

    def mean(self, target: int) -> float:
        """Mean of column ``target`` of :attr:`y` (in float64)."""
        return float(self.select(self._store["y"])[:, target].mean())

    def std(self, target: int) -> float:
        """Standard deviation of column ``target`` of :attr:`y` (in float64)."""
        return float(self.select(self._store["y"])[:, target].std())

    @staticmethod
    def atomref(target: int, dtype: torch.dtype | None = None) -> Tensor | None:
        """Per-element reference energies of ``target`` as a ``(100, 1)`` tensor in eV, indexed
        by atomic number, like ``torch_geometric.datasets.QM9.atomref``: the free-atom energies
        for U0, U, H, G (targets 7-10), zeros for 6 (zpve) and 11 (cv), ``None`` otherwise.
        ``y[:, 7] - atomref(7)[z].sum()`` over a molecule's atoms is its ``U0_atom``.
        ``dtype`` defaults to torch's default dtype. (torch_geometric's table converted the
        same Hartree values with ASE's 27.211386024 eV/Ha, so it differs by up to 2e-5 eV.)"""
        if target not in range(6, 12):
            return None
        out = torch.zeros(100, 1, dtype=torch.float64)
        if 7 <= target <= 10:
            for z, energies in ATOMREF_HARTREE.items():
                out[z, 0] = energies[target - 7] * HAR2EV
        return out.to(dtype or torch.get_default_dtype())

    def __repr__(self) -> str:
        return f"QM9({len(self)}, layout={self.layout!r}, root={str(self.root)!r})"


def _archive_members(archive: Path) -> Iterator[tuple[str, bytes]]:
    """``("<archive>:<member>", bytes)`` of each ``dsgdb9nsd_*.xyz`` in the ``.tar.bz2``; a
    truncated or corrupt archive raises a ``ValueError`` naming it (and the member)."""
    where = str(archive)
    try:
        with tarfile.open(archive, "r:bz2") as tar:
            for member in tar:
                if member.isfile() and fnmatch.fnmatch(Path(member.name).name, XYZ_PATTERN):
                    where = f"{archive}:{member.name}"
                    data = tar.extractfile(member).read()
                    yield where, data
                    where = str(archive)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise ValueError(
            f"{where}: cannot read the archive (truncated or corrupt?): {type(err).__name__}: {err}"
        ) from err


def _decode(data: bytes, source: str) -> str:
    """The text of a raw file; ``ValueError`` naming ``source`` when it is not UTF-8."""
    try:
        return data.decode()
    except UnicodeDecodeError as err:
        raise ValueError(f"{source}: not UTF-8 text ({err})") from err


# ---------------------------------------------------------------------------------- cache


def _fingerprint(files: list[Path]) -> str:
    """Digest of the raw file names, sizes and modification times (and the cache format)."""
    h = hashlib.sha256(f"v{_CACHE_VERSION}".encode())
    for path in files:
        st = path.stat()
        h.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _load_cache(path: Path) -> dict[str, Tensor] | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:  # a cache that cannot be read is rebuilt, not trusted
        warnings.warn(f"QM9 cache {path} could not be read ({err}); processing again", stacklevel=3)
        return None
