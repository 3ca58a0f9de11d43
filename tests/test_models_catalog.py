"""The catalog of released checkpoints."""

import dataclasses
import json

import pytest
import torch
from model_helpers import SCNET_FIXTURES

from freestems.models import (
    CATALOG,
    DEFAULT_MODEL,
    ModelInfo,
    ModelNotAvailable,
    build_model,
    get_model_info,
)
from freestems.models.catalog import DEMUCS_URL, MSST_FAMILIES, RELEASES_URL
from freestems.models.loading import CONFIG_KEYS, catalog_spec, msst_model

NAMES = ["scnet", "scnet-large", "scnet-large-authors", "scnet-xl", "scnet-xl-ihf"]
SCNETS = {name: info for name, info in CATALOG.items() if info.architecture == "scnet"}


def test_five_scnets_first_and_the_default_is_the_light_base():
    assert list(CATALOG)[:5] == NAMES and list(SCNETS) == NAMES
    assert DEFAULT_MODEL == "scnet"
    assert CATALOG[DEFAULT_MODEL].config["dims"] == [4, 32, 64, 128]
    measured = [info for info in CATALOG.values() if info.relative_cost is not None]
    assert min(measured, key=lambda info: info.relative_cost).name == DEFAULT_MODEL


def test_entries_are_complete_and_consistent():
    assert len({info.name for info in CATALOG.values()}) == len(CATALOG)
    files = [url for info in CATALOG.values() for url in info.urls]
    assert len(set(files)) == len(files)  # no two entries share a cache file
    for name, info in SCNETS.items():
        assert isinstance(info, ModelInfo)
        assert info.name == name
        assert info.architecture == "scnet"
        assert info.url.startswith(RELEASES_URL) and info.url.endswith(".ckpt")
        assert info.config_url.startswith(RELEASES_URL) and info.config_url.endswith(".yaml")
        assert info.url.rsplit("/", 2)[1] == info.config_url.rsplit("/", 2)[1]  # same release
        assert info.filename == info.url.rsplit("/", 1)[1]
        assert info.sources == ("drums", "bass", "other", "vocals")
        assert tuple(info.config["sources"]) == info.sources
        assert set(info.config) <= set(CONFIG_KEYS)
        assert info.sha256 is None and info.size is None  # unknown here: never invented
        authors = "authors" in info.name or name == "scnet"  # the SCNet authors' weights, not ZFTurbo's
        assert info.license == (
            "MIT (authors: starrytong/SCNet#35)" if authors else "none stated (repository MIT)"
        )
        assert set(info.sdr) == {"avg", "bass", "drums", "vocals", "other"}
        assert info.sdr["avg"] == pytest.approx(
            sum(info.sdr[s] for s in ("bass", "drums", "vocals", "other")) / 4, abs=0.01
        )
        assert info.segment == 485_100
        assert info.sdr_set == "MUSDB18-HQ"
        assert info.relative_cost >= 1.0
        assert info.config["num_dplayer"] % 2 == 0


def test_release_table_details():
    assert get_model_info("scnet").url == RELEASES_URL + "v.1.0.6/scnet_checkpoint_musdb18.ckpt"
    assert get_model_info("scnet-xl-ihf").filename == "model_scnet_ep_36_sdr_10.0891.ckpt"
    flags = {name: (info.spec_norm, info.normalize) for name, info in SCNETS.items()}
    assert flags == {
        "scnet": (False, True),
        "scnet-large": (False, False),
        "scnet-large-authors": (True, True),
        "scnet-xl": (False, False),
        "scnet-xl-ihf": (False, False),
    }
    xl, ihf = CATALOG["scnet-xl"].config, CATALOG["scnet-xl-ihf"].config
    assert xl["num_dplayer"] == 8 and xl["band_SR"] == [0.230, 0.370, 0.400]
    assert {key: ihf[key] for key in ("band_stride", "band_kernel", "conv_depths")} == {
        "band_stride": [1, 4, 4],
        "band_kernel": [3, 4, 4],
        "conv_depths": [3, 3, 3],
    }
    assert CATALOG["scnet-large"].config == CATALOG["scnet-large-authors"].config


def test_entries_are_frozen_and_configs_not_shared():
    info = CATALOG["scnet-large"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.name = "other"  # type: ignore[misc]
    assert info.config is not CATALOG["scnet-large-authors"].config


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ModelNotAvailable) as caught:
        get_model_info("scnet-huge")
    message = str(caught.value)
    assert "scnet-huge" in message and "\n" not in message
    assert all(name in message for name in NAMES)


