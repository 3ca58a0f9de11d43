"""The page's "What do you want?": the jobs this server can do, each choosing its best model, and the model
choice still there for those who want it.

Real parts throughout: headless Chromium, a real server whose models are the catalog's ``scnet``,
``mel-roformer-kim``, ``bs-roformer-dereverb`` and ``mel-roformer-denoise`` entries with small seeded
weights of their own families (``served_helpers``), a real proof of work, real separations.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from audio_samples import write_test_file
from served_helpers import DENOISE, DEREVERB, KIM, SCNET, page_server
from service_helpers import LiveServer
from web_helpers import ARTIFACTS, PHONE, needs_chromium, wait_js

from freestems.models.catalog import JOBS

pytestmark = needs_chromium

SERVED = (SCNET, KIM, DEREVERB, DENOISE)
OFFERED = ["four-stems", "acapella", "karaoke", "de-reverb", "denoise", "own"]  # the served jobs, then own
DESKTOP = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
def job_server(tmp_path_factory) -> Iterator[LiveServer]:
    """A page server running SCNet (the default), Kim's vocals model, a de-reverb and a denoise model."""
    folder = tmp_path_factory.mktemp("jobs")
    with page_server(folder, SERVED) as server:
        yield server


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("job-songs") / "Live Take.mp3"
    write_test_file(path, "mp3", seconds=3.0)
    return path


def jobs_shown(page) -> list[str]:
    return page.eval_on_selector_all("input[name=job]", "inputs => inputs.map(input => input.value)")


def models_shown(page) -> list[str]:
    """The model choices a person sees (the job narrows the list)."""
    return page.eval_on_selector_all(
        "input[name=model]",
        "inputs => inputs.filter(input => input.checkVisibility()).map(input => input.value)",
    )


def chosen(page, name: str) -> str:
    return page.input_value(f"input[name={name}]:checked")


def separate(page, song: Path) -> None:
    page.set_input_files("#file", str(song))
    wait_js(page, "!document.getElementById('separate').disabled")
    page.click("#separate")
    phase = wait_js(
        page, "['result', 'problem'].includes(window.freestems.phase) && window.freestems.phase", 120
    )
    assert phase == "result", page.evaluate("window.freestems.problem")


def rows(page) -> list[tuple[str, str]]:
    """The result's stems as listed: (stem, the words its row shows)."""
    listed = page.eval_on_selector_all(
        "#stems li",
        "rows => rows.map(row => [row.dataset.stem, row.querySelector('.stem-name').textContent])",
    )
    return [(stem, words) for stem, words in listed]


def last_job(server: LiveServer):
    return server.service.store.jobs()[-1]


def again(page) -> None:
    page.click("#again")
    wait_js(page, "window.freestems.phase === 'setup'")


def test_config_says_which_served_model_serves_which_job(job_server):
    config = httpx.get(job_server.url + "/config").json()
    assert {model["name"]: model["jobs"] for model in config["models"]} == {
        SCNET: ["four-stems", "acapella", "karaoke"],
        KIM: ["acapella", "karaoke"],
        DEREVERB: ["de-reverb"],
        DENOISE: ["denoise"],
    }
    jobs = {job["name"]: job for job in config["jobs"]}
    assert list(jobs) == list(JOBS)
    assert jobs["karaoke"]["models"] == [KIM, SCNET]  # the vocals model first, then SCNet's two stems
    assert jobs["de-reverb"] == {
        "name": "de-reverb",
        "title": "Remove reverb",
        "description": JOBS["de-reverb"],
        "models": [DEREVERB],
    }
    assert jobs["drum-parts"]["models"] == []


