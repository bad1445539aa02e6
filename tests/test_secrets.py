"""Passwords in URLs never shown or written in clear (vae_cli/cli/secrets.py): generated database URLs carrying a
password in any form (userinfo, query parameter, percent-encoded, inside another URL), in the text a message, a log
line, a YAML record or a command line puts around them. The search's own records are in test_sweeps.py."""

import json
import logging
import shlex
import string
from urllib.parse import quote, quote_plus

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vae_cli.cli.secrets import HIDDEN, mask

from conftest import QUIET, run_vae_train

# Characters a URL may hold unencoded beside letters, digits and -._~ (RFC 3986), in a userinfo password and in a
# query value (less & and #, which end it, and +, which reads as a space).
USERINFO_LITERAL = "!$&'()*+,;=:"
QUERY_LITERAL = "!$'()*,;=:@/?"


def as_sqlalchemy_writes_userinfo(password: str) -> str:
    return quote(password, safe=" +")  # URL.render_as_string: a space and + stay as they are


def encodings(literal: str):
    """Percent-encodings that keep all, none or a drawn part of the characters the URL may hold unencoded."""
    return st.sampled_from([literal, ""]) | st.sets(st.sampled_from(literal)).map("".join)


def keeping(kept: str):
    return lambda password: quote(password, safe=kept)


WORDS = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True)
HOSTS = st.from_regex(r"(([a-z][a-z0-9-]{0,8}\.){0,2}[a-z]{2,6}|127\.0\.0\.1)(:[0-9]{1,5})?", fullmatch=True)
OTHER_PARAMETERS = st.lists(
    st.tuples(
        WORDS.filter(lambda n: "pass" not in n),
        st.text(st.characters(categories=("L", "N", "P", "S")), max_size=8).map(quote_plus),
    ),
    max_size=3,
)
# Printable characters: runs of letters, digits, marks and spaces of any script, between ASCII punctuation and
# spaces (a URL's own delimiters among them).
PASSWORDS = st.lists(
    st.sampled_from(string.punctuation + " ")
    | st.text(st.characters(categories=("L", "N", "P", "S", "Zs")), min_size=1, max_size=4),
    min_size=6,
    max_size=12,
).map("".join)
PASSWORD_PARAMETERS = st.sampled_from(["password", "passwd", "PASSWORD", "db_password", "PGPASSWORD", "user.Passwd"])
PLACEHOLDER = "Placeholder7"


@st.composite
def urls(draw):
    """(url(password), how the password is written in it, the URL's other parts, which must stay visible): a
    database URL with the password in its userinfo, in a query parameter, or both."""
    scheme = draw(st.sampled_from(["postgresql", "postgresql+psycopg2", "mysql+pymysql", "redis", "https"]))
    user, host, database = draw(WORDS), draw(HOSTS), draw(WORDS)
    others = [f"{k}={v}" for k, v in draw(OTHER_PARAMETERS)]
    where = draw(st.sampled_from(["userinfo", "query", "both"]))
    in_userinfo = draw(st.just(as_sqlalchemy_writes_userinfo) | encodings(USERINFO_LITERAL).map(keeping))
    in_query = draw(st.just(quote_plus) | encodings(QUERY_LITERAL).map(keeping))  # quote_plus: SQLAlchemy's
    name, at = draw(PASSWORD_PARAMETERS), draw(st.integers(0, len(others)))
    user_alone = draw(st.booleans())  # a URL with its password in the query may still name its user

    def url(password: str) -> str:
        userinfo = f"{user}:{in_userinfo(password)}@" if where != "query" else f"{user}@" if user_alone else ""
        query = others if where == "userinfo" else others[:at] + [f"{name}={in_query(password)}"] + others[at:]
        return f"{scheme}://{userinfo}{host}/{database}" + ("?" + "&".join(query) if query else "")

    written = [e for e, used in ((in_userinfo, where != "query"), (in_query, where != "userinfo")) if used]
    return url, written, [host, database, *others] + ([user] if where != "query" or user_alone else [])


