"""Compute is priced per request, and one key never buys more than the budget its proof of work paid for.

Every request is priced before it runs (``freestems.service.pricing``: seconds x shifts x the overlap's
chunk factor x the model's relative cost, in model-seconds). A request over the ceiling gets 413
``too_costly``, one over its key's budget 403 ``key_budget``; both name the option to lower and by how
much. A key's proof of work is linear in its budget, and a key that states none costs the work it always
did. Admission counts work in model-seconds, and segment cuts (progressive results cut from a zip) are
work in flight with caps of their own. The servers are real (127.0.0.1); every loop is bounded.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import altcha
import httpx
import pytest
from conftest import one_torch_thread
from served_helpers import BS4, KIM, SCNET, STAND_INS, stand_in_catalog
from service_helpers import (
    LiveServer,
    client_from,
    error_of,
    form,
    leftover_files,
    running_server,
    small_settings,
    wait_for_state,
    wait_until,
)
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from freestems.audio import AudioReader
from freestems.client import Client, budget
from freestems.executors import LocalExecutor
from freestems.models import CATALOG
from freestems.models.served import serve_models
from freestems.options import SeparationOptions
from freestems.service.paths import Paths
from freestems.service.pricing import (
    MIN_BUDGET_SHARE,
    SEGMENT_CUT_COST,
    Pricing,
    dearest_measured,
    model_factor,
    overlap_factor,
    request_cost,
)

from .bounds import scaled

OVERLAPS = (0.0, 0.25, 0.5, 0.8999)
"""Overlaps from 0 to just under the engine's bound (0.9)."""


def seconds_of(path: Path) -> float:
    """The song's length as the server's probe finds it."""
    duration = AudioReader(path).duration
    assert duration is not None
    return duration


@contextlib.contextmanager
def session(server: LiveServer, budget: float | None = None) -> Iterator[tuple[ClientConnection, dict, dict]]:
    """A socket with a solved challenge: (socket, the challenge message, the session message)."""
    path = "/session" if budget is None else f"/session?budget={budget:g}"
    with connect(server.ws_url + path, origin=server.origin, open_timeout=10, close_timeout=2) as ws:
        challenge = json.loads(ws.recv(timeout=30))
        assert challenge["type"] == "challenge", challenge
        parsed = altcha.Challenge.from_dict(challenge["challenge"])
        solution = altcha.solve_challenge(parsed, timeout=30)
        assert solution is not None
        ws.send(json.dumps({"type": "solution", "payload": altcha.Payload(parsed, solution).to_base64()}))
        reply = json.loads(ws.recv(timeout=30))
        assert reply["type"] == "session", reply
        yield ws, challenge, reply


def post(server: LiveServer, key: str | None, path: Path | None = None, **fields: Any) -> httpx.Response:
    """``POST /jobs`` with a file, or (``from_job``/``from_token`` in ``fields``) without one."""
    headers = {"X-Session-Key": key} if key else {}
    if path is None:  # a multipart form of text fields only
        parts = {name: (None, str(value)) for name, value in fields.items()}
        return httpx.post(server.url + "/jobs", headers=headers, files=parts, timeout=60)
    return httpx.post(server.url + "/jobs", headers=headers, timeout=60, **form(path, **fields))


def fields_of(mix: tuple[int, float, str | None, str]) -> dict[str, Any]:
    shifts, overlap, two_stems, model = mix
    fields: dict[str, Any] = {"shifts": shifts, "overlap": overlap, "model": model}
    if two_stems:
        fields["two_stems"] = two_stems
    return fields


