"""The one cached Go build FerretDB, the collector and the Kubernetes control plane go through:
a cached result needs no Go, a missing Go is named with what needed it, a failing step says why."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from localinfra.go_build import cached_go_build, require_go, run


def _never(go: str) -> str:
    raise AssertionError(f"built again with {go}")


def test_a_cached_result_is_found_without_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MBL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", "")
    found = cached_go_build("thing", tmp_path / "thing-1", lambda: True, _never, "unused")
    assert (found.component, found.location, found.action) == (
        "thing",
        str(tmp_path / "thing-1"),
        "already installed",
    )
    assert found.seconds < 1


def test_a_missing_go_is_named_with_what_needs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MBL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", "")
    with pytest.raises(RuntimeError, match="'go' not found: the thing is built from source"):
        cached_go_build(
            "thing", tmp_path / "thing-1", lambda: False, _never, "the thing is built from source"
        )
    with pytest.raises(RuntimeError, match="'go' not found: FerretDB"):
        require_go("FerretDB")


def test_a_missing_result_is_built_with_go_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go on this machine")  # the localinfra builds need it anyway
    monkeypatch.setenv("MBL_CACHE_DIR", str(tmp_path))
    result = tmp_path / "thing-1" / "bin"
    calls: list[str] = []

    def build(found: str) -> str:
        calls.append(found)
        result.mkdir(parents=True)
        return "built thing"

    first = cached_go_build("thing", tmp_path / "thing-1", result.exists, build, "needs Go")
    again = cached_go_build("thing", tmp_path / "thing-1", result.exists, build, "needs Go")
    assert (first.action, again.action, calls) == ("built thing", "already installed", [go])
    assert (tmp_path / ".thing-1.lock").exists()  # the lock the old per-module code took


def test_a_failing_step_raises_with_what_it_printed(tmp_path: Path) -> None:
    assert run(["sh", "-c", "echo fine"], cwd=tmp_path) == "fine\n"
    with pytest.raises(RuntimeError, match=r"(?s)failed:\nto stdout\nto stderr") as failure:
        run(["sh", "-c", "echo to stdout; echo to stderr >&2; exit 3"], env={"X": "1"})
    assert "sh -c" in str(failure.value)
