"""Uncertainty from a model's latent space.

:mod:`.features` (the feature-map base and the activation kernel), :mod:`.ntk`
(energy, force and joint NTKs), :mod:`.sketch` (the parameter sketch),
:mod:`.cumulant`, :mod:`.committee`, :mod:`.kernels` (kernels by name),
:mod:`.posterior` (the feature-space Gaussian posterior) and
:mod:`.calibration` (raw variances to eV and eV/A). Nothing here imports
training or learning code.
"""
