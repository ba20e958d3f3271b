"""How much the trigger's settled flags shrink a band's predicted sigma (bookkeeping read as knowledge).

For each reaction given (default: formic acid -> CO + H2O and ethanol ->
ethylene + H2O, the two round-0 bands with the most flags in
``benchmarks/learning_loop.py``): the 9-image IDPP band from the xTB
endpoints relaxes on the shipped default with an ``UncertaintyTrigger``
watching (threshold 0.5 eV/A, every 5 steps, 300 steps, fmax 0.1 eV/A: the
learning loop's round 0, without its guard). Then ``path_profile`` of the
final band twice, side by side: on the posterior with the flags read as
knowledge (each flagged image entered with the weight that settles it at
half the threshold: the trigger's own, ``UncertaintyModel.seen``) and on
the posterior the calculator reports from, which the flags do not enter,
and their barrier sigma ratio. Writes ``benchmarks/results/settle_weight.txt``.

    python benchmarks/settle_weight.py [reaction ...]
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

import ase_mlipal
from ase_mlipal.learning.neb_learner import relax_band
from ase_mlipal.learning.store import FrameStore
from ase_mlipal.learning.trigger import UncertaintyTrigger
from ase_mlipal.paths import band, path_profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_loop import reference_bands  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT = ["formic_acid_to_CO_H2O", "ethanol_to_ethylene_H2O"]


def compare(name: str) -> str:
    reference = reference_bands()[name]
    images = band(reference[0], reference[-1], 9)
    calc = ase_mlipal.MLIPALCalculator(distance_aware=False)  # the plain posterior this benchmark measured
    with tempfile.TemporaryDirectory() as tmp:
        trigger = UncertaintyTrigger(calc, FrameStore(Path(tmp) / "frames.db"), 0.5, source="neb")
        relax_band(images, calc, trigger, fmax=0.1, steps=300, interval=5, progress=False)
        fresh = path_profile(calc, images, relaxed_on_model=False)  # as recorded: the plain calibration
        with calc.uncertainty_model.posteriors_of(calc.uncertainty_model.seen()):
            settled = path_profile(calc, images, relaxed_on_model=False)
    return (f"{name}: {len(trigger.flagged)} flags; barrier {fresh.barrier:.2f} eV; sigma reported (flags apart) "
            f"{fresh.barrier_std:.3f}, with the flags read as knowledge {settled.barrier_std:.3f} eV "
            f"(ratio {fresh.barrier_std / settled.barrier_std:.1f}x); image sigmas reported "
            f"{np.round(fresh.energy_std[1:-1], 2).tolist()}, with the flags "
            f"{np.round(settled.energy_std[1:-1], 2).tolist()}")


def main() -> None:
    lines = [compare(name) for name in (sys.argv[1:] or DEFAULT)]
    text = "`python benchmarks/settle_weight.py`\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"
    print(text)
    (RESULTS / "settle_weight.txt").write_text(text)


if __name__ == "__main__":
    main()
