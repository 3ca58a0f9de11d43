"""``GET /config``'s jobs: which served model serves which job (from the catalog; a model without an entry
by its stems), and for each job its models, best first, as the page's "What do you want?" picks them.

The served model list reaches ``jobs_offered`` and ``public_facts`` as ``_config`` passes it; a real server's
``/config`` with catalog stand-ins is read in ``test_page_jobs.py``.
"""

from __future__ import annotations

from freestems.contract import SOURCES
from freestems.models.catalog import CATALOG, JOB_TITLES, JOBS, served_jobs
from freestems.models.served import jobs_offered, public_facts

SIX = (*SOURCES, "guitar", "piano")


def models_of(offered: list[dict]) -> dict[str, list[str]]:
    return {job["name"]: job["models"] for job in offered}


def test_every_job_has_a_title_and_the_catalog_names_only_known_jobs():
    assert list(JOB_TITLES) == list(JOBS)
    assert JOB_TITLES["de-reverb"] == "Remove reverb" and JOB_TITLES["denoise"] == "Clean up noise"
    assert JOB_TITLES["crowd"] == "Remove crowd noise"
    assert all(set(info.jobs) <= set(JOBS) for info in CATALOG.values())


def test_a_catalog_model_serves_its_entrys_jobs_and_a_stem_model_the_vocals_and_the_rest_too():
    # Its own jobs, then acapella and karaoke by two stems (two_stems=vocals) when it separates stems.
    assert served_jobs("scnet", SOURCES) == (("four-stems",), ("acapella", "karaoke"))
    assert served_jobs("htdemucs_6s", SIX) == (("six-stems",), ("acapella", "karaoke"))
    assert served_jobs("mel-roformer-kim", ("vocals",)) == (("acapella", "karaoke"), ())
    # The karaoke model's vocals are the lead vocal: it is not an acapella model.
    assert served_jobs("mel-roformer-karaoke", ("vocals",)) == (("lead-backing",), ())
    assert served_jobs("bs-roformer-dereverb", ("dry",)) == (("de-reverb",), ())
    assert served_jobs("mel-roformer-denoise", ("dry",)) == (("denoise",), ())
    assert served_jobs("mel-roformer-crowd", ("crowd",)) == (("crowd",), ())
    drums = CATALOG["chain-drumsep-ft"]
    assert served_jobs(drums.name, drums.sources) == (("drum-parts",), ())
    assert served_jobs("chain-dereverb-kim", CATALOG["chain-dereverb-kim"].sources) == (("de-reverb",), ())


def test_a_model_without_an_entry_serves_four_or_six_stems_only_when_its_stems_are_exactly_those():
    vocals_first = ("vocals", "drums", "bass", "other")  # the order does not matter
    assert served_jobs("my-file", vocals_first) == (("four-stems",), ("acapella", "karaoke"))
    assert served_jobs("my-six", SIX) == (("six-stems",), ("acapella", "karaoke"))
    assert served_jobs("my-vocals", ("vocals",)) == ((), ())  # lead or whole voice: its stems do not say
    assert served_jobs("my-dry", ("dry",)) == ((), ())  # without reverb or without noise: not said either
    assert served_jobs("my-three", ("drums", "bass", "vocals")) == ((), ())
    assert served_jobs("a+b", ("drums", "bass", "other", "vocals"))[0] == ("four-stems",)


def test_public_facts_list_the_jobs_in_catalog_order():
    assert public_facts("scnet", SOURCES)["jobs"] == ["four-stems", "acapella", "karaoke"]
    assert public_facts("bs-roformer-dereverb", ("dry",))["jobs"] == ["de-reverb"]
    assert public_facts("small", ("drums", "bass", "other", "vocals"))["jobs"] == [
        "four-stems",
        "acapella",
        "karaoke",
    ]
    assert public_facts("my-vocals", ("vocals",))["jobs"] == []


def test_each_job_lists_its_models_best_first_and_every_job_is_listed():
    served = [
        ("scnet", SOURCES),
        ("small", SOURCES),
        ("mel-roformer-kim", ("vocals",)),
        ("bs-roformer-dereverb", ("dry",)),
        ("chain-dereverb-kim", CATALOG["chain-dereverb-kim"].sources),
        ("mel-roformer-denoise", ("dry",)),
    ]
    offered = jobs_offered(served)
    assert [job["name"] for job in offered] == list(JOBS)  # jobs no model serves too (with no models)
    assert offered[0] == {
        "name": "four-stems",
        "title": "Four stems",
        "description": JOBS["four-stems"],
        "models": ["scnet", "small"],  # the operator's order
    }
    models = models_of(offered)
    # A model whose own job it is comes first; then the stem models by two stems, in the operator's order.
    assert models["karaoke"] == ["mel-roformer-kim", "scnet", "small"]
    assert models["acapella"] == ["mel-roformer-kim", "scnet", "small"]
    assert models["de-reverb"] == ["bs-roformer-dereverb", "chain-dereverb-kim"]
    assert models["denoise"] == ["mel-roformer-denoise"]
    assert models["six-stems"] == models["drum-parts"] == models["crowd"] == models["lead-backing"] == []
    # The operator's order decides between two models of the same standing.
    swapped = models_of(jobs_offered([served[4], served[3]]))
    assert swapped["de-reverb"] == ["chain-dereverb-kim", "bs-roformer-dereverb"]
