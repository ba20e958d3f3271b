"""MACE models: load, save and build them (:mod:`.model`), and the one Atoms -> graph batch pipeline (:mod:`.graphs`)."""
