"""The email adapter: SMTP in (``email.receive``), SMTP out (``email.send``)."""