def check_advice(error: dict, duration: float, mix: tuple[int, float, str | None, str], prices: dict) -> None:
    """The refusal names the option to lower and by how much, and lowering it by that much fits."""
    shifts, overlap, _, model = mix
    limit, fits, field = error["limit"], error["fits"], error["field"]
    assert field in ("shifts", "overlap", "model", "audio_file"), error
    if field == "shifts":
        assert 1 <= fits["shifts"] < shifts
        assert request_cost(duration, fits["shifts"], overlap, prices[model]) <= limit + 1e-6
        assert f"shifts={shifts} costs {shifts}x: at most shifts={fits['shifts']} fits" in error["message"]
    elif field == "overlap":
        assert 0 <= fits["overlap"] < overlap
        assert request_cost(duration, shifts, fits["overlap"], prices[model]) <= limit + 1e-6
        assert f"at most overlap={fits['overlap']:g} fits" in error["message"]
    elif field == "model":
        assert request_cost(duration, shifts, overlap, prices[fits["models"][-1]]) <= limit + 1e-6
        assert f"model={fits['models'][-1]} fits" in error["message"]
    # Whatever the field, the song that fits is named, in whole seconds.
    assert request_cost(fits["duration"], shifts, overlap, prices[model]) <= limit + 1e-6
    assert request_cost(fits["duration"] + 1, shifts, overlap, prices[model]) > limit
    assert f"shorten it to {fits['duration']} s" in error["message"]


# ---------------------------------------------------------------------------------------------- the price


def test_the_price_is_seconds_times_shifts_overlap_and_model(tmp_path):
    assert overlap_factor(0.25) == 1.0 and overlap_factor(0.0) == 0.75
    assert overlap_factor(0.8999) == pytest.approx(0.75 / 0.1001)
    assert model_factor("scnet", 99.0) == 1.0
    assert model_factor("mel-roformer-kim", 99.0) == CATALOG["mel-roformer-kim"].relative_cost
    # Ensembles cost their members' sum: a preset, and an ad-hoc one with weights.
    kim_ft = CATALOG["ensemble-vocals-kim-ft"]
    assert model_factor(kim_ft.name, 99.0) == pytest.approx(15.4 + 8.7) == kim_ft.relative_cost
    assert model_factor("scnet:2+htdemucs:vocals=0", 99.0) == pytest.approx(1.0 + 2.2)
    # A chain costs its models' sum (each runs over the whole length), a preset as the same chain spelt out,
    # and a model met twice is paid twice.
    dereverb = CATALOG["chain-dereverb-kim"]
    spelt = f"{dereverb.config['first']}" + "".join(f">{s}:{m}" for s, m in dereverb.config["links"])
    assert (
        model_factor(dereverb.name, 99.0)
        == pytest.approx(model_factor(spelt, 99.0))
        == pytest.approx(15.4 + 15.1)
    )
    assert model_factor("scnet>vocals:mel-roformer-kim", 99.0) == pytest.approx(1.0 + 15.4)
    assert model_factor("scnet>vocals:scnet", 99.0) == 2.0
    assert model_factor("scnet>vocals:my-checkpoint", 99.0) == 1.0 + 99.0
    # A model with no measured cost (a checkpoint file, an unmeasured entry) costs the dearest measured one's.
    assert dearest_measured() == max(CATALOG[name].relative_cost or 0 for name in ("bs-roformer-viperx",))
    assert model_factor("my-checkpoint", dearest_measured()) == dearest_measured()
    assert model_factor("mdx23c-drumsep-jarredou", dearest_measured()) == dearest_measured()

    settings = small_settings(tmp_path, unmeasured_cost=dearest_measured(), max_request_cost=0, key_budget=0)
    pricing = Pricing(settings, ["scnet", "mel-roformer-kim", "mine"])
    # The defaults: a key's budget is the longest song at the defaults on the default model; one request
    # may cost the longest song at the defaults on the dearest served model.
    assert pricing.default_budget == settings.max_duration * 1.0
    assert pricing.ceiling == settings.max_duration * dearest_measured()
    assert pricing.per_address == settings.jobs_per_ip * pricing.ceiling
    assert pricing.queue == settings.queue_capacity * pricing.ceiling
    for shifts, overlap, two_stems, model in itertools.product(
        range(1, settings.max_shifts + 1), OVERLAPS, (None, "vocals"), ("scnet", "mel-roformer-kim", "mine")
    ):
        options = SeparationOptions(shifts=shifts, overlap=overlap, two_stems=two_stems, model=model)
        quote = pricing.quote(100.0, options)
        expected = 100.0 * shifts * 0.75 / (1 - overlap) * pricing.factors[model]
        assert quote.cost == pytest.approx(expected)
        # The client prices it the same way, from what GET /config publishes.
        assert budget.price(pricing.describe(), 100.0, fields_of((shifts, overlap, two_stems, model))) == (
            pytest.approx(expected, rel=1e-4)
        )
    # A length is priced at most at the limit; an unknown one as the longest.
    assert pricing.quote(None, SeparationOptions()).cost == pricing.quote(1e9, SeparationOptions()).cost


