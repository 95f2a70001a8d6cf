"""See the package docstring of monai_ext."""
