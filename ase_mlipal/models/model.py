"""Load, save, build and identify MACE models.

A model can be given as an ``nn.Module``, a path to a model file, a MACE
foundation name (``"mace-mp-0:small"``, ``"mace-off23:small"``,
``"mace-omol:extra_large"``) or ``"default"``, the model shipped with this
package.

Two file formats are read:

* this package's own format (written by :func:`save_model`): the
  constructor arguments of a ``ScaleShiftMACE`` as plain data plus its state
  dict, loaded with ``torch.load(..., weights_only=True)``: nothing in the
  file can run code;
* mace's own format, a whole pickled module (``torch.save(model)``), which
  unpickles arbitrary code and is therefore only loaded with ``trust=True``.
"""

from __future__ import annotations

import copy
import hashlib
import os
import pickle
import re
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import numpy as np
import torch
from e3nn import o3
from mace import modules
from mace.tools.scripts_utils import extract_config_mace_model
from mace.tools.torch_tools import default_dtype

from ..environment import torch_load_override
from ..storage import atomic_torch_save

FORMAT_NAME = "ase-mlipal-model"
FORMAT_VERSION = 1
DEFAULT_DIR = Path(__file__).parent.parent / "data"
DEFAULT_MODEL_PATH = DEFAULT_DIR / "default.pt"
DEFAULT_POSTERIOR_PATH = DEFAULT_DIR / "default_posterior.npz"
DEFAULT_DISTANCE_POSTERIOR_PATH = DEFAULT_DIR / "default_posterior_distance.npz"  # ``distance_aware=True``
# The structures (no labels) the shipped posterior is conditioned on: a model swap rebuilds it on them.
DEFAULT_CONDITIONING_PATH = DEFAULT_DIR / "default_conditioning.xyz.gz"

ModelSpec = Union[torch.nn.Module, str, os.PathLike]


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


