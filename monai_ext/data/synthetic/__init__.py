"""Synthetic data in the real on-disk layout of each dataset (``monai-ext synth``), one module per dataset.

A generator module may import its preparation module's layout constants (:mod:`monai_ext.data.btcv` ...); the
preparation modules never import from here.
"""
