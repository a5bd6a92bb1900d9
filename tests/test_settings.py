"""Every environment variable is read in harness/settings.py, when asked, and listed in
the README; the CLI says what it does at the level asked."""
import logging
import re
from pathlib import Path

from harness import cli, settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_variable_is_in_the_readme():
    readme = ROOT.joinpath("README.md").read_text()
    section = readme.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([A-Z_]+)` \|", section, re.M))
    assert listed == set(settings.VARIABLES)


def test_no_module_reads_the_environment_but_settings():
    """The microcode toolkit stands alone (tests/microcode/test_cli.py): it reads the
    terminal's COLUMNS itself, as argparse does, and nothing else."""
    readers = re.compile(r"os\.environ\.get\(|os\.environ\[|os\.getenv\(")
    found = [str(p.relative_to(ROOT)) for p in ROOT.joinpath("harness").rglob("*.py")
             if p.name != "settings.py" and readers.search(p.read_text())]
    assert found == ["harness/microcode/cli.py"]
    assert re.findall(r"os\.environ\.get\(\"(\w+)\"",
                      ROOT.joinpath("harness/microcode/cli.py").read_text()) == ["COLUMNS"]


def test_a_variable_is_read_when_asked(monkeypatch):
    monkeypatch.setenv("SMM_HARNESS_BOOT_TIMEOUT", "7")
    assert settings.boot_timeout() == 7.0
    monkeypatch.setenv("SMM_HARNESS_BOOT_TIMEOUT", "9")
    assert settings.boot_timeout() == 9.0


def test_log_level_and_verbosity(tmp_path, monkeypatch, capsys):
    levels = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: levels.append(kw["level"]))
    trace = ROOT / "tests" / "data" / "traces"
    any_trace = next(trace.rglob("*.jsonl"))
    for argv, level in ((["show"], logging.WARNING), (["-v", "show"], logging.INFO),
                        (["-vv", "show"], logging.DEBUG),
                        (["--log-level", "error", "show"], logging.ERROR),
                        (["-vv", "--log-level", "warning", "show"], logging.WARNING)):
        assert cli.main(argv + [str(any_trace)]) == 0
        assert levels.pop() == level