def test_every_config_builds_and_sizes_are_ordered():
    counts = {}
    for name, info in SCNETS.items():
        with torch.device("meta"):  # shapes only: no memory for ~50M parameters
            module = build_model(catalog_spec(info))
        assert module.sources == list(info.sources)
        counts[name] = sum(parameter.numel() for parameter in module.parameters())
    assert counts["scnet"] == 10_578_768  # the published base model (fixtures/scnet/full_keys.json)
    assert counts["scnet-large"] == counts["scnet-large-authors"]
    assert counts["scnet"] < counts["scnet-large"] <= counts["scnet-xl"]
    assert counts["scnet-xl-ihf"] > counts["scnet-large"]
    costs = [CATALOG[name].relative_cost for name in NAMES]
    assert costs[0] < costs[1] <= costs[3] <= costs[4]


def test_base_config_matches_the_released_state_dict_layout():
    expected = json.loads((SCNET_FIXTURES / "full_keys.json").read_text())
    with torch.device("meta"):
        module = build_model(catalog_spec(CATALOG["scnet"]))
    assert [[key, list(value.shape)] for key, value in module.state_dict().items()] == expected


# ------------------------------------------------------------------------------------- the other families

FAMILIES = {"scnet", "bs_roformer", "mel_band_roformer", "mdx23c", "htdemucs", "ensemble", "chain"}
TEST_SETS = {"MUSDB18-HQ", "Multisong", "DrumSep test"}


def test_every_entry_says_family_stems_sdr_and_its_test_set_and_licence():
    for name, info in CATALOG.items():
        assert info.architecture in FAMILIES, name
        assert info.sources and len(set(info.sources)) == len(info.sources), name
        assert info.sdr_set in TEST_SETS or (info.sdr_set is None and info.note), name  # None: not named
        assert info.sdr or info.sdr_set is None, name  # no score published: no test set either
        assert set(info.sdr) <= {"avg", *info.sources}, name  # a published figure per stem it has
        assert info.license and info.title, name
        assert info.relative_cost is None or info.relative_cost > 0, name
        assert info.size is None and info.sha256 is None  # unknown here: never invented
        if info.architecture in ("ensemble", "chain"):
            assert info.urls == () and info.note
        else:
            assert info.urls and all(url.startswith("https://") for url in info.urls)


def test_the_entries_of_the_issue():
    kim = CATALOG["mel-roformer-kim"]
    assert kim.architecture == "mel_band_roformer" and kim.sources == ("vocals",)
    assert kim.sdr == {"vocals": 10.98} and kim.sdr_set == "Multisong" and kim.license == "MIT (model card)"
    assert kim.segment == 352_800 and not kim.normalize
    viperx = CATALOG["bs-roformer-viperx"]
    assert viperx.architecture == "bs_roformer" and viperx.sdr == {"vocals": 10.87}
    assert viperx.license == "none stated"
    assert sum(viperx.config["model"]["freqs_per_bands"]) == 1025
    assert len(viperx.config["model"]["freqs_per_bands"]) == 62
    for name in ("bs-roformer-4stem", "mel-roformer-4stem"):  # configs downloaded beside the weights
        info = CATALOG[name]
        assert info.config == {} and info.config_filename and info.config_url.endswith(".yaml")
    six = CATALOG["htdemucs_6s"]
    assert six.sources == ("drums", "bass", "other", "vocals", "guitar", "piano")
    ft = CATALOG["htdemucs_ft"]
    assert len(ft.urls) == 4 and ft.config["weights"] == [
        [1.0 if i == j else 0.0 for j in range(4)] for i in range(4)
    ]


