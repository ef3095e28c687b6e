"""The Autobahn summary generator, on a hand-made report (the suite itself is opt-in:
tests/compliance/run_autobahn.sh)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "autobahn_summarize", Path(__file__).with_name("summarize.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(tmp_path: Path, verdicts: dict[str, str]) -> Path:
    cases = {
        case: {"behavior": v, "behaviorClose": "OK", "duration": 3, "remoteCloseCode": 1000}
        for case, v in verdicts.items()
    }
    path = tmp_path / "index.json"
    path.write_text(json.dumps({"csp-bus 0.1.0": cases}))
    return path


def test_all_passing(tmp_path: Path) -> None:
    index = report(tmp_path, {"1.1.2": "OK", "1.1.10": "OK", "3.2": "NON-STRICT"})
    assert load().main([str(index), str(tmp_path / "out"), "--cases", '["1.*"]']) == 0
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "none FAILED" in summary
    assert "| 3.2 | NON-STRICT | OK | 1000 |" in summary
    written = json.loads((tmp_path / "out" / "index.json").read_text())
    assert list(written["results"]) == ["1.1.2", "1.1.10", "3.2"]  # numeric order
    assert written["totals"] == {"OK": 2, "NON-STRICT": 1}


def test_a_failure_fails_the_run(tmp_path: Path) -> None:
    index = report(tmp_path, {"9.1.1": "OK", "9.1.2": "FAILED"})
    assert load().main([str(index), str(tmp_path / "out")]) == 1
    assert "1 case(s) below the bar" in (tmp_path / "out" / "summary.md").read_text()
