"""Shared fixtures: a tiny MACE built in seconds and a few small structures."""

import os
import uuid
import warnings
from pathlib import Path

import pytest
from ase import Atoms
from ase.build import molecule

import ase_mlipal
from ase_mlipal.frames import rattled  # noqa: F401  (tests import it from here)
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.singlepoint import SinglePointCalculator
from ase_mlipal.learning.store import fingerprint

warnings.filterwarnings("ignore", message=".*TorchScript type system.*")


@pytest.fixture(scope="session")
def tiny_model():
    """A randomly initialised 2-layer MACE for H, C, N, O (float64).

    Non-zero E0s and shift so that energy bookkeeping is exercised.
    """
    return ase_mlipal.build_mace(
        ["H", "C", "N", "O"], channels=8, max_ell=1, r_max=4.0, mlp_channels=8,
        radial_mlp=(16,), atomic_energies=[-13.6, -1029.0, -1485.0, -2042.0], shift=0.1, scale=0.5, seed=1,
    )


@pytest.fixture()
def calc(tiny_model):
    return ase_mlipal.MLIPALCalculator(model=tiny_model)


@pytest.fixture()
def ethanol():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=3)
    return atoms


def labelled_by(model, frames: list[Atoms]) -> list[Atoms]:
    """Copies of ``frames`` labelled by ``model``: energy and forces as a SinglePointCalculator."""
    calc = ase_mlipal.MLIPALCalculator(model=model)
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        out.append(atoms)
    return out


def widen_force_sigma(monkeypatch, calc, factor: float) -> None:
    """Multiply the force sigma every calculator of ``calc``'s class reports by ``factor`` (for a bound that must
    not read sigma: a wider one must not loosen it)."""
    calculate = type(calc).calculate

    def widened(self, *args, **kwargs):
        calculate(self, *args, **kwargs)
        self.results["forces_uncertainty"] = factor * self.results["forces_uncertainty"]

    monkeypatch.setattr(type(calc), "calculate", widened)


class LoggedXTB(Calculator):
    """GFN2-xTB that appends the fingerprint of every finished calculation to ``LoggedXTB.log``.

    For the kill tests' subprocess scripts: set ``LoggedXTB.log`` to a path first.
    """

    implemented_properties = ["energy", "forces"]
    log = None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        work = self.atoms.copy()
        work.calc = ase_mlipal.xtb_calculator()
        self.results = {"energy": work.get_potential_energy(), "forces": work.get_forces()}
        with open(self.log, "a") as handle:
            handle.write(fingerprint(self.atoms) + "\n")


def assert_no_label_repeated(log_path, store, before_ids, workers: int = 1) -> None:
    """After a kill and a resume: every label the store held before the kill (``before_ids``) was computed
    once, every labelled row of the store now was computed, and at most ``workers`` calculations ran again
    (a frame whose calculation finished but was not yet stored when the kill came is computed once more:
    no store can make the reference's work and its own write one step)."""
    calls = Path(log_path).read_text().split()
    rows = {row.id: row.fingerprint for s in ("labelled", "verified", "unphysical") for row in store.rows(s)
            if s != "unphysical" or row.get("energy") is not None}  # unphysical with a label: a confirmed runaway
    lost = sorted(set(before_ids) - set(rows))
    assert not lost, f"store rows {lost} were labelled before the kill and are no longer labelled"
    repeated = [i for i in before_ids if calls.count(rows[i]) != 1]
    assert not repeated, f"store rows {repeated} were labelled before the kill and computed again (or never)"
    assert set(calls) == set(rows.values())  # every label in the store was computed, none is missing
    assert len(calls) - len(set(calls)) <= workers, f"{len(calls) - len(set(calls))} calculations repeated"


POSTGRES_VARIABLE = "MLIPAL_TEST_POSTGRES"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A new, empty frame store: an SQLite file, or a fresh database on the PostgreSQL server of
    ``$MLIPAL_TEST_POSTGRES`` (``.ci/run`` starts one; skipped with a message where none is set)."""
    if request.param == "sqlite":
        yield str(tmp_path / "frames.db")
        return
    server = os.environ.get(POSTGRES_VARIABLE)
    if not server:
        pytest.skip(f"no PostgreSQL server: set {POSTGRES_VARIABLE}=postgresql://user@host:port/db "
                    "(.ci/run starts one with .ci/postgres.sh)")
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"mlipal_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(server)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    yield server.rsplit("/", 1)[0] + "/" + name
    admin.cursor().execute(f"DROP DATABASE {name} WITH (FORCE)")
    admin.close()


def seeded_langevin(atoms):
    """The MD learner's default Langevin (300 K) with seeded velocities and random forces, for tests whose MD
    must not stop: unseeded, the tiny model's MD brought two atoms within the guard's distance in about one run
    in eight."""
    from ase_mlipal.learning.md_learner import langevin

    return langevin(atoms, seed=0)
