"""`[notify]`: a real run against the embedded emulator, its end POSTed to a real HTTP receiver on
loopback; which ends are sent (`on`), that no customer value is in the message, and that a
receiver that is down, failing or unset never changes the exit code nor leaks the URL."""

from __future__ import annotations

import csv
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from backfill import __version__
from backfill.cli import main
from backfill.config import load_job
from backfill.emulator import EmulatorConfig, EmulatorServer
from backfill.errors import ConfigError
from backfill.notify import notify
from backfill.pipeline import retry, run
from backfill.reconcile import reconcile

STORE = "mem_store_01jnotify" + "0" * 17
SID = "AC00000000000000000000000000000000"
CREDENTIAL_VARIABLES = ("TWILIO_API_KEY", "TWILIO_API_SECRET", "TWILIO_ACCOUNT_SID",
                        "TWILIO_AUTH_TOKEN")  # fmt: skip
HOOK = "BACKFILL_TEST_WEBHOOK"
SECRET_PATH = "/services/T0001/B0002/xoxb-secret-token"  # Slack keeps its token in the path


def pid(n: int) -> str:
    return f"mem_profile_01jnotify{n:017d}"


SEED = {
    "stores": [
        {
            "id": STORE,
            "displayName": "notify",
            "traitGroups": [
                {
                    "displayName": "Contact",
                    "traits": {"firstName": {"dataType": "STRING"}},
                },
                {
                    "displayName": "Loyalty",
                    "traits": {"points": {"dataType": "NUMBER"}, "tier": {"dataType": "STRING"}},
                },
            ],
            "profiles": [{"id": pid(n), "traits": {}} for n in (1, 2, 3)],
        }
    ]
}
HEADER = "profile_id,first_name,points,tier\n"
LANDING = [  # values no count or path could equal by chance
    f"{pid(1)},Zelda-Quixote,918273,platinum-x",
    f"{pid(2)},Yusuf-Brannagh,827364,onyx-y",
    f"{pid(3)},Xiomara-Pell,736455,onyx-y",
]
NOT_FOUND = f"{pid(9)},Wendeline-Ostrova,645546,cobalt-z"  # no such profile: the store says 404