def build_mace(
    elements: Sequence[Union[int, str]],
    *,
    r_max: float = 5.0,
    channels: int = 16,
    max_ell: int = 1,
    num_interactions: int = 2,
    correlation: int = 2,
    num_bessel: int = 8,
    num_polynomial_cutoff: int = 5,
    mlp_channels: int = 16,
    radial_mlp: Sequence[int] = (32, 32),
    atomic_energies: Union[Sequence[float], None] = None,
    avg_num_neighbors: float = 8.0,
    scale: float = 1.0,
    shift: float = 0.0,
    seed: int = 0,
    dtype: str = "float64",
) -> torch.nn.Module:
    """Build a randomly initialised ``ScaleShiftMACE`` from a few sizes.

    Args:
        elements: chemical symbols or atomic numbers the model knows.
        r_max: cutoff radius (A).
        channels: number of channels of the hidden node features.
        max_ell: largest angular momentum of the hidden features.
        atomic_energies: isolated-atom energies E0 (eV), one per element in
            sorted atomic-number order; zeros if not given.
        seed: seed of the parameter initialisation (the same seed gives the
            same model).
    """
    from ase.data import atomic_numbers as symbol_to_z

    zs = sorted({symbol_to_z[e] if isinstance(e, str) else int(e) for e in elements})
    e0 = np.zeros(len(zs)) if atomic_energies is None else np.asarray(atomic_energies, float)
    if e0.shape != (len(zs),):
        raise ValueError(f"atomic_energies needs one value per element {zs}, got {e0.shape}")
    hidden = o3.Irreps(" + ".join(f"{channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(max_ell + 1)))
    with default_dtype(dtype), torch.random.fork_rng(), quiet_codegen():
        torch.manual_seed(seed)
        model = modules.ScaleShiftMACE(
            r_max=float(r_max),
            num_bessel=num_bessel,
            num_polynomial_cutoff=num_polynomial_cutoff,
            max_ell=max_ell,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            num_interactions=num_interactions,
            num_elements=len(zs),
            hidden_irreps=hidden,
            MLP_irreps=o3.Irreps(f"{mlp_channels}x0e"),
            atomic_energies=e0,
            avg_num_neighbors=float(avg_num_neighbors),
            atomic_numbers=zs,
            correlation=correlation,
            gate=torch.nn.functional.silu,
            radial_MLP=list(radial_mlp),
            atomic_inter_scale=float(scale),
            atomic_inter_shift=float(shift),
        )
    return model.eval()


def load_model(
    spec: ModelSpec = "default",
    device: str = "cpu",
    dtype: str = "float64",
    trust: bool = False,
) -> torch.nn.Module:
    """Return a MACE model in evaluation mode on ``device`` in ``dtype``.

    Args:
        spec: an ``nn.Module`` (copied, never modified), a path to a model
            file, a foundation name such as ``"mace-mp-0:small"`` or
            ``"mace-off23:small"`` (downloaded by mace on first use), or
            ``"default"`` for the model shipped with this package.
        device: torch device, e.g. ``"cpu"`` or ``"cuda"``.
        dtype: ``"float64"`` (default, for exact uncertainties and
            optimisation) or ``"float32"``.
        trust: allow unpickling a whole-module file (mace's own format).
            Pickles can run arbitrary code: only set this for files you trust.

    Raises:
        ModelLoadError: the file is missing, corrupt, not a MACE model, needs
            ``trust=True``, or a foundation model cannot be downloaded.
    """
    if dtype not in ("float64", "float32"):
        raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    if isinstance(spec, torch.nn.Module):
        model = copy.deepcopy(spec)
    elif isinstance(spec, str) and spec == "default":
        model = _load_default()
    elif isinstance(spec, str) and is_foundation_name(spec) and not Path(spec).exists():
        model = _load_foundation(spec, device)
    elif isinstance(spec, (str, os.PathLike)):
        model = _load_file(Path(spec), trust=trust)
    else:
        raise TypeError(f"model must be an nn.Module, a path or a model name, not {type(spec).__name__}")
    _check_is_mace(model, source=str(spec) if not isinstance(spec, torch.nn.Module) else "the given module")
    model = model.to(device=device, dtype=getattr(torch, dtype))
    return model.eval()


def save_model(model: torch.nn.Module, path: Union[str, os.PathLike]) -> Path:
    """Write ``model`` in this package's safe format (atomically).

    The file holds the constructor arguments as plain data and the state
    dict, so :func:`load_model` reads it back with ``weights_only=True``.
    Only e3nn-backed ``ScaleShiftMACE`` models can be written.
    """
    record = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": _config_to_plain(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "hash": model_hash(model),
    }
    return atomic_torch_save(record, path)


def model_hash(model: torch.nn.Module) -> str:
    """SHA-256 of the model's state: names, shapes and float32-rounded values.

    Independent of device and of float32/float64 casting, so a posterior can
    be tied to the model it was built on whatever precision runs it.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu()
        if t.is_floating_point():
            t = t.to(torch.float32)  # float32 so a cast model keeps its identity
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()


def random_like(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The same MACE architecture at random initialisation, drawn from ``seed``.

    Rebuilt from ``model``'s constructor arguments (mace's
    ``extract_config_mace_model``), so E0s, scale and shift are kept and
    only the learned weights are new. Same dtype and device as ``model``.
    The weights are drawn in float64 whatever ``model``'s dtype and then
    cast, so a float32 model gets the same random model, rounded (drawn in
    float32, the seed gave other weights: the ``fixed`` kernel's features,
    and a posterior saved with them, changed with the dtype).
    """
    config = extract_config_mace_model(model)
    if "error" in config:
        raise TypeError(f"cannot rebuild {type(model).__name__}: {config['error']}")
    parameter = next(model.parameters())
    with torch.random.fork_rng(devices=[]), default_dtype("float64"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="To copy construct from a tensor")
        torch.manual_seed(seed)
        fresh = type(model)(**config)
    return fresh.to(device=parameter.device, dtype=parameter.dtype).eval()


def model_elements(model: torch.nn.Module) -> list[int]:
    """Atomic numbers the model was built for, in the model's order."""
    return [int(z) for z in model.atomic_numbers]


# -- loading helpers ---------------------------------------------------------

_FOUNDATION = re.compile(r"^mace-(mp|off|omol)[\w.-]*(:[\w.-]+)?$", re.IGNORECASE)


def is_foundation_name(name: str) -> bool:
    """Whether ``name`` names a MACE foundation model (``mace-mp``, ``mace-off:small``, ``mace-omol``...)."""
    return bool(_FOUNDATION.match(name))


def _load_default() -> torch.nn.Module:
    if not DEFAULT_MODEL_PATH.exists():
        raise ModelLoadError(
            f"The default model file {DEFAULT_MODEL_PATH} is not installed. "
            "Reinstall ase-mlipal, or pass a model explicitly "
            "(an nn.Module, a model file or a foundation name)."
        )
    return _load_file(DEFAULT_MODEL_PATH, trust=False)


def _load_foundation(name: str, device: str) -> torch.nn.Module:
    with torch_load_override():  # importing mace.calculators sets the variable again
        from mace.calculators import foundations_models

    family, _, size = name.lower().partition(":")
    loaders = {"mp": foundations_models.mace_mp, "off": foundations_models.mace_off,
               "omol": foundations_models.mace_omol}
    loader = loaders[_FOUNDATION.match(name).group(1).lower()]
    kwargs = {"model": size} if size else {}
    try:
        with torch_load_override(unpickle=True):  # mace's own published, pickled weights
            return loader(return_raw_model=True, device=device, default_dtype="float64", **kwargs)
    except Exception as exc:  # mace raises RuntimeError, ValueError, OSError...
        raise ModelLoadError(
            f"Could not obtain the foundation model {name!r} ({exc}). mace downloads "
            "foundation weights from the web on first use and caches them in "
            "~/.cache/mace. Without internet access, download the model file on a "
            "machine that has it and pass its path with load_model(path, trust=True)."
        ) from exc


def _load_file(path: Path, trust: bool) -> torch.nn.Module:
    if not path.exists():
        raise ModelLoadError(f"Model file {path} does not exist. Check the path.")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory, not a model file.")
    if not _is_torch_file(path):
        raise ModelLoadError(
            f"{path} is not a PyTorch model file (it is neither a torch zip archive nor "
            "a pickle). It may be corrupt or of another format: copy it again or rebuild it."
        )
    if _is_torchscript(path):
        raise ModelLoadError(
            f"{path} is a compiled (TorchScript) model. ase-mlipal reads its uncertainty from inside the "
            "model's layers, which a compiled model does not expose: pass the uncompiled file instead "
            "(mace_run_train writes NAME.model beside NAME_compiled.model; load it with trust=True)."
        )
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        return _load_pickled_module(path, trust, exc)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise ModelLoadError(
            f"{path} is not a readable model file ({exc}). It may be truncated or "
            "corrupt: copy it again or rebuild it."
        ) from exc
    if isinstance(record, dict) and record.get("format") == FORMAT_NAME:
        return _model_from_record(record, path)
    raise ModelLoadError(
        f"{path} holds plain data ({type(record).__name__}), not a MACE model. If it "
        "is a training checkpoint or a state dict, load it into its model and "
        "write it with ase_mlipal.save_model."
    )


def _is_torch_file(path: Path) -> bool:
    """True for torch's zip format or a legacy pickle (protocol byte 0x80)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as handle:
        return handle.read(1) == b"\x80"


def _is_torchscript(path: Path) -> bool:
    """True for a TorchScript archive (``torch.jit.save``): a zip with compiled code and constants."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _load_pickled_module(path: Path, trust: bool, cause: Exception) -> torch.nn.Module:
    if not trust:
        raise ModelLoadError(
            f"{path} is a pickled model (mace's torch.save format). Unpickling runs "
            "code stored in the file. If you trust its source, pass trust=True "
            "(MLIPALCalculator(model=..., trust=True)); ase_mlipal.save_model then "
            "writes a copy that loads safely."
        ) from cause
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelLoadError(f"{path} could not be unpickled ({exc}).") from exc
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"{path} holds a {type(model).__name__}, not a MACE model.")
    return model


