"""--cors-allow-origins / --cors-allow-origins-regex (A1111's): a page on another origin (a browser client
such as SillyTavern in browser mode) may call the API; without the flags no CORS header is sent."""

from __future__ import annotations

from collections.abc import Callable

from tests.api.conftest import ApiServer

PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}


def test_listed_and_matching_origins_may_call_the_api(start_api: Callable[..., ApiServer]) -> None:
    api = start_api(
        cors_allow_origins=("http://localhost:8000",),
        cors_allow_origins_regex=r"https://.*\.example\.org",
        api_auth=(("u", "p"),),
    )
    for origin in ("http://localhost:8000", "https://chat.example.org"):
        preflight = api.client.options(api.url("txt2img"), headers={"Origin": origin, **PREFLIGHT})
        assert preflight.status_code == 200  # answered before the login, as browsers send no credentials
        assert preflight.headers["access-control-allow-origin"] == origin
        assert preflight.headers["access-control-allow-credentials"] == "true"
        response = api.client.get(api.url("sd-models"), headers={"Origin": origin}, auth=("u", "p"))
        assert response.status_code == 200 and response.headers["access-control-allow-origin"] == origin
    assert (
        api.client.get(api.url("sd-models"), headers={"Origin": "http://localhost:8000"}).status_code == 401
    )
    other = api.client.options(api.url("txt2img"), headers={"Origin": "https://evil.test", **PREFLIGHT})
    assert "access-control-allow-origin" not in other.headers


def test_without_the_flags_no_cors_headers(api: ApiServer) -> None:
    response = api.get("sd-models", headers={"Origin": "http://localhost:8000"})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
