"""`rag-assets` exits without the interpreter's teardown (cli.run): the exit code, the output and the
atexit handlers must be what a normal exit gives."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

EPILOGUE = """
import atexit, sys, threading, time
from rag_assets import cli
marker = sys.argv[1]
atexit.register(lambda: open(marker, "w").write("atexit ran"))
if sys.argv[2] == "thread":  # a thread still running: the normal exit, which waits for it
    threading.Thread(target=lambda: (time.sleep(0.5), open(marker + ".thread", "w").write("done"))).start()
message = sys.argv[3] if len(sys.argv) > 3 else None
cli.main.command("boom")(lambda: sys.exit(message))
sys.argv = ["rag-assets", "boom"] if sys.argv[2] in ("boom", "thread") else ["rag-assets", sys.argv[2]]
print("buffered output", end="")  # unflushed when the command ends
cli.run()
"""


BUFFERED = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout block-buffered, as in a pipe


def _run(tmp_path, *args):
    marker = tmp_path / "marker"
    proc = subprocess.run([sys.executable, "-c", EPILOGUE, str(marker), *args], capture_output=True, text=True, timeout=120,
                          env=BUFFERED)
    return proc, marker


@pytest.mark.parametrize(("args", "code", "stderr"), [
    (("--help",), 0, ""),                      # click's own exit
    (("boom",), 0, ""),                        # sys.exit(None)
    (("boom", "went wrong"), 1, "went wrong"),  # sys.exit("message"): printed, exit 1
    (("search",), 2, "Missing argument"),      # a usage error
])
def test_exit_code_output_and_atexit_handlers_are_kept(tmp_path, args, code, stderr):
    proc, marker = _run(tmp_path, *args)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout.startswith("buffered output")
    assert stderr in proc.stderr
    assert marker.read_text() == "atexit ran"


def test_a_running_thread_gets_the_normal_exit_that_waits_for_it(tmp_path):
    proc, marker = _run(tmp_path, "thread")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "marker.thread").read_text() == "done" and marker.read_text() == "atexit ran"


def test_output_that_cannot_be_written_exits_120_as_python_does(tmp_path):
    with open("/dev/full", "w") as full:  # every write fails: no space left on device
        proc = subprocess.run([sys.executable, "-c", EPILOGUE, str(tmp_path / "marker"), "boom"], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120, env=BUFFERED)
    assert proc.returncode == 120 and "Traceback" not in proc.stderr, proc.stderr
    assert (tmp_path / "marker").read_text() == "atexit ran"


@pytest.mark.parametrize("closed", [">&-", "2>&-"])
def test_a_command_started_with_stdout_or_stderr_closed_exits_cleanly(tmp_path, closed):
    marker = tmp_path / "marker"  # Python starts with sys.stdout (or sys.stderr) None: nothing to flush
    proc = subprocess.run(["sh", "-c", f'exec "$0" -c "$1" "$2" boom {closed}', sys.executable, EPILOGUE, str(marker)],
                          capture_output=True, text=True, timeout=120, env=BUFFERED)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert marker.read_text() == "atexit ran"
