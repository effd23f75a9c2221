"""An installed wheel (not only the editable checkout) carries what the built-in defaults need."""
import glob
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

pytestmark = pytest.mark.integration  # builds a wheel with pip

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _build_wheel(tmp_path) -> str:
    # From a copy of the sources, so a stale build/ in the checkout cannot leak into the wheel.
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(os.path.join(REPO, "mometas_ds"), src / "mometas_ds", ignore=ignore)
    shutil.copytree(os.path.join(REPO, "ds_configs"), src / "ds_configs", ignore=ignore)
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, timeout=300)
    (wheel,) = glob.glob(str(tmp_path / "dist" / "mometas_ds-*.whl"))
    return wheel


def test_wheel_ships_the_deepspeed_configs_the_defaults_use(tmp_path):
    wheel = _build_wheel(tmp_path)
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("mometas_ds/ds_configs/")}
    expected = {"mometas_ds/ds_configs/" + os.path.basename(p)
                for p in glob.glob(os.path.join(REPO, "ds_configs", "*.json"))}
    assert expected and shipped == expected

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip install puts in site-packages
    probe = (
        "import json, mometas_ds, mometas_ds.bench as bench\n"
        "print(json.dumps({'package': mometas_ds.__file__, 'cpu': bench.CPU_CONFIG, 'gpu': bench.GPU_CONFIG}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout
    paths = json.loads(out.strip().splitlines()[-1])
    assert paths["package"].startswith(str(site))  # the installed copy, not the checkout
    for key, name in (("cpu", "cpu_demo.json"), ("gpu", "bert_base_zero2.json")):
        assert paths[key] == str(site / "mometas_ds" / "ds_configs" / name)
        with open(paths[key]) as installed, open(os.path.join(REPO, "ds_configs", name)) as source:
            assert json.load(installed) == json.load(source)
