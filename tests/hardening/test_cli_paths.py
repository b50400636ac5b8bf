"""Hostile or mistaken path arguments to the ``anonymizer`` CLI: a file where a folder is
expected, a folder that does not exist, STATS inside RAW or RAW inside STATS (directly,
through ``..`` or through a symbolic link), links planted where the run writes. Each gets a
one-line error and a non-zero exit, and nothing is written anywhere."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from anonymizer.cli import anonymizer_cli
from hardening.pipeline_support import write_days


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (links not followed) with its kind and size."""
    entries = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
            size = "" if kind != "file" else str(path.stat().st_size)
            entries[str(path.relative_to(root))] = f"{kind}:{size}"
    return entries


@pytest.fixture
def world(tmp_path: Path) -> Path:
    """``raw/`` with two days of events, an empty file and an empty folder beside it."""
    write_days(tmp_path / "raw", 2)
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "empty").mkdir()
    return tmp_path


def invoke(world: Path, *args: str) -> tuple[int, str]:
    before = os.getcwd()
    os.chdir(world)  # relative paths below are relative to the test's folder
    try:
        result = CliRunner().invoke(anonymizer_cli, list(args))
    finally:
        os.chdir(before)
    assert "Traceback" not in result.output
    return result.exit_code, result.output


Setup = Callable[[Path], None]


def nothing(world: Path) -> None:
    """No extra setup."""


def link_stats_to_raw(world: Path) -> None:
    (world / "stats-link").symlink_to(world / "raw")


def link_raw_into_stats(world: Path) -> None:
    (world / "stats").mkdir()
    os.replace(world / "raw", world / "stats" / "raw")
    (world / "raw").symlink_to(world / "stats" / "raw")


def link_table_to_raw(world: Path) -> None:
    (world / "stats").mkdir()
    (world / "stats" / "pages_daily").symlink_to(world / "raw" / "events")


def link_state_into_stats(world: Path) -> None:
    (world / "stats").mkdir()
    (world / "stats" / "leak").mkdir()
    (world / "raw" / "pipeline").symlink_to(world / "stats" / "leak")


def link_quarantine_away(world: Path) -> None:
    (world / "raw" / "quarantine").symlink_to(world / "empty")


RUN_CASES: list[tuple[str, Setup, list[str], int, str]] = [
    ("raw is a file", nothing, ["--raw", "a-file", "--stats", "stats"], 2, "is a file"),
    ("stats is a file", nothing, ["--raw", "raw", "--stats", "a-file"], 2, "is a file"),
    ("raw missing", nothing, ["--raw", "nope", "--stats", "stats"], 1, "does not exist"),
    ("stats inside raw", nothing, ["--raw", "raw", "--stats", "raw/stats"], 1, "overlap"),
    ("raw inside stats", nothing, ["--raw", "raw", "--stats", "."], 1, "overlap"),
    ("same folder", nothing, ["--raw", "raw", "--stats", "raw"], 1, "overlap"),
    (
        "dot-dot back into raw",
        nothing,
        ["--raw", "raw", "--stats", "empty/../raw/events/../x"],
        1,
        "overlap",
    ),
    (
        "stats links to raw",
        link_stats_to_raw,
        ["--raw", "raw", "--stats", "stats-link"],
        1,
        "overlap",
    ),
    (
        "stats under a link to raw",
        link_stats_to_raw,
        ["--raw", "raw", "--stats", "stats-link/sub"],
        1,
        "overlap",
    ),
    (
        "raw links into stats",
        link_raw_into_stats,
        ["--raw", "raw", "--stats", "stats"],
        1,
        "overlap",
    ),
    (
        "table folder links to raw",
        link_table_to_raw,
        ["--raw", "raw", "--stats", "stats"],
        1,
        "symbolic link",
    ),
    (
        "state folder links into stats",
        link_state_into_stats,
        ["--raw", "raw", "--stats", "stats"],
        1,
        "symbolic link",
    ),
    (
        "quarantine links elsewhere",
        link_quarantine_away,
        ["--raw", "raw", "--stats", "stats"],
        1,
        "symbolic link",
    ),
]


@pytest.mark.parametrize(
    ("setup", "args", "code", "message"),
    [case[1:] for case in RUN_CASES],
    ids=[case[0] for case in RUN_CASES],
)
def test_run_refuses_bad_paths_and_writes_nothing(
    world: Path, setup: Setup, args: list[str], code: int, message: str
) -> None:
    setup(world)
    before = tree(world)
    exit_code, output = invoke(world, "run", *args)
    assert exit_code == code and message in output, output
    assert sum(line.startswith("Error:") for line in output.splitlines()) == 1
    assert tree(world) == before


@pytest.mark.parametrize("command", [["query", "SELECT 1"], ["tables"], ["notice"]])
@pytest.mark.parametrize(
    ("stats", "code", "message"),
    [
        ("a-file", 2, "is a file"),
        ("nope", 1, "first"),
        ("raw", 1, "first"),  # RAW is never read as STATS
        ("raw/events/..", 1, "first"),
    ],
)
def test_reading_commands_refuse_bad_stats(
    world: Path, command: list[str], stats: str, code: int, message: str
) -> None:
    before = tree(world)
    exit_code, output = invoke(world, command[0], "--stats", stats, *command[1:])
    assert exit_code == code and message in output, output
    if code == 1:  # what to do: publish first
        assert f"`anonymizer run --raw RAW --stats {stats}` first" in output
    assert tree(world) == before


def test_import_log_refuses_bad_paths(world: Path) -> None:
    before = tree(world)
    log = world / "access.log"
    log.write_text("")
    before = tree(world)
    for args, message in [
        (["--raw", "a-file", "access.log"], "is a file"),
        (["--raw", "raw", "empty"], "is a directory"),
        (["--raw", "raw", "missing.log"], "missing.log"),
    ]:
        exit_code, output = invoke(world, "import-log", "--format", "combined", *args)
        assert exit_code != 0 and message in output, output
        assert tree(world) == before


def test_a_good_run_writes_only_inside_its_folders(world: Path) -> None:
    before = tree(world)
    exit_code, output = invoke(world, "run", "--raw", "raw", "--stats", "out/stats")
    assert exit_code == 0, output
    added = set(tree(world)) - set(before)
    assert added and all(p.startswith(("out", "raw/pipeline")) for p in added), added
