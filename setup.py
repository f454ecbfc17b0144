"""The package list, which pyproject.toml cannot say: s2s's own packages plus the top-level configs/
installed as `s2s/_configs`, so a wheel carries the Hydra configs (s2s/config_dir.py finds them)."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["s2s*"]), "s2s._configs"], package_dir={"s2s._configs": "configs"})
