"""The report and the index as a person sees them: in headless Chromium, offline, with the code hidden."""
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(not CHROMIUM, reason="no headless Chromium on this machine (`make browser` installs it)")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield browser
        browser.close()


def test_report_opens_offline_with_code_hidden(browser, default_run):
    _, run_dir, _ = default_run
    page = browser.new_page()
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto((run_dir / "report.html").as_uri())
    assert all(url.startswith(("file:", "data:")) for url in requests), requests   # no server, no CDN
    header = page.locator(".aiprod-header")
    assert header.is_visible() and "SUCCEEDED" in header.inner_text() and "test accuracy" in header.inner_text()
    assert page.evaluate("[...document.images].length") >= 5
    assert page.evaluate("[...document.images].every(image => image.complete && image.naturalWidth > 0)")
    code = page.locator(".jp-CodeCell .jp-Cell-inputWrapper").nth(2)
    assert not code.is_visible()
    page.get_by_role("button", name="Show / hide code").click()
    assert code.is_visible() and "seed_everything" in page.locator(".jp-CodeCell").nth(2).inner_text()
    page.close()


def test_index_links_to_report(browser, default_run):
    reports, run_dir, _ = default_run
    page = browser.new_page()
    page.goto((reports / "index.html").as_uri())
    assert "SUCCEEDED" in page.locator("tbody tr").first.inner_text()
    page.get_by_role("link", name=run_dir.name).click()
    page.wait_for_load_state()
    assert page.url.endswith(f"{run_dir.name}/report.html") and page.locator(".aiprod-header").is_visible()
    page.close()
