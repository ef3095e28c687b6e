"""Package mapping that pyproject.toml cannot express on its own.

The top-level ``adapters/`` folder is installed as ``csp_bus.adapters`` (never as a
top-level ``adapters`` package). setuptools resolves sub-packages through the longest
``package_dir`` prefix, so ``csp_bus.adapters.http`` maps to ``adapters/http`` for both
``pip install .`` and ``pip install -e .``.
"""

from setuptools import find_packages, setup

core = ["csp_bus", *(f"csp_bus.{name}" for name in find_packages("csp_bus"))]
adapters = ["csp_bus.adapters", *(f"csp_bus.adapters.{name}" for name in find_packages("adapters"))]

setup(
    packages=core + adapters,
    package_dir={"csp_bus.adapters": "adapters"},
    package_data={
        "": ["py.typed", "*.html", "*.js", "*.css", "*.lua", "templates/**/*", "static/**/*"]
    },
)
