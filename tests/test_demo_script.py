"""``make demo`` (examples/demo.py): the scripted run, then the demo page until Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import sys

import pytest
import requests
from servers import WorkerProcs, free_port

DEMO = ["examples/demo.py"]


@pytest.mark.slow
def test_the_scripted_demo_ends_by_itself(worker_procs: WorkerProcs) -> None:
    demo = worker_procs.spawn([sys.executable, *DEMO, "--scripted", "--port", "0"])
    assert demo.wait(120) == 0, worker_procs.log_tail(demo)
    output = worker_procs.log(demo)
    assert "status: succeeded" in output
    assert "Demo page" not in output


@pytest.mark.slow
def test_the_demo_serves_the_page_until_ctrl_c(worker_procs: WorkerProcs) -> None:
    port = free_port()
    demo = worker_procs.spawn([sys.executable, *DEMO, "--port", str(port)])
    output = worker_procs.wait_for_log(demo, "Ctrl-C stops everything", timeout=120)
    assert "status: succeeded" in output  # the scripted run came first
    match = re.search(r"Demo page: (http://\S+/)", output)
    assert match is not None and match.group(1) == f"http://127.0.0.1:{port}/"
    page = requests.get(match.group(1), timeout=10)
    assert page.status_code == 200 and "Learning plans, regenerated live" in page.text
    assert requests.get(f"{match.group(1)}demo/app.js", timeout=10).status_code == 200
    assert demo.poll() is None  # still serving

    os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's process group
    assert demo.wait(30) == 0, worker_procs.log_tail(demo)
    assert worker_procs.log(demo).rstrip().endswith("stopped")
    with pytest.raises(requests.ConnectionError):  # the app it started is gone too
        requests.get(match.group(1), timeout=5)