# How a URL reaches a line or a file: (text around it, how its parts read in that text).
CONTEXTS = [
    (lambda u: f"[2026-01-01 10:00:00,000][HYDRA] study vae in {u}: 0 of 20 trials run", str),
    (lambda u: f"hydra.sweeper.storage={u}: Optuna cannot open this database (OperationalError: refused).", str),
    (lambda u: f"could not connect to {u}; is the server running?", str),
    (lambda u: f"Error parsing override 'hydra.sweeper.storage='{u}''", str),
    (lambda u: f"(could not connect to {u})", str),
    (
        lambda u: yaml.safe_dump(
            {
                "hydra": {
                    "sweeper": {"storage": u},
                    "overrides": {"hydra": [f"hydra.sweeper.storage='{u}'", "hydra.sweep.dir=x"]},
                }
            },
            width=1 << 16,
        ),
        str,
    ),
    (lambda u: yaml.safe_dump({"storage": u, "n_trials": 2}, default_style="'", width=1 << 16), str),
    (lambda u: yaml.safe_dump({"storage": u, "n_trials": 2}, default_style='"', width=1 << 16), str),
    (lambda u: json.dumps({"storage": u, "n_trials": 2}), str),
    (
        lambda u: shlex.join(["vae-train", "--multirun", f"hydra.sweeper.storage='{u}'", "hydra.sweeper.n_trials=2"]),
        str,
    ),
    (lambda u: f"GET https://proxy.example/login?next={quote(u, safe='')}&lang=en 302", lambda s: quote(s, safe="")),
    (lambda u: f"redirect to login?next={quote(u, safe='')}", lambda s: quote(s, safe="")),  # no plain :// at all
]


CONTEXT_IDS = [
    "study-log",
    "storage-refused",
    "connect-error",
    "override-error",
    "in-parentheses",
    "hydra-yaml",
    "yaml-single-quoted",
    "yaml-double-quoted",
    "json",
    "command-line",
    "percent-encoded",
    "percent-encoded-only",
]


# 46 examples a context: the 500 there were when the contexts were drawn with the URLs, in a test per context.
@pytest.mark.parametrize("context", CONTEXTS, ids=CONTEXT_IDS)
@settings(derandomize=True, max_examples=46, deadline=None)
@given(drawn=urls(), password=PASSWORDS)
def test_no_password_in_any_url_form_or_text_around_it_is_shown(drawn, password, context):
    url, written, parts = drawn
    render, reads = context
    text, without = render(url(password)), render(url(PLACEHOLDER))
    shown = {password, *(reads(write(password)) for write in written)}
    assume(not [s for s in shown if s in without])  # the password is not elsewhere in the text by chance
    assume(not password.startswith(HIDDEN))  # a password that reads *** is taken for one masked before
    masked = mask(text)
    assert [s for s in shown if s in masked] == []
    # Nothing of it shows, not even a part or its length: the text reads the same whatever the password.
    assert masked == mask(without)
    assert [p for p in parts if reads(p) not in masked] == []  # the rest of the URL stays
    assert mask(masked) == masked
    # A message or a record built around a URL masked before (the study's log line, its connection error) is
    # masked again as a whole: it reads the same (percent-encoded, *** reads %2A%2A%2A and is masked again).
    if reads is str:
        premasked = render(mask(url(password)))
        assert mask(premasked) == premasked


def test_log_lines_and_records_are_masked_where_they_are_written(tmp_path, caplog):
    from vae_cli.cli.secrets import mask_folder, mask_log_lines

    url = "postgresql://alice:S3cretPW@db/vae"
    before = logging.getLogRecordFactory()
    try:
        mask_log_lines()
        with caplog.at_level(logging.INFO, logger="test_secrets"):  # a library's own may not propagate
            logging.getLogger("test_secrets").info("study in %s", url)
    finally:
        logging.setLogRecordFactory(before)
    assert "S3cretPW" not in caplog.text and f"alice:{HIDDEN}@db" in caplog.text
    (tmp_path / "hydra.yaml").write_text(f"storage: {url}\n")
    (tmp_path / "plain.yaml").write_text("n_trials: 2\n")
    (tmp_path / "notes.txt").write_text(url)  # not a record of Hydra's: left as it is
    stamp = (tmp_path / "plain.yaml").stat().st_mtime_ns
    mask_folder(tmp_path)
    assert (tmp_path / "hydra.yaml").read_text() == f"storage: postgresql://alice:{HIDDEN}@db/vae\n"
    assert (tmp_path / "plain.yaml").stat().st_mtime_ns == stamp  # nothing to hide: not rewritten
    assert (tmp_path / "notes.txt").read_text() == url


@pytest.mark.slow
def test_a_password_in_the_query_of_an_unreachable_database_is_neither_printed_nor_written(tmp_path):
    url = "postgresql+psycopg2://alice@127.0.0.1:9/vae?sslmode=disable&password=S3cretPW&connect_timeout=5"
    proc = run_vae_train(
        "--multirun",
        "hparams_search=optuna",
        f"hydra.sweeper.storage='{url}'",
        *QUIET,
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and "Optuna cannot open this database" in proc.stderr
    assert url.replace("S3cretPW", HIDDEN) in proc.stderr
    assert "S3cretPW" not in proc.stdout + proc.stderr
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and b"S3cretPW" in p.read_bytes()]