def test_a_default_key_costs_the_work_it_did_and_the_work_grows_linearly_with_the_budget(start_server):
    counter = 1000  # the default pow_counter: the difficulty of a key before prices
    server = start_server(pow_counter=counter, max_request_cost=960.0, key_budget=0)
    default = server.settings.max_duration  # the test model is priced as scnet: 240 s at the defaults
    assert server.service.manager.pricing.default_budget == default

    def tries(message: dict) -> int:
        """The counter the client had to reach (ALTCHA's deterministic mode: exactly one answers)."""
        parsed = altcha.Challenge.from_dict(message["challenge"])
        solution = altcha.solve_challenge(parsed, timeout=30)
        assert solution is not None
        return solution.counter

    # No budget stated: today's challenge (a counter between half of pow_counter and all of it).
    for _ in range(scaled(3, 20)):
        with session(server) as (_, challenge, key):
            assert challenge["max_counter"] == counter and challenge["budget"] == default == key["budget"]
            assert counter // 2 <= tries(challenge) <= counter
    # A stated budget: the largest counter is linear in it, and the key buys exactly that budget.
    for share in (0.1, 0.25, 0.5, 1, 2, 3, 4):
        asked = default * share
        with session(server, asked) as (_, challenge, key):
            assert challenge["max_counter"] == math.ceil(counter * share)
            assert challenge["budget"] == key["budget"] == pytest.approx(asked)
            assert math.ceil(counter * share) // 2 <= tries(challenge) <= math.ceil(counter * share)
    # The smallest budget is a share of the default; beyond the ceiling no key is earned.
    with session(server, 1) as (_, challenge, key):
        assert key["budget"] == default * MIN_BUDGET_SHARE
        assert challenge["max_counter"] == math.ceil(counter * MIN_BUDGET_SHARE)
    for bad in ("961", "0", "-5", "nan", "inf", "lots"):
        with pytest.raises(InvalidStatus) as refused:
            connect(f"{server.ws_url}/session?budget={bad}", origin=server.origin, open_timeout=10)
        assert refused.value.response.status_code == 422
        error = json.loads(refused.value.response.body)["error"]
        assert error["code"] == "invalid_parameter" and error["field"] == "budget"


# ---------------------------------------------------------------------------------------------- one key


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Iterator[dict]:
    """The stand-in scnet, Kim and BS-RoFormer (real catalog prices, small weights), cached once."""
    folder = tmp_path_factory.mktemp("catalog")
    with stand_in_catalog(folder), one_torch_thread():
        serve_models(list(STAND_INS), cache_dir=folder / "cache")
        yield {"cache": folder / "cache"}


@contextlib.contextmanager
def priced_server(tmp_path: Path, catalog: dict, **overrides: Any) -> Iterator[LiveServer]:
    """A server of the three stand-ins (scnet first) at the default prices (no test ceiling)."""
    values = dict(models=STAND_INS, max_request_cost=0.0, key_budget=0.0, unmeasured_cost=dearest_measured())
    settings = small_settings(tmp_path / "data", **{**values, **overrides})
    executor = LocalExecutor(
        lambda: serve_models(list(STAND_INS), cache_dir=catalog["cache"]),
        Paths(settings.data_dir).work,
        workers=settings.workers,
        warm_up=False,
    )
    with running_server(settings, executor) as server:
        yield server
    assert leftover_files(settings.data_dir) == []


