"""Every loader rejects bad data loudly: non-finite numbers, impossible atomic numbers, atom-count
mismatches and truncated or corrupt files raise a ``ValueError`` naming the file, the frame (or
line) and the field. Each bad file is written here from a genuine sample with one thing broken."""

from __future__ import annotations

import re
import shutil
import tarfile
import zipfile
from pathlib import Path

import ase.io
import numpy as np
import pytest

from relaxgnn.data.ase_dataset import ASEDataset
from relaxgnn.data.md17 import MD17
from relaxgnn.data.qm9 import QM9

ROOT = Path(__file__).resolve().parents[1] / "datasets"
ASPIRIN = ROOT / "md" / "aspirin_15frames.extxyz"
QM9_DATA = ROOT / "qm9"
FRAME_LINES = 23  # aspirin: the atom count, the comment line and 21 atom lines per frame


@pytest.fixture(scope="module")
def aspirin() -> dict[str, np.ndarray]:
    """The genuine aspirin sample as MD17 arrays (kcal/mol, kcal/mol/Å)."""
    frames = ase.io.read(ASPIRIN, index=":")
    return {
        "z": frames[0].numbers,
        "R": np.stack([a.positions for a in frames]),
        "E": np.array([[a.get_potential_energy()] for a in frames]),
        "F": np.stack([a.get_forces() for a in frames]),
    }


def write_npz(path: Path, arrays: dict[str, np.ndarray], rmd17: bool = False) -> Path:
    names = {"z": "nuclear_charges", "R": "coords", "E": "energies", "F": "forces"}
    if rmd17:
        arrays = {names[k]: v.reshape(-1) if k == "E" else v for k, v in arrays.items()}
    np.savez(path, **arrays)
    return path


# --------------------------------------------------------------------------------- MD17 npz


@pytest.mark.parametrize(
    "key, index, value, message",
    [
        ("R", (3, 5, 1), np.nan, r"bad\.npz, frame 3, atom 5: non-finite positions \(key 'R'\)"),
        ("E", (7, 0), np.inf, r"bad\.npz, frame 7: non-finite energies \(key 'E'\): inf"),
        ("F", (14, 20, 2), -np.inf, r"bad\.npz, frame 14, atom 20: non-finite forces \(key 'F'\)"),
    ],
)
def test_md17_non_finite(tmp_path, aspirin, key, index, value, message):
    arrays = {k: v.copy() for k, v in aspirin.items()}
    arrays[key][index] = value
    with pytest.raises(ValueError, match=message):
        MD17(write_npz(tmp_path / "bad.npz", arrays))


def test_rmd17_non_finite_names_its_key(tmp_path, aspirin):
    arrays = {k: v.copy() for k, v in aspirin.items()}
    arrays["R"][2, 0, 0] = np.nan
    message = r"bad\.npz, frame 2, atom 0: non-finite positions \(key 'coords'\): nan"
    with pytest.raises(ValueError, match=message):
        MD17(write_npz(tmp_path / "bad.npz", arrays, rmd17=True))


@pytest.mark.parametrize(
    "z, shown",
    [(6.7, "6.7"), (0, "0"), (-1, "-1"), (119, "119"), (np.nan, "nan")],
)
def test_md17_bad_atomic_numbers(tmp_path, aspirin, z, shown):
    arrays = dict(aspirin)
    numbers = aspirin["z"].astype(np.float64 if isinstance(z, float) else np.int64)
    numbers[4] = z
    arrays["z"] = numbers
    message = r"bad\.npz, atom 4: atomic numbers \(key 'z'\) must be integers from 1 to 118, "
    with pytest.raises(ValueError, match=message + rf"got {shown}$"):
        MD17(write_npz(tmp_path / "bad.npz", arrays))


def test_md17_non_numeric_field(tmp_path, aspirin):
    arrays = dict(aspirin)
    arrays["E"] = aspirin["E"].astype(str)  # would be cast back to float silently
    with pytest.raises(ValueError, match=r"bad\.npz: energies \(key 'E'\) must be real numbers"):
        MD17(write_npz(tmp_path / "bad.npz", arrays))


