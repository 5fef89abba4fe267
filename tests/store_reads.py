"""Reading a store back over the API, as the tests that compare it with an oracle do."""

from __future__ import annotations

import httpx


def profile_ids(http: httpx.Client, store: str) -> list[str]:
    """Every live profile of ``store``, following the list's page tokens."""
    base = f"/v1/Stores/{store}/Profiles"
    ids: list[str] = []
    params: dict[str, str | int] = {"pageSize": 100}
    while True:
        page = http.get(base, params=params)
        assert page.status_code == 200, page.text
        ids += page.json()["profiles"]
        token = page.json()["meta"].get("nextToken")
        if not token:
            return ids
        params["pageToken"] = token
