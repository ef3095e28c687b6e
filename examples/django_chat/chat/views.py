"""Plain Django views: served by the ViewConsumer, unchanged."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

ROOMS = ["lobby", "python", "random"]


@login_required
def index(request: HttpRequest) -> HttpResponse:
    return render(request, "chat/index.html", {"rooms": ROOMS})


@login_required
def room(request: HttpRequest, room: str) -> HttpResponse:
    return render(request, "chat/room.html", {"room": room})