def test_the_page_offers_the_served_jobs_and_removes_reverb_and_noise(open_page, job_server, song):
    page = open_page(server=job_server, viewport=DESKTOP)
    assert page.inner_text("#jobs-field legend") == "What do you want?"
    assert jobs_shown(page) == OFFERED  # the jobs no served model does are not offered
    words = page.inner_text("#jobs")
    assert "Remove reverb\nThe dry sound without its reverb." in words
    assert "Clean up noise\nThe sound without its noise." in words
    assert "Choose the model yourself" in words and "Drum parts" not in words
    # The default model's job, its model, the stems choice that goes with it.
    assert chosen(page, "job") == "four-stems" and chosen(page, "model") == SCNET
    assert models_shown(page) == [SCNET]
    assert page.is_visible("#stems-field")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page-jobs.png"), full_page=True)

    # Remove reverb: its model is chosen, the list shows only it, the stems choice is the job's.
    page.get_by_role("radio", name="Remove reverb", exact=True).check()
    assert chosen(page, "model") == DEREVERB and models_shown(page) == [DEREVERB]
    assert page.is_hidden("#stems-field") and chosen(page, "stems") == "all"
    assert page.inner_text("#model-job-hint") == "Remove reverb: this server has one model for it."
    separate(page, song)
    assert (last_job(job_server).model, last_job(job_server).options["two_stems"]) == (DEREVERB, None)
    assert rows(page) == [("dry", "Without reverb"), ("no_dry", "Reverb")]
    page.screenshot(path=str(ARTIFACTS / "page-jobs-dereverb.png"), full_page=True)

    # Clean up noise, from the keyboard: the arrow keys move through the jobs as through any radio group.
    again(page)
    assert chosen(page, "job") == "de-reverb"  # the choice stays for the next song
    page.focus("input[name=job][value=de-reverb]")
    page.keyboard.press("ArrowDown")
    assert chosen(page, "job") == "denoise" and chosen(page, "model") == DENOISE
    separate(page, song)
    assert last_job(job_server).model == DENOISE
    assert rows(page) == [("dry", "Without noise"), ("no_dry", "Noise")]


def test_karaoke_lists_the_instrumental_first_and_acapella_the_vocals(open_page, job_server, song):
    page = open_page(server=job_server)
    page.get_by_role("radio", name="Karaoke", exact=True).check()
    # The vocals model is the best for it; SCNet does it too (vocals and the rest), and can be chosen.
    assert models_shown(page) == [KIM, SCNET] and chosen(page, "model") == KIM
    assert page.is_hidden("#stems-field")
    assert (chosen(page, "stems"), page.input_value("#two-stems")) == ("two", "vocals")
    page.check(f"input[name=model][value={SCNET}]")
    separate(page, song)
    assert (last_job(job_server).model, last_job(job_server).options["two_stems"]) == (SCNET, "vocals")
    assert rows(page) == [("no_vocals", "Instrumental (no vocals)"), ("vocals", "Vocals")]
    # Compare offers the other karaoke model first, under the job's title, then the rest.
    groups = page.eval_on_selector_all(
        "#compare-model optgroup", "gs => gs.map(g => [g.label, [...g.children].map(o => o.value)])"
    )
    assert groups == [["Also for karaoke", [KIM]], ["Other models", [DEREVERB, DENOISE]]], groups

    again(page)
    page.get_by_role("radio", name="Acapella", exact=True).check()
    assert chosen(page, "model") == KIM  # the job's best again: the SCNet choice was karaoke's
    separate(page, song)
    assert (last_job(job_server).model, last_job(job_server).options["two_stems"]) == (KIM, "vocals")
    assert [stem for stem, _ in rows(page)] == ["vocals", "no_vocals"]