def _check_is_mace(model: torch.nn.Module, source: str) -> None:
    needed = ("atomic_numbers", "r_max", "interactions", "products")
    missing = [name for name in needed if not hasattr(model, name)]
    if missing:
        raise ModelLoadError(
            f"{source} is a {type(model).__name__}, not a MACE model (it lacks "
            f"{', '.join(missing)}). Give a mace-torch MACE/ScaleShiftMACE model."
        )


# -- safe serialisation of the constructor arguments -------------------------


def _config_to_plain(model: torch.nn.Module) -> dict[str, Any]:
    config = extract_config_mace_model(model)
    if "error" in config or type(model).__name__ != "ScaleShiftMACE":
        raise TypeError(f"save_model writes ScaleShiftMACE models only, not {type(model).__name__}")
    if config.get("cueq_config") is not None or config.get("embedding_specs"):
        raise TypeError("save_model needs an e3nn MACE without cueq/embeddings; convert it back first")
    gate_names = {fn: name for name, fn in modules.gate_dict.items() if fn is not None}
    plain: dict[str, Any] = {}
    for key, value in config.items():
        if key in ("interaction_cls", "interaction_cls_first", "readout_cls"):
            value = value.__name__
        elif key == "gate":
            value = "None" if value is None else gate_names[value]
        elif isinstance(value, o3.Irreps):
            value = str(value)
        elif isinstance(value, (np.ndarray, torch.Tensor)):
            value = np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value).tolist()
        elif key in ("cueq_config", "embedding_specs"):
            continue
        plain[key] = value
    return plain


def _config_from_plain(plain: dict[str, Any]) -> dict[str, Any]:
    config = dict(plain)
    config["interaction_cls"] = modules.interaction_classes[plain["interaction_cls"]]
    config["interaction_cls_first"] = modules.interaction_classes[plain["interaction_cls_first"]]
    config["readout_cls"] = modules.readout_classes[plain["readout_cls"]]
    config["gate"] = modules.gate_dict[plain["gate"]]
    for key in ("hidden_irreps", "MLP_irreps", "edge_irreps"):
        if plain.get(key) is not None:
            config[key] = o3.Irreps(plain[key])
    for key in ("atomic_energies", "atomic_inter_scale", "atomic_inter_shift"):
        config[key] = np.asarray(plain[key], dtype=float)
    if config.get("distance_transform") is None:
        config["distance_transform"] = "None"
    return config


@contextmanager
def quiet_codegen() -> Iterator[None]:
    """Silence the TorchScript notices e3nn's code generation prints while a MACE is built.

    Dozens per model, about e3nn's own classes, nothing a user can act on;
    other warnings pass.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TorchScript type system.*", category=UserWarning)
        yield


def _model_from_record(record: dict[str, Any], path: Path) -> torch.nn.Module:
    try:
        state = record["state_dict"]
        float_dtype = next(v.dtype for v in state.values() if v.is_floating_point())
        with default_dtype(str(float_dtype).removeprefix("torch.")), quiet_codegen():
            model = modules.ScaleShiftMACE(**_config_from_plain(record["config"]))
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(
            f"{path} is an ase-mlipal model file that does not match this mace-torch "
            f"version ({exc}). Rebuild it with the installed versions."
        ) from exc
    return model
