"""The one job-and-token check (``freestems.service.tokens``) that the routes and the socket share."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from freestems.service.errors import ServiceError
from freestems.service.tokens import JOB_ID, owned_job

JOB = SimpleNamespace(id="0123456789abcdef", token="the-token")


class Manager:
    """What the check reads of the job manager: ``get`` and the result TTL."""

    settings = SimpleNamespace(result_ttl=3600.0)

    def __init__(self) -> None:
        self.asked: list[str] = []

    def get(self, job_id: str) -> SimpleNamespace | None:
        self.asked.append(job_id)
        return JOB if job_id == JOB.id else None


def test_the_job_is_given_for_its_token():
    assert owned_job(Manager(), JOB.id, "the-token") is JOB


@pytest.mark.parametrize(
    ("job_id", "token"),
    [
        (JOB.id, "another-token"),  # a wrong token
        (JOB.id, None),  # no token (a socket message may carry anything)
        (JOB.id, 12345),
        ("fedcba9876543210", "the-token"),  # no such job
        ("0123456789ABCDEF", "the-token"),  # not an id: never looked up
        (["not", "an", "id"], "the-token"),
    ],
)
def test_a_wrong_token_and_an_unknown_job_get_the_same_404(job_id, token):
    manager = Manager()
    with pytest.raises(ServiceError) as caught:
        owned_job(manager, job_id, token)
    assert (caught.value.status, caught.value.code) == (404, "not_found")
    assert "with this token" in caught.value.message
    assert all(JOB_ID.fullmatch(asked) for asked in manager.asked)  # anything else is not looked up


def test_the_answer_quotes_at_most_32_characters_of_the_id():
    with pytest.raises(ServiceError) as caught:
        owned_job(Manager(), "x" * 1000, "t")
    assert "x" * 32 in caught.value.message and "x" * 33 not in caught.value.message