def test_the_mdx23c_and_polarformer_entries():
    """As MSST's docs/pretrained_models.md publishes them (release table, metrics, config and weights)."""
    vocals = CATALOG["mdx23c-vocals"]
    assert vocals.architecture == "mdx23c" and vocals.sources == ("vocals", "other")
    assert vocals.url == RELEASES_URL + "v1.0.0/model_vocals_mdx23c_sdr_10.17.ckpt"
    assert vocals.config_url == RELEASES_URL + "v1.0.0/config_vocals_mdx23c.yaml"
    assert vocals.sdr == {"vocals": 10.17} and vocals.sdr_set == "Multisong"
    assert vocals.segment == 261_120 and vocals.config_filename is None  # the config is embedded
    drumsep = CATALOG["mdx23c-drumsep"]
    assert drumsep.architecture == "mdx23c" and drumsep.config == {}
    assert drumsep.sources == ("kick", "snare", "toms", "hh", "ride", "crash")
    assert drumsep.sdr == {"kick": 14.54, "snare": 9.79, "toms": 10.63, "hh": 3.19}
    assert drumsep.sdr_set == "DrumSep test" and "6.08" in drumsep.note and "drums" in drumsep.note
    assert drumsep.config_filename == "aufr33-jarredou_DrumSep_model_mdx23c_ep_141_sdr_10.8059.yaml"
    polar = CATALOG["bs-polarformer"]
    assert polar.architecture == "bs_roformer" and polar.config == {}
    assert polar.url == RELEASES_URL + "v1.0.20/model_bs_polarformer_float16.ckpt"
    assert polar.config_filename == "model_bs_polarformer_float16.yaml"
    assert polar.sdr == {"vocals": 11.00} and polar.sdr_set == "Multisong"
    for info in (vocals, drumsep, polar):
        assert "/main/" not in info.config_url and "/download/" in info.config_url  # pinned to a release
        assert info.license.startswith("none stated")


def test_demucs_files_publish_a_sha256_prefix():
    from freestems.models.download import hash_prefix

    for info in CATALOG.values():
        if info.architecture == "htdemucs" and info.url.startswith(DEMUCS_URL):
            for url in info.urls:
                prefix = hash_prefix(url)
                assert prefix is not None and url.endswith(f"-{prefix}.th")
    assert hash_prefix(CATALOG["scnet"].url) is None
    assert hash_prefix(CATALOG["demucs-drumsep"].url) is None  # MSST's file publishes none


def test_presets_take_every_stem_from_members_published_on_the_same_test_set():
    for info in CATALOG.values():
        if info.architecture != "ensemble":
            continue
        members = [CATALOG[name] for name, _ in info.config["members"]]
        assert len(members) >= 2
        for stem, value in info.sdr.items():
            # the stem's figure is that of the one member whose weight for it is not 0, on the same set
            givers = [
                member
                for member, (_, weights) in zip(members, info.config["members"], strict=True)
                if stem in member.sources and weights.get(stem, 1.0) > 0
            ]
            assert len(givers) == 1, (info.name, stem)
            assert givers[0].sdr_set == info.sdr_set or givers[0].architecture == "scnet"
            if givers[0].sdr_set == info.sdr_set:
                assert givers[0].sdr[stem] == value, (info.name, stem)


def test_every_msst_config_in_the_catalog_builds():
    built = set()
    for info in CATALOG.values():
        if info.architecture in MSST_FAMILIES and info.config:
            with torch.device("meta"):
                module, facts = msst_model(info.config, info.architecture, info.name)
            assert facts.sources == info.sources and facts.segment == info.segment
            assert facts.normalize == info.normalize
            assert facts.max_segment == (info.segment if info.architecture == "mdx23c" else None)
            built.add(info.architecture)
    assert built == set(MSST_FAMILIES)


def _parameters_m(module: torch.nn.Module) -> float:
    return round(sum(parameter.numel() for parameter in module.parameters()) / 1e6, 1)


def test_parameter_counts_are_those_of_the_configs_built():
    checked = 0
    for info in CATALOG.values():
        with torch.device("meta"):
            if info.architecture == "scnet":
                module = build_model(catalog_spec(info))
            elif info.architecture in MSST_FAMILIES and info.config:
                module, _ = msst_model(info.config, info.architecture, info.name)
            else:
                continue
        assert info.parameters_m == _parameters_m(module), info.name
        checked += 1
    assert checked == 10  # five SCNets, Kim's, viperx's, the karaoke and de-reverb RoFormers, MDX23C vocals


def test_htdemucs_parameter_counts_are_the_release_networks():
    from fractions import Fraction

    pytest.importorskip("demucs")
    from demucs.htdemucs import HTDemucs

    for name, members in (("htdemucs", 1), ("htdemucs_6s", 1), ("htdemucs_ft", 4)):
        info = CATALOG[name]
        with torch.device("meta"):
            network = HTDemucs(
                list(info.sources), dconv_mode=3, bottom_channels=512, t_layers=5, segment=Fraction(39, 5)
            )
        count = sum(parameter.numel() for parameter in network.parameters())
        assert info.parameters_m == round(members * count / 1e6, 1), name


