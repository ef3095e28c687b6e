"""BusTestCase, the helper users subclass, run as Django runs test cases."""

from __future__ import annotations

from csp_bus.adapters.django.auth import channel_session_user_from_http
from csp_bus.adapters.django.testing import BusTestCase
from django.contrib.auth.models import User


@channel_session_user_from_http
def connect(message) -> None:
    message.reply_channel.send({"accept": True, "text": message.user.get_username()})


class LoginThenSocket(BusTestCase):
    def test_socket_sees_the_user_logged_in_over_http(self) -> None:
        User.objects.create_user("tc-ann", password="pw-tc-ann-1", is_staff=True)
        self.login("tc-ann", "pw-tc-ann-1", url="/admin/login/")
        self.assertEqual(self.http.get("/whoami/").content, b"tc-ann")
        ws = self.socket("/ws/")
        ws.send("websocket.connect", connect)
        self.assertEqual(ws.receive(), {"accept": True, "text": "tc-ann"})

    def test_anonymous(self) -> None:
        ws = self.socket("/ws/")
        ws.send("websocket.connect", connect)
        self.assertEqual(ws.receive(), {"accept": True, "text": ""})

    def test_bad_login_is_reported(self) -> None:
        with self.assertRaises(AssertionError):
            self.login("nobody", "wrong", url="/admin/login/")
