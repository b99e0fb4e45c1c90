"""The README keeps exactly two set-up commands, and .ci/run runs the README's test command."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_has_exactly_two_setup_commands():
    cmds = _readme_commands()
    assert len(cmds) == 2, cmds
    assert "python -m moge4d_core" in cmds[0]
    assert "pytest" in cmds[1]
    for c in cmds:
        assert c.startswith("pip install torch==2.13.0 && "), c
        assert "\n" not in c


def test_ci_runs_the_readme_test_command():
    ci_lines = [l.strip() for l in (ROOT / ".ci/run").read_text().splitlines()
                if l.strip() and not l.startswith("#") and not l.startswith(("set ", "cd "))]
    assert ci_lines == [_readme_commands()[1]]


def test_constraints_pin_the_cpu_torch():
    assert (ROOT / "constraints.txt").read_text().split() == ["torch==2.13.0"]
    assert "torch" not in [l.split("<")[0].split(">")[0].split("=")[0].strip()
                           for l in (ROOT / "requirements.txt").read_text().splitlines() if not l.startswith("#")]
