"""The wheel must carry tasks/, envs/ and configs/ so that a non-editable install works."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
    )
    (path,) = out.glob("fmmm-*.whl")
    return path


def test_wheel_carries_task_specs_scene_assets_and_configs(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for folder in ("tasks", "envs", "configs"):
        shipped = sorted(
            p.relative_to(ROOT / folder).as_posix()
            for p in (ROOT / folder).rglob("*")
            if p.is_file()
        )
        assert shipped, f"{folder}/ is empty in the checkout"
        for rel in shipped:
            assert f"fmmm/_data/{folder}/{rel}" in names, f"{folder}/{rel} missing from the wheel"


def test_non_editable_install_finds_its_data(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    code = "import fmmm.resources as r; print(r.data_dir('tasks')); print(r.data_dir('envs'))"
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {code}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    for line in result.stdout.split():
        assert Path(line).is_relative_to(target), line
