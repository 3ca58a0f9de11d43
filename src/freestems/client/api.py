"""``Client``: a separation on a remote freestems server, from file to stems (see the package docstring)."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from freestems.rules import model_folder
from freestems.version import __version__

from . import budget as budgets
from . import pow
from .errors import RemoteError
from .http import NETWORK_ERRORS, MultipartUpload, backoff, download, error_of
from .progress import Reporter
from .session import FollowUnsupported, Session

T = TypeVar("T")
ENDED = ("done", "failed", "cancelled")
KEY_GONE = ("key_missing", "key_invalid", "key_expired", "key_closed")
"""401 codes after which a new key (a new session) is the fix."""
POLL_ALONE = 1.0
"""Seconds between ``GET /jobs/{id}`` when no socket brings the news."""
POLL_BESIDE_SOCKET = 5.0
"""... and while a socket does (a safety net; it also keeps the job followed on servers with a grace)."""
NEW_KEY_ATTEMPTS = 3
OVER_BUDGET = "key_budget"
"""403: the request costs more than its key's budget; the error says the cost, and a key for it is the fix."""


@dataclass
class Job:
    """A job on the server: what ``POST /jobs`` and ``GET /jobs/{id}`` say about it."""

    id: str
    token: str
    state: str = "queued"
    position: int = 0
    progress: float = 0.0
    model: str | None = None
    cache: str = "miss"
    error: dict[str, Any] | None = None
    view: dict[str, Any] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    def update(self, message: dict[str, Any]) -> None:
        """Take the newest state from a ``job`` message or a ``GET /jobs/{id}`` answer."""
        self.view.update(message)
        self.state = str(message.get("state", self.state))
        self.position = int(message.get("position") or 0)
        self.progress = float(message.get("progress") or 0.0)
        self.model = message.get("model") or self.model
        self.cache = message.get("cache", self.cache)
        self.error = message.get("error") or self.error


