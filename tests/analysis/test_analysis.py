"""Latent-space comparison (GFRE/LFRE through scikit-matter) and the cumulant descriptor."""

import numpy as np
import pytest
from ase.build import molecule
from ase.io import write
from scipy import stats

from ase_mlipal import MLIPALCalculator, random_like, save_model
from ase_mlipal.analysis.reconstruction import atom_latents, compare, layer_latents, plot_comparison
from ase_mlipal.cli import main
from ase_mlipal.uncertainty.cumulant import cumulant_descriptor, cumulants

from ..conftest import rattled


def test_cumulants_are_the_moment_cumulants():
    x = np.random.default_rng(0).gamma(2.0, size=(5000, 3))
    kappa = cumulants(x, 5)
    m = {n: stats.moment(x, n, axis=0) for n in (2, 3, 4, 5)}
    np.testing.assert_allclose(kappa[0], x.mean(axis=0))
    np.testing.assert_allclose(kappa[1], x.var(axis=0))
    np.testing.assert_allclose(kappa[2], m[3])
    np.testing.assert_allclose(kappa[3], m[4] - 3 * m[2] ** 2)
    np.testing.assert_allclose(kappa[4], m[5] - 10 * m[3] * m[2])
    # shift only moves kappa_1; scaling by a multiplies kappa_n by a^n
    shifted, scaled = cumulants(x + 4.0, 5), cumulants(-2.0 * x, 5)
    np.testing.assert_allclose(shifted[1:], kappa[1:], atol=1e-9)
    np.testing.assert_allclose(scaled, kappa * (-2.0) ** np.arange(1, 6)[:, None], rtol=1e-9)
    # a gamma(2) variable has kappa_n = 2 (n-1)!
    np.testing.assert_allclose(kappa[2:4].mean(axis=1), [4.0, 12.0], rtol=0.15)


def test_cumulant_descriptor_takes_signed_roots_structure_by_structure():
    atoms = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, -2.0], [6.0, 6.0]])
    phi = cumulant_descriptor(atoms, np.array([0, 2, 4, 5]), order=2)
    np.testing.assert_allclose(phi[0], [2.0, 0.0, 1.0, 0.0])  # mean, then sqrt of the variance
    np.testing.assert_allclose(phi[1], [0.0, 0.0, 0.0, 2.0])
    np.testing.assert_allclose(phi[2], [6.0, 6.0, 0.0, 0.0])  # one atom: no spread
    with pytest.raises(ValueError):
        cumulants(np.zeros((0, 2)), 2)


def test_cumulant_kernel_of_order_one_is_the_mean_activation(tiny_model, ethanol):
    activation = MLIPALCalculator(model=tiny_model, kernel_options={"by_element": False}, posterior=None)
    first = MLIPALCalculator(model=tiny_model, kernel="cumulant", kernel_options={"order": 1}, posterior=None)
    third = MLIPALCalculator(model=tiny_model, kernel="cumulant", kernel_options={"order": 3}, posterior=None)
    (a,), (b,), (c,) = (calc.features([ethanol])[0].structure for calc in (activation, first, third))
    np.testing.assert_allclose(b, a / len(ethanol))
    assert c.shape == (3 * len(a),) and np.allclose(c[:len(a)], b)
    with pytest.raises(ValueError, match="order"):
        MLIPALCalculator(model=tiny_model, kernel="cumulant", kernel_options={"order": 0})


def test_reconstruction_errors_see_what_one_feature_set_holds_of_another():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6))
    latents = {"X": x, "rotated X": x @ rng.normal(size=(6, 6)), "two columns": x[:, :2],
               "noise": rng.normal(size=(200, 4))}
    result = compare(latents, n_local_points=20)
    gfre = dict(zip(result.names, result.gfre))
    index = {name: k for k, name in enumerate(result.names)}
    assert gfre["X"][index["rotated X"]] < 0.05 and gfre["rotated X"][index["X"]] < 0.05
    assert gfre["X"][index["two columns"]] < 0.05  # X holds the two columns ...
    assert gfre["two columns"][index["X"]] > 0.6  # ... but not the reverse
    assert gfre["X"][index["noise"]] > 0.9
    assert result.lfre[index["X"], index["rotated X"]] < 0.1
    with pytest.raises(ValueError, match="same atoms"):
        compare({"a": x, "b": x[:10]})


def test_latents_of_two_models_and_their_layers(tiny_model, tmp_path):
    frames = rattled(molecule("CH3CH2OH"), 8, stdev=0.1, seed=0) + rattled(molecule("CH3OH"), 8, stdev=0.1, seed=1)
    x = atom_latents(tiny_model, frames)
    assert x.shape[0] == sum(len(a) for a in frames)
    layers = layer_latents(x, tiny_model)
    assert len(layers) == int(tiny_model.num_interactions)
    np.testing.assert_array_equal(np.concatenate(list(layers.values()), axis=1), x)
    other = atom_latents(random_like(tiny_model, 123), frames)
    result = compare({"pretrained": x, "random": other}, n_local_points=10)
    assert np.all(np.diag(result.gfre) < 0.05) and result.gfre[0, 1] > 0.05
    assert plot_comparison(result, tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_command_prints_both_ways_and_draws_the_heat_map(tiny_model, tmp_path, capsys):
    a = save_model(tiny_model, tmp_path / "a.pt")
    b = save_model(random_like(tiny_model, 3), tmp_path / "b.pt")
    frames = rattled(molecule("CH3CH2OH"), 12, stdev=0.1, seed=2)
    write(tmp_path / "data.xyz", frames)
    png = tmp_path / "frfe.png"
    main(["compare", str(a), str(b), str(tmp_path / "data.xyz"), "--n-local", "10", "--layers",
          "--plot", str(png)])
    out = capsys.readouterr().out
    assert "GFRE" in out and "LFRE" in out and "A layer 1" in out and "B layer 2" in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="cannot load model"):
        main(["compare", str(a), str(tmp_path / "missing.pt"), str(tmp_path / "data.xyz")])
