"""Build the reaction shipped for ``mlipal demo``: formic acid -> CO2 + H2 on GFN2-xTB.

    python scripts/make_demo.py      # writes ase_mlipal/data/demo_reaction.xyz (about 1 min)

The same construction as the reactive benchmark (``scripts/make_data.py``):
xTB-relaxed reactant and product fragments, least-motion atom mapping, IDPP
path and a climbing-image NEB on xTB converged to 0.05 eV/A. The file holds
the converged band (endpoints included) with xTB energies and forces: the
endpoints start the demo's NEB, and the band is the reference it is
scored against (force error on the reference path, barrier error).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ase.build import molecule
from ase.io import write
from ase.mep import NEB

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_data import fragments, map_product, neb_optimise, relaxed  # noqa: E402

from ase_mlipal.learning.neb_learner import DEMO_REACTION_PATH  # noqa: E402


def main() -> None:
    reactant = relaxed(molecule("HCOOH"))
    product = relaxed(map_product(reactant, fragments(["CO2", "H2"])))
    images = [reactant] + [reactant.copy() for _ in range(9)] + [product]
    NEB(images, method="improvedtangent").interpolate("idpp")
    if not neb_optimise(images):
        raise SystemExit("the xTB NEB did not converge")
    for k, image in enumerate(images):
        image.info.update(reaction="formic_acid_to_CO2_H2", image=k)
        image.get_forces()
    write(DEMO_REACTION_PATH, images, format="extxyz")
    energies = [image.get_potential_energy() - images[0].get_potential_energy() for image in images]
    print(f"wrote {DEMO_REACTION_PATH}: xTB barrier {max(energies):.3f} eV, reaction energy {energies[-1]:.3f} eV")


if __name__ == "__main__":
    main()
