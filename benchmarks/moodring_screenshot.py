"""Screenshot of a mood-ring page (``moia moodring`` writes it) for the README (PROTOCOL §8).

    python benchmarks/moodring_screenshot.py runs/ring/moodring.html docs/moodring.png [--hover N]

Opens the page in Debian's chromium through Playwright (as tests/analysis/test_browser.py does),
hovers token N (default: the first generated token with the highest z) so the side panel shows
every emotion's value, and saves a PNG of the page.
"""

import argparse
import json
import pathlib
import shutil
import tempfile

from moia.analysis.view import CHROMIUM_ARGS


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("page")
    parser.add_argument("out")
    parser.add_argument("--hover", type=int, help="token to hover (default: the reply's highest z)")
    parser.add_argument("--width", type=int, default=1300)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    page_path = pathlib.Path(args.page).resolve()
    text = page_path.read_text(encoding="utf-8")
    data = json.loads(text.split('id="moodring-data">')[1].split("</script>")[0].replace("<\\/", "</"))
    hover = args.hover
    if hover is None:
        p = data["prompt_length"]
        peaks = [max(row) for row in data["readings"][p:]]
        hover = p + max(range(len(peaks)), key=peaks.__getitem__)
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        raise SystemExit("no chromium on PATH (apt-get install chromium)")
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=list(CHROMIUM_ARGS),
            viewport={"width": args.width, "height": args.height},
        )
        page = context.new_page()
        page.goto(page_path.as_uri())
        token = page.locator("span.tok").nth(hover)
        token.scroll_into_view_if_needed()
        token.hover()
        page.screenshot(path=args.out, full_page=False)
        context.close()
    print(f"wrote {args.out} (hovering token {hover})")


if __name__ == "__main__":
    main()