def corrupt(data: bytes, how: str) -> bytes:
    if how == "truncated":
        return data[: len(data) // 2]
    if how == "empty":
        return b""
    flipped = bytearray(data)  # "member": one byte of the stored positions, so its CRC fails
    offset = data.index(b"R.npy") + 400
    flipped[offset] ^= 0xFF
    return bytes(flipped)


@pytest.mark.parametrize(
    "how, message, cause",
    [
        ("truncated", r"cut\.npz is not a readable \.npz archive", zipfile.BadZipFile),
        ("empty", r"cut\.npz is not a readable \.npz archive", EOFError),
        ("member", r"cut\.npz: cannot read positions \(key 'R'\)", zipfile.BadZipFile),
    ],
)
def test_md17_truncated_or_corrupt_npz(tmp_path, aspirin, how, message, cause):
    good = write_npz(tmp_path / "good.npz", aspirin)
    path = tmp_path / "cut.npz"
    path.write_bytes(corrupt(good.read_bytes(), how))
    with pytest.raises(ValueError, match=message) as err:
        MD17(path)
    assert isinstance(err.value.__cause__, cause)


def test_md17_npy_instead_of_npz(tmp_path, aspirin):
    path = tmp_path / "positions.npz"
    with open(path, "wb") as f:
        np.save(f, aspirin["R"])
    with pytest.raises(ValueError, match=r"positions\.npz is not a readable \.npz archive"):
        MD17(path)


# ------------------------------------------------------------------------------ ASE extxyz


def aspirin_lines() -> list[str]:
    return ASPIRIN.read_text().splitlines(keepends=True)


def with_token(lines: list[str], frame: int, atom: int, column: int, token: str) -> str:
    """The aspirin text with column ``column`` (0 symbol, 1-3 position, 4-6 force) of one atom
    line replaced."""
    row = frame * FRAME_LINES + 2 + atom
    tokens = lines[row].split()
    tokens[column] = token
    lines = [*lines]
    lines[row] = "  ".join(tokens) + "\n"
    return "".join(lines)


@pytest.mark.parametrize(
    "frame, atom, column, token, message",
    [
        (2, 4, 2, "nan", r"bad\.extxyz, frame 2, atom 4: non-finite positions: nan"),
        (0, 0, 1, "inf", r"bad\.extxyz, frame 0, atom 0: non-finite positions: inf"),
        (9, 20, 6, "nan", r"bad\.extxyz, frame 9, atom 20: non-finite forces: nan"),
        (1, 3, 0, "X", r"bad\.extxyz, frame 1, atom 3: atomic numbers must be integers "),
    ],
)
def test_extxyz_bad_values(tmp_path, frame, atom, column, token, message):
    path = tmp_path / "bad.extxyz"
    path.write_text(with_token(aspirin_lines(), frame, atom, column, token))
    with pytest.raises(ValueError, match=message):
        ASEDataset(path, energy_unit="kcal/mol")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_extxyz_non_finite_energy(tmp_path, value):
    lines = aspirin_lines()
    row = 5 * FRAME_LINES + 1
    lines[row] = re.sub(r"energy=\S+", f"energy={value}", lines[row])
    path = tmp_path / "bad.extxyz"
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match=rf"bad\.extxyz, frame 5: non-finite energy: {value}$"):
        ASEDataset(path, energy_unit="kcal/mol")


def test_extxyz_non_numeric_energy(tmp_path):
    lines = aspirin_lines()
    lines[1] = re.sub(r"energy=\S+", "energy=abc", lines[1])
    path = tmp_path / "bad.extxyz"
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"bad\.extxyz, frame 0: energy must be a number"):
        ASEDataset(path)


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda lines: lines[: 3 * FRAME_LINES + 10], id="mid-frame"),
        pytest.param(lambda lines: [*lines[: 3 * FRAME_LINES + 10], "C  1.0  2.0"], id="mid-line"),
        pytest.param(lambda lines: lines[: 3 * FRAME_LINES + 1], id="count-line-only"),
        pytest.param(lambda lines: ["x\n", *lines[1:]], id="bad-count"),
        pytest.param(
            lambda lines: with_token(lines, 3, 0, 0, "Xx").splitlines(keepends=True),
            id="unknown-symbol",
        ),
    ],
)
def test_extxyz_truncated_or_corrupt(tmp_path, cut):
    path = tmp_path / "cut.extxyz"
    path.write_text("".join(cut(aspirin_lines())))
    with pytest.raises(ValueError, match=r"cut\.extxyz: cannot be read as extxyz") as err:
        ASEDataset(path)
    assert err.value.__cause__ is not None


def test_extxyz_frame_out_of_range(tmp_path):
    with pytest.raises(IndexError, match=r"aspirin_15frames\.extxyz: frame 20 is out of range"):
        ASEDataset(ASPIRIN, index=20)


def test_corrupt_ase_database(tmp_path):
    path = tmp_path / "cut.db"
    data = (ROOT / "md" / "md17_ethanol_20frames.db").read_bytes()
    path.write_bytes(data[:100] + bytes(len(data) - 100))  # header kept, pages zeroed
    with pytest.raises(ValueError, match=r"cut\.db: cannot be read as db") as err:
        ASEDataset(path)
    assert err.value.__cause__ is not None


# ------------------------------------------------------------------------------------- QM9


