"""``Client.search_runs`` returns a list, as MLflow's ``PagedList`` is one, with the next page's token."""

from __future__ import annotations

from pathlib import Path

import cairn


def test_search_runs_page_is_a_list_with_a_token(tmp_path: Path) -> None:
    client = cairn.Client(str(tmp_path / "store"))
    ids = [client.create_run("0").info.run_id for _ in range(3)]

    first = client.search_runs(["0"], max_results=2, order_by=["attributes.start_time ASC"])
    assert isinstance(first, list)
    assert len(first) == 2
    assert [run.info.run_id for run in first] == [run.info.run_id for run in first.items]
    assert first.token == first.next_page_token is not None

    rest = client.search_runs(["0"], max_results=2, page_token=first.token, order_by=["attributes.start_time ASC"])
    assert rest.token is None
    assert sorted(run.info.run_id for run in [*first, *rest]) == sorted(ids)
    assert "next_page_token" in repr(rest)
