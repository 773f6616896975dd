"""``li-httpd setup-censor`` and the generated file's checks in ``validate-config``.

The sample sources under data/ (three migrations, a YAML and a JSON OpenAPI document)
cover CREATE TABLE and ALTER TABLE, quoting of four dialects, schema-qualified names,
multi-line statements, semicolons in comments, strings and dollar-quoted bodies,
``li:censor`` markers and near-miss names; data/leak_censor.generated.toml is the
golden output and data/gateway.toml the config that includes it (the example of
docs/security.md). Every CLI test runs the real command as a subprocess.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from li_httpd.config import censorgen, load_text
from li_httpd.config.censorgen import GeneratedCensor, effective_deny_paths
from li_httpd.config.model import RouteCensor
from li_httpd.ops import setup_censor
from li_httpd.ops.setup_censor import SetupError, scan_openapi, scan_sql, secret_reason

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "leak_censor.generated.toml"
SOURCES = ("--sql", "migrations", "--openapi", "openapi.yaml", "openapi.json")


def _command() -> list[str]:
    script = Path(sys.executable).with_name("li-httpd")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "li_httpd.supervisor.cli"]


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LI_HTTPD_CONFIG"}
    return subprocess.run([*_command(), *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=60, check=False)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A scratch copy of data/ (generated file included)."""
    target = tmp_path / "data"
    shutil.copytree(DATA, target)
    return target


# -- golden and --check ---------------------------------------------------------------------


def test_generated_file_matches_the_golden(copy: Path) -> None:
    (copy / censorgen.DEFAULT_NAME).unlink()
    result = run("setup-censor", *SOURCES, cwd=copy)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("wrote leak_censor.generated.toml: 23 deny paths from 5 "
                             "source files\n")
    assert (copy / censorgen.DEFAULT_NAME).read_bytes() == GOLDEN.read_bytes()


def test_output_does_not_depend_on_the_working_directory(copy: Path, tmp_path: Path) -> None:
    out = copy / "elsewhere.toml"
    result = run("setup-censor", "--sql", str(copy / "migrations"), "--openapi",
                 "data/openapi.yaml", str(copy / "openapi.json"), "--out", str(out),
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = GOLDEN.read_text().replace(censorgen.DEFAULT_NAME, "elsewhere.toml")
    assert out.read_text() == censorgen.rehash(expected)


def test_golden_paths_and_near_misses() -> None:
    generated = censorgen.read_file(str(GOLDEN))
    assert generated.json_deny_paths == tuple(sorted(generated.json_deny_paths))
    names = {p.removeprefix("$..") for p in generated.json_deny_paths}
    columns = {"api_key_hash", "api_token", "client_secret", "otp_secret", "password_hash",
               "private_key", "recovery_hint", "refresh_token"}
    # A SQL column with an underscore is also denied in its camelCase spelling.
    camel = {setup_censor.camel_case(name) for name in columns}
    assert camel >= {"passwordHash", "clientSecret", "refreshToken"}
    assert names == columns | camel | {"accessToken", "cvc", "holder", "initialPassword",
                                       "pin", "push_credential", "webhookSecret"}
    near_misses = {"password_changed_at", "is_password_set", "token_count", "tokens_used",
                   "api_key_id", "ssn_last4", "secret_rotated_at", "webhook_signing_key",
                   "confirmation", "display_name", "not_a_schema", "last4", "email"}
    assert not names & near_misses
    text = GOLDEN.read_text()
    assert '"$..password_hash",  # migrations/001_users.sql:5 public.users.password_hash' \
        in text
    assert '"$..cvc",  # openapi.json:11 property cvc' in text


def test_check_passes_on_the_checked_in_file() -> None:
    result = run("setup-censor", "--sql", "tests/censor/data/migrations", "--openapi",
                 "tests/censor/data/openapi.yaml", "tests/censor/data/openapi.json",
                 "--out", "tests/censor/data/leak_censor.generated.toml", "--check")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("up to date: tests/censor/data/leak_censor.generated.toml "
                             "(23 deny paths)\n")


def test_check_fails_when_the_file_would_change(copy: Path) -> None:
    before = (copy / censorgen.DEFAULT_NAME).read_bytes()
    with (copy / "migrations" / "002_api_keys.sql").open("a") as handle:
        handle.write("ALTER TABLE api_keys ADD COLUMN signing_secret text;\n")
    result = run("setup-censor", *SOURCES, "--check", cwd=copy)
    assert result.returncode == 1
    assert "leak_censor.generated.toml would change" in result.stderr
    assert '+    "$..signing_secret",  # migrations/002_api_keys.sql:20' in result.stderr
    assert (copy / censorgen.DEFAULT_NAME).read_bytes() == before
    missing = run("setup-censor", *SOURCES, "--check", "--out", "nope.toml", cwd=copy)
    assert missing.returncode == 1 and "cannot read" in missing.stderr


# -- validate-config ------------------------------------------------------------------------


def test_validate_config_accepts_the_example() -> None:
    result = run("validate-config", "-c", "tests/censor/data/gateway.toml")
    assert (result.returncode, result.stdout, result.stderr) == (
        0, "ok: tests/censor/data/gateway.toml\n", "")


def _refused(copy: Path) -> str:
    result = run("validate-config", "-c", "gateway.toml", cwd=copy)
    assert result.returncode == 1, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "gateway.toml:12: leak_censor.generated_file: "), lines
    return lines[0]


