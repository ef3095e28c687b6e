"""Send a test mail to the support inbox with the standard library's smtplib.

python send_mail.py [--server 127.0.0.1:2525] [--from you@example.org] [TEXT]
"""

from __future__ import annotations

import argparse
import smtplib
from email.message import EmailMessage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:2525", help="the csp-bus SMTP server")
    parser.add_argument("--sender", "--from", default="customer@example.org")
    parser.add_argument("--to", default="support@example.com")
    parser.add_argument("text", nargs="?", default="Hello, my order #1234 has not arrived.")
    args = parser.parse_args()
    host, _, port = args.server.rpartition(":")
    mail = EmailMessage()
    mail["From"] = args.sender
    mail["To"] = args.to
    mail["Subject"] = "Where is my order?"
    mail.set_content(args.text + "\n")
    with smtplib.SMTP(host, int(port)) as client:
        client.send_message(mail)
    print(f"sent to {args.to} through {args.server}")


if __name__ == "__main__":
    main()
