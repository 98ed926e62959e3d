"""The report and the index as a person sees them: in headless Chromium, offline, with the code hidden."""
from conftest import needs_chromium

pytestmark = needs_chromium


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
    assert "SUCCEEDED" in page.locator("tbody tr.run").first.inner_text()
    page.get_by_role("link", name=run_dir.name).click()
    page.wait_for_load_state()
    assert page.url.endswith(f"{run_dir.name}/report.html") and page.locator(".aiprod-header").is_visible()
    page.close()


def test_index_sorts_and_filters(browser, tmp_path):
    "Clicking a header sorts each sweep's runs by that column; the text box keeps rows holding every word typed."
    from aiprod.report import save_metrics, write_index
    for i, (sweep, accuracy, status) in enumerate([("s1", 0.5, "SUCCEEDED"), ("s1", 0.9, "FAILED"), ("s1", 0.7, "SUCCEEDED"),
                                                   (None, 0.8, "INTERRUPTED")]):
        run_dir = tmp_path / f"20261124-00000{i}-t-abcde{i}"
        run_dir.mkdir()
        (run_dir / "params.yaml").write_text(f"lr: {accuracy}\n")
        save_metrics(run_dir / "metrics.json", run_id=run_dir.name, template="t", status=status, sweep=sweep,
                     started=f"2026-11-24T00:00:0{i}", timings={"execute_s": 10.0 - i}, metrics={"accuracy": accuracy},
                     overrides={"lr": accuracy})
    page = browser.new_page()
    page.goto(write_index(tmp_path).as_uri())
    accuracies = lambda: page.locator("tr.run:visible td:nth-child(6)").all_inner_texts()
    assert accuracies() == ["0.8", "0.7", "0.9", "0.5"]            # newest first: the group with the newest run first
    page.get_by_role("columnheader", name="accuracy").click()
    assert accuracies() == ["0.8", "0.5", "0.7", "0.9"]            # ascending within each group
    page.get_by_role("columnheader", name="accuracy").click()
    assert accuracies() == ["0.8", "0.9", "0.7", "0.5"]
    page.get_by_role("columnheader", name="duration").click()       # numeric order, not text order
    assert page.locator("tr.run:visible td:nth-child(5)").all_inner_texts() == ["7.0 s", "8.0 s", "9.0 s", "10.0 s"]
    page.locator("#filter").fill("succeeded s1")
    assert sorted(accuracies()) == ["0.5", "0.7"] and page.locator("#shown").inner_text() == "2"
    assert not page.locator("tbody").nth(0).is_visible()            # a group with no matching run hides
    page.locator("#filter").fill("interrupted")
    assert accuracies() == ["0.8"] and "runs outside any sweep" in page.locator("tbody:visible tr.group").inner_text()
    page.locator("#filter").fill("")
    assert len(accuracies()) == 4
    page.close()
