"""`cosa demo` end to end on a handful of small images: train, evaluate, export, segment, report, reuse."""

from __future__ import annotations

import json
from html import escape

import pytest

pytest.importorskip("torch")

from tiny_training import TINY_OVERRIDES

from cosa_sdk.cli import main as cosa_main
from cosa_sdk.demo import app
from cosa_sdk.demo.browser import check_report, find_browser

DATA = "synthetic:n_train=12,n_val=4,size=64,seed=3"


pytestmark = pytest.mark.usefixtures("cosa_cache")  # generated data in the session's temp folder


def _demo(out, *extra: str) -> int:
    return cosa_main(
        ["demo", "--out", str(out), "--data", DATA, "--iters", "4", "--no-screenshot", *extra, *TINY_OVERRIDES]
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    assert _demo(out) == 0
    return out


def test_demo_writes_report_bundle_and_next_commands(demo_run, capsys) -> None:
    for name in ("report.html", "eval.json", "latency.json", "bundle/cosa.json", "run/best.pt"):
        assert (demo_run / name).is_file(), name
    assert list((demo_run / "segmented").glob("*_overlay.jpg"))
    html = (demo_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 and "dataset.imagesLoaded" in html
    scores = json.loads((demo_run / "eval.json").read_text())
    trained = json.loads((demo_run / "run" / "config.json").read_text())["config"]
    assert trained["eval_limit"] == app.TRAINING_EVAL_IMAGES  # in-training evaluations read a subset
    assert scores["num_images"] == 4  # the evaluation stage reads every held-out image
    assert f"{scores['images_right']:.1f} % (label-free mIoU of the image &gt;= 50" in html
    # the sample grid's legend: one swatch per class of the bundle (its palette), plus the ignore colour
    bundle = json.loads((demo_run / "bundle" / "cosa.json").read_text())
    legend = html.split('<ul class="legend"', 1)[1].split("</ul>", 1)[0]
    assert legend.count("<li") == len(bundle["classes"]) + 1 and "ignore" in legend
    for name, (red, green, blue) in zip(bundle["classes"], bundle["palette"]):
        assert f'data-class="{escape(name)}"' in legend and f"rgb({red}, {green}, {blue})" in legend


def test_second_demo_reuses_the_run_and_prints_what_to_try(demo_run, capsys) -> None:
    assert _demo(demo_run) == 0
    printed = capsys.readouterr().out
    assert "reusing the trained run" in printed and "reusing the bundle" in printed
    last = printed.strip().splitlines()[-4:]
    assert last[0].startswith("report:") and last[1].startswith("bundle:")
    assert "cosa segment" in last[2] and "cosa serve" in last[3]


def test_demo_with_other_settings_refuses_to_mix_runs(demo_run, capsys) -> None:
    assert _demo(demo_run, "lr=0.5") == 2
    assert "--force" in capsys.readouterr().err


@pytest.mark.skipif(find_browser() is None, reason="no Chromium here (apt-get install chromium)")
def test_report_renders_every_image_in_headless_chromium(demo_run, tmp_path) -> None:
    check = check_report(demo_run / "report.html", screenshot=tmp_path / "report.png")
    assert check.ok and check.images_total >= 2
    from PIL import Image

    picture = Image.open(check.screenshot).convert("L")
    assert picture.size[0] >= 800 and picture.getextrema()[0] < 100  # not a blank page


@pytest.mark.skipif(find_browser() is None, reason="no Chromium here (apt-get install chromium)")
def test_a_broken_picture_is_caught(demo_run, tmp_path) -> None:
    page = tmp_path / "broken.html"
    html = (demo_run / "report.html").read_text()
    page.write_text(html.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1))
    check = check_report(page)
    assert not check.ok and check.images_loaded == check.images_total - 1