def test_validate_config_refuses_a_hand_edit(copy: Path) -> None:
    generated = copy / censorgen.DEFAULT_NAME
    generated.write_text(generated.read_text().replace('"$..pin",', '"$..pin", "$..x",'))
    assert _refused(copy).endswith("content does not match its content_sha256: edited by "
                                   "hand: run li-httpd setup-censor again")
    generated.write_text(GOLDEN.read_text() + "# a comment is an edit too\n")
    assert "edited by hand" in _refused(copy)


def test_validate_config_refuses_an_out_of_date_file(copy: Path) -> None:
    migration = copy / "migrations" / "001_users.sql"
    migration.write_text(migration.read_text().replace("email ", "mail "))
    assert "is out of date (source 'migrations/001_users.sql' changed): run li-httpd " \
           "setup-censor again" in _refused(copy)
    shutil.copy(DATA / "migrations" / "001_users.sql", migration)
    (copy / "migrations" / "004_new.sql").write_text("CREATE TABLE t (x int);\n")
    assert "new source file 'migrations/004_new.sql'" in _refused(copy)
    (copy / "migrations" / "004_new.sql").unlink()
    (copy / "openapi.json").unlink()
    assert "source 'openapi.json' is missing" in _refused(copy)
    shutil.copy(DATA / "openapi.json", copy / "openapi.json")
    assert run("validate-config", "-c", "gateway.toml", cwd=copy).returncode == 0


def test_regenerating_fixes_an_out_of_date_file(copy: Path) -> None:
    (copy / "migrations" / "004_new.sql").write_text("CREATE TABLE t (secret text);\n")
    _refused(copy)
    assert run("setup-censor", *SOURCES, cwd=copy).returncode == 0
    assert run("validate-config", "-c", "gateway.toml", cwd=copy).returncode == 0
    assert '"$..secret",' in (copy / censorgen.DEFAULT_NAME).read_text()


# -- the loaded config ----------------------------------------------------------------------


def test_loaded_config_carries_the_generated_paths() -> None:
    path = DATA / "gateway.toml"
    loaded = load_text(path.read_text(), str(path))
    generated = loaded.generated_censor
    assert isinstance(generated, GeneratedCensor)
    assert generated.path == str(GOLDEN)
    route = loaded.config.route[1]
    merged = effective_deny_paths(route.leak_censor, generated)
    assert merged == ("$.api_key", *generated.json_deny_paths)
    # canonical text names the file only, and validates to the same config
    again = load_text(loaded.canonical, str(path))
    assert again.config == loaded.config and again.canonical == loaded.canonical
    assert "$..password_hash" not in loaded.canonical


def test_config_hash_follows_the_generated_content(copy: Path) -> None:
    path = copy / "gateway.toml"
    first = load_text(path.read_text(), str(path))
    (copy / "migrations" / "004_new.sql").write_text("CREATE TABLE t (secret text);\n")
    assert run("setup-censor", *SOURCES, cwd=copy).returncode == 0
    second = load_text(path.read_text(), str(path))
    assert first.canonical == second.canonical
    assert first.hash != second.hash


def test_effective_deny_paths_merges_only_when_included() -> None:
    generated = GeneratedCensor("/x", ("$..a", "$..b"), (), (), (), "0" * 64)
    own = RouteCensor(json_deny_paths=("$..b", "$.c"))
    assert effective_deny_paths(own, generated) == ("$..b", "$.c")
    included = RouteCensor(json_deny_paths=("$..b", "$.c"), include_generated=True)
    assert effective_deny_paths(included, generated) == ("$..b", "$.c", "$..a")
    assert effective_deny_paths(included, None) == ("$..b", "$.c")


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "password", "passwd", "pass_hash", "password_hash", "hashed_password", "passwordHash",
    "secret", "client_secret", "token", "access_token", "refresh_token", "api_key", "apikey",
    "APIKey", "private_key", "secret_key", "ssn", "otp", "totp_secret", "otp_secret",
    "passphrase", "db_password", "password2", "credentials", "api_key_hash", "cvv",
    "stripe_secret_key", "session-token"])
def test_secret_names(name: str) -> None:
    assert secret_reason(name) is not None


