"""The README's papermill commands, exactly as printed, hand the notebook parameters it can use (issue 21).

Each command is run as written (only ``out.ipynb`` goes to a temporary folder) with
papermill's ``--prepare-only``: papermill parses the flags and injects the parameters
without executing. The injected cell must then name only parameters the notebook has,
and its values must read as the chapter reads them: ``datasets`` as a list of known
datasets, ``overrides`` as valid fields of the profile. Executing them at ``paper`` on a
GPU is what the rehearsal (``make rehearse``) stands in for on a CPU.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from nbs_lib.core.parameters import as_dict, as_list
from nbs_lib.core.profiles import get_profile
from nbs_lib.data.registry import available_datasets

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme_commands() -> list[str]:
    """The papermill commands of the README's bash blocks (continuation lines joined), then the
    first one with its ``-y 'datasets: ...'`` given in the ``-p`` JSON form the text shows."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            if "papermill " in command and not command.strip().startswith("#"):
                commands.append(" ".join(command.split()))
    inline = re.search(r"`(-p datasets '\[[^`]*\]')`", README)
    if inline and commands:
        commands.append(re.sub(r"-y 'datasets: [^']*'", inline.group(1), commands[0]))
    return commands


COMMANDS = readme_commands()


def test_the_readme_shows_papermill_commands():
    assert len(COMMANDS) >= 3, COMMANDS
    assert any("overrides" in c for c in COMMANDS) and any("-p datasets '[" in c for c in COMMANDS)


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_hands_the_notebook_usable_parameters(command, tmp_path):
    argv = shlex.split(command)
    assert argv[0] == ".venv/bin/papermill", command
    argv[0] = str(Path(sys.executable).with_name("papermill"))
    source = ROOT / argv[1]
    argv[2] = str(tmp_path / Path(argv[2]).name)
    proc = subprocess.run(argv + ["--prepare-only"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "unknown parameter" not in proc.stderr.lower(), proc.stderr
    nb = nbformat.read(argv[2], as_version=4)
    cells = {tag: c.source for c in nb.cells if c.cell_type == "code"
             for tag in c.metadata.get("tags", []) if tag in ("parameters", "injected-parameters")}
    defaults, injected = {}, {}
    exec(cells["parameters"], {}, defaults)
    exec(cells["injected-parameters"], {}, injected)
    assert set(injected) <= set(defaults), f"{source.name} has no parameter {set(injected) - set(defaults)}"
    values = {**defaults, **injected}
    prof = get_profile(values["profile"], as_dict(values.get("overrides"), "overrides"))
    assert prof.name == "paper"
    names = as_list(values.get("datasets"), "datasets")
    if "datasets" in injected:
        assert names and set(names) <= set(available_datasets()), names
