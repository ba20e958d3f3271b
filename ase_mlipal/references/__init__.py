"""Reference (labelling) calculators: GFN2-xTB through tblite (:mod:`.xtb`) and PySCF DFT (:mod:`.pyscf`)."""
