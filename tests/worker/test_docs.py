"""The runnable example of docs/consumers.md runs and prints what the page says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "consumers.md"


def test_embedded_example_runs(tmp_path: Path) -> None:
    text = PAGE.read_text()
    after = text.split("This example runs as is", 1)[1]
    code = re.search(r"```python\n(.*?)```", after, re.S)
    assert code is not None
    script = tmp_path / "example.py"
    script.write_text(code.group(1))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "{'text': 'hello, ada'}" in result.stdout
