"""``csp-bus serve --adapter email`` as a real process: mail in, auto-reply out, SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

APP = textwrap.dedent(
    """
    from csp_bus.consumers import Channel
    from csp_bus.routing import route

    def on_mail(message):
        mail = message.content
        Channel("email.send").send({
            "from": "robot@example.com",
            "to": mail["from"],
            "subject": "Re: " + mail["headers"]["subject"],
            "text": "got it\\n",
        })

    routes = [route("email.receive", on_mail)]
    """
)


def test_serve_email_adapter(tmp_path: Path, relay: Any) -> None:
    (tmp_path / "mailapp.py").write_text(APP)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("CSP_BUS_LAYER", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "csp_bus",
            "serve",
            "--adapter",
            "email",
            "--app",
            "mailapp:routes",
            "--smtp-bind",
            "127.0.0.1:0",
            "--smtp-domains",
            "example.com",
            "--smtp-relay",
            f"127.0.0.1:{relay.port}",
        ],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline, "the server did not start"
            line = process.stderr.readline()
            assert line, f"the server exited: {process.wait()}"
            found = re.search(r"receiving mail on smtp://([\d.]+):(\d+)", line)
            if found:
                host, port = found.group(1), int(found.group(2))
                break
        with smtplib.SMTP(host, port) as client:
            client.sendmail("me@example.org", ["bot@example.com"], b"Subject: ping\r\n\r\nx\r\n")
            refused = client.sendmail(
                "me@example.org",
                ["a@elsewhere.net", "bot@example.com"],
                b"Subject: ping2\r\n\r\nx\r\n",
            )
            assert refused == {"a@elsewhere.net": (550, refused["a@elsewhere.net"][1])}
        replies = relay.handler.wait_for(2)
        assert sorted(r.rcpt_tos[0] for r in replies) == ["me@example.org"] * 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stderr:
            process.stderr.close()