def qm9_root(tmp_path: Path, *indices: int) -> Path:
    """``tmp_path`` with ``raw/`` holding the named genuine xyz files, uncharacterized list."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in indices:
        shutil.copy(QM9_DATA / "xyz" / f"dsgdb9nsd_{i:06d}.xyz", raw)
    shutil.copy(QM9_DATA / "uncharacterized.txt", raw)
    return tmp_path


def edit_line(path: Path, line: int, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` in line ``line`` (1-based) of ``path``."""
    lines = path.read_text().splitlines(keepends=True)
    assert old in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    path.write_text("".join(lines))


def test_qm9_atom_count_smaller_than_atom_lines(tmp_path):
    root = qm9_root(tmp_path, 1, 2)
    edit_line(root / "raw" / "dsgdb9nsd_000001.xyz", 1, "5", "4")  # methane: 5 atom lines
    message = (
        r"dsgdb9nsd_000001\.xyz \(record gdb 1\), line 7: line 1 declares 4 atoms but the "
        r"record has 5 atom lines \(lines 3-7\)"
    )
    with pytest.raises(ValueError, match=message):
        QM9(root)


def test_qm9_atom_count_larger_than_atom_lines(tmp_path):
    """Already an error before: the frequency line is read as the sixth atom."""
    root = qm9_root(tmp_path, 1)
    edit_line(root / "raw" / "dsgdb9nsd_000001.xyz", 1, "5", "6")
    message = r"000001\.xyz \(record gdb 1\), line 8 \(atom 6 of 6\): expected an atom line"
    with pytest.raises(ValueError, match=message):
        QM9(root)


@pytest.mark.parametrize("count", ["0", "-1"])
def test_qm9_atom_count_not_positive(tmp_path, count):
    root = qm9_root(tmp_path, 2)
    edit_line(root / "raw" / "dsgdb9nsd_000002.xyz", 1, "4", count)
    message = rf"dsgdb9nsd_000002\.xyz, line 1: the atom count must be positive, got {count}$"
    with pytest.raises(ValueError, match=message):
        QM9(root)


@pytest.mark.parametrize(
    "line, old, new, message",
    [
        (5, "1.3587451948", "nan", r"line 5 \(atom 3 of 4\): non-finite number 'nan' in field `y`"),
        (3, "-0.0404260543", "inf", r"line 3 \(atom 1 of 4\): non-finite number 'inf' .* `x`"),
        (2, "-56.525887", "NaN", r"line 2: non-finite number 'NaN' in field `U0`"),
        (2, "9.46", "-inf", r"line 2: non-finite number '-inf' in field `alpha`"),
    ],
)
def test_qm9_non_finite_xyz(tmp_path, line, old, new, message):
    root = qm9_root(tmp_path, 2)
    edit_line(root / "raw" / "dsgdb9nsd_000002.xyz", line, old, new)
    with pytest.raises(ValueError, match=r"dsgdb9nsd_000002\.xyz \(record gdb 2\), " + message):
        QM9(root)


def test_qm9_non_finite_sdf_csv(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(QM9_DATA / "sdf" / "gdb9_n2.sdf", raw / "gdb9.sdf")
    shutil.copy(QM9_DATA / "sdf" / "gdb9_n2.sdf.csv", raw / "gdb9.sdf.csv")
    lines = (raw / "gdb9.sdf.csv").read_text().splitlines(keepends=True)
    header = lines[0].strip().split(",")
    row = lines[2].strip().split(",")
    row[header.index("u0")] = "nan"
    lines[2] = ",".join(row) + "\n"
    (raw / "gdb9.sdf.csv").write_text("".join(lines))
    message = r"gdb9\.sdf\.csv, line 3 \(gdb_2\): non-finite number 'nan' in field `u0`"
    with pytest.raises(ValueError, match=message):
        QM9(tmp_path, skip_uncharacterized=False)


def test_qm9_truncated_archive(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    archive = raw / "dsgdb9nsd.xyz.tar.bz2"
    with tarfile.open(archive, "w:bz2") as tar:
        for path in sorted((QM9_DATA / "xyz").glob("dsgdb9nsd_*.xyz")):
            tar.add(path, arcname=path.name)
    archive.write_bytes(archive.read_bytes()[:-200])
    shutil.copy(QM9_DATA / "uncharacterized.txt", raw)
    with pytest.raises(ValueError, match=r"dsgdb9nsd\.xyz\.tar\.bz2: cannot read the archive"):
        QM9(tmp_path)


def test_qm9_not_text(tmp_path):
    root = qm9_root(tmp_path, 1)
    path = root / "raw" / "dsgdb9nsd_000001.xyz"
    path.write_bytes(path.read_bytes().replace(b"C", b"\xff", 1))
    with pytest.raises(ValueError, match=r"dsgdb9nsd_000001\.xyz: not UTF-8 text"):
        QM9(root)
