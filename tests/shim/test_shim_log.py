"""kata-shim's logger: logfmt/JSON lines, to a file or syslog, never to stdio."""

from __future__ import annotations

import json
import os
import socket

from kata_shim import log as shimlog


def test_logfmt_line_to_file(tmp_path):
    path = tmp_path / "shim.log"
    lg = shimlog.Logger("info", "text", file=str(path), container="c1", exec_id="e 1")
    lg.debug("hidden")
    lg.info("hello world", stream="stdout", n=3, ok=True, text='a "q"\n')
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("time=") and ' level=info msg="hello world" name=kata-shim ' in line
    assert f" pid={os.getpid()} source=shim container=c1 exec-id=\"e 1\" stream=stdout n=3 ok=true " in line
    assert line.endswith('text="a \\"q\\"\\n"')


def test_json_line(tmp_path):
    path = tmp_path / "shim.log"
    lg = shimlog.Logger("debug", "json", file=str(path), container="c")
    lg.warning("careful", error="EPIPE")
    rec = json.loads(path.read_text())
    assert rec["level"] == "warning" and rec["msg"] == "careful" and rec["error"] == "EPIPE"
    assert rec["name"] == "kata-shim" and rec["container"] == "c" and rec["time"].endswith("Z")


def test_syslog_datagram(tmp_path, monkeypatch):
    path = str(tmp_path / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    monkeypatch.setattr(shimlog, "SYSLOG_PATH", path)
    lg = shimlog.Logger("warn", "text")
    lg.error("boom")
    msg = server.recv(4096).decode()
    assert msg.startswith(f"<11>kata-shim[{os.getpid()}]: time=") and "msg=boom" in msg
    server.close()


def test_nowhere_to_log_is_fine(monkeypatch, tmp_path):
    monkeypatch.setattr(shimlog, "SYSLOG_PATH", str(tmp_path / "absent"))
    lg = shimlog.Logger("debug", "text")
    assert not lg.enabled
    lg.error("dropped silently")


def test_levels_and_field_clashes_are_kata_logs(tmp_path):
    path = tmp_path / "shim.log"
    lg = shimlog.Logger("trace", "text", file=str(path), container="c")
    lg.debug("shown at trace", name="mine", container="other")
    line = path.read_text()
    assert " level=debug " in line and " name=kata-shim " in line and " container=c " in line
    assert line.rstrip().endswith("fields.name=mine fields.container=other")
