"""The library stays apart from the commands: `import netspec` and building a Net load none of
the command-line and download machinery (click, urllib.request, gzip) nor matplotlib."""
import json
import subprocess
import sys

from conftest import REPO

PROBE = """
import json, sys
import netspec
net = netspec.Net('models/lenet/lenet.prototxt', netspec.TEST)
net.forward()
heavy = ('click', 'urllib.request', 'gzip', 'matplotlib')
print(json.dumps(sorted(m for m in sys.modules if m in heavy or m.split('.')[0] in heavy[:1] + heavy[3:])))
"""


def loaded_by(code):
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_import_netspec_and_building_a_net_load_no_command_machinery():
    assert loaded_by(PROBE) == []


def test_the_probe_sees_what_the_commands_load():
    # The same probe after importing the CLI must name click: the check above can fail.
    assert "click" in loaded_by("import netspec.cli\n" + PROBE)
