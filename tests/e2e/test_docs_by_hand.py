"""The by-hand set-up of docs/label-studio.md, run exactly as written (two `bash` blocks under
"## By hand"), with only the ports, folders and preset changed for a test machine: a fresh
Label Studio, the backend (``tiny`` preset, no weights), a project with predictions."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e

DOCS = REPO_ROOT / "docs" / "label-studio.md"


def by_hand_blocks() -> list[str]:
    text = DOCS.read_text()
    section = text[text.index("## By hand\n") :]
    section = section[: section.index("\n### ")]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_docs_by_hand_commands_give_predictions(tmp_path, e2e_images, ls_venv):
    blocks = by_hand_blocks()
    assert len(blocks) == 2, "the by-hand section has two bash blocks"
    ls_port, backend_port = free_port(), free_port()
    replacements = {
        "8080": str(ls_port),
        "9090": str(backend_port),
        "$PWD/ls-data": str(tmp_path / "ls-data"),
        "./model_dir": str(tmp_path / "model_dir"),
        "./my-images": str(e2e_images),
        "> ls.log": f"> {tmp_path / 'ls.log'}",
        "> backend.log": f"> {tmp_path / 'backend.log'}",
        ".ls-venv/bin/label-studio": f"{ls_venv}/bin/label-studio",
    }
    script = "\n".join(blocks)
    for old, new in replacements.items():
        assert old in script, f"the docs no longer say {old!r}: update this test"
        script = script.replace(old, new)
    script = "set -e\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" + script
    env = {**os.environ, "MODEL_PRESET": "tiny", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("LABEL_STUDIO_URL", None)
    env.pop("LABEL_STUDIO_API_KEY", None)
    result = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    logs = "".join(
        f"\n--- {name} ---\n{(tmp_path / name).read_text()[-3000:]}"
        for name in ("ls.log", "backend.log")
        if (tmp_path / name).exists()
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output + logs
    counts = re.search(r"(\d+) of (\d+) task\(s\) have predictions, 0 of them empty", output)
    assert counts and counts.group(1) == counts.group(2) != "0", output + logs
