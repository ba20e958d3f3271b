"""The NEB learner with DFT labels (PySCF), then a Sella-refined saddle checked by a direct DFT single point.

    pip install ".[dft,ts]"
    python examples/neb_dft.py                      # PBE/def2-SVP, formaldehyde -> CO + H2
    python examples/neb_dft.py --xc b3lyp --basis def2-svp --rounds 3

The shipped default model was pretrained on GFN2-xTB. DFT total energies
differ from xTB's by thousands of eV, nearly additively per element, so
the model's isolated-atom energies are first moved to the DFT level
(:func:`ase_mlipal.rereference_energies`, fitted on the endpoints and a few
small molecules labelled with DFT). Those DFT frames are also the replay
set of the fine-tunes: replaying the model's own xTB data would mix two
levels of theory. Then :class:`ase_mlipal.NEBLearner` flags, labels with
DFT, fine-tunes and checks the climbing image until the barrier is
verified (or the rounds run out), and :func:`ase_mlipal.refine_ts` runs
Sella on the final model from the final band, computes the imaginary mode
and compares the barrier with DFT at that saddle.

About 5 minutes on this 2-core CPU (PBE/def2-SVP, 4 atoms; docs/transition_states.rst
has a measured run).
"""

import argparse
import time
import warnings
from pathlib import Path

from ase.build import molecule
from ase.io import read

import ase_mlipal

BANDS = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "reactive_bands.xyz.gz"
REACTION = "formaldehyde_to_CO_H2"  # its xTB band's endpoints start the NEB

warnings.filterwarnings("ignore", message=".*TorchScript.*")

# Fine-tuning for a handful of new frames (the settings of ``mlipal demo``).
FINETUNE = {"replay_ratio": 3, "energy_weight": 10.0, "lr": 5e-3, "epochs": 100, "patience": 100}


def labelled(atoms, reference):
    """A copy of ``atoms`` with the reference's energy and forces stored."""
    copy = atoms.copy()
    copy.calc = reference()
    return ase_mlipal.with_labels(copy, copy.get_potential_energy(), copy.get_forces())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--xc", default="pbe")
    parser.add_argument("--basis", default="def2-svp")
    parser.add_argument("--images", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.5, help="trigger threshold, eV/A")
    parser.add_argument("--workdir", type=Path, default=Path("neb-dft"))
    args = parser.parse_args()
    start = time.perf_counter()
    reference = ase_mlipal.pyscf_calculator(args.xc, args.basis)
    path = [a for a in read(BANDS, ":") if a.info["reaction"] == REACTION]
    calc = ase_mlipal.MLIPALCalculator()

    anchors = [labelled(a, reference) for a in (path[0], path[-1])]
    anchors += [labelled(molecule(name), reference) for name in ("H2", "H2O", "CO2", "CH4", "CO")]
    shifts = ase_mlipal.rereference_energies(calc.model, anchors)
    print(f"E0 shifts to {args.xc}/{args.basis} (eV): " + ", ".join(f"Z={z}: {d:+.2f}" for z, d in shifts.items()))

    images = ase_mlipal.band(path[0], path[-1], args.images)
    learner = ase_mlipal.NEBLearner(calc, reference, args.workdir, images, args.threshold, max_rounds=args.rounds,
                                    fmax=0.1, finetune_options={**FINETUNE, "replay": anchors})
    report = learner.run()
    print(report.table())

    try:
        ts = ase_mlipal.refine_ts(calc, report.images, reference=reference, fmax=0.02, steps=300)
    except ValueError as error:  # e.g. the final band has no interior maximum on the model
        print(f"no transition state to refine: {error}")
        return
    print(ts.summary())
    dft_barrier = ts.barrier - ts.check.energy_error
    print(f"\nbarrier at the refined saddle: model {ts.barrier:.3f} ± {ts.barrier_std:.3f} eV, "
          f"DFT single point {dft_barrier:.3f} eV (error {ts.check.energy_error:+.3f} eV); "
          f"{len(learner.store)} frames in {args.workdir}; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
