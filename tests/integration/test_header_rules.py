"""Route actions checked from real requests and responses: header rules with every
placeholder, strip_prefix / rewrite_prefix, redirects and fixed responses."""

from __future__ import annotations

from tests.helpers.http_backends import H11Client, http_backend, proxy_config, request, steelyard


async def test_request_header_rules_with_every_placeholder() -> None:
    routes = (
        "      - match: {path_prefix: /app}\n"
        "        backend: api\n"
        "        request_headers:\n"
        "          set:\n"
        "            x-ctx: '{client_ip}|{request_id}|{host}|{path}|{query}|{server}'\n"
        "            user-agent: steelyard-test\n"
        "          add: {x-tag: second}\n"
        "          remove: [cookie, X-Internal]\n"
    )
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]}, routes)) as sy:
        r = await request(
            sy.port,
            "GET",
            "/app/page?a=1&b=2",
            host="shop.example.com",
            headers=[
                ("x-request-id", "req-42"),
                ("user-agent", "curl/8"),
                ("user-agent", "dup"),
                ("x-tag", "first"),
                ("cookie", "a=b"),
                ("x-internal", "secret"),
            ],
        )
        assert r.status == 200
        seen = s1.requests[0]
        assert seen.header("x-ctx") == ("127.0.0.1|req-42|shop.example.com|/app/page|a=1&b=2|s1")
        assert seen.header_all("user-agent") == ["steelyard-test"]  # set replaces every line
        assert seen.header_all("x-tag") == ["first", "second"]  # add appends a line
        assert seen.header("cookie") is None and seen.header("x-internal") is None
        assert seen.target == "/app/page?a=1&b=2"


async def test_response_header_rules() -> None:
    routes = (
        "      - match: {path_prefix: /}\n"
        "        backend: api\n"
        "        response_headers:\n"
        "          set: {cache-control: no-store, x-server: hidden}\n"
        "          add: {x-served-by: '{server} for {client_ip}', x-path: '{path}'}\n"
        "          remove: [content-type]\n"
    )
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]}, routes)) as sy:
        client = await H11Client.connect(sy.port)
        r = await client.request("GET", "/echo?z=9")
        assert r.status == 200
        assert r.header_all("cache-control") == ["no-store"]
        assert r.header_all("x-server") == ["hidden"]
        assert r.header("x-served-by") == "s1 for 127.0.0.1"
        assert r.header("x-path") == "/echo"
        assert r.header("content-type") is None
        assert r.json()["server"] == "s1"  # the body is untouched
        r = await client.request("GET", "/status/503")  # rules apply to any status
        assert r.status == 503 and r.header_all("x-server") == ["hidden"]
        await client.close()


async def test_strip_and_rewrite_prefix() -> None:
    routes = (
        "      - match: {path_prefix: /api/}\n"
        "        strip_prefix: /api\n"
        "        backend: api\n"
        "      - match: {path_prefix: /v1/}\n"
        "        strip_prefix: /v1\n"
        "        rewrite_prefix: /internal/v2\n"
        "        backend: api\n"
        "      - match: {path_prefix: /legacy/}\n"
        "        rewrite_prefix: /new/\n"
        "        backend: api\n"
        "      - match: {path_prefix: /}\n"
        "        backend: api\n"
    )
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]}, routes)) as sy:
        client = await H11Client.connect(sy.port)
        for sent, expected in (
            ("/api/users/7?full=1", "/users/7?full=1"),
            ("/v1/orders", "/internal/v2/orders"),
            ("/v1/", "/internal/v2/"),
            ("/legacy/a/b?x", "/new/a/b?x"),
            ("/apiary", "/apiary"),  # not a segment of /api/
        ):
            r = await client.request("GET", sent)
            assert r.status == 200
            assert s1.requests[-1].target == expected, sent
        await client.close()


async def test_redirects_and_fixed_responses() -> None:
    routes = (
        "      - match: {path_prefix: /old/}\n"
        "        redirect: {to: '/new{path}?{query}', status: 301}\n"
        "      - match: {host: moved.example.com}\n"
        "        redirect: {to: 'https://example.com{path}'}\n"
        "      - match: {path_prefix: /temp}\n"
        "        redirect: {to: 'https://{host}/elsewhere', status: 307}\n"
        "      - match: {path_prefix: /maintenance}\n"
        "        respond:\n"
        "          status: 503\n"
        "          body: 'down for maintenance ({request_id})'\n"
        "          content_type: text/html\n"
        "      - match: {path_prefix: /teapot}\n"
        "        respond: {status: 418, body: short and stout}\n"
        "      - match: {path_prefix: /}\n"
        "        backend: api\n"
    )
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]}, routes)) as sy:
        client = await H11Client.connect(sy.port)
        r = await client.request("GET", "/old/page?x=1")
        assert r.status == 301 and r.header("location") == "/new/old/page?x=1"
        r = await client.request("GET", "/p", host="moved.example.com")
        assert r.status == 302 and r.header("location") == "https://example.com/p"
        r = await client.request("POST", "/temp", host="a.example.com", body=b"data")
        assert r.status == 307 and r.header("location") == "https://a.example.com/elsewhere"
        r = await client.request("GET", "/maintenance", headers=[("x-request-id", "m-1")])
        assert r.status == 503
        assert r.body == b"down for maintenance (m-1)"
        assert r.header("content-type") == "text/html"
        assert r.header("x-request-id") == "m-1"
        r = await client.request("HEAD", "/maintenance")
        assert r.status == 503 and r.body == b""
        r = await client.request("GET", "/teapot")
        assert r.status == 418 and r.body == b"short and stout"
        r = await client.request("GET", "/")  # the same connection still works
        assert r.status == 200 and r.body == b"s1"
        await client.close()
        assert len(s1.requests) == 1  # only the last request reached a server
