"""Datasets: preparation of each real on-disk layout (``monai_ext.data.<name>``), synthetic data in the same layouts
(``monai_ext.data.synthetic.<name>``), behind one interface (:mod:`monai_ext.data.dataset`) and one command-line
layer (:mod:`monai_ext.data.cli`: ``monai-ext synth`` / ``monai-ext prepare``). See ``docs/datasets.md``."""