def test_a_presets_cost_and_size_are_its_members_added_up():
    for info in CATALOG.values():
        if info.architecture != "ensemble":
            continue
        members = [CATALOG[name] for name, _ in info.config["members"]]
        assert info.relative_cost == round(sum(m.relative_cost for m in members), 1)
        assert info.parameters_m == round(sum(m.parameters_m for m in members), 1)
        assert info.relative_cost > max(m.relative_cost for m in members)


# ------------------------------------------------------------------------------ jobs, licences, new entries


def test_every_entry_serves_jobs_of_the_vocabulary_and_every_job_has_a_model():
    from freestems.models.catalog import JOBS

    for name, info in CATALOG.items():
        assert info.jobs and set(info.jobs) <= set(JOBS), name
        assert len(set(info.jobs)) == len(info.jobs), name
    assert {job for info in CATALOG.values() for job in info.jobs} == set(JOBS)
    with pytest.raises(ValueError, match="unknown job"):
        dataclasses.replace(CATALOG["scnet"], jobs=("dance",))


def test_servable_follows_the_licence_and_a_preset_its_members():
    from freestems.models.catalog import servable_license

    assert servable_license("MIT") and servable_license("MIT (model card)")
    assert not servable_license("none stated (repository MIT)") and not servable_license("none stated")
    assert not servable_license("unknown (its Hugging Face page was not read)")
    assert not servable_license("MITTENS")
    for name, info in CATALOG.items():
        if info.architecture == "ensemble":
            members = [CATALOG[member] for member, _ in info.config["members"]]
            assert info.servable == all(member.servable for member in members), name
        else:
            assert info.servable == servable_license(info.license), name
    assert CATALOG[DEFAULT_MODEL].servable  # the service's default must be servable
    assert not CATALOG["bs-roformer-viperx"].servable and not CATALOG["htdemucs"].servable
    assert CATALOG["ensemble-vocals-kim-scnet"].servable and not CATALOG["ensemble-vocals-kim-ft"].servable


def test_every_licence_label_takes_a_form_of_the_policy_and_says_the_same_of_the_same_facts():
    """The module docstring's rule: a label names the weights' own licence and where it is stated, or says
    none is stated (naming the repository's or code's licence), or unknown; servable exactly when the weights'
    own licence allows it. Weights from one place with no licence of their own get one label: every entry in
    MSST's releases (ZFTurbo's SCNets too) whose authors state nothing says "none stated (repository MIT)"."""
    import re

    from freestems.models.catalog import LICENSE_FORMS, RELEASES_URL, servable_license

    for name, info in CATALOG.items():
        assert any(re.fullmatch(form, info.license) for form in LICENSE_FORMS), (name, info.license)
        presets = ("ensemble", "chain")
        assert (info.license == "as its members") == (info.architecture in presets), name
        stated = re.fullmatch(r"\S+ \((model card|authors: .+)\)", info.license) is not None
        if info.architecture not in presets:
            assert info.servable == (stated and servable_license(info.license)), name
        if info.url.startswith(RELEASES_URL) and not stated:
            assert info.license == "none stated (repository MIT)", name
    assert not any(re.fullmatch(form, "MIT") for form in LICENSE_FORMS)  # a bare licence says not where
    assert [name for name, info in CATALOG.items() if info.architecture == "scnet" and info.servable] == [
        "scnet",
        "scnet-large-authors",
    ]


def test_no_two_entries_share_a_cache_file_for_their_configs_either():
    from freestems.models.download import entry_urls

    names = [url.rsplit("/", 1)[1] for info in CATALOG.values() for url in entry_urls(info)]
    assert len(set(names)) == len(names)


