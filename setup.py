"""Install hpcem and compile its Cython kernels (``pip install .``)."""

from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

HERE = Path(__file__).parent

# Each cython_kernels/NAME.pyx becomes the extension module hpcem.kernels.NAME.
extensions = [
    Extension(
        f"hpcem.kernels.{pyx.stem}",
        [str(pyx.relative_to(HERE))],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    )
    for pyx in sorted((HERE / "cython_kernels").glob("*.pyx"))
]

setup(
    name="hpcem",
    version="0.1.0",
    description="Reproducible cryo-EM single-particle processing on HPC batch systems",
    python_requires=">=3.11",
    packages=find_packages(include=["hpcem", "hpcem.*"])
    + ["hpcem.protocols", "hpcem.queue_templates", "hpcem.site_configs"],
    # The top-level folders show the architecture; inside the install they live in hpcem.
    package_dir={
        "hpcem.protocols": "protocols",
        "hpcem.queue_templates": "queue_templates",
        "hpcem.site_configs": "site_configs",
    },
    package_data={
        "hpcem.queue_templates": ["*.j2"],
        "hpcem.site_configs": ["*.toml"],
        "hpcem.sim": ["data/*.bz2", "data/README.md"],
        "hpcem.workflow": ["schema.json"],
    },
    ext_modules=cythonize(extensions, language_level=3, quiet=True),
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "h5py>=3.8",
        "jinja2>=3.1",
        "parsl>=2024.1",
        "mpi4py>=3.1",
        "mpich>=4.1",
        "click>=8.1",
        "mrcfile>=1.4",
        "tifffile>=2023.1",
        "starfile>=0.5",
        # Diagnostic pictures written by the steps themselves (CTF fits, drift plots).
        "matplotlib>=3.7",
        # PDB/mmCIF models and their electron scattering factors for the simulator.
        "gemmi>=0.6",
        # Checks workflow templates against their published JSON Schema on import.
        "jsonschema>=4.18",
    ],
    extras_require={
        # cryosparc-tools: tests check that the .cs files hpcem writes load in cryoSPARC's own
        # library; rocrate: tests read the provenance crates hpcem writes with the RO-Crate
        # library's own reader (hpcem writes them without it).
        "test": ["pytest>=7", "ruff==0.17.6", "cryosparc-tools>=4.4", "rocrate>=0.10"]
    },
    entry_points={"console_scripts": ["hpcem = hpcem.cli.main:main"]},
)