@dataclass
class Receiver:
    """A webhook receiver: records each POST; answers the next status of ``answers`` (then
    200)."""

    url: str
    posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    box: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got = box[0]
            got.raw.append(body)
            got.posts.append((self.path, json.loads(body)))
            status = got.answers.pop(0) if got.answers else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box.append(Receiver(f"http://127.0.0.1:{server.server_address[1]}{SECRET_PATH}"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield box[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def write_job(folder: Path, rows: list[str], notify_table: str, name: str = "nightly") -> Path:
    """A small job over ``rows`` into the embedded emulator; paths relative to ``folder``."""
    (folder / "seed.json").write_text(json.dumps(SEED))
    (folder / f"{name}.csv").write_text(HEADER + "".join(row + "\n" for row in rows))
    job = folder / f"{name}.toml"
    job.write_text(
        f'name = "{name}"\n'
        f'[connection]\nbase_url = "emulator"\nstore_id = "{STORE}"\nseed = "seed.json"\n'
        f'[source]\npaths = ["{name}.csv"]\n'
        '[identity]\nprofile_id_column = "profile_id"\n'
        '[traits.Contact]\nfirstName = "first_name"\n'
        '[traits.Loyalty]\npoints = { column = "points", type = "NUMBER" }\ntier = "tier"\n'
        "[send]\nconcurrency = 4\nrate = 5000\n"
        f'[output]\ndir = "out-{name}"\n'
        f"{notify_table}"
    )
    return job


def cells(path: Path) -> set[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return {cell for row in csv.reader(f) for cell in row if cell}


@pytest.fixture(autouse=True)
def in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each test in its own folder (job paths are relative), with the emulator's credentials."""
    monkeypatch.chdir(tmp_path)
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", SID)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "emulator")
    monkeypatch.delenv(HOOK, raising=False)


def table(on: str = "") -> str:
    return f'[notify]\nwebhook_env = "{HOOK}"\n{on}'


# -------------------------------------------------------------------------------- tests


def test_a_failed_run_is_posted_with_counts_and_reports_and_no_customer_data(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default `on = ["failure"]`: a run with a row that cannot land is posted once, with
    the summary's counts and report paths, and nothing the extract or the store said."""
    monkeypatch.setenv(HOOK, receiver.url)
    job = write_job(tmp_path, [*LANDING, NOT_FOUND], table())
    result = run(job, quiet=True)
    assert result.exit_code == 1

    assert len(receiver.posts) == 1
    path, body = receiver.posts[0]
    assert path == SECRET_PATH
    rows = result.summary["rows"]
    names = ("read", "landed", "landed_in_part", "not_landed", "not_sent_yet")
    assert body["counts"] == {"rows": {k: rows[k] for k in names}}
    assert body["counts"]["rows"]["not_landed"] == 1
    assert body["counts"]["rows"]["landed"] == 3
    assert (body["job"], body["command"], body["exit_code"]) == ("nightly", "run", 1)
    assert (body["outcome"], body["version"]) == ("failed", __version__)
    assert body["reports"] == result.summary["files"]
    text = body["text"]
    assert text.startswith("backfill run of job nightly failed (exit 1) on ")
    assert "4 rows read, 3 landed, 0 landed in part, 1 not landed." in text
    assert result.summary["files"]["report"] in text
    assert result.summary["files"]["errors"] in text

    sent = receiver.raw[0].decode()
    leaked = {cell for cell in cells(tmp_path / "nightly.csv") if cell in sent}
    assert leaked == set()
    # The store's own answer for the lost row (errors.csv's message) stays out too.
    with (tmp_path / "out-nightly" / "errors.csv").open(newline="", encoding="utf-8") as f:
        errors = list(csv.DictReader(f))
    assert [e["outcome"] for e in errors] == ["profile_not_found"]
    assert errors[0]["message"] and errors[0]["message"] not in sent


def test_on_filters_which_ends_are_posted(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clean run is not posted by default, is with "success", and "always" posts both."""
    monkeypatch.setenv(HOOK, receiver.url)
    assert run(write_job(tmp_path, LANDING, table(), "quiet-night"), quiet=True).exit_code == 0
    assert receiver.posts == []

    ok = write_job(tmp_path, LANDING, table('on = ["success"]\n'), "good-night")
    assert run(ok, quiet=True).exit_code == 0
    assert [(b["job"], b["outcome"], b["exit_code"]) for _, b in receiver.posts] == [
        ("good-night", "succeeded", 0)
    ]
    bad = write_job(tmp_path, [*LANDING, NOT_FOUND], table('on = ["success"]\n'), "bad-night")
    assert run(bad, quiet=True).exit_code == 1
    assert len(receiver.posts) == 1  # a failure, and only success asked for

    receiver.posts.clear()
    always = table('on = ["always"]\n')
    assert run(write_job(tmp_path, LANDING, always, "a1"), quiet=True).exit_code == 0
    assert run(write_job(tmp_path, [NOT_FOUND], always, "a2"), quiet=True).exit_code == 1
    assert [(b["job"], b["outcome"]) for _, b in receiver.posts] == [
        ("a1", "succeeded"),
        ("a2", "failed"),
    ]


def test_retry_and_reconcile_are_posted_too(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`retry` says retry; `reconcile` says profiles and traits, and its reports."""
    monkeypatch.setenv(HOOK, receiver.url)
    job = write_job(tmp_path, [*LANDING, NOT_FOUND], table('on = ["always"]\n'))
    assert run(job, quiet=True).exit_code == 1
    assert retry(job, not_found=True, quiet=True).exit_code == 1
    result = reconcile(job, quiet=True)
    assert result.exit_code == 1  # the missing profile cannot match

    commands = [(b["command"], b["exit_code"]) for _, b in receiver.posts]
    assert commands == [("run", 1), ("retry", 1), ("reconcile", 1)]
    body = receiver.posts[2][1]
    p, t = result.summary["profiles"], result.summary["traits"]
    assert body["counts"] == {
        "profiles": {k: p[k] for k in ("checked", "matching", "differing", "profile_not_found",
                                       "fetch_failed")},
        "traits": {k: t[k] for k in ("checked", "differing", "missing_in_memory")},
    }  # fmt: skip
    assert body["counts"]["profiles"]["profile_not_found"] == 1
    assert body["reports"] == result.summary["files"]
    assert "4 profiles checked, 0 differing, 1 not found" in body["text"]
    sent = b"".join(receiver.raw).decode()
    assert {cell for cell in cells(tmp_path / "nightly.csv") if cell in sent} == set()


def test_an_interrupted_end_counts_as_a_failure(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 130 is posted under the default `on` and says interrupted."""
    monkeypatch.setenv(HOOK, receiver.url)
    job = load_job(write_job(tmp_path, LANDING, table()))
    summary = {"rows": {"read": 3, "landed": 1, "not_sent_yet": 2}, "files": {}}
    notify(job, "run", summary, 130)
    [(_, body)] = receiver.posts
    assert body["outcome"] == "interrupted"
    assert "interrupted (exit 130)" in body["text"]
    assert "2 not sent yet" in body["text"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize("down", ["unreachable", "500"])
def test_a_failing_receiver_leaves_the_exit_code_and_warns_once_without_the_url(
    down: str,
    tmp_path: Path,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Nothing listening, or 500 twice (one retry): the run's own exit code, one warning line
    naming the host only, never the URL's path (its secret)."""
    if down == "500":
        receiver.answers = [500, 500]
        url = receiver.url
    else:
        url = f"http://127.0.0.1:{free_port()}{SECRET_PATH}?token=also-secret"
    monkeypatch.setenv(HOOK, url)
    job = write_job(tmp_path, LANDING, table('on = ["always"]\n'))
    assert main(["run", str(job), "--quiet"]) == 0

    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1, err
    assert warnings[0].startswith("backfill: warning: notification to 127.0.0.1 failed: ")
    assert "secret" not in err and "/services/" not in err
    if down == "500":
        assert "HTTP 500" in warnings[0]
        assert len(receiver.posts) == 2  # one retry on a 5xx


def test_a_4xx_is_not_sent_again(
    tmp_path: Path,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    receiver.answers = [404]
    monkeypatch.setenv(HOOK, receiver.url)
    job = write_job(tmp_path, [NOT_FOUND], table())
    assert main(["run", str(job), "--quiet"]) == 1
    assert len(receiver.posts) == 1
    assert "notification to 127.0.0.1 failed: HTTP 404" in capsys.readouterr().err


def test_an_unset_or_plain_http_url_warns_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The variable missing: one warning naming it; plain http to another host: refused, the
    URL not printed."""
    job = write_job(tmp_path, [NOT_FOUND], table())
    assert main(["run", str(job), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"backfill: warning: [notify] webhook_env: {HOOK} is not set" in err

    for url in ("http://hooks.example.com/services/xoxb-secret",
                "http://127.0.0.1.example.com/services/xoxb-secret"):  # fmt: skip
        monkeypatch.setenv(HOOK, url)
        assert main(["run", str(job), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert f"the URL in {HOOK} must be https://" in err
        assert "secret" not in err and "example.com" not in err


@pytest.mark.parametrize(
    ("notify_table", "key", "says"),
    [
        ('[notify]\non = ["failure"]\n', "notify.webhook_env", "is required"),
        ('[notify]\nwebhook_env = "https://hooks.slack.com/services/T/B/xoxb"\n',
         "notify.webhook_env", "must name an environment variable"),
        (table('on = ["failure", "sometimes"]\n'), "notify.on", "'sometimes'"),
        (table('on = "failure"\n'), "notify.on", "must be a non-empty list"),
        (table("on = []\n"), "notify.on", "must be a non-empty list"),
        (table('url = "https://x"\n'), "notify.url", "unknown key"),
        ('notify = "HOOK"\n', "notify", "must be a table"),
    ],
)  # fmt: skip
def test_a_bad_notify_table_fails_at_load_naming_the_key(
    tmp_path: Path, notify_table: str, key: str, says: str
) -> None:
    job = write_job(tmp_path, LANDING, "")
    text = job.read_text()
    if not notify_table.startswith("["):  # a top-level key: before the first table
        text = notify_table + text
    else:
        text += notify_table
    job.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_job(job)
    message = str(caught.value)
    assert f"{job}: {key}: " in message
    assert says in message
    assert "xoxb" not in message  # a URL written by mistake is not echoed


def test_a_good_notify_table_loads() -> None:
    job = Path("ok.toml")
    write_job(Path("."), LANDING, table('on = ["success", "failure", "success"]\n'), "ok")
    loaded = load_job(job).notify
    assert loaded is not None
    assert (loaded.webhook_env, loaded.on) == (HOOK, ("success", "failure"))
    plain = load_job(write_job(Path("."), LANDING, table(), "plain")).notify
    assert plain is not None and plain.on == ("failure",)
    assert load_job(write_job(Path("."), LANDING, "", "none")).notify is None


def test_a_run_stopped_by_an_error_is_posted_and_written_too(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Expired credentials at 3 am: the run stops before any report (exit 3), and the webhook
    and the metrics textfile still hear it; the message says why in our words only."""
    monkeypatch.setenv(HOOK, receiver.url)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "expired-secret")
    job = write_job(tmp_path, LANDING, table() + '[metrics]\ntextfile = "nightly.prom"\n')
    with EmulatorServer(EmulatorConfig(seed=tmp_path / "seed.json")) as emu:
        text = job.read_text().replace('base_url = "emulator"', f'base_url = "{emu.url}"')
        job.write_text(text.replace('seed = "seed.json"\n', ""))
        assert main(["run", str(job), "--quiet"]) == 3  # the emulator refuses the token
    assert "expired-secret" not in capsys.readouterr().err
    posts = [b for path, b in receiver.posts if path == SECRET_PATH]
    (body,) = posts
    assert (body["command"], body["outcome"], body["exit_code"]) == ("run", "failed", 3)
    assert body["counts"] == {}
    assert "stopped: the service refused the credentials" in body["text"]
    assert "expired-secret" not in json.dumps(body)
    prom = (tmp_path / "nightly.prom").read_text()
    assert 'backfill_exit_code{command="run",job="nightly"} 3.0' in prom
