"""The page prices a separation before it sends anything, and earns its key for what the options need.

The server publishes its prices (``GET /config``'s ``pricing``: model-seconds = seconds x passes x the
overlap's chunk factor x the model's relative cost). The page shows what the chosen options cost and what
fits near the options, sends nothing the server would refuse for its cost, and asks the anti-abuse check
for the budget the song needs (``WS /session?budget=...``), whose work is linear in it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from audio_samples import write_test_file
from web_helpers import needs_chromium, wait_js

from freestems.audio import AudioReader

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cost-songs") / "Ten seconds.mp3"
    write_test_file(path, "mp3", seconds=10.0)
    return path


def test_the_page_shows_the_cost_and_asks_for_the_budget_the_song_needs(open_page, web_server, song):
    pricing = web_server.service.manager.pricing  # the test model is priced as scnet: 1 per second
    page = open_page()
    opened: list[str] = []
    page.on("websocket", lambda socket: opened.append(socket.url))
    # Before a song: the cost per minute and the longest song that fits.
    hint = page.inner_text("#cost-hint")
    assert "60 model-seconds per minute of audio" in hint and "songs up to 12:00 fit" in hint
    page.set_input_files("#file", str(song))
    wait_js(page, "!document.getElementById('separate').disabled")
    wait_js(page, "document.getElementById('cost-hint').textContent.includes('of the 720')")
    assert page.inner_text("#cost-hint").startswith("Compute: 10 of the 720 model-seconds")
    page.click("details.advanced summary")  # "More options"
    page.select_option("#shifts", "3")
    wait_js(page, "document.getElementById('cost-hint').textContent.startsWith('Compute: 30 ')")

    page.click("#separate")
    phase = wait_js(
        page, "['result', 'problem'].includes(window.freestems.phase) && window.freestems.phase", 120
    )
    assert phase == "result", page.evaluate("window.freestems.problem")
    asked = [float(parse_qs(urlparse(url).query)["budget"][0]) for url in opened if "budget=" in url]
    cost = AudioReader(song).duration * 3  # what the server priced it at
    assert len(asked) == 1 and cost <= asked[0] <= (cost + 2 * 3) * 1.1 + 1, (asked, cost)
    assert asked[0] < pricing.default_budget  # so the check was smaller than a default key's


def test_the_page_sends_nothing_that_costs_more_than_the_server_allows(open_page, song):
    """A server whose ceiling is 21 model-seconds: 10 s at 3 passes does not fit; the page says so and
    what fits, and sends nothing."""
    description = {
        "model": "small",
        "models": [{"name": "small", "title": "Small", "stems": ["drums", "bass", "other", "vocals"]}],
        "limits": {"max_upload_mb": 100, "max_duration": 1200, "max_shifts": 3},
        "pricing": {
            "unit": "model-seconds",
            "default_overlap": 0.25,
            "models": {"small": 1.0},
            "max_request_cost": 21.0,
            "default_budget": 21.0,
        },
    }
    page = open_page(
        before=lambda page: page.route("**/config", lambda route: route.fulfill(json=description))
    )
    opened: list[str] = []
    page.on("websocket", lambda socket: opened.append(socket.url))
    page.set_input_files("#file", str(song))
    wait_js(page, "!document.getElementById('separate').disabled")
    page.click("details.advanced summary")
    page.select_option("#shifts", "3")
    wait_js(page, "document.getElementById('cost-hint').textContent.startsWith('Too much compute')")
    hint = page.inner_text("#cost-hint")
    assert "cost 30 model-seconds for this song and one separation may use 21" in hint
    assert "choose at most 2 passes" in hint and "a song of at most 0:07" in hint
    page.click("#separate")
    page.wait_for_timeout(500)
    assert page.evaluate("window.freestems.phase") == "setup" and opened == []
    page.select_option("#shifts", "2")
    wait_js(page, "document.getElementById('cost-hint').textContent.startsWith('Compute: 20 of the 21')")