def test_choose_the_model_yourself_and_the_choice_survives_a_reload(open_page, job_server, song):
    page = open_page(server=job_server)
    page.get_by_role("radio", name="Clean up noise", exact=True).check()
    page.reload()
    wait_js(page, "Boolean(window.freestems && window.freestems.ready)")
    assert chosen(page, "job") == "denoise" and chosen(page, "model") == DENOISE

    # Every served model, the stems choice as before; the model's own job names its stems.
    page.get_by_role("radio", name="Choose the model yourself", exact=True).check()
    assert models_shown(page) == list(SERVED) and chosen(page, "model") == DENOISE
    assert page.is_visible("#stems-field")
    page.check(f"input[name=model][value={DEREVERB}]")
    page.reload()
    wait_js(page, "Boolean(window.freestems && window.freestems.ready)")
    assert chosen(page, "job") == "own" and chosen(page, "model") == DEREVERB
    page.check("input[name=stems][value=all]")
    separate(page, song)
    assert last_job(job_server).model == DEREVERB
    assert rows(page) == [("dry", "Without reverb"), ("no_dry", "Reverb")]

    # Opened again from the recent list on a later visit (its job was not picked here): its model's job
    # still names its stems.
    again(page)
    page.reload()
    wait_js(page, "window.freestems.events.some((event) => event.kind === 'recent')")
    page.get_by_role("button", name=f"Open {song.name} in the player").click()
    wait_js(page, "window.freestems.phase === 'result'", timeout=60)
    assert rows(page) == [("dry", "Without reverb"), ("no_dry", "Reverb")]


def test_the_jobs_at_phone_width(open_page, job_server):
    page = open_page(server=job_server, viewport=PHONE)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.get_by_role("radio", name="Remove reverb", exact=True).check()
    for name in OFFERED:  # every choice fits the screen's width
        box = page.locator(f"input[name=job][value={name}]").locator("xpath=..").bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (name, box)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page-jobs-phone.png"), full_page=True)


NAMES = """async () => {
    const { stemRank, stemWords } = await import('./static/names.js');
    const sorted = (names, job) => [...names].sort((a, b) => stemRank(a, job) - stemRank(b, job));
    const drums = ['drums-kick', 'drums-snare', 'drums-toms', 'drums-hh', 'drums-ride', 'drums-crash'];
    const chain = [...drums, 'bass', 'other', 'vocals'];  // chain-drumsep-ft's stems as the zip has them
    const dereverb = ['vocals-dry', 'vocals-no_dry', 'no_vocals'];  // chain-dereverb-kim's
    return {
        drums: sorted(chain, 'drum-parts').map((name) => stemWords(name, 'drum-parts')),
        cymbals: stemWords('cymbals'),
        dereverb: sorted([...dereverb].reverse(), 'de-reverb').map((name) => stemWords(name, 'de-reverb')),
        lead: ['vocals', 'no_vocals'].map((name) => stemWords(name, 'lead-backing')),
        crowd: sorted(['crowd', 'no_crowd'], 'crowd').map((name) => stemWords(name, 'crowd')),
        plain: ['vocals', 'no_vocals', 'no_piano', 'dry'].map((name) => stemWords(name)),
        again: ['vocals-vocals', 'vocals-no_vocals'].map((name) => stemWords(name, 'acapella')),
    };
}"""


def test_stems_are_named_plainly_and_a_chains_parts_are_listed_where_their_stem_was(open_page, job_server):
    page = open_page(server=job_server)
    named = page.evaluate(NAMES)
    assert named["drums"] == [
        "Vocals",
        *("Kick", "Snare", "Toms", "Hi-hat", "Ride", "Crash"),  # where drums were, not after everything
        "Bass",
        "Other",
    ]
    assert named["cymbals"] == "Cymbals"
    assert named["dereverb"] == ["Vocals without reverb", "Reverb of the vocals", "Instrumental (no vocals)"]
    assert named["lead"] == ["Lead vocals", "Backing vocals and instruments"]
    assert named["crowd"] == ["Without crowd noise", "Crowd noise"]  # what the job is for, first
    assert named["plain"] == ["Vocals", "Instrumental (no vocals)", "Everything but piano", "Dry"]
    assert named["again"] == ["Vocals", "Rest of the vocals"]  # a vocals model run on a model's vocals
