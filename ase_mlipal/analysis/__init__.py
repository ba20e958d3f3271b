"""Analysis of latent spaces: feature reconstruction errors between models (:mod:`.reconstruction`)."""

from .reconstruction import atom_latents, compare, layer_latents, plot_comparison  # noqa: F401  (the old module's API)
