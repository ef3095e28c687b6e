"""Whatever a client puts in its request head, the ViewConsumer answers with a response."""

from __future__ import annotations

from csp_bus.adapters.django.testing import HttpClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

header_names = st.one_of(
    st.sampled_from([b"cookie", b"content-type", b"content-length", b"host", b"x-a_b"]),
    st.binary(min_size=1, max_size=20),
)
headers = st.lists(st.tuples(header_names, st.binary(max_size=60)), max_size=6)
paths = st.one_of(
    st.sampled_from(["/", "/echo/", "/form/", "/admin/", "/counter/"]),
    st.text(max_size=40).map(lambda text: "/" + text),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE", "WEIRD"]),
    path=paths,
    query=st.binary(max_size=40),
    header_list=headers,
    body=st.binary(max_size=200),
)
def test_any_request_gets_a_response(
    method: str, path: str, query: bytes, header_list: list[tuple[bytes, bytes]], body: bytes
) -> None:
    with HttpClient() as client:
        content = client.message(method, "/")
        content.update(
            path=path,
            query_string=query,
            body=body,
            headers=[[b"host", b"testserver"], *([k, v] for k, v in header_list)],
        )
        response = client.send(content)
    assert 100 <= response.status <= 599
    if method == "HEAD":
        assert response.content == b""