def try_every_mix(server: LiveServer, key: str, budget_: float, source: dict[str, Any]) -> dict:
    """Every option mix with one key, dearest first: each over the ceiling or the key's budget is refused
    with advice that fits; the first that fits is taken (and spends the key); every later one finds the key
    spent. Returns the taken job."""
    pricing = server.service.manager.pricing
    duration = source["duration"]
    mixes = sorted(
        itertools.product(range(1, server.settings.max_shifts + 1), OVERLAPS, (None, "vocals"), STAND_INS),
        key=lambda mix: -request_cost(duration, mix[0], mix[1], pricing.factors[mix[3]]),
    )
    taken: dict | None = None
    seen = {"too_costly": 0, "key_budget": 0, "key_used": 0}
    for mix in mixes:
        cost = request_cost(duration, mix[0], mix[1], pricing.factors[mix[3]])
        answer = post(server, key, source.get("path"), **source.get("fields", {}), **fields_of(mix))
        if taken is not None:
            assert answer.status_code == 403 and error_of(answer)["code"] == "key_used", answer.text
            seen["key_used"] += 1
            continue
        if cost > budget_ + 1e-6:
            error = error_of(answer)
            expected = ("too_costly", 413) if cost > pricing.ceiling + 1e-6 else ("key_budget", 403)
            assert (error["code"], answer.status_code) == expected, answer.text
            assert error["cost"] == pytest.approx(cost, rel=1e-3)
            if error["code"] == "key_budget":
                assert error["budget"] == error["limit"] == pytest.approx(budget_, rel=1e-3)
                assert f"WS /session?budget={math.ceil(error['cost'])}" in error["message"]
            else:
                assert error["limit"] == pytest.approx(pricing.ceiling, rel=1e-3)
            check_advice(error, duration, mix, pricing.factors)
            seen[error["code"]] += 1
            continue
        assert answer.status_code == 202, answer.text
        taken = answer.json()
        stored = server.service.store.get(taken["id"])
        assert stored is not None and stored.cost == pytest.approx(cost) and stored.cost <= budget_
    assert taken is not None, "no mix fitted the budget"
    assert seen["too_costly"] and seen["key_budget"] and seen["key_used"], seen
    return taken


def test_one_key_never_buys_more_than_its_budget(tmp_path, catalog, songs):
    song = songs["medium"]
    duration = seconds_of(song)
    with priced_server(tmp_path, catalog, max_shifts=3, reattach_grace=120.0) as server:
        pricing = server.service.manager.pricing
        assert pricing.ceiling == server.settings.max_duration * CATALOG[BS4].relative_cost
        budget_ = 100.0  # 20 s at 3 shifts and overlap 0.5 on scnet (90) fits; 20 s on Kim (308) does not
        with session(server, budget_) as (_, _, key):
            assert key["budget"] == budget_
            first = try_every_mix(server, key["key"], budget_, {"path": song, "duration": duration})
            finished = wait_for_state(server, first, "done", timeout=180)
            assert finished["state"] == "done"
            # A rerun of the kept song is priced like an upload, with the key it comes with: the spent key
            # buys nothing more, whatever the options.
            rerun = {"from_job": first["id"], "from_token": first["token"]}
            answer = post(server, key["key"], None, **rerun, shifts=1, model=SCNET)
            # Dead: used by its job (or closed with its socket, which this test does not read).
            assert (answer.status_code, error_of(answer)["code"]) in ((403, "key_used"), (401, "key_closed"))
        # A new key for the same budget: every rerun over it is refused, the first that fits is taken.
        with session(server, budget_) as (_, _, key):
            second = try_every_mix(server, key["key"], budget_, {"fields": rerun, "duration": duration})
            httpx.delete(f"{server.url}/jobs/{second['id']}", headers={"X-Job-Token": second["token"]})
        # No job but the two taken ever existed (the second one is deleted by now).
        assert {job.id for job in server.service.store.jobs()} <= {first["id"], second["id"]}
        httpx.delete(f"{server.url}/jobs/{first['id']}", headers={"X-Job-Token": first["token"]})


