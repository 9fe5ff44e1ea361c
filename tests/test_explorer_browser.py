"""The plan explorer in a real browser (Selenium, headless Chromium and chromedriver from
Debian's packages; ``.ci/run`` installs them). Skips locally without them, never when CI=true."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("torchvision")
from sparsekit_graph.cli import app  # noqa: E402
from sparsekit_graph.plan.schema import Plan  # noqa: E402

CI = os.environ.get("CI", "").lower() == "true"
CHROME = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver") or (Path("/usr/bin/chromedriver").exists() and "/usr/bin/chromedriver")


def _driver():  # noqa: ANN202 - selenium is an optional test dependency
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if CI:
            raise
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    if not (CHROME and DRIVER):
        if CI:
            pytest.fail("CI=true but chromium/chromedriver are missing (apt-get install chromium chromium-driver)")
        pytest.skip("chromium and chromedriver are not installed")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROME
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(str(DRIVER)), options=opts)


@pytest.mark.slow
def test_select_highlight_edit_export(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    runner = CliRunner()
    plan_path, html = tmp_path / "plan.json", tmp_path / "plan.html"
    assert runner.invoke(app, ["plan", "torchvision:resnet18", "-o", str(plan_path), "-q"]).exit_code == 0
    r = runner.invoke(app, ["view", str(plan_path), "--model", "torchvision:resnet18", "-o", str(html), "-q"])
    assert r.exit_code == 0, r.output
    plan = Plan.load(plan_path)
    target = next(i for i, g in enumerate(plan.groups) if g.name == "layer2.0.conv1:out")
    pinned = next(i for i, g in enumerate(plan.groups) if not g.prunable)
    driver = _driver()
    try:
        driver.get(html.as_uri())
        WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
        driver.find_element(By.ID, "search").send_keys("layer2.0.conv1:out")
        rows = driver.find_elements(By.CSS_SELECTOR, "#groups tbody tr")
        assert [r.get_attribute("data-index") for r in rows] == [str(target)]
        rows[0].click()
        lit = driver.find_elements(By.CSS_SELECTOR, "#graph g.node.hl")
        names = {n.get_attribute("data-key") for n in lit}
        assert "call:layer2_0_conv1" in names and all(str(target) in n.get_attribute("data-groups").split() for n in lit)
        assert driver.find_elements(By.CSS_SELECTOR, "#graph g.node.dim")  # the rest is dimmed
        keep = driver.find_element(By.ID, "edit-keep")
        keep.clear()
        keep.send_keys("40\n")
        driver.execute_script("document.getElementById('edit-keep').dispatchEvent(new Event('change'))")
        assert driver.find_element(By.CSS_SELECTOR, f"#row-{target} td:last-child").text == "40"  # kept column
        driver.find_element(By.ID, "search").clear()
        driver.execute_script("document.getElementById('search').dispatchEvent(new Event('input'))")
        driver.find_element(By.ID, f"row-{pinned}").click()
        assert driver.find_element(By.ID, "edit-prunable").get_attribute("disabled") is not None  # a planner pin
        driver.find_element(By.ID, "export").click()
        exported = Plan.from_json(driver.find_element(By.ID, "exported").get_attribute("value"))
        if os.environ.get("SKG_SCREENSHOT"):
            driver.find_element(By.ID, f"row-{target}").click()
            driver.save_screenshot(os.environ["SKG_SCREENSHOT"])
    finally:
        driver.quit()
    assert exported.group("layer2.0.conv1:out").keep == 40
    assert exported.model_copy(update={"groups": plan.groups}) == plan  # nothing else changed
    assert [g for g in exported.groups if g.name != "layer2.0.conv1:out"] == [
        g for g in plan.groups if g.name != "layer2.0.conv1:out"
    ]
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(json.loads(exported.model_dump_json())))
    r = runner.invoke(app, ["check", str(edited), "torchvision:resnet18", "-q"])
    assert r.exit_code == 0, r.output