@pytest.mark.parametrize("name", [
    "token_count", "tokens_used", "prompt_tokens", "max_tokens", "total_tokens",
    "password_changed_at", "password_reset_at", "passwordUpdatedAt", "is_password_set",
    "has_api_key", "api_key_id", "api_key_prefix", "token_type", "token_expires_at",
    "refresh_token_expires_at", "secret_rotated_at", "next_page_token", "ssn_last4",
    "secretary", "tokenizer", "bypass", "keyboard", "key", "email", "password_policy"])
def test_near_miss_names(name: str) -> None:
    assert secret_reason(name) is None


# -- SQL ------------------------------------------------------------------------------------


def _names(scan_text: str) -> list[tuple[str, int]]:
    return [(f.name, f.line) for f in scan_sql(scan_text, "x.sql").findings]


def test_sql_quoting_qualified_names_and_semicolons() -> None:
    text = ("CREATE TABLE \"my schema\".\"T\" (\n"
            "  \"odd\"\"password\" text,\n"          # not expressible: error below
            "  `token` text,\n"
            "  [secret] text, x text DEFAULT ';', -- li:censor\n"
            "  y text DEFAULT $$;$$\n"
            ");\n"
            "-- ALTER TABLE t ADD password text;\n"
            "ALTER TABLE t ADD (ssn text, note text), CHANGE COLUMN old passwd text;\n")
    scan = scan_sql(text, "x.sql")
    assert [(f.name, f.line, f.what) for f in scan.findings] == [
        ("token", 3, "my schema.T.token"), ("secret", 4, "my schema.T.secret"),
        ("x", 4, "my schema.T.x"), ("ssn", 8, "t.ssn"), ("passwd", 8, "t.passwd")]
    assert scan.errors == [
        "x.sql:2: my schema.T.odd\"password holds a secret but 'odd\"password' cannot be "
        "written as a $..name deny path (letters, digits, '_', '-'); rename it, or mark it "
        "`li:censor off` if it is not a secret"]


def test_sql_markers() -> None:
    assert _names("CREATE TABLE t (a text, -- li:censor\n b text -- LI:CENSOR on\n);") == [
        ("a", 1), ("b", 2)]
    assert _names("CREATE TABLE t (password text -- li:censor off (hashed elsewhere)\n);") \
        == []
    orphan = scan_sql("CREATE TABLE t (\n  -- li:censor\n  a text\n);", "x.sql")
    assert orphan.errors == ["x.sql:2: li:censor marker on a line without a column name; "
                             "put it on the line where the column is named"]
    malformed = scan_sql("CREATE TABLE t (a text -- li:censor please\n);", "x.sql")
    assert malformed.errors[0].startswith("x.sql:1: malformed marker")
    prose = scan_sql("-- Mark secret columns with li:censor at the end of their line.\n",
                     "x.sql")
    assert prose.errors == []


@pytest.mark.parametrize("head", ["CREATE TABLE", "create table", "CREATE TEMPORARY TABLE",
                                  "CREATE UNLOGGED TABLE", "CREATE OR REPLACE TABLE",
                                  "CREATE GLOBAL TEMPORARY TABLE",
                                  "CREATE TABLE IF NOT EXISTS"])
def test_sql_create_table_forms(head: str) -> None:
    assert _names(f"{head} main.t(id int, secret text) ENGINE=InnoDB;") == [("secret", 1)]


def test_sql_statements_that_declare_no_columns() -> None:
    text = ("CREATE TABLE t AS SELECT password FROM u;\n"
            "CREATE INDEX password ON t (password);\n"
            "ALTER TABLE t RENAME TO password;\n"
            "ALTER TABLE t DROP COLUMN password;\n"
            "INSERT INTO t (password) VALUES ('x;y');\n")
    assert _names(text) == []


# -- OpenAPI --------------------------------------------------------------------------------


def test_openapi_refuses_other_documents() -> None:
    with pytest.raises(SetupError, match="not an OpenAPI 3 document"):
        scan_openapi("swagger: '2.0'\n", "a.yaml")
    with pytest.raises(SetupError, match="not an OpenAPI 3 document"):
        scan_openapi("openapi: 2.0\n", "a.yaml")
    with pytest.raises(SetupError, match="not JSON"):
        scan_openapi("openapi: 3.0.0\n", "a.json")
    fragment = "Login:\n  properties:\n    otp: {type: string, format: password}\n"
    assert [f.name for f in scan_openapi(fragment, "schemas.yaml").findings] == ["otp"]


def test_openapi_external_refs_are_noted_not_followed() -> None:
    text = ("openapi: 3.0.0\ncomponents:\n  schemas:\n    A:\n      properties:\n"
            "        key:\n          $ref: 'https://example.com/s.yaml#/Secret'\n")
    scan = scan_openapi(text, "a.yaml")
    assert scan.findings == []
    assert scan.notes == ["a.yaml:7: $ref 'https://example.com/s.yaml#/Secret' not followed "
                          "(pass that document with --openapi too)"]


