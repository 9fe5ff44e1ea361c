"""The plan explorer on a Llama-3-8B-sized plan (meta device): HTML size, time to write it,
and time until the page is ready in headless Chromium (when chromium/chromedriver exist).

    python benchmarks/explorer_size.py [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

import sparsekit_graph as skg
from sparsekit_graph.viz import build_scene, explorer_html, layer_graph

LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8)  # fmt: skip


def load_seconds(html: Path, repeats: int) -> list[float] | None:
    """Seconds from navigation start until the page's script has rendered (body[data-ready])."""
    chrome, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chrome and driver_path):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    out = []
    try:
        for _ in range(repeats):
            driver.get("about:blank")
            t0 = time.perf_counter()
            driver.get(html.as_uri())
            WebDriverWait(driver, 120).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
            out.append(time.perf_counter() - t0)
            t0 = time.perf_counter()  # selecting a group: highlight + table + details
            driver.execute_script("select(PLAN.groups.findIndex(g => g.prunable))")
            out[-1] = (out[-1], time.perf_counter() - t0)  # type: ignore[call-overload]
    finally:
        driver.quit()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA3_8B))
    inputs = {"input_ids": torch.zeros(2, 16, dtype=torch.long, device="meta")}
    t0 = time.perf_counter()
    plan = skg.plan(model, inputs)
    t_plan = time.perf_counter() - t0
    t0 = time.perf_counter()
    scene = build_scene(layer_graph(model, inputs, plan))
    html = explorer_html(plan, scene)
    t_html = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "llama3_8b.html"
        path.write_text(html)
        size = path.stat().st_size
        loads = load_seconds(path, args.repeats)
    print(f"Llama-3-8B plan: {len(plan.groups)} groups, {len(scene.items)} layers drawn; planned in {t_plan:.1f}s")
    print(f"explorer HTML: {size / 1e6:.2f} MB, traced and written in {t_html:.1f}s")
    if loads is None:
        print("page load: chromium/chromedriver not installed")
    else:
        ready = [a for a, _ in loads]
        select = [b for _, b in loads]
        print(f"page ready in headless Chromium: median {statistics.median(ready):.2f}s over {len(ready)} loads")
        print(f"selecting a group (highlight, table, details): median {statistics.median(select) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