def test_the_job_entries_as_msst_uvr_and_audio_separator_publish_them():
    from freestems.models.catalog import KIM_CONFIG, MSST_COMMIT, UVR_COMMIT, UVR_RELEASE

    karaoke = CATALOG["mel-roformer-karaoke"]
    assert karaoke.jobs == ("lead-backing",) and karaoke.sources == ("vocals",)
    assert karaoke.url == UVR_RELEASE + "mel_band_roformer_karaoke_aufr33_viperx_sdr_10.1956.ckpt"
    assert karaoke.config["model"] == KIM_CONFIG["model"] and karaoke.segment == 352_800
    assert karaoke.sdr == {} and karaoke.sdr_set is None and "validation" in karaoke.note
    dereverb = CATALOG["bs-roformer-dereverb"]
    uvr_pinned = f"https://raw.githubusercontent.com/TRvlvr/application_data/{UVR_COMMIT}/"
    assert dereverb.jobs == ("de-reverb",) and dereverb.sources == ("dry",) and dereverb.segment == 352_768
    assert dereverb.config["model"]["dim"] == 256 and dereverb.config["model"]["depth"] == 8
    assert dereverb.license.startswith("unknown") and not dereverb.servable
    for info in (karaoke, dereverb):
        assert info.config_url.startswith(uvr_pinned)
    denoise, crowd = CATALOG["mel-roformer-denoise"], CATALOG["mel-roformer-crowd"]
    assert denoise.url == RELEASES_URL + "v.1.0.7/denoise_mel_band_roformer_aufr33_sdr_27.9959.ckpt"
    assert denoise.config_filename == "model_mel_band_roformer_denoise.yaml" and denoise.sdr == {}
    assert crowd.url == RELEASES_URL + "v.1.0.4/mel_band_roformer_crowd_aufr33_viperx_sdr_8.7144.ckpt"
    assert crowd.sdr == {"crowd": 5.99} and crowd.sdr_set is None and crowd.jobs == ("crowd",)
    drums = CATALOG["demucs-drumsep"]
    assert drums.architecture == "htdemucs" and drums.url == RELEASES_URL + "v1.0.5/model_drumsep.th"
    assert drums.sources == ("kick", "snare", "cymbals", "toms") and drums.sdr_set == "DrumSep test"
    assert drums.sdr == {"kick": 10.52, "snare": 6.05, "toms": 4.68, "cymbals": 5.03}
    assert MSST_COMMIT in drums.config_url and drums.segment == 40 * 44_100
    five = CATALOG["mdx23c-drumsep-jarredou"]
    assert five.sources == ("kick", "snare", "toms", "hh", "cymbals") and five.sdr["kick"] == 16.66
    for info in (karaoke, dereverb, denoise, crowd, drums, five):
        assert "/main/" not in info.config_url  # pinned to a release or a commit
        assert not info.servable


def test_the_job_entries_cost_is_the_bench_runs_or_the_entry_says_why_there_is_none():
    """bench/results/models_jobs.json is the run of bench/bench_models.py the costs come from (CPU time, one
    thread, over scnet's in the same run); an entry without a cost says why in its note."""
    import json
    from pathlib import Path

    from freestems.models.catalog import NOT_MEASURED

    run = json.loads((Path(__file__).parents[1] / "bench/results/models_jobs.json").read_text())
    measured = {name: cost for name, cost in run["relative_cpu_cost"].items() if name != "scnet"}
    assert set(measured) == {"mdx23c-vocals", "bs-roformer-dereverb", "mel-roformer-karaoke"}
    assert {name: CATALOG[name].relative_cost for name in measured} == measured
    assert all(row["threads"] == 1 for row in run["runs"])
    assert CATALOG["chain-dereverb-kim"].relative_cost == round(15.4 + measured["bs-roformer-dereverb"], 1)
    for name, info in CATALOG.items():
        if info.relative_cost is None and info.architecture not in ("ensemble", "chain"):
            assert name in NOT_MEASURED and "Cost not measured" in info.note, name
        elif info.relative_cost is None:
            assert "Cost not measured" in info.note, name


def test_the_drumsep_demucs_parameter_count_is_that_of_msst_config():
    pytest.importorskip("demucs")
    from demucs.hdemucs import HDemucs

    # MSST configs/config_drumsep.yaml (commit MSST_COMMIT): its hdemucs section and training facts.
    hdemucs = {
        "channels": 48, "channels_time": None, "growth": 2, "nfft": 4096, "wiener_iters": 0,
        "end_iters": 0, "wiener_residual": False, "cac": True, "depth": 6, "rewrite": True, "hybrid": True,
        "hybrid_old": False, "multi_freqs": [], "multi_freqs_depth": 3, "freq_emb": 0.2, "emb_scale": 10,
        "emb_smooth": True, "kernel_size": 8, "stride": 4, "time_stride": 2, "context": 1, "context_enc": 0,
        "norm_starts": 4, "norm_groups": 4, "dconv_mode": 1, "dconv_depth": 2, "dconv_comp": 4,
        "dconv_attn": 4, "dconv_lstm": 4, "dconv_init": 0.001, "rescale": 0.1,
    }  # fmt: skip
    info = CATALOG["demucs-drumsep"]
    with torch.device("meta"):
        network = HDemucs(list(info.sources), audio_channels=2, samplerate=44_100, segment=40, **hdemucs)
    assert info.parameters_m == _parameters_m(network)
