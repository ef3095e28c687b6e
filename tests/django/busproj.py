"""A small Django project for the adapter's tests: settings, views and URLs in one module."""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path

from csp_bus.adapters.django.auth import channel_session_user, channel_session_user_from_http
from csp_bus.adapters.django.sessions import enforce_ordering
from django.contrib import admin
from django.contrib.auth.models import User
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.middleware.csrf import get_token
from django.urls import path, reverse
from django.views.decorators.csrf import csrf_exempt

from csp_bus.routing import route

STATE = Path(os.environ["CSP_BUS_TEST_STATE"])
BIG_FILE = STATE / "big.bin"


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"Hello, world!", content_type="text/plain")


@csrf_exempt
def echo(request: HttpRequest) -> JsonResponse:
    meta = {k: v for k, v in request.META.items() if isinstance(v, str | int)}
    return JsonResponse(
        {
            "method": request.method,
            "path": request.path,
            "path_info": request.path_info,
            "script_prefix": reverse("hello"),
            "GET": {k: request.GET.getlist(k) for k in request.GET},
            "COOKIES": request.COOKIES,
            "scheme": request.scheme,
            "secure": request.is_secure(),
            "host": request.get_host(),
            "body_sha": hashlib.sha256(request.body).hexdigest(),
            "body_len": len(request.body),
            "meta": meta,
        }
    )


FORM = """<form method="post"><input type="hidden" name="csrfmiddlewaretoken" value="{token}">
<input name="name"></form>"""


def form(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return HttpResponse(f"thanks {request.POST['name']}")
    return HttpResponse(FORM.format(token=get_token(request)))


@csrf_exempt
def upload(request: HttpRequest) -> JsonResponse:
    files = {
        name: {
            "name": f.name,
            "size": f.size,
            "sha": hashlib.sha256(f.read()).hexdigest(),
            "on_disk": hasattr(f, "temporary_file_path"),
        }
        for name, f in request.FILES.items()
    }
    return JsonResponse({"files": files, "fields": dict(request.POST.items())})


def stream(request: HttpRequest) -> StreamingHttpResponse:
    count = int(request.GET.get("n", "5"))
    return StreamingHttpResponse((f"line {i}\n" for i in range(count)), content_type="text/plain")


def events(request: HttpRequest) -> StreamingHttpResponse:
    """An endless server-sent event stream; notes in a file when it is closed."""
    marker = STATE / f"events-{request.GET['id']}.closed"

    def stream():
        try:
            n = 0
            while True:
                yield f"data: {n}\n\n"
                n += 1
                time.sleep(0.02)
        finally:
            marker.write_text(str(n))

    return StreamingHttpResponse(stream(), content_type="text/event-stream")


def big_file(request: HttpRequest) -> FileResponse:
    return FileResponse(BIG_FILE.open("rb"), content_type="application/octet-stream")


def cookies(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("cookies")
    response.set_cookie("first", "1")
    response.set_cookie("second", "two words", httponly=True)
    return response


def counter(request: HttpRequest) -> HttpResponse:
    request.session["count"] = request.session.get("count", 0) + 1
    return HttpResponse(str(request.session["count"]))


def whoami(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.user.get_username() or "anonymous")


def users(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(User.objects.count()))


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("boom")


urlpatterns = [
    path("", hello, name="hello"),
    path("echo/", echo),
    path("form/", form),
    path("upload/", upload),
    path("stream/", stream),
    path("file/", big_file),
    path("events/", events),
    path("cookies/", cookies),
    path("counter/", counter),
    path("whoami/", whoami),
    path("users/", users),
    path("boom/", boom),
    path("admin/", admin.site.urls),
]

# -- WebSocket consumers (CSP_BUS["ROUTING"] = "busproj.routes") ----------------------


@channel_session_user_from_http
def user_connect(message) -> None:
    message.reply_channel.send({"accept": True})
    message.reply_channel.send({"text": "hello " + (message.user.get_username() or "anonymous")})


@channel_session_user
def user_receive(message) -> None:
    name = message.user.get_username() or "anonymous"
    message.reply_channel.send({"text": f"{name}: {message['text']}"})


@enforce_ordering
def order_connect(message) -> None:
    message.channel_session["seen"] = []
    message.reply_channel.send({"accept": True})


@enforce_ordering
def order_receive(message) -> None:
    text = message["text"]
    if text == "done":
        message.reply_channel.send({"text": json.dumps(message.channel_session["seen"])})
        return
    # Take a little time, so that without ordering other threads would overtake us.
    time.sleep(random.random() * 0.01)
    message.channel_session["seen"] = [*message.channel_session["seen"], text]


@enforce_ordering
def order_disconnect(message) -> None:
    pass


def db_connect(message) -> None:
    User.objects.count()
    message.reply_channel.send({"text": "users counted"})


routes = [
    route("websocket.connect", db_connect, path=r"^/ws/db/$"),
    route("websocket.connect", user_connect, path=r"^/ws/user/$"),
    route("websocket.receive", user_receive, path=r"^/ws/user/$"),
    route("websocket.connect", order_connect, path=r"^/ws/order/$"),
    route("websocket.receive", order_receive, path=r"^/ws/order/$"),
    route("websocket.disconnect", order_disconnect, path=r"^/ws/order/$"),
]
