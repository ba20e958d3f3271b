"""Label the flagged frames of a FrameStore with any ASE reference calculator.

The reference runs on any ``concurrent.futures.Executor`` (a process pool
by default; a ``dask.distributed`` Client's ``get_executor()`` on a
cluster). The default pool starts its workers from a fork server, not by
forking this process: a fork taken after torch has started its OpenMP
threads can hang in OpenMP-parallel references such as tblite. So a
calculator factory must be importable (defined at module level in an
importable module) and a script must keep its work under
``if __name__ == "__main__":``, as for any spawned process; otherwise pass
``executor=ThreadPoolExecutor()``. Only this process writes to the store, one transaction per
frame, so a run killed at any moment loses nothing: labelled frames stay
labelled and are never computed again, the rest stay flagged.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from .progress import progress_bar
from .store import FrameStore

Reference = Union[BaseCalculator, Callable[[], BaseCalculator]]


@dataclass
class LabelReport:
    """Outcome of :func:`label`: how many frames were labelled and how many failed."""

    labelled: int = 0
    failed: int = 0


def label(
    store: FrameStore,
    reference: Reference,
    executor: Optional[Executor] = None,
    retries: int = 1,
    max_frames: Optional[int] = None,
    progress: Optional[bool] = None,
) -> LabelReport:
    """Compute reference energies and forces for the flagged frames of ``store``.

    Args:
        store: the frame store; its ``flagged`` rows are labelled.
        reference: an ASE calculator, or a picklable zero-argument factory
            returning one (use a factory for calculators that cannot be
            shared between processes, e.g. ``ase_mlipal.xtb_calculator``).
        executor: where the calculations run; a process pool over all
            cores when ``None``.
        retries: extra attempts for a frame whose calculation raised.
        max_frames: label at most this many frames (all when ``None``).

    A frame whose calculation still raises is marked ``failed`` with the
    error and the others go on.
    """
    rows = list(store.rows("flagged"))[:max_frames]
    report = LabelReport()
    if not rows:
        return report
    own_executor = executor is None
    executor = executor or process_pool(min(len(rows), os.cpu_count() or 1))
    try:
        futures = {executor.submit(reference_label, row.toatoms(), reference, retries): row.id for row in rows}
        for future in progress_bar(as_completed(futures), progress, total=len(futures), desc="labelling"):
            row_id = futures[future]
            try:
                energy, forces = future.result()
            except BrokenProcessPool as error:
                raise RuntimeError(
                    "a reference worker process died; the frames not yet labelled stay flagged. Out of memory? "
                    "Or a script using the default process pool without its work under "
                    "`if __name__ == \"__main__\":`; guard it, or pass executor=ThreadPoolExecutor()") from error
            except Exception as error:  # the reference failed on every attempt
                store.mark_failed(row_id, f"{type(error).__name__}: {error}")
                report.failed += 1
                continue
            store.mark_labelled(row_id, energy, forces, reference=_name(reference))
            report.labelled += 1
    finally:
        if own_executor:
            executor.shutdown(cancel_futures=True)
    return report


def process_pool(max_workers: int) -> ProcessPoolExecutor:
    """A process pool whose workers do not inherit this process's OpenMP state.

    Workers fork from a fork server that has imported this module once, so
    they start in milliseconds after the first pool; "spawn" where there is
    no fork server (Windows).
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
    else:
        context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=max_workers, mp_context=context)


def reference_label(atoms: Atoms, reference: Reference, retries: int = 1) -> tuple[float, np.ndarray]:
    """Energy and forces of ``atoms`` from ``reference`` (runs inside a worker).

    Raises the last error if all ``1 + retries`` attempts fail or give
    non-finite results.
    """
    error: Exception = RuntimeError("no attempt made")
    for _ in range(1 + retries):
        calc = reference if isinstance(reference, BaseCalculator) else reference()
        work = atoms.copy()
        work.calc = calc
        try:
            energy = float(work.get_potential_energy())
            forces = np.array(work.get_forces())
        except Exception as exc:
            error = exc
            continue
        if np.isfinite(energy) and np.all(np.isfinite(forces)):
            return energy, forces
        error = FloatingPointError("reference returned non-finite energy or forces")
    raise error


def _name(reference: Reference) -> str:
    if isinstance(reference, BaseCalculator):
        return type(reference).__name__
    return getattr(reference, "__name__", type(reference).__name__)
