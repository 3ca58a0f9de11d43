"""The OpenAPI description of the separation form is generated from the served model and the formats."""

from __future__ import annotations

import httpx
from service_helpers import form, open_session

from freestems.audio.formats import FORMATS, MP3_BITRATES
from freestems.service.options import OPTION_FIELDS, RERUN_FIELDS


def test_openapi_describes_the_form_of_the_served_model(start_server, songs):
    server = start_server(max_shifts=3)
    config = httpx.get(server.url + "/config").json()
    schema = httpx.get(server.url + "/openapi.json").json()
    for path in ("/separate", "/jobs"):
        operation = schema["paths"][path]["post"]
        assert [p["name"] for p in operation["parameters"] if p["in"] == "header"] == ["X-Session-Key"]
        body = operation["requestBody"]
        assert body["required"] is True
        fields = body["content"]["multipart/form-data"]["schema"]
        properties = fields["properties"]
        if path == "/separate":
            assert fields["required"] == ["audio_file"]
            assert set(properties) == {"audio_file", *OPTION_FIELDS}
        else:  # a file, or an earlier job's kept song (from_job, from_token)
            assert "required" not in fields
            assert set(properties) == {"audio_file", *OPTION_FIELDS, *RERUN_FIELDS}
        assert properties["audio_file"]["format"] == "binary"
        # The served (default) model's stems, in its order, and the served names: not lists written by hand.
        assert properties["two_stems"]["enum"] == config["sources"] == ["drums", "bass", "other", "vocals"]
        assert properties["model"]["enum"] == [config["model"]] == ["small"]
        # The formats and bitrates the service encodes, from audio.formats.
        assert sorted(properties["format"]["enum"]) == sorted(FORMATS)
        assert properties["format"]["default"] == "mp3"
        assert properties["format"]["enum"] == config["formats"]
        bitrate = properties["mp3_bitrate"]
        assert (bitrate["minimum"], bitrate["maximum"]) == (MP3_BITRATES[0], MP3_BITRATES[-1])
        assert bitrate["default"] == config["mp3_bitrate"] and bitrate["default"] in MP3_BITRATES
        assert properties["shifts"]["maximum"] == 3 == config["limits"]["max_shifts"]
        assert properties["overlap"]["default"] == 0.25 and properties["mp3"]["default"] is True

    docs = httpx.get(server.url + "/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text and "swagger-ui" in docs.text.lower()

    # What the schema offers, the form takes: every enum value of two_stems and format is accepted.
    with open_session(server) as (_, key):
        offered = {name: properties[name]["enum"][-1] for name in ("two_stems", "format", "model")}
        upload = form(songs["wav"], **offered)
        response = httpx.post(server.url + "/separate", headers={"X-Session-Key": key}, timeout=120, **upload)
    assert response.status_code == 200, response.text
