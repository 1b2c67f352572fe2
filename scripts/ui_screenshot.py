"""Screenshot of the Dagster UI's asset graph with partitions, for README.md (docs/asset-graph.png).

Builds a small demo in a temp environment (3 shards synced through Dagster), starts dagster-webserver
on loopback and renders the asset group page in Debian's headless Chromium, driven by Playwright (to
dismiss the UI's first-visit dialog and wait for the graph):

    apt-get install -y chromium && .venv/bin/pip install playwright     # once; not needed by the project
    .venv/bin/python scripts/ui_screenshot.py [--out docs/asset-graph.png]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).parents[1]
CHROMIUM_FLAGS = [  # what works on a machine without a display or outside network
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def screenshot(url: str, out: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 700})
        page.goto(url, wait_until="networkidle", timeout=120_000)
        try:  # the first-visit "community" dialog
            page.get_by_role("button", name="Skip").click(timeout=20_000)
        except Exception:  # noqa: BLE001 - not shown by this Dagster version
            pass
        page.get_by_role("button", name="Hide navigation").click()
        page.get_by_text("vector_index").last.wait_for(timeout=60_000)
        page.mouse.click(340, 80)  # collapse the asset list beside the graph
        page.wait_for_timeout(1000)
        for _ in range(2):  # the graph's zoom-in button (right edge), until nodes show partitions and checks
            page.mouse.click(1472, 380)
            page.wait_for_timeout(500)
        page.mouse.move(800, 600)  # drag the graph back to the middle
        page.mouse.down()
        page.mouse.move(1050, 560, steps=10)
        page.mouse.up()
        page.wait_for_timeout(3000)  # partition status and checks fill in
        page.screenshot(path=out, clip={"x": 68, "y": 0, "width": 1432, "height": 450})
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "docs" / "asset-graph.png"))
    parser.add_argument("--page", default="/asset-groups/rag")
    parser.add_argument("--port", type=int, default=3917)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from rag_assets_tests.conftest import write_bad_inputs, write_corpus

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        home, dagster_home, source = tmp / "rag", tmp / "dagster", tmp / "source"
        dagster_home.mkdir()
        shutil.copy(ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
        (dagster_home / "workspace.yaml").write_text(
            "load_from:\n  - python_module:\n      module_name: rag_assets.definitions\n      location_name: rag_assets\n"
        )
        write_corpus(source)
        write_bad_inputs(source / "alpha" / "bad")
        env = {**os.environ, "RAG_HOME": str(home), "RAG_SOURCE": str(source), "DAGSTER_HOME": str(dagster_home)}
        bin_dir = Path(sys.executable).parent
        subprocess.run([str(bin_dir / "rag-assets"), "sync"], env=env, check=True)
        web = subprocess.Popen(
            [str(bin_dir / "dagster-webserver"), "-w", str(dagster_home / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(args.port)],
            env=env, cwd=dagster_home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{args.port}"
            for _ in range(120):
                try:
                    if requests.get(f"{url}/server_info", timeout=2).ok:
                        break
                except requests.RequestException:
                    time.sleep(1)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            screenshot(url + args.page, args.out)
        finally:
            web.terminate()
            web.wait(30)
    print(args.out)


if __name__ == "__main__":
    main()
