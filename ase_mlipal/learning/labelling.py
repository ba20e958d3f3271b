"""Label the flagged frames of a FrameStore with any ASE reference calculator.

The reference runs on any ``concurrent.futures.Executor``. The default is
a thread pool: it works from a plain script, a notebook or a guarded
script alike, and the references this package is used with spend their
time outside Python's lock: an ASE calculator that runs an external
program (a DFT code) waits on it, and tblite and PySCF compute in
compiled code (``benchmarks/labelling_executors.py`` measures threads
against processes). Each task gets its own copy of a calculator instance
(or calls the factory), and a file-based calculator its own directory,
so parallel frames never share state. A process pool
(:func:`process_pool`, workers from a fork server, so the script must
keep its work under ``if __name__ == "__main__":``) or a Dask cluster
(``client.get_executor()``) are options for references that hold the
lock. Only this process writes to the store, one transaction per frame,
so a run killed at any moment loses nothing: labelled frames stay
labelled and are never computed again, the rest stay flagged.
"""

from __future__ import annotations

import copy
import functools
import multiprocessing
import os
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Callable, Optional, Union

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator, FileIOCalculator
from ase.calculators.genericfileio import GenericFileIOCalculator

from ..progress import progress_bar
from .store import FrameStore

Reference = Union[BaseCalculator, Callable[[], BaseCalculator]]

#: Errors of the reference's code or setup (a typo, a missing package), not of a frame: never retried,
#: and they stop the batch with the frames left flagged.
SETUP_ERRORS = (NameError, ImportError, AttributeError, TypeError, SyntaxError)


class ReferenceSetupError(RuntimeError):
    """The reference raised an error of its own code or setup; no frame was marked failed."""


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
    timeout: Optional[float] = 3600.0,
    row_ids: Optional[Collection[int]] = None,
) -> LabelReport:
    """Compute reference energies and forces for the flagged frames of ``store``.

    Args:
        store: the frame store; its ``flagged`` rows are labelled.
        reference: an ASE calculator (each task computes on its own copy),
            or a zero-argument factory returning one (e.g.
            ``ase_mlipal.xtb_calculator``); picklable for a process pool.
        executor: where the calculations run; a thread pool over all cores
            when ``None``. As many frames are in flight as it has workers
            (``max_workers``; the cores for other executors), so a kill
            loses at most those calculations.
        retries: extra attempts for a frame whose calculation raised.
        max_frames: label at most this many frames (all when ``None``).
        timeout: seconds to wait for the next frame to finish before
            ``TimeoutError`` (the frames not labelled stay flagged);
            ``None`` waits without bound.
        row_ids: label only the flagged rows with these store ids (a
            learner's own, within its label budget); all when ``None``.

    A frame whose calculation still raises is marked ``failed`` with the
    error and the others go on. An error of the reference's own code or
    setup (:data:`SETUP_ERRORS`, e.g. a ``NameError`` in a factory or a
    missing package) would fail every frame the same way: it is raised
    once as :class:`ReferenceSetupError` and no frame is marked failed.
    """
    rows = [row for row in store.rows("flagged") if row_ids is None or row.id in row_ids][:max_frames]
    report = LabelReport()
    if not rows:
        return report
    workers = min(len(rows), os.cpu_count() or 1)
    own_executor = executor is None
    executor = executor or ThreadPoolExecutor(workers, thread_name_prefix="label")
    window = min(len(rows), getattr(executor, "_max_workers", None) or workers)
    queue = iter(rows)
    pending: dict[Future, int] = {}

    def submit_next() -> None:
        row = next(queue, None)
        if row is not None:
            pending[executor.submit(label_task, row.toatoms(), reference, retries, f"frame{row.id}")] = row.id

    try:
        for _ in range(window):  # as many in flight as there are workers: a kill loses at most those
            submit_next()
        with progress_bar(None, progress, total=len(rows), desc="labelling") as bar:
            while pending:
                done, _ = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
                if not done:
                    raise TimeoutError(
                        f"no reference calculation finished in {timeout:g} s; the "
                        f"{len(rows) - report.labelled - report.failed} frames not yet labelled stay flagged. "
                        "A hung reference? For slow ones, pass a larger timeout= (or None)")
                for future in done:
                    _store_result(store, pending.pop(future), future, reference, report, len(rows))
                    bar.update()
                    submit_next()
    finally:
        for future in pending:
            future.cancel()
        if own_executor:
            executor.shutdown(wait=False, cancel_futures=True)
    return report


def _store_result(store: FrameStore, row_id: int, future: Future, reference: Reference, report: LabelReport,
                  n_rows: int) -> None:
    """Write one finished calculation to the store: labelled, or failed with its error."""
    try:
        energy, forces = future.result()
    except BrokenProcessPool as error:
        raise RuntimeError(
            "a reference worker process died; the frames not yet labelled stay flagged. Out of memory? "
            "Or a script using a process pool without its work under `if __name__ == \"__main__\":`; "
            "guard it, or use the default executor (threads)") from error
    except SETUP_ERRORS as error:
        raise ReferenceSetupError(
            f"the reference {_name(reference)} raised {type(error).__name__}: {error} (frame {row_id}). "
            "That is an error in the reference's code or setup, not in the frame, and would fail every "
            f"frame: none was marked failed, {n_rows - report.labelled - report.failed} stay flagged. "
            "Fix it and run label again") from error
    except Exception as error:  # the reference failed on every attempt
        store.mark_failed(row_id, f"{type(error).__name__}: {error}")
        report.failed += 1
        return
    store.mark_labelled(row_id, energy, forces, reference=_name(reference))
    report.labelled += 1


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


def label_task(atoms: Atoms, reference: Reference, retries: int = 1, directory: str = "label") -> tuple[float, np.ndarray]:
    """:func:`reference_label` on a private reference: a copy of an instance, or the factory's;
    a file-based calculator works in its own subdirectory ``directory`` (runs inside a worker)."""
    def private() -> BaseCalculator:
        calc = copy.deepcopy(reference) if isinstance(reference, BaseCalculator) else reference()
        if isinstance(calc, (FileIOCalculator, GenericFileIOCalculator)):
            calc.directory = str(Path(calc.directory) / directory)
        return calc

    return reference_label(atoms, private, retries)


def reference_label(atoms: Atoms, reference: Reference, retries: int = 1) -> tuple[float, np.ndarray]:
    """Energy and forces of ``atoms`` from ``reference`` (a calculator, used as is, or a factory).

    Raises the last error if all ``1 + retries`` attempts fail or give
    non-finite results; an error of :data:`SETUP_ERRORS` at once.
    """
    error: Exception = RuntimeError("no attempt made")
    for _ in range(1 + retries):
        calc = reference if isinstance(reference, BaseCalculator) else reference()
        work = atoms.copy()
        work.calc = calc
        try:
            energy = float(work.get_potential_energy())
            forces = np.array(work.get_forces())
        except SETUP_ERRORS:
            raise
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
    if isinstance(reference, functools.partial):
        return _name(reference.func)
    return getattr(reference, "__name__", type(reference).__name__)
