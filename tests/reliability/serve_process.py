"""``freestems serve`` as a subprocess on a fixed port and data folder: killed (SIGKILL, SIGTERM) and started
again by the tests that check what survives a crash or a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from service_helpers import wait_until

import freestems

GRACEFUL = (0, -signal.SIGTERM)  # uvicorn shuts down, then raises the SIGTERM it caught again
SOURCE = str(Path(freestems.__file__).resolve().parents[1])  # the code under test, for the subprocesses


class ServeProcess:
    """``python3 -m freestems serve`` on a fixed port and data folder, to be killed and started again."""

    def __init__(self, data_dir: Path, model: Path, port: int, grace: float, **environ: str) -> None:
        self.data_dir, self.model, self.port, self.grace = data_dir, model, port, grace
        self.environ = environ
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> ServeProcess:
        command = [
            sys.executable, "-m", "freestems.cli", "serve", "--port", str(self.port),
            "--model-file", str(self.model), "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        environ = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([SOURCE, os.environ.get("PYTHONPATH", "")]),
            "FREESTEMS_REATTACH_GRACE": str(self.grace),
            "FREESTEMS_SWEEP_INTERVAL": "0.5",
            "FREESTEMS_THREADS": "1",
            "FREESTEMS_JOBS_PER_IP": "8",
            "FREESTEMS_AUTH": "none",
            **self.environ,
        }
        self.log = open(self.data_dir.parent / "serve.log", "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(command, env=environ, stdout=self.log, stderr=subprocess.STDOUT)

        def healthy() -> bool:
            assert self.process is not None and self.process.poll() is None, self.output()
            try:
                return httpx.get(self.url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout=120, interval=0.2)
        return self

    def output(self) -> str:
        return (self.data_dir.parent / "serve.log").read_text(errors="replace")[-4000:]

    def stop(self, how: signal.Signals = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(how)
        code = self.process.wait(timeout=90)
        self.log.close()
        return code
