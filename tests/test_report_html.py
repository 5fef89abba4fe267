"""report.html: written beside the other reports, self-contained (nothing fetched), owner-only,
and in a real browser (headless Chromium) it draws the chart and the tables without a console
error. Customer values appear only in a few truncated examples."""

from __future__ import annotations

import re
import shutil
import stat
from pathlib import Path

import pytest

from backfill.pipeline import run as run_job
from backfill.reconcile import reconcile
from backfill.report_html import EXAMPLES, reconcile_html

ROOT = Path(__file__).parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample Segment job's report, run on the embedded emulator."""
    tmp = tmp_path_factory.mktemp("html")
    text = (ROOT / "jobs" / "sample_segment.toml").read_text()
    text = re.sub(r'"(sample_data/[^"]+)"', lambda m: f'"{ROOT / m.group(1)}"', text)
    job = tmp / "job.toml"
    job.write_text(text + f'\n[output]\ndir = "{tmp / "out"}"\n')
    result = run_job(job, quiet=True)
    assert result.summary["files"]["html"] == str(tmp / "out" / "report.html")
    checked = reconcile(job, quiet=True)
    assert checked.summary["files"]["html"] == str(tmp / "out" / "reconcile" / "report.html")
    return tmp / "out" / "report.html"


def test_reconcile_groups_differences_per_trait(tmp_path: Path) -> None:
    csv = tmp_path / "reconcile.csv"
    lines = ["profile_id,group,trait,expected,actual,file,row,kind,updated_at"]
    lines += [
        f"user_id:c-{i},,tier,gold,{'x' * 80},/data/in.csv,{i + 2},differs," for i in range(7)
    ]
    lines += ["user_id:c-9,,points,3,,/data/in.csv,11,missing_in_memory,"]
    csv.write_text("\n".join(lines) + "\n")
    summary = {"job": "j.toml", "store": "Segment", "exit_code": 1, "seconds": 1.0,
               "profiles": {"checked": 8, "differing": 8}, "traits": {"checked": 16},
               "rows": {"read": 8}, "files": {"differences": str(csv)}}  # fmt: skip
    page = reconcile_html(summary, csv)
    rows = re.findall(r"<tr>(.*?)</tr>", page)
    tier = next(r for r in rows if "<td>tier</td>" in r)
    assert tier.count("in.csv:") == EXAMPLES and tier.endswith('<td class="n">7</td>')
    assert "x" * 40 not in page  # a long value is cut
    assert any("<td>points</td><td>missing_in_memory</td>" in r for r in rows)
    assert "Segment does not match the plan everywhere." in page


def test_the_page_stands_alone(report: Path) -> None:
    page = report.read_text(encoding="utf-8")
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # fetches nothing
    assert "<link" not in page and "@import" not in page
    assert "default-src 'none'" in page  # and the browser is told so
    assert len(page) < 200_000


def test_customer_values_are_few_and_short(report: Path) -> None:
    page = report.read_text(encoding="utf-8")
    rows = re.findall(r"<tr>(.*?)</tr>", page)
    for row in rows:
        examples = re.findall(r"customers\.csv:\d+", row)
        assert len(examples) <= EXAMPLES
    # No email of the extract is shown whole more than once.
    emails = set(re.findall(r"[\w.]+@[\w.]+", (ROOT / "sample_data" / "customers.csv").read_text()))
    assert all(page.count(email) <= 1 for email in emails)


@pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                    reason="Chromium and chromedriver are not installed (.ci/run installs them "
                    "from Debian's chromium and chromium-driver packages)")  # fmt: skip
def test_a_real_browser_draws_them(report: Path, tmp_path: Path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1200,1400",
                 f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(DRIVER)))
    try:
        driver.get(report.as_uri())
        canvases = driver.find_elements(By.CSS_SELECTOR, "#chart canvas")
        assert canvases, "uPlot drew no chart"
        size = driver.execute_script("return [arguments[0].width, arguments[0].height]",
                                     canvases[0])  # fmt: skip
        assert size[0] > 300 and size[1] > 100
        drawn = driver.execute_script(
            "const c = arguments[0].getContext('2d').getImageData(0, 0, arguments[0].width,"
            " arguments[0].height).data; let n = 0;"
            " for (let i = 3; i < c.length; i += 4) if (c[i] > 0) n++; return n;",
            canvases[0],
        )
        assert drawn > 500, "the chart's canvas is blank"
        assert driver.find_elements(By.CSS_SELECTOR, ".u-legend")
        tables = driver.find_elements(By.TAG_NAME, "table")
        assert len(tables) >= 4  # source rows, units, reasons, the chart's legend
        assert "Why rows did not land" in driver.page_source
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        driver.get((report.parent / "reconcile" / "report.html").as_uri())
        assert "Differences per trait" in driver.page_source  # rows unresolved: exit 1
        assert len(driver.find_elements(By.TAG_NAME, "table")) >= 3
        assert driver.save_screenshot(str(tmp_path / "reconcile.png"))
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()