def test_openapi_recursive_refs_end() -> None:
    text = ("openapi: 3.1.0\ncomponents:\n  schemas:\n    Node:\n      properties:\n"
            "        next: {$ref: '#/components/schemas/Node'}\n"
            "        code: {type: string, format: password}\n")
    assert [(f.name, f.line) for f in scan_openapi(text, "a.yaml").findings] == [("code", 7)]


def test_the_reload_actor_hands_the_generated_paths_to_the_master() -> None:
    from li_httpd.actors.reload import _dump_loaded, _load_loaded
    from li_httpd.config import load

    loaded = load(str(DATA / "gateway.toml"))
    again = _load_loaded(_dump_loaded(loaded))
    assert again == loaded and again.generated_censor == loaded.generated_censor


@pytest.mark.parametrize("path", ["/dev/zero", "/", "nul\0byte"])
def test_generated_file_that_is_no_regular_file(path: str) -> None:
    with pytest.raises(censorgen.GeneratedError) as caught:
        censorgen.load(path)
    assert caught.value.rule == "generated_file"


def test_input_errors_exit_1_and_write_nothing(copy: Path) -> None:
    (copy / "migrations" / "009_bad.sql").write_text(
        "CREATE TABLE t (\n  -- li:censor\n  a text\n);\n")
    result = run("setup-censor", *SOURCES, "--out", "new.toml", cwd=copy)
    assert result.returncode == 1
    assert result.stderr == ("li-httpd setup-censor: migrations/009_bad.sql:2: li:censor "
                             "marker on a line without a column name; put it on the line "
                             "where the column is named\n")
    assert not (copy / "new.toml").exists()
    for args, message in ((("--out", "x.toml"), "nothing to read"),
                          (("--sql", "nope"), "nope: no such file or directory"),
                          (("--sql", "migrations", "--out", "no/x.toml"), "does not exist")):
        result = run("setup-censor", *args, cwd=copy)
        assert result.returncode == 1 and message in result.stderr, result.stderr


def test_a_file_named_twice_is_read_once(copy: Path) -> None:
    result = run("setup-censor", "--sql", "migrations", "migrations/001_users.sql",
                 "--out", "twice.toml", cwd=copy)
    assert result.returncode == 0, result.stderr
    text = (copy / "twice.toml").read_text()
    assert text.count("[[source]]") == 3
    assert text.count('"$..password_hash",  # migrations/001_users.sql:5 ') == 1


# -- properties -----------------------------------------------------------------------------

_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,20}", fullmatch=True)


@settings(max_examples=200)
@given(st.text(alphabet=st.sampled_from(list("CREATE TABLE ALTER ADD COLUMN ()`\"[],;'$-*/#\n"
                                             "li:censor off password x")), max_size=200))
def test_scan_sql_is_total(text: str) -> None:
    try:
        scan = scan_sql(text, "x.sql")
    except SetupError:
        return
    assert all(f.line >= 1 for f in scan.findings)


@settings(max_examples=100)
@given(names=st.lists(_NAMES, min_size=0, max_size=5), data=st.data())
def test_any_edit_of_a_generated_file_is_refused(names: list[str], data: st.DataObject
                                                 ) -> None:
    findings = [censorgen.Finding(n, "a.sql", i + 1, f"t.{n}") for i, n in enumerate(names)]
    text = censorgen.render(findings, [censorgen.Source("sql", "a.sql", "0" * 64)],
                            ["a.sql"], [])
    parsed = censorgen.parse(text, "g.toml")
    assert parsed.json_deny_paths == tuple(sorted({f"$..{n}" for n in names}))
    at = data.draw(st.integers(0, len(text) - 1))
    replacement = data.draw(st.characters(codec="utf-8").filter(lambda c: c != text[at]))
    edited = text[:at] + replacement + text[at + 1:]
    with pytest.raises(censorgen.GeneratedError):
        censorgen.parse(edited, "g.toml")


def test_the_word_lists_are_the_documented_ones() -> None:
    from li_httpd.ops import setup_censor

    text = (ROOT / "docs" / "security.md").read_text()
    section = text[text.index("**Which columns are secret.**"):text.index("Markers decide")]
    quoted: set[str] = set()
    for token in re.findall(r"`([^`]+)`", section):
        if token.endswith("(s)"):
            quoted |= {token[:-3], token[:-3] + "s"}
        else:
            quoted.add(token)
    words = setup_censor.SECRET_WORDS | setup_censor.METADATA_AFTER | \
        setup_censor.METADATA_BEFORE
    assert sorted(w for w in words if w not in quoted) == []
    assert [p for p in setup_censor.SECRET_PHRASES if " ".join(p) not in quoted] == []
