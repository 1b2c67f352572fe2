"""`rag-assets` exits without the interpreter's teardown (cli.run): the exit code, the output and the
atexit handlers must be what a normal exit gives."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

EPILOGUE = """
import atexit, concurrent.futures, sys, threading, time
from rag_assets import cli
marker = sys.argv[1]
atexit.register(lambda: open(marker, "w").write("atexit ran"))
class Teardown:  # what the interpreter's teardown runs, when it frees this module's objects
    def __del__(self, open=open, path=marker + ".teardown"):  # builtins may be gone by then
        open(path, "w").write("teardown ran")
teardown = Teardown()
if sys.argv[2] == "thread":  # a thread still running: the exit waits for it, as Python's does
    threading.Thread(target=lambda: (time.sleep(0.5), open(marker + ".thread", "w").write("done"))).start()
if sys.argv[2] == "pool":  # a thread pool left open (pyiceberg's, the chunker's): its idle threads stop
    pool = concurrent.futures.ThreadPoolExecutor(2)
    pool.submit(lambda: (time.sleep(0.3), open(marker + ".pool", "w").write("done")))
message = sys.argv[3] if len(sys.argv) > 3 else None
mode = sys.argv[2]
cli.main.command("boom")(lambda: sys.exit(message))
sys.argv = ["rag-assets", "boom"] if mode in ("boom", "thread", "pool", "normal") else ["rag-assets", mode]
print("buffered output", end="")  # unflushed when the command ends
cli.main() if mode == "normal" else cli.run()
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


@pytest.mark.parametrize("threads", ["thread", "pool"])
def test_threads_are_waited_for_and_the_teardown_is_skipped(tmp_path, threads):
    proc, marker = _run(tmp_path, threads)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / f"marker.{threads}").read_text() == "done" and marker.read_text() == "atexit ran"
    assert not (tmp_path / "marker.teardown").exists()  # the quick exit, although threads were alive


def test_the_teardown_marker_is_written_by_a_normal_exit(tmp_path):
    """The check above can fail: Python's own exit (click's `main`) runs the teardown that writes it."""
    proc, marker = _run(tmp_path, "normal")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "marker.teardown").read_text() == "teardown ran"


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


def test_an_interrupt_while_waiting_for_threads_is_reported_and_the_exit_goes_on(tmp_path):
    """Ctrl-C while the exit waits for a thread: Python's own exit reports it and still runs the atexit
    handlers with the command's exit code; so does `run` (the wait is made to raise, as a Ctrl-C would)."""
    marker = tmp_path / "marker"
    script = EPILOGUE.replace("cli.main() if mode", "def interrupted(): raise KeyboardInterrupt\nthreading._shutdown = interrupted\ncli.main() if mode")
    proc = subprocess.run([sys.executable, "-c", script, str(marker), "boom"], capture_output=True, text=True, timeout=120,
                          env=BUFFERED)
    assert proc.returncode == 0, proc.stderr
    assert "Exception ignored while waiting for threads at exit" in proc.stderr and "KeyboardInterrupt" in proc.stderr
    assert marker.read_text() == "atexit ran" and proc.stdout.startswith("buffered output")


def test_run_called_from_another_thread_leaves_the_exit_to_the_main_thread(tmp_path):
    """Waiting for every thread from a thread the main thread is joining would never end: `run` re-raises."""
    marker = tmp_path / "marker"
    script = EPILOGUE.replace("cli.main() if mode == \"normal\" else cli.run()",
                              "worker = threading.Thread(target=cli.run); worker.start(); worker.join()\n"
                              "open(marker + '.joined', 'w').write('joined')")
    proc = subprocess.run([sys.executable, "-c", script, str(marker), "boom"], capture_output=True, text=True, timeout=60,
                          env=BUFFERED)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "marker.joined").read_text() == "joined" and marker.read_text() == "atexit ran"