def test_a_refused_price_leaves_the_key_for_a_cheaper_request(tmp_path, catalog, songs):
    # A key for 30 model-seconds: the 20 s song at the defaults costs 20 on scnet, 308 on Kim.
    with priced_server(tmp_path, catalog) as server, session(server, 30) as (_, _, key):
        answer = post(server, key["key"], songs["medium"], model=KIM)
        error = error_of(answer)
        assert answer.status_code == 403 and error["code"] == "key_budget"
        assert error["field"] == "model" and error["fits"]["models"] == [SCNET]
        answer = post(server, key["key"], songs["medium"], model=SCNET)
        assert answer.status_code == 202, answer.text
        job = answer.json()
        wait_for_state(server, job, "done", timeout=120)
        httpx.delete(f"{server.url}/jobs/{job['id']}", headers={"X-Job-Token": job["token"]})


# ---------------------------------------------------------------------------------------------- admission


def test_admission_counts_work_in_model_seconds(start_server, songs):
    long, medium = seconds_of(songs["long"]), seconds_of(songs["medium"])
    short = seconds_of(songs["short"])
    server = start_server(
        auth="none",
        workers=1,
        jobs_per_ip=8,  # the job counts leave room: only the work refuses
        queue_capacity=16,
        cost_per_ip=3 * long + medium / 2,  # the long song at 3 shifts and the short one, not the medium one
        queue_cost=3 * long + short + medium + long / 2,
        reattach_grace=120.0,
    )
    with client_from("127.0.0.2", timeout=60) as mine, client_from("127.0.0.3", timeout=60) as other:
        first = mine.post(server.url + "/jobs", **form(songs["long"], shifts=3))  # runs for seconds
        assert first.status_code == 202, first.text
        refused = mine.post(server.url + "/jobs", **form(songs["medium"]))
        error = error_of(refused)
        assert (
            refused.status_code == 429 and error["code"] == "too_much_work" and refused.headers["Retry-After"]
        )
        small = mine.post(server.url + "/jobs", **form(songs["short"]))  # 3 s still fits this address
        assert small.status_code == 202, small.text
        # Another address: the queue holds 270 + 3 model-seconds, so the medium song fits, and then a
        # long one does not.
        accepted = other.post(server.url + "/jobs", **form(songs["medium"]))
        assert accepted.status_code == 202, accepted.text
        full = other.post(server.url + "/jobs", **form(songs["long"]))
        assert full.status_code == 429 and error_of(full)["code"] == "queue_full", full.text
        health = httpx.get(server.url + "/health").json()["queue"]
        assert health["work"] == pytest.approx(3 * long + short + medium, abs=0.2)
        for job in (first.json(), small.json(), accepted.json()):
            httpx.delete(f"{server.url}/jobs/{job['id']}", headers={"X-Job-Token": job["token"]})
    wait_until(lambda: leftover_files(server.data_dir) == [], timeout=60)


# ---------------------------------------------------------------------------------------------- cuts


