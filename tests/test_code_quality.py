"""Architecture rules and lint, checked with every test run."""

import subprocess
import sys
from pathlib import Path

from conftest import REPO

BIN = Path(sys.executable).parent


def test_services_never_import_each_other_and_shared_pieces_never_import_services():
    result = subprocess.run([BIN / "lint-imports"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_nothing():
    result = subprocess.run([BIN / "ruff", "check", "std_daq_service", "tests", "benchmarks"], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_shared_pieces_type_check():
    result = subprocess.run([BIN / "mypy"], capture_output=True, text=True, cwd=REPO)  # files: pyproject.toml
    assert result.returncode == 0, result.stdout + result.stderr


def test_client_side_imports_stay_light():
    code = ("import sys, std_daq_service.protocol, std_daq_service.broker, std_daq_service.pff, "
            "std_daq_service.client; "
            "heavy = [m for m in ('h5py', 'flask', 'matplotlib', 'hdf5plugin') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
