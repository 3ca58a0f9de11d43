"""A job's token: the one check that a caller may see, follow, separate again or delete a job.

Its own module because it is security code with one home: the job routes (``GET``/``DELETE
/jobs/{id}``, the result, the partials), ``from_job`` of ``POST /jobs`` and the socket's ``follow`` all
ask here. An id of the right shape, a job that exists, its token compared in constant time, and one answer
for an unknown job and a wrong token alike (404 ``not_found``), so that a guess learns nothing.
"""

from __future__ import annotations

import hmac
import re

from .errors import not_found
from .jobs import JobManager
from .store import Job

JOB_ID = re.compile(r"[0-9a-f]{16}")
"""What a job id looks like (``secrets.token_hex(8)``); anything else is not looked up."""


def owned_job(manager: JobManager, job_id: object, token: object) -> Job:
    """The job ``job_id`` if ``token`` is its token.

    Raises:
        ServiceError: 404 ``not_found`` when there is no such job or the token differs.
    """
    job = manager.get(job_id) if isinstance(job_id, str) and JOB_ID.fullmatch(job_id) else None
    if (
        job is None
        or not isinstance(token, str)
        or not hmac.compare_digest(job.token.encode(), token.encode())
    ):
        ttl = round(manager.settings.result_ttl)
        raise not_found(
            f"no job {str(job_id)[:32]!r} with this token (jobs, their songs and results are deleted {ttl} s "
            "after they end)"
        )
    return job
