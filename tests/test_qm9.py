"""QM9 loader on the genuine sample files of ``datasets/qm9`` (see datasets/PROVENANCE.md).

Expected values are the raw numbers of the files, converted by hand: Hartree × 27.211386246 → eV.
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import ase.db
import pytest
import torch
from ase import units
from torch_geometric.loader import DataLoader

from relaxgnn.data import qm9 as qm9_module
from relaxgnn.data.qm9 import ATOMREF_HARTREE, QM9, TARGETS

DATA = Path(__file__).resolve().parents[1] / "datasets" / "qm9"
XYZ_FILES = sorted((DATA / "xyz").glob("dsgdb9nsd_*.xyz"))
HA = 27.211386246  # eV per Hartree
SAMPLE_INDICES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 5000, 5001, 5002, 5003, 5004, 5005]
SAMPLE_INDICES += [100001, 100002, 100003, 100004]


def make_root(root: Path, xyz: bool = True, sdf: bool = False, skip_file: bool = True) -> Path:
    raw = root / "raw"
    raw.mkdir(parents=True)
    if xyz:
        for path in XYZ_FILES:
            shutil.copy(path, raw / path.name)
    if sdf:
        shutil.copy(DATA / "sdf" / "gdb9_n2.sdf", raw / "gdb9.sdf")
        shutil.copy(DATA / "sdf" / "gdb9_n2.sdf.csv", raw / "gdb9.sdf.csv")
    if skip_file:
        shutil.copy(DATA / "uncharacterized.txt", raw / "uncharacterized.txt")
    return root


def by_index(dataset: QM9) -> dict:
    return {int(d.idx): d for d in (dataset[i] for i in range(len(dataset)))}


@pytest.fixture(scope="module")
def xyz64(tmp_path_factory) -> QM9:
    return QM9(make_root(tmp_path_factory.mktemp("qm9")), dtype=torch.float64)


def test_sample_files_present():
    assert len(XYZ_FILES) == 20
    assert (DATA.parent / "PROVENANCE.md").is_file()


def test_methane_against_raw_numbers(xyz64):
    d = by_index(xyz64)[1]
    assert d.name == "gdb_1"
    assert d.z.tolist() == [6, 1, 1, 1, 1] and d.z.dtype == torch.long
    assert d.pos[0].tolist() == [-0.0126981359, 1.0858041578, 0.0080009958]
    assert d.y.shape == (1, 19)
    y = dict(zip(TARGETS, d.y[0].tolist(), strict=True))
    # raw property line of dsgdb9nsd_000001.xyz: A B C mu alpha homo lumo gap r2 zpve U0 U H G Cv
    assert (y["A"], y["B"], y["C"]) == (157.7118, 157.70997, 157.70699)
    assert (y["mu"], y["alpha"], y["r2"], y["cv"]) == (0.0, 13.21, 35.3641, 6.469)
    for name, hartree in [
        ("homo", -0.3877), ("lumo", 0.1171), ("gap", 0.5048), ("zpve", 0.044749),
        ("U0", -40.47893), ("U", -40.476062), ("H", -40.475117), ("G", -40.498597),
    ]:  # fmt: skip
        assert y[name] == pytest.approx(hartree * HA, rel=1e-12), name
    # atomization: molecule minus C + 4 H free-atom energies (QM9 atomref.txt, Hartree)
    assert y["U0_atom"] == pytest.approx((-40.47893 - (-37.846772 + 4 * -0.500273)) * HA)
    assert y["G_atom"] == pytest.approx((-40.498597 - (-37.861317 + 4 * -0.510927)) * HA)
    # the .sdf.csv gives U0_atom = -395.999594594 kcal/mol, made with 1 Ha = 627.509 kcal/mol
    assert y["U0_atom"] == pytest.approx(-395.999594594 / 627.509 * HA, rel=1e-9)


def test_float32_default_and_batching(tmp_path):
    dataset = QM9(make_root(tmp_path))
    d = dataset[0]
    assert d.pos.dtype == torch.float32 and d.y.dtype == torch.float32
    assert d.y[0, 7].item() == pytest.approx(-40.47893 * HA, rel=1e-7)
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch.y.shape == (4, 19) and batch.idx.tolist() == [1, 2, 3, 4]


def test_skips_uncharacterized_by_qm9_index(tmp_path, xyz64):
    expected = [i for i in SAMPLE_INDICES if i != 5003]
    assert xyz64.qm9_indices.tolist() == expected
    everything = QM9(make_root(tmp_path / "all"), skip_uncharacterized=False)
    assert everything.qm9_indices.tolist() == SAMPLE_INDICES
    # the file name does not matter, the `gdb 5003` of its property line does
    root = make_root(tmp_path / "renamed")
    (root / "raw" / "dsgdb9nsd_005003.xyz").rename(root / "raw" / "dsgdb9nsd_000011.xyz")
    assert QM9(root).qm9_indices.tolist() == expected


def test_uncharacterized_list_is_complete():
    skip = qm9_module.read_uncharacterized(DATA / "uncharacterized.txt")
    assert len(skip) == 3054 and {58, 5003, 133866} <= skip and 5005 not in skip


def test_mathematica_exponent(xyz64):
    d = by_index(xyz64)[5005]
    assert d.z[7].item() == 8  # O, written `2.3311980497 -0.0609497085 7.9254*^-6`
    assert d.pos[7].tolist() == [2.3311980497, -0.0609497085, 7.9254e-6]


def test_tar_bz2_archive_equals_loose_files(tmp_path, xyz64):
    raw = tmp_path / "raw"
    raw.mkdir()
    with tarfile.open(raw / "dsgdb9nsd.xyz.tar.bz2", "w:bz2") as tar:
        for path in XYZ_FILES:
            tar.add(path, arcname=path.name)
    shutil.copy(DATA / "uncharacterized.txt", raw)
    archived = QM9(tmp_path, dtype=torch.float64)
    assert archived.layout == "xyz-archive" and len(archived) == len(xyz64) == 19
    for a, b in zip(archived, xyz64, strict=True):
        assert a.idx == b.idx and torch.equal(a.z, b.z)
        assert torch.equal(a.pos, b.pos) and torch.equal(a.y, b.y)


def test_sdf_layout_matches_xyz(tmp_path, xyz64):
    sdf = QM9(make_root(tmp_path, xyz=False, sdf=True), dtype=torch.float64)
    assert sdf.layout == "sdf" and sdf.qm9_indices.tolist() == [1, 2]
    reference = by_index(xyz64)
    for d in sdf:
        ref = reference[d.idx]
        assert d.name == ref.name and torch.equal(d.z, ref.z)
        # the SDF keeps 4 decimals of the coordinates
        torch.testing.assert_close(d.pos, ref.pos, atol=5.1e-5, rtol=0)
        # identical raw numbers except the atomization energies (kcal/mol in the csv)
        torch.testing.assert_close(d.y, ref.y, rtol=1e-7, atol=1e-12)


def test_xyz_preferred_over_sdf(tmp_path):
    assert QM9(make_root(tmp_path, xyz=True, sdf=True)).layout == "xyz"


def test_atomref_and_atomization_energies(xyz64):
    ref = QM9.atomref(7)
    assert ref.shape == (100, 1)
    # torch_geometric's table (eV) is QM9's atomref.txt (Hartree) × ase.units.Hartree
    # (CODATA 2014: 27.211386024); ours uses HAR2EV = 27.211386246, like its targets
    pyg_u0 = [-13.61312172, -1029.86312267, -1485.30251237, -2042.61123593, -2713.48485589]
    assert ref.dtype == torch.get_default_dtype()
    for z, pyg in zip([1, 6, 7, 8, 9], pyg_u0, strict=True):
        assert QM9.atomref(7, torch.float64)[z, 0].item() == pytest.approx(pyg, abs=3e-5)
        assert ATOMREF_HARTREE[z][0] * units.Hartree == pytest.approx(pyg, abs=1e-7)
    assert QM9.atomref(0) is None and not QM9.atomref(6).any() and not QM9.atomref(11).any()
    for target, atom_target in zip(range(7, 11), range(12, 16), strict=True):
        ref = QM9.atomref(target, torch.float64)
        for d in xyz64:
            expected = d.y[0, target] - ref[d.z, 0].sum()
            assert d.y[0, atom_target].item() == pytest.approx(expected.item(), abs=1e-9)


def test_against_ase_database(xyz64):
    """The SchNetPack copy of QM9 1-20 carries the same atom references and values."""
    db = ase.db.connect(str(DATA / "qm9_first20.db"))
    refs = db.metadata["atomrefs"]
    for z, (u0, u, h, g) in ATOMREF_HARTREE.items():
        assert refs["energy_U0"][z] == u0 and refs["energy_U"][z] == u
        assert refs["enthalpy_H"][z] == h and refs["free_energy"][z] == g
    reference = by_index(xyz64)
    for row in db.select():
        if row.id not in reference:
            continue
        d = reference[row.id]
        assert d.z.tolist() == row.numbers.tolist()
        torch.testing.assert_close(d.pos, torch.tensor(row.positions), atol=1e-9, rtol=0)
        assert d.y[0, 7].item() == pytest.approx(row.data["energy_U0"][0] * HA, rel=1e-12)
        assert d.y[0, 16].item() == pytest.approx(row.data["rotational_constant_A"][0])


def test_cache_is_reused_and_keyed_by_raw_files(tmp_path, monkeypatch):
    root = make_root(tmp_path)
    first = QM9(root)
    assert first.processed_path.is_file()

    def fail(*args, **kwargs):
        raise AssertionError("raw files parsed again")

    with monkeypatch.context() as m:
        m.setattr(qm9_module, "parse_xyz", fail)
        again = QM9(root)
        assert again.processed_path == first.processed_path and len(again) == 19
        with pytest.raises(AssertionError, match="parsed again"):
            QM9(root, force_reload=True)
    (root / "raw" / "dsgdb9nsd_100004.xyz").unlink()
    changed = QM9(root)
    assert changed.processed_path != first.processed_path and len(changed) == 18
    # the stale cache is gone and no temporary file is left behind
    assert sorted(p.name for p in (root / "processed").iterdir()) == [changed.processed_path.name]


def test_missing_raw_files_message(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        QM9(tmp_path)
    message = str(err.value)
    for part in [
        str(tmp_path / "raw"), "dsgdb9nsd.xyz.tar.bz2", "dsgdb9nsd_*.xyz", "gdb9.sdf",
        "gdb9.sdf.csv", "uncharacterized.txt", "https://ndownloader.figshare.com/files/3195389",
        "https://ndownloader.figshare.com/files/3195404", "qm9.zip", "download=True",
    ]:  # fmt: skip
        assert part in message


def test_missing_uncharacterized_list(tmp_path):
    root = make_root(tmp_path, skip_file=False)
    with pytest.raises(FileNotFoundError, match="uncharacterized.txt.*skip_uncharacterized=False"):
        QM9(root)
    assert len(QM9(root, skip_uncharacterized=False)) == 20


def test_truncated_xyz_record(tmp_path):
    root = make_root(tmp_path)
    path = root / "raw" / "dsgdb9nsd_000001.xyz"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:5]))
    message = r"dsgdb9nsd_000001\.xyz \(record gdb 1\): truncated, declares 5 atoms but has only 3"
    with pytest.raises(ValueError, match=message):
        QM9(root)


def test_malformed_number(tmp_path):
    root = make_root(tmp_path)
    path = root / "raw" / "dsgdb9nsd_000002.xyz"
    path.write_text(path.read_text().replace("-56.525887", "-56.52x887"))
    message = r"000002\.xyz \(record gdb 2\), line 2: malformed number '-56.52x887' in field `U0`"
    with pytest.raises(ValueError, match=message):
        QM9(root)
    text = path.read_text().replace("-56.52x887", "-56.525887")
    path.write_text(text.replace("0.9157893661", "0.91x7893661"))
    with pytest.raises(ValueError, match=r"gdb 2\), line 5 \(atom 3 of 4\).*'0.91x7893661'.*`x`"):
        QM9(root)


def test_raw_files_outside_root_and_a_separate_uncharacterized_list(tmp_path):
    """The shipped samples (datasets/qm9/xyz, the list beside it) load without a raw/ layout,
    with the cache under root; the uncharacterized molecule 5003 is skipped."""
    from pathlib import Path

    from relaxgnn.data import QM9

    samples = Path(__file__).resolve().parents[1] / "datasets" / "qm9"
    qm9 = QM9(tmp_path, raw_dir=samples / "xyz",
              uncharacterized_file=samples / "uncharacterized.txt")
    assert len(qm9) == 19 and 5003 not in qm9.qm9_indices.tolist()
    assert qm9.processed_path.parent == tmp_path / "processed"