class Client:
    """A freestems server at ``url`` (``http://host:port``).

    ``timeout``: seconds a request may go unanswered, and how long the server may stay unreachable before
    a job is given up (the server keeps an abandoned job only for its grace period). ``max_wait``: the
    most seconds spent in all waiting out ``429``/``503`` answers (``Retry-After``). ``workers``: cores for
    the proof of work (default all). ``reporter``: shown progress and notes (default: notes to logging).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 60.0,
        max_wait: float = 600.0,
        workers: int | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise RemoteError(
                None, "bad_url", f"the server URL must start with http:// or https://, got {url!r}"
            )
        self.ws_url = "ws" + self.url[len("http") :] + "/session"
        self.timeout = timeout
        self.max_wait = max_wait
        self.workers = workers
        self.reporter = reporter or Reporter()
        self.http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(timeout),
            headers={"User-Agent": f"freestems-client/{__version__}"},
        )
        self._waited = 0.0
        self._pricing: dict[str, Any] | None = None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ the steps

    def get_key(self, budget: float | None = None) -> Session:
        """Open ``WS /session``, solve its challenge on every core, and return the session holding the
        key (``session.key``). Keep it open until the job is over: closing it ends the key (and, on
        servers without a grace period, cancels the key's job).

        ``budget``: the model-seconds of compute the key must buy (:meth:`budget`); the proof of work
        grows linearly with it. None: the server's default budget."""
        url = self.ws_url if budget is None else f"{self.ws_url}?budget={budget:g}"
        session = self._patiently(lambda: Session.connect(url, timeout=self.timeout))
        try:
            challenge = session.receive(self.timeout)
            if challenge.get("type") != "challenge":
                raise RemoteError(
                    None, "bad_response", f"expected a challenge, got {challenge.get('type')!r}"
                )
            session.send(
                {"type": "solution", "payload": pow.payload(challenge["challenge"], workers=self.workers)}
            )
            reply = session.receive(self.timeout)
            if reply.get("type") != "session" or not isinstance(reply.get("key"), str):
                raise RemoteError(None, "bad_response", f"expected a session key, got {reply.get('type')!r}")
            session.key, session.expires_in = reply["key"], reply.get("expires_in")
            session.budget = reply.get("budget")
            session.start_reader()
            return session
        except BaseException:
            session.close()
            raise

    def budget(self, path: str | os.PathLike[str], **options: Any) -> int | None:
        """The budget a key needs to separate ``path`` with ``options`` (as :meth:`submit` takes them): its
        price at the server's published prices (``GET /config``), with a small margin; None when the server
        publishes none or the song's length is not stated in its header (then the server's default)."""
        if self._pricing is None:
            self._pricing = {}
            with contextlib.suppress(*NETWORK_ERRORS, ValueError):
                response = self.http.get("/config")
                if response.status_code == 200:
                    self._pricing = dict(response.json().get("pricing") or {})
        if not self._pricing:
            return None
        return budgets.needed(self._pricing, budgets.seconds(Path(path)), options)

    def submit(self, path: str | os.PathLike[str], session: Session | None, **options: Any) -> Job:
        """``POST /jobs``: upload ``path`` (streamed from disk) with the options of the form
        (``two_stems``, ``shifts``, ``overlap``, ``format``, ``mp3_bitrate``, ``model``; None leaves the
        server's default). ``session`` is None only for servers without keys (``FREESTEMS_AUTH=none``)."""
        path = Path(path)
        fields = {name: _form_value(value) for name, value in options.items() if value is not None}
        headers = {"X-Session-Key": session.key} if session is not None and session.key else {}

        def post() -> Job:
            sent = 0

            def count(size: int) -> None:
                nonlocal sent
                sent += size
                self.reporter.uploaded(sent, body.file_size)

            body = MultipartUpload(path, fields, sent=count)
            response = self.http.post("/jobs", content=iter(body), headers={**headers, **body.headers})
            if response.status_code != 202:
                raise error_of(response)
            answer = response.json()
            job = Job(id=answer["id"], token=answer["token"])
            job.update(answer)
            return job

        try:
            return self._patiently(post, retry_network=True)
        except OSError as error:
            raise RemoteError(None, "unreadable", f"cannot read {path}: {error.strerror or error}") from None

    def wait(self, job: Job, session: Session | None = None) -> Job:
        """Follow ``job`` until it ends; returns it done, or raises its failure as a :class:`RemoteError`.

        News comes from ``session``'s messages while its socket is open, with a slow ``GET /jobs/{id}``
        beside them. When the socket drops, a new one asks to ``follow`` the job; a server that does not
        know that message is polled instead. While the server is unreachable, polling retries with backoff
        for ``timeout`` seconds.
        """
        self.reporter.job(job.state, job.position, job.progress)
        follower = session if session is not None and session.alive else None
        can_follow = True
        seen = 0
        last_poll = last_follow = time.monotonic()
        failing_since: float | None = None
        attempt = follow_failures = 0
        try:
            while not job.ended:
                now = time.monotonic()
                if follower is not None:
                    seen = follower.wait_change(seen, timeout=1.0)
                    message = follower.job(job.id)
                    if message is not None:
                        job.update(message)
                        self.reporter.job(job.state, job.position, job.progress)
                    if job.ended:
                        break
                    if follower.closed:
                        self.reporter.note("the session socket closed; following the job again")
                        if follower is not session:
                            follower.close()
                        follower, last_follow = None, 0.0
                        continue
                else:
                    time.sleep(max(0.0, min(POLL_ALONE - (now - last_poll), 1.0)))
                now = time.monotonic()
                if follower is None and can_follow and now - last_follow >= backoff(follow_failures + 1):
                    last_follow = now
                    try:
                        follower = Session.follow(self.ws_url, job.id, job.token, timeout=self.timeout)
                        seen = follow_failures = 0
                    except FollowUnsupported:
                        can_follow = False
                    except RemoteError as error:
                        if error.code == "not_found":
                            raise
                        # Unreachable or refused (429) for now: polling goes on, following is tried again
                        # later, less and less often.
                        follow_failures += 1
                if now - last_poll >= (POLL_BESIDE_SOCKET if follower is not None else POLL_ALONE):
                    last_poll = now
                    try:
                        job.update(self.status(job))
                        failing_since, attempt = None, 0
                        self.reporter.job(job.state, job.position, job.progress)
                    except NETWORK_ERRORS as error:
                        failing_since = failing_since or now
                        attempt += 1
                        if now - failing_since > self.timeout:
                            raise RemoteError(
                                None, "unreachable", f"lost the server for {self.timeout:g} s: {error}"
                            ) from None
                        last_poll = now + backoff(attempt) - POLL_ALONE
        finally:
            if follower is not None and follower is not session:
                follower.close()
        if job.state != "done":
            raise self._failure(job)
        return job

    def status(self, job: Job) -> dict[str, Any]:
        """``GET /jobs/{id}`` (the token in ``X-Job-Token``)."""
        response = self.http.get(f"/jobs/{job.id}", headers={"X-Job-Token": job.token})
        if response.status_code != 200:
            raise error_of(response)
        view: dict[str, Any] = response.json()
        return view

    def download(self, job: Job, destination: str | os.PathLike[str]) -> Path:
        """``GET /jobs/{id}/result`` into ``destination`` (the zip), resuming a dropped transfer."""
        destination = Path(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        return download(
            self.http,
            f"/jobs/{job.id}/result",
            {"X-Job-Token": job.token, "Accept-Encoding": "identity"},
            destination,
            timeout=self.timeout,
            received=self.reporter.downloaded,
            note=self.reporter.note,
        )

    def cancel(self, job: Job) -> None:
        """``DELETE /jobs/{id}``: cancel the job and delete its files on the server now (best effort)."""
        with contextlib.suppress(*NETWORK_ERRORS):
            self.http.delete(f"/jobs/{job.id}", headers={"X-Job-Token": job.token}, timeout=5)

    # ------------------------------------------------------------------------------------------ all steps

    def separate(
        self,
        path: str | os.PathLike[str],
        *,
        out_dir: str | os.PathLike[str] = "separated",
        two_stems: str | None = None,
        shifts: int | None = None,
        overlap: float | None = None,
        format: str | None = None,
        bitrate: int | None = None,
        model: str | None = None,
        zip: bool = False,
    ) -> dict[str, Path]:
        """Separate ``path`` on the server; the stems land in ``out_dir/<model>/<track>/`` (as
        ``freestems separate`` writes them: the model's folder named by :func:`freestems.rules.model_folder`)
        and the answer maps stem names to their files. With ``zip`` the zip is kept as
        ``out_dir/<model>/<track>.zip`` instead, and the answer is ``{"zip": path}``.

        Options left None take the server's defaults (four MP3 stems at 192 kbps).
        """
        path = Path(path)
        if not path.is_file():
            raise RemoteError(None, "unreadable", f"{path}: no such file")
        self.reporter.begin(path.name)
        options = dict(
            two_stems=two_stems,
            shifts=shifts,
            overlap=overlap,
            format=format,
            mp3_bitrate=bitrate,
            model=model,
        )
        self._waited = 0.0
        try:
            job = self._submit_with_a_key(path, options)
            folder = Path(out_dir) / model_folder(job.model or model or "remote")
            archive = folder / f"{path.stem}.zip"
            try:
                self.download(job, archive)
                if zip:
                    return {"zip": archive}
                try:
                    return unpack(archive, folder / path.stem)
                finally:
                    archive.unlink(missing_ok=True)
            except OSError as error:  # the output side: a full disk, a folder we may not write
                where = f" {error.filename}" if error.filename else ""
                raise RemoteError(
                    None, "cannot_write", f"cannot write{where}: {error.strerror or error}"
                ) from None
        finally:
            self.reporter.end()

    def _submit_with_a_key(self, path: Path, options: dict[str, Any]) -> Job:
        """Key (for the budget the request needs), upload and wait; a key that dies before the upload is
        accepted is replaced by a new one, and a key whose budget is short by one for the cost the server
        names."""
        budget = self.budget(path, **options)
        for attempt in range(1, NEW_KEY_ATTEMPTS + 1):
            session = self.get_key(budget)
            job: Job | None = None
            try:
                job = self.submit(path, session, **options)
                return self.wait(job, session)
            except RemoteError as error:
                if job is None and error.code in KEY_GONE and attempt < NEW_KEY_ATTEMPTS:
                    self.reporter.note(f"{error.message}; getting a new key")
                    continue
                cost = error.details.get("cost")
                if (
                    job is None
                    and error.code == OVER_BUDGET
                    and isinstance(cost, (int, float))
                    and attempt < NEW_KEY_ATTEMPTS
                    and (budget is None or cost > budget)
                ):
                    budget = math.ceil(cost)
                    self.reporter.note(f"the request costs {budget} model-seconds; earning a key for that")
                    continue
                raise
            except KeyboardInterrupt:
                if job is not None:
                    self.cancel(job)
                raise
            finally:
                session.close()
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------------------------------ helpers

    def _patiently(self, action: Callable[[], T], *, retry_network: bool = True) -> T:
        """Run ``action``; wait out ``429``/``503`` answers as ``Retry-After`` says (``max_wait`` seconds
        in all, saying why) and network failures with backoff (``timeout`` seconds in a row)."""
        failing_since: float | None = None
        attempt = 0
        while True:
            try:
                return action()
            except RemoteError as error:
                if error.status not in (429, 503) or (error.retry_after is None and error.status == 429):
                    raise
                pause = error.retry_after if error.retry_after is not None else 10.0
                if self._waited + pause > self.max_wait:
                    raise RemoteError(
                        error.status,
                        error.code,
                        f"{error.message} (gave up: waiting {pause:g} s more would pass the maximum wait "
                        f"of {self.max_wait:g} s)",
                        retry_after=error.retry_after,
                    ) from None
                self.reporter.note(f"{error.message}; the server asks to wait, retrying in {pause:g} s")
                time.sleep(pause)
                self._waited += pause
            except NETWORK_ERRORS as error:
                if not retry_network:
                    raise RemoteError(None, "unreachable", f"cannot reach {self.url}: {error}") from None
                now = time.monotonic()
                failing_since = failing_since or now
                attempt += 1
                if now - failing_since > self.timeout:
                    raise RemoteError(
                        None, "unreachable", f"cannot reach {self.url} for {self.timeout:g} s: {error}"
                    ) from None
                time.sleep(backoff(attempt))

    def _failure(self, job: Job) -> RemoteError:
        """Why ``job`` ended without a result, with the HTTP status the server gives it."""
        try:
            response = self.http.get(f"/jobs/{job.id}/result", headers={"X-Job-Token": job.token})
            if response.status_code >= 400:
                return error_of(response)
        except NETWORK_ERRORS:
            pass
        error = job.error or {}
        return RemoteError(
            None, str(error.get("code") or job.state), str(error.get("message") or f"job {job.state}")
        )


def unpack(archive: Path, folder: Path) -> dict[str, Path]:
    """The stems of a result zip into ``folder``: ``{stem: path}``. Only plain file names are taken (a zip
    can name paths outside the folder); each file is written beside its final name, then renamed."""
    folder.mkdir(parents=True, exist_ok=True)
    stems: dict[str, Path] = {}
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.infolist():
                name = member.filename
                if member.is_dir() or name != Path(name).name or name in ("", ".", ".."):
                    continue
                target = folder / name
                partial = target.with_name(target.name + ".part")
                with bundle.open(member) as source, open(partial, "wb") as out:
                    shutil.copyfileobj(source, out, 1024 * 1024)
                os.replace(partial, target)
                stems[Path(name).stem] = target
    except zipfile.BadZipFile as error:
        raise RemoteError(None, "bad_response", f"the result is not a valid zip: {error}") from None
    return stems


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