def test_segment_cuts_are_work_in_flight_with_caps(start_server, songs, monkeypatch):
    """A cache hit whose original's segments are gone has them cut from its zip on its first GET /partial.
    Cuts run at most ``cuts_per_ip`` per address and ``max_cuts`` in all; the rest get 429 with
    Retry-After, and a cut in flight counts as work for admission."""
    from freestems.service import partials

    server = start_server(auth="none", cuts_per_ip=1, max_cuts=2, reattach_grace=120.0)
    running = {"now": 0, "most": 0}
    lock = threading.Lock()
    real = partials.rebuild_segments

    def slow_cut(*args: Any, **kwargs: Any) -> Any:
        with lock:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
        try:
            time.sleep(1.5)  # long enough for every request of a burst to find it running
            return real(*args, **kwargs)
        finally:
            with lock:
                running["now"] -= 1

    monkeypatch.setattr(partials, "rebuild_segments", slow_cut)
    original = httpx.post(server.url + "/jobs", timeout=60, **form(songs["medium"])).json()
    wait_for_state(server, original, "done", timeout=120)
    server.service.manager.partials.remove(original["id"])  # its segments are gone: hits must cut theirs
    hits = []
    for _ in range(scaled(6, 12)):
        answer = httpx.post(server.url + "/jobs", timeout=60, **form(songs["medium"]))
        assert answer.status_code == 202 and answer.headers["X-Cache"] == "hit"
        hits.append(answer.json())
    addresses = ("127.0.0.2", "127.0.0.3", "127.0.0.4")

    def listing(index: int) -> httpx.Response:
        job = hits[index]
        with client_from(addresses[index % len(addresses)], timeout=60) as client:
            return client.get(f"{server.url}/jobs/{job['id']}/partial", params={"token": job["token"]})

    with ThreadPoolExecutor(max_workers=len(hits)) as pool:
        burst = [pool.submit(listing, index) for index in range(len(hits))]
        # While cuts run, they are work in flight: /health counts them and their model-seconds.
        during = wait_until(lambda: (q := httpx.get(server.url + "/health").json()["queue"])["cuts"] and q)
        answers = [future.result() for future in burst]
    duration = seconds_of(songs["medium"])
    assert during["work"] >= SEGMENT_CUT_COST * duration * 0.99
    assert running["most"] <= 2
    cut = [answer for answer in answers if answer.status_code == 200]
    refused = [answer for answer in answers if answer.status_code != 200]
    assert 1 <= len(cut) <= 2 and refused
    for answer in refused:
        assert answer.status_code == 429 and error_of(answer)["code"] == "too_many_cuts", answer.text
        assert int(answer.headers["Retry-After"]) >= 1
    # Once the cuts are over, the refused ones are served (one at a time per address).
    for index, answer in enumerate(answers):
        if answer.status_code != 200:
            assert wait_until(lambda i=index: listing(i).status_code == 200, timeout=60, interval=0.5)
    for job in (original, *hits):
        httpx.delete(f"{server.url}/jobs/{job['id']}", headers={"X-Job-Token": job["token"]})


# ---------------------------------------------------------------------------------------------- clients


def test_the_client_earns_a_key_for_what_its_request_costs(start_server, songs, tmp_path, monkeypatch):
    # The default key buys 20 s at the defaults; the medium song at 2 shifts costs 40 model-seconds.
    server = start_server(key_budget=20.0, max_request_cost=720.0)
    earned: list[float] = []
    issue = server.service.sessions.issue

    def recording(*args: Any, **kwargs: Any) -> Any:
        earned.append(kwargs.get("budget"))
        return issue(*args, **kwargs)

    monkeypatch.setattr(server.service.sessions, "issue", recording)
    cost = request_cost(seconds_of(songs["medium"]), 2, 0.25, 1.0)
    with Client(server.url, workers=1) as client:
        assert client.budget(songs["medium"], shifts=2) == budget.needed(
            server.service.manager.pricing.describe(), seconds_of(songs["medium"]), {"shifts": 2}
        )
        stems = client.separate(songs["medium"], out_dir=tmp_path / "out", shifts=2)
        assert len(stems) == 4
        assert len(earned) == 1 and cost <= earned[0] <= cost * 1.1 + 2
        # A song whose length the client cannot read: the default key is refused with the price, and the
        # client earns a key for it.
        monkeypatch.setattr(budget, "seconds", lambda path: None)
        stems = client.separate(songs["medium"], out_dir=tmp_path / "again", shifts=2, format="flac")
        assert len(stems) == 4
        assert earned[1:] == [20.0, math.ceil(cost)]
