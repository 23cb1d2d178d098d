"""The command lines' process setup (:mod:`unet3d.env`), each check in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = """
import json, sys
from unet3d.env import prepare_backend
print(json.dumps({"backend": prepare_backend(), "tf": "tensorflow" in sys.modules,
                  "jax_loaded": "jax" in sys.modules}))
import jax
print(json.dumps({"jax_later": jax.numpy.add(1, 2).item()}))
"""


def test_tensorflow_loads_without_jax_and_jax_still_imports_later():
    env = {"KERAS_BACKEND": "tensorflow", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, text=True,
                         capture_output=True, timeout=300, check=True).stdout.splitlines()
    first, second = json.loads(out[0]), json.loads(out[1])
    assert first == {"backend": "tensorflow", "tf": True, "jax_loaded": False}
    assert second == {"jax_later": 3}
