import httpx
import trio.testing


async def test_hello(serve, nursery):
    served = await serve(nursery)
    async with httpx.AsyncClient() as client:
        response = await client.get(served.url + "/a%20b?x=1")
        assert response.status_code == 200
        assert response.text == "Hello, world!"
        assert response.reason_phrase == "OK"
        response = await client.get(served.url + "/again")
        assert response.status_code == 200
    message = served.requests[0]
    assert message["path"] == "/a b"
    assert message["query_string"] == b"x=1"
    assert message["method"] == "GET"
    await trio.testing.wait_all_tasks_blocked()
    assert served.log.getvalue().count('" 200 13') == 2
    nursery.cancel_scope.cancel()
