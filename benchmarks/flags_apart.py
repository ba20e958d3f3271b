"""Why an MD learner's audit failed far outside its sigma: what the trigger's flags did to that sigma.

Reads the working directory of an MD learner run (``OnTheFlyLearner``;
without a ``state.json`` there, it first runs one: held-out reaction
``--molecule``'s reactant at the settings of
``benchmarks/learning_loop_heldout.py --md ... --distance-aware``), takes
its worst failed audit (or ``--audit``, a store id) and scores it, under
the model of the round that drew it, on three posteriors:

1. the one that model was swapped in with (``posterior_round<R>.npz``:
   what the model learned; the frames seen, not learned, left out);
2. that one with the frames the trigger flagged since the swap read as
   knowledge (``UncertaintyModel.seen``), the posterior that code before
   2026-12-07 reported from;
3. (2) with the audits' rescale of sigma, on the audits of that model
   drawn before this one, as the learner did (at ``--prior-frames``, the
   prior weight the traced run used; the rescale is this checkout's).

Prints the energy error and sigma, the mean force sigma and the 2-sigma
force coverage on each; writes ``benchmarks/results/flags_apart.json``.
The directory of the record in the docs came from a run at commit 3ae5499
(the code before flags were kept apart, prior weight 2, both factors
moved in log space; this file copied into that checkout runs it there):

    python benchmarks/flags_apart.py --workdir DIR [--molecule NAME] [--seed S] [--audit ID] [--prior-frames P]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import ase_mlipal
from ase_mlipal.learning.store import FrameStore
from ase_mlipal.learning.trigger import UncertaintyTrigger
from ase_mlipal.learning.verification import check_frame

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_loop import AUDIT_PRIOR_FRAMES, MD_SETTINGS, run_md  # noqa: E402
from learning_loop_heldout import endpoints  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def scored(calc: ase_mlipal.MLIPALCalculator, frame) -> dict:
    """Energy error and sigma (eV), mean force sigma (eV/A) and 2-sigma force coverage of a labelled frame."""
    check = check_frame(calc, frame, 0, "audit")
    return {"energy_error": check.energy_error, "energy_std": check.energy_std, "force_mae": check.force_mae,
            "force_std": float(calc.results["forces_uncertainty"].mean()), "force_coverage": check.force_coverage}


def worst_failed_audit(state: dict) -> dict:
    failed = [c for c in state["checks"] if c["kind"] == "audit" and not c["passed"] and np.isfinite(c["energy_error"])]
    if not failed:
        raise SystemExit("no audit of this run failed: nothing to explain")
    return max(failed, key=lambda c: abs(c["energy_error"]) / c["energy_std"])


def explain(workdir: Path, audit_id: int | None = None, prior_frames: float = AUDIT_PRIOR_FRAMES) -> dict:
    """The three posteriors' scores of the audit (see the module docstring); ``prior_frames``: the traced run's."""
    state = json.loads((workdir / "state.json").read_text())
    check = (worst_failed_audit(state) if audit_id is None
             else next(c for c in state["checks"] if c["store_id"] == audit_id))
    number = check["round"]
    store = FrameStore(workdir / "frames.db")
    calc = ase_mlipal.MLIPALCalculator(model=workdir / f"model_round{number}.pt", distance_aware=True)
    calc.load_posterior(workdir / f"posterior_round{number}.npz")
    since = [row for row in store.rows() if row.get("model_hash") == calc.model_hash and row.id < check["store_id"]]
    flags = [store.frame(row.id) for row in since if row.get("source") != "audit"]
    audits = [store.frame(row.id) for row in since
              if row.get("source") == "audit" and row.status in ("labelled", "verified")]
    frame = store.frame(check["store_id"])
    out = {"workdir": str(workdir), "audit": check["store_id"], "step": check["step"], "round": number,
           "prior_frames": prior_frames,
           "flags_since_swap": len(flags), "earlier_audits": len(audits), "learned": scored(calc, frame)}
    UncertaintyTrigger(calc, store, MD_SETTINGS["threshold"], source="md").absorb(flags)
    model = calc.uncertainty_model
    with model.posteriors_of(model.seen()):
        out["flags_as_knowledge"] = scored(calc, frame)
        if audits:
            calc.rescale(audits, prior_frames=prior_frames, progress=False)
            out["flags_as_knowledge_rescaled"] = scored(calc, frame)
    out["learner_recorded"] = {k: check[k] for k in ("energy_error", "energy_std", "force_mae", "force_coverage")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--molecule", default="methylamine_to_methanimine_H2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--audit", type=int, help="the audit's store id (default: the worst failed one)")
    parser.add_argument("--prior-frames", type=float, default=AUDIT_PRIOR_FRAMES,
                        help="the audits' prior weight the traced run used (default: the learner's now; the record: 2)")
    args = parser.parse_args()
    if not (args.workdir / "state.json").exists():
        args.workdir.mkdir(parents=True, exist_ok=True)
        settings = {**MD_SETTINGS, "seed": args.seed, "force_tolerance": None, "prior_frames": args.prior_frames}
        run_md(args.molecule, settings, args.workdir, start_atoms=endpoints(args.molecule)[0], distance_aware=True)
    result = explain(args.workdir, args.audit, args.prior_frames)
    print(json.dumps(result, indent=1))
    (RESULTS / "flags_apart.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
