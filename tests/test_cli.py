"""The tokenserver command: every subcommand and its error paths."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import select

from tokenserver.digests import digest
from tokenserver.extensions import db
from tokenserver.guard import FREE_ATTEMPTS
from tokenserver.models import Client, SigningKey, User, utcnow

from .conftest import PASSWORD, ROOT, Actions
from .helpers import Flow, assert_oauth_error, refresh_grant


def test_users_create_from_stdin_and_list(runner: FlaskCliRunner) -> None:
    result = runner.invoke(
        args=["users", "create", "alice", "--password-stdin"], input=PASSWORD + "\n"
    )
    assert result.exit_code == 0, result.output
    assert "created user alice" in result.output
    listed = runner.invoke(args=["users", "list"])
    assert "alice\tactive" in listed.output


def test_users_create_with_prompt(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["users", "create", "bob"], input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output


def test_users_create_errors_are_one_line(runner: FlaskCliRunner) -> None:
    runner.invoke(args=["users", "create", "alice", "--password-stdin"], input=PASSWORD)
    taken = runner.invoke(args=["users", "create", "ALICE", "--password-stdin"], input=PASSWORD)
    assert taken.exit_code == 1
    assert "taken" in taken.output
    weak = runner.invoke(args=["users", "create", "carol", "--password-stdin"], input="password")
    assert weak.exit_code == 1
    assert "common" in weak.output
    bad = runner.invoke(args=["users", "create", "x", "--password-stdin"], input=PASSWORD)
    assert bad.exit_code == 1
    for result in (taken, weak, bad):
        assert "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["users", "create", "x"], "'username' must be"),
        (["users", "create", "ALICE"], "taken"),
        (["users", "set-password", "ghost"], "no user named 'ghost'"),
    ],
)
def test_a_refused_username_is_said_before_the_password_is_asked_for(
    runner: FlaskCliRunner, args: list[str], complaint: str
) -> None:
    runner.invoke(args=["users", "create", "alice", "--password-stdin"], input=PASSWORD)
    result = runner.invoke(args=args, input="")  # nobody there to type a password
    assert result.exit_code == 1, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("Error: ") and complaint in line


def test_users_disable_and_enable(app: Flask, runner: FlaskCliRunner) -> None:
    runner.invoke(args=["users", "create", "dave", "--password-stdin"], input=PASSWORD)
    assert runner.invoke(args=["users", "disable", "DAVE"]).exit_code == 0
    assert "dave\tdisabled" in runner.invoke(args=["users", "list"]).output
    assert runner.invoke(args=["users", "enable", "dave"]).exit_code == 0
    with app.app_context():
        assert db.session.scalars(select(User.disabled)).one() is False


def test_users_disable_unknown_fails(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["users", "disable", "ghost"])
    assert result.exit_code == 1
    assert "ghost" in result.output


NEW_PASSWORD = "a different long passphrase"


def test_users_set_password_ends_every_login(
    app: Flask, runner: FlaskCliRunner, actions: Actions, events: Any
) -> None:
    session = actions.login("erin")
    flow = Flow(app, actions.client)
    assert flow.login("erin").status_code == 303
    assert actions.client.get("/account").status_code == 200
    result = runner.invoke(
        args=["users", "set-password", "ERIN", "--password-stdin"], input=NEW_PASSWORD + "\n"
    )
    assert result.exit_code == 0, result.output
    assert result.output == "new password set for erin; 1 login ended\n"
    # Whoever held the old password, or anything it got them, is out.
    bearer = actions.bearer(session["access_token"])
    assert actions.client.get("/users/me", headers=bearer).status_code == 401
    refreshed = refresh_grant(actions.client, session["client"], session["refresh_token"])
    assert_oauth_error(refreshed, 400, "invalid_grant")
    assert actions.client.get("/account").headers["Location"].startswith("/login")
    assert_oauth_error(actions.token(session["client"], "erin"), 400, "invalid_grant")
    assert actions.token(session["client"], "erin", NEW_PASSWORD).status_code == 200
    (reset,) = events("user.password_reset")
    assert reset["username"] == "erin" and reset["ended"] == 1
    assert reset["actor"].startswith("cli:") and NEW_PASSWORD not in json.dumps(reset)


def test_users_set_password_with_prompt(runner: FlaskCliRunner, actions: Actions) -> None:
    actions.user("erin")
    prompted = runner.invoke(
        args=["users", "set-password", "erin"], input=f"{NEW_PASSWORD}\n{NEW_PASSWORD}\n"
    )
    assert prompted.exit_code == 0, prompted.output
    assert actions.token(actions.oauth_client(), "erin", NEW_PASSWORD).status_code == 200


@pytest.mark.parametrize(
    ("username", "password", "says"),
    [
        ("erin", "password", "'password'"),  # too common: the rules of a sign-up
        ("erin", "", "'password'"),
        ("ghost", NEW_PASSWORD, "no user named 'ghost'"),
    ],
)
def test_users_set_password_refusals_change_nothing(
    runner: FlaskCliRunner, actions: Actions, username: str, password: str, says: str
) -> None:
    session = actions.login("erin")
    result = runner.invoke(
        args=["users", "set-password", username, "--password-stdin"], input=password + "\n"
    )
    assert result.exit_code == 1 and says in result.output
    assert len(result.output.strip().splitlines()) == 1
    bearer = actions.bearer(session["access_token"])
    assert actions.client.get("/users/me", headers=bearer).status_code == 200
    assert actions.token(session["client"], "erin").status_code == 200


def test_users_set_password_lets_a_throttled_user_in_at_once(
    runner: FlaskCliRunner, actions: Actions, frozen: Any
) -> None:
    actions.user("erin")
    oauth_client = actions.oauth_client()
    for _ in range(FREE_ATTEMPTS):
        assert actions.token(oauth_client, "erin", "not the password").status_code == 400
    assert actions.token(oauth_client, "erin", NEW_PASSWORD).status_code == 429
    result = runner.invoke(
        args=["users", "set-password", "erin", "--password-stdin"], input=NEW_PASSWORD
    )
    assert result.exit_code == 0, result.output
    assert actions.token(oauth_client, "erin", NEW_PASSWORD).status_code == 200


def test_users_set_password_with_the_guard_down_changes_nothing(make_app: Any) -> None:
    # The guard's Redis is unreachable: the reset fails before it changes anything.
    app = make_app(ratelimit_storage_uri="redis://127.0.0.1:1/0")
    runner = app.test_cli_runner()
    runner.invoke(args=["users", "create", "erin", "--password-stdin"], input=PASSWORD)
    with app.app_context():
        before = db.session.scalars(select(User.password_hash)).one()
    result = runner.invoke(
        args=["users", "set-password", "erin", "--password-stdin"], input=NEW_PASSWORD
    )
    assert result.exit_code == 1 and "guard" in result.output
    with app.app_context():
        assert db.session.scalars(select(User.password_hash)).one() == before


def test_clients_create_json_stores_only_a_digest(app: Flask, runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["clients", "create", "web", "--json"])
    assert result.exit_code == 0, result.output
    made = json.loads(result.output)
    assert len(made["client_secret"]) >= 43  # 32 random bytes, base64url
    assert made["grant_types"] == ["password", "refresh_token"]
    assert made["scope"] == "junk:read junk:write"
    with app.app_context():
        stored = db.session.scalars(select(Client)).one()
    assert stored.secret_hash == digest(made["client_secret"])
    assert made["client_secret"] not in (stored.secret_hash or "")


def test_clients_create_options(runner: FlaskCliRunner) -> None:
    result = runner.invoke(
        args=[
            "clients",
            "create",
            "rs",
            "--grant",
            "client_credentials",
            "--scope",
            "junk:read",
            "--introspect",
            "--json",
        ]
    )
    made = json.loads(result.output)
    assert made["grant_types"] == ["client_credentials"]
    assert made["scope"] == "junk:read"
    assert made["introspect"] is True


def test_public_client_has_no_secret(runner: FlaskCliRunner) -> None:
    made = json.loads(runner.invoke(args=["clients", "create", "spa", "--public", "--json"]).output)
    assert "client_secret" not in made
    assert made["public"] is True
    plain = runner.invoke(args=["clients", "create", "spa2", "--public"])
    assert "client_secret" not in plain.output


def test_clients_create_refuses_bad_options(runner: FlaskCliRunner) -> None:
    scope = runner.invoke(args=["clients", "create", "x", "--scope", "admin"])
    assert scope.exit_code != 0
    assert "admin" in scope.output
    grant = runner.invoke(args=["clients", "create", "x", "--grant", "implicit"])
    assert grant.exit_code != 0
    public_cc = runner.invoke(
        args=["clients", "create", "x", "--public", "--grant", "client_credentials"]
    )
    assert public_cc.exit_code != 0


@pytest.mark.parametrize(
    "name", ["", "   ", "x" * 201, "two\nlines", "tab\there", "nul\x00", "evil\u202etxt.exe"]
)
def test_clients_create_refuses_a_bad_name_in_one_line(runner: FlaskCliRunner, name: str) -> None:
    result = runner.invoke(args=["clients", "create", name])
    assert result.exit_code == 1, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("Error: ") and "name" in line.lower()
    assert runner.invoke(args=["clients", "list"]).stdout.strip() == ""


NOT_UTF8 = "caf\udcc3\udca9"  # how Python hands over an argument whose bytes are not UTF-8


@pytest.mark.parametrize(
    "args",
    [
        ["users", "create", NOT_UTF8, "--password-stdin"],
        ["users", "disable", NOT_UTF8],
        ["users", "set-password", NOT_UTF8, "--password-stdin"],
        ["clients", "create", NOT_UTF8],
        ["clients", "create", "x", "--redirect-uri", f"https://app.example/{NOT_UTF8}"],
        ["clients", "update", NOT_UTF8, "--name", "x"],
        ["clients", "delete", NOT_UTF8],
        ["keys", "revoke", NOT_UTF8],
    ],
)
def test_an_argument_that_is_not_utf8_is_refused_in_one_line(
    runner: FlaskCliRunner, args: list[str]
) -> None:
    runner.invoke(args=["users", "create", "alice", "--password-stdin"], input=PASSWORD)
    before = [runner.invoke(args=[group, "list"]).stdout for group in ("users", "clients", "keys")]
    result = runner.invoke(args=args, input=PASSWORD)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "not UTF-8" in result.output.strip().splitlines()[-1]
    after = [runner.invoke(args=[group, "list"]).stdout for group in ("users", "clients", "keys")]
    assert after == before


def test_clients_create_takes_a_name_of_200_characters(runner: FlaskCliRunner) -> None:
    assert runner.invoke(args=["clients", "create", "é" * 200]).exit_code == 0


def test_clients_create_takes_a_name_with_unicode_spaces_and_joiners(
    runner: FlaskCliRunner,
) -> None:
    assert (
        runner.invoke(
            args=["clients", "create", "写真\u3000アプリ \U0001f468\u200d\U0001f4bb"]
        ).exit_code
        == 0
    )


def test_clients_list_and_delete(runner: FlaskCliRunner) -> None:
    made = json.loads(runner.invoke(args=["clients", "create", "web", "--json"]).output)
    listed = runner.invoke(args=["clients", "list"]).output
    assert made["client_id"] in listed
    assert made["client_secret"] not in listed
    assert runner.invoke(args=["clients", "delete", made["client_id"]]).exit_code == 0
    assert made["client_id"] not in runner.invoke(args=["clients", "list"]).output
    again = runner.invoke(args=["clients", "delete", made["client_id"]])
    assert again.exit_code == 1
    assert "no client" in again.output


@pytest.mark.parametrize(
    ("group", "words"),
    [("users", "no users yet"), ("clients", "no clients yet"), ("keys", "no signing keys yet")],
)
def test_an_empty_list_says_so_on_stderr_and_prints_no_row(
    app: Flask, runner: FlaskCliRunner, group: str, words: str
) -> None:
    with app.app_context():
        db.session.execute(SigningKey.__table__.delete())  # the next app makes one again
        db.session.commit()
    listed = runner.invoke(args=[group, "list"])
    assert listed.exit_code == 0
    assert listed.stdout == ""
    assert listed.stderr.startswith(words)


def test_keys_list_says_the_first_key_is_made_when_first_needed(make_app: Any) -> None:
    """A new database has no signing key after a server starts on it, only once a token or
    the JWKS is first asked for: what `keys list` tells the operator who looks before."""
    app = make_app()
    with app.app_context():
        db.session.execute(SigningKey.__table__.delete())
        db.session.commit()
    server = make_app()  # a server starting on the database
    runner = server.test_cli_runner()
    empty = runner.invoke(args=["keys", "list"])
    assert empty.exit_code == 0
    assert empty.stdout == ""
    assert empty.stderr.strip() == (
        "no signing keys yet: the server makes its first one when first needed "
        "(the first token, or the first JWKS served)"
    )
    jwks = server.test_client().get("/.well-known/jwks.json")
    assert jwks.status_code == 200
    (kid,) = [key["kid"] for key in jwks.json["keys"]]
    listed = runner.invoke(args=["keys", "list"])
    assert listed.stdout.split("\t")[:2] == [kid, "current"]


def test_a_list_with_rows_says_nothing_on_stderr(runner: FlaskCliRunner) -> None:
    runner.invoke(args=["users", "create", "alice", "--password-stdin"], input=PASSWORD)
    runner.invoke(args=["clients", "create", "web"])
    for group in ("users", "clients"):
        listed = runner.invoke(args=[group, "list"])
        assert listed.stdout.strip() and "yet" not in listed.stderr


def test_clients_create_pushed_only_and_list_show_it(runner: FlaskCliRunner) -> None:
    made = runner.invoke(args=["clients", "create", "bank", "--pushed-only", "--json"])
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["require_pushed_authorization_requests"] is True
    plain = json.loads(runner.invoke(args=["clients", "create", "web", "--json"]).stdout)
    assert plain["require_pushed_authorization_requests"] is False
    lines = runner.invoke(args=["clients", "list"]).stdout.splitlines()
    assert [" pushed-only\t" in line for line in lines] == [True, False]


def test_clients_create_dpop_bound_and_list_show_it(runner: FlaskCliRunner) -> None:
    made = runner.invoke(args=["clients", "create", "agent", "--dpop-bound", "--json"])
    assert made.exit_code == 0, made.output
    bound = json.loads(made.stdout)
    assert bound["dpop_bound_access_tokens"] is True
    plain = json.loads(runner.invoke(args=["clients", "create", "web", "--json"]).stdout)
    assert plain["dpop_bound_access_tokens"] is False
    listed = json.loads(runner.invoke(args=["clients", "list", "--json"]).stdout)
    by_id = {c["client_id"]: c["dpop_bound_access_tokens"] for c in listed}
    assert by_id == {bound["client_id"]: True, plain["client_id"]: False}
    text = runner.invoke(args=["clients", "list"]).stdout
    # Marked after the scope, as --introspect is; the columns stay where they were.
    rows = {row[0]: row for row in (line.split("\t") for line in text.splitlines())}
    assert rows[bound["client_id"]][5] == "junk:read junk:write dpop-bound"
    assert rows[plain["client_id"]][5] == "junk:read junk:write"
    assert len(rows[bound["client_id"]]) == len(rows[plain["client_id"]]) == 8


def test_ensure_demo_creates_only_when_no_client(runner: FlaskCliRunner) -> None:
    first = runner.invoke(args=["clients", "ensure-demo"])
    assert "demo client_secret" in first.output
    second = runner.invoke(args=["clients", "ensure-demo"])
    assert "demo client_secret" not in second.output


def test_keys_rotate_publishes_a_next_key_and_list_shows_states(
    app: Flask, runner: FlaskCliRunner
) -> None:
    current = app.extensions["tokenserver.keyring"].signing_key().kid
    result = runner.invoke(args=["keys", "rotate"])
    assert result.exit_code == 0, result.output
    kid = result.stdout.split()[-1]
    assert "signs from" in result.stderr
    listed = [line.split("\t") for line in runner.invoke(args=["keys", "list"]).stdout.splitlines()]
    assert [row[:2] for row in listed[:2]] == [[kid, "next"], [current, "current"]]
    now = runner.invoke(args=["keys", "rotate", "--now"])
    assert now.exit_code == 0, now.output
    newest = now.stdout.split()[-1]
    states = {
        row[0]: row[1]
        for row in (
            line.split("\t") for line in runner.invoke(args=["keys", "list"]).stdout.splitlines()
        )
    }
    assert states[newest] == "current"
    assert states[kid] == states[current] == "retired"
    with app.app_context():
        current_rows = db.session.scalars(
            select(SigningKey.kid).where(SigningKey.state == "current")
        ).all()
    assert current_rows == [newest]


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "rotate", "--if-older-than", "99999999999999999999d"],
        ["keys", "rotate", "--if-older-than", "36501d"],
        ["keys", "rotate", "--if-older-than", ""],  # an unset variable in a cron line
        ["keys", "rotate", "--if-older-than", " "],
        ["tokens", "purge", "--older-than", "99999999999999"],
        ["clients", "rotate-secret", "any", "--overlap", "99999999999999"],
    ],
)
def test_durations_past_any_date_or_empty_are_refused_in_one_line(
    runner: FlaskCliRunner, args: list[str]
) -> None:
    before = runner.invoke(args=["keys", "list"]).stdout
    result = runner.invoke(args=args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert runner.invoke(args=["keys", "list"]).stdout == before


def test_help_explains_every_command(make_app: Any) -> None:
    runner = make_app(migrations=True).test_cli_runner()  # as the `tokenserver` command builds it
    for path in (
        ["users"],
        ["clients"],
        ["keys"],
        ["tokens"],
        ["db"],
        ["users", "create"],
        ["clients", "create"],
        ["keys", "rotate"],
        ["keys", "revoke"],
        ["keys", "rewrap"],
        ["clients", "rotate-secret"],
        ["tokens", "purge"],
    ):
        result = runner.invoke(args=[*path, "--help"])
        assert result.exit_code == 0
        assert "Usage" in result.output


def test_database_errors_are_one_line(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(database_url="sqlite:////nonexistent-dir/x.db")
    result = app.test_cli_runner().invoke(args=["users", "list"])
    assert result.exit_code == 1
    assert "database error" in result.output
    assert "Traceback" not in result.output


def _tokenserver(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed console script, as an operator runs it."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "tokenserver"), *args],
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def test_help_shows_only_operator_commands() -> None:
    result = _tokenserver("--help")
    assert result.returncode == 0
    for hidden in ("--app", "--debug", "--env-file", "limiter"):
        assert hidden not in result.stdout
    for shown in ("users", "clients", "keys", "tokens", "db"):
        assert shown in result.stdout
    db_help = _tokenserver("db", "--help").stdout
    commands = [line.split()[0] for line in db_help.split("Commands:")[1].strip().splitlines()]
    assert commands == ["upgrade"]
    for developer in ("migrate", "revision", "downgrade", "stamp"):
        assert developer not in commands
    assert "--directory" not in db_help


def test_db_upgrade_into_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/no-such-folder/tokenserver.db"
    result = _tokenserver("db", "upgrade", TOKENSERVER_DATABASE_URL=url)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: cannot create the SQLite database: the folder {tmp_path}/no-such-folder "
        "does not exist"
    )


@pytest.mark.parametrize("command", [["users", "list"], ["db", "upgrade"]])
def test_an_sqlite_path_through_a_file_is_one_line(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "afile").write_text("")
    url = f"sqlite:///{tmp_path}/afile/tokenserver.db"
    result = _tokenserver(*command, TOKENSERVER_DATABASE_URL=url)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")


def test_db_upgrade_of_a_missing_postgresql_database_is_one_line() -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:5432/tokenserver_no_such_database"
    result = _tokenserver("db", "upgrade", TOKENSERVER_DATABASE_URL=url)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert "does not exist" in line or "connection" in line


@pytest.mark.parametrize("command", [["current"], ["downgrade"], ["stamp", "head"]])
def test_db_commands_on_an_unreachable_database_are_one_line(command: list[str]) -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    result = _tokenserver("db", *command, TOKENSERVER_DATABASE_URL=url)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert line.startswith("Error: database error: ")
    assert len(result.stderr.strip().splitlines()) <= 2  # and the unset-key warning, if any


def test_an_unknown_setting_gets_one_warning_naming_the_closest(tmp_path: Path) -> None:
    result = _tokenserver(
        "users",
        "list",
        TOKENSERVER_DATABASE_URL=f"sqlite:///{tmp_path}/t.db",
        TOKENSERVER_ACESS_TOKEN_TTL="60",
    )
    warnings = [line for line in result.stderr.splitlines() if "ACESS" in line]
    assert warnings == [
        "Warning: TOKENSERVER_ACESS_TOKEN_TTL is not a tokenserver setting and is ignored; "
        "did you mean TOKENSERVER_ACCESS_TOKEN_TTL?"
    ]


def test_keys_revoke_takes_a_kid_that_begins_with_a_dash(
    app: Flask, runner: FlaskCliRunner
) -> None:
    with app.app_context():
        db.session.add(
            SigningKey(
                kid="-dash", private_key="", public_jwk="{}", state="retired", created_at=utcnow()
            )
        )
        db.session.commit()
    result = runner.invoke(args=["keys", "revoke", "-dash"])
    assert result.exit_code == 0, result.output
    assert "revoked -dash" in result.stdout
    again = runner.invoke(args=["keys", "revoke", "-dash"])
    assert again.exit_code == 1
    assert "already revoked" in again.output
    unknown = runner.invoke(args=["keys", "revoke", "no-such-kid"])
    assert unknown.exit_code == 1
    assert "no signing key" in unknown.output


def test_a_client_registered_with_keys_has_no_secret(
    runner: FlaskCliRunner, tmp_path: Path
) -> None:
    from joserfc.jwk import ECKey

    key = ECKey.generate_key("P-256")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    made = runner.invoke(args=["clients", "create", "svc", "--jwks-file", str(jwks), "--json"])
    assert made.exit_code == 0, made.output
    client = json.loads(made.stdout)
    assert "client_secret" not in client
    assert client["token_endpoint_auth_method"] == "private_key_jwt"
    assert client["public"] is False
    rotated = runner.invoke(args=["clients", "rotate-secret", client["client_id"]])
    assert rotated.exit_code != 0 and "no secret" in rotated.output


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ("not json", "not a JSON document"),
        ('{"keys": ' + "[" * 5000 + "]" * 5000 + "}", "not a JSON document"),
        ('{"keys": []}', "holds no key"),
        ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "public RSA, EC, OKP"),
        ("PRIVATE", "private parts"),
        ('{"keys": [{"kty": "EC", "crv": "P-256"}]}', "cannot be read"),
        ('{"keys": [{"kty": "EC", "crv": "P-999", "x": "AAAA", "y": "AAAA"}]}', "curve"),
        ("WEAK", "at least 2048"),
        ("X25519", "curve X25519"),
    ],
)
def test_bad_client_keys_are_refused(
    runner: FlaskCliRunner, tmp_path: Path, document: str, complaint: str
) -> None:
    from joserfc.jwk import ECKey, OKPKey, RSAKey

    if document == "PRIVATE":
        document = json.dumps({"keys": [ECKey.generate_key("P-256").as_dict(private=True)]})
    if document == "WEAK":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # joserfc warns of the small key we want
            document = json.dumps({"keys": [RSAKey.generate_key(1024).as_dict(private=False)]})
    if document == "X25519":
        document = json.dumps({"keys": [OKPKey.generate_key("X25519").as_dict(private=False)]})
    jwks = tmp_path / "jwks.json"
    jwks.write_text(document)
    made = runner.invoke(args=["clients", "create", "svc", "--jwks-file", str(jwks)])
    assert made.exit_code != 0
    assert complaint in made.output
    listed = runner.invoke(args=["clients", "list", "--json"])
    assert json.loads(listed.stdout) == []


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--jwks-uri", "http://keys.example.com/jwks.json"], "https"),
        (["--jwks-uri", "https://keys.example.com/jwks.json#k"], "fragment"),
        (["--jwks-uri", "https://keys.example.com/j", "--public"], "public client has no keys"),
    ],
)
def test_bad_jwks_uris_are_refused(runner: FlaskCliRunner, args: list[str], complaint: str) -> None:
    made = runner.invoke(args=["clients", "create", "svc", *args])
    assert made.exit_code != 0
    assert complaint in made.output


def test_a_client_may_name_its_keys_by_url(runner: FlaskCliRunner) -> None:
    uri = "https://keys.example.com/jwks.json"
    made = runner.invoke(args=["clients", "create", "svc", "--jwks-uri", uri, "--json"])
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["token_endpoint_auth_method"] == "private_key_jwt"


def test_clients_update_adds_and_drops_redirect_uris_keeping_id_and_secret(
    app: Flask, runner: FlaskCliRunner, flow: Any
) -> None:
    from .helpers import REDIRECT, pkce

    client_id, secret = flow.register(first_party=True)
    with app.app_context():
        before = db.session.scalars(select(Client).filter_by(client_id=client_id)).one()
        secret_hash, metadata = before.secret_hash, before.to_dict()
    other = "https://app.example.com/signed-in"
    flow.login()
    assert flow.authorize(client_id, pkce()[1], redirect_uri=other).status_code == 400
    added = runner.invoke(args=["clients", "update", client_id, "--add-redirect-uri", other])
    assert added.exit_code == 0, added.output
    code = flow.code_for(client_id, (pair := pkce())[1], redirect_uri=other)
    exchanged = flow.exchange(client_id, secret, code, pair[0], redirect_uri=other)
    assert exchanged.status_code == 200, exchanged.json  # the same id and secret
    dropped = runner.invoke(
        args=["clients", "update", client_id, "--remove-redirect-uri", REDIRECT, "--json"]
    )
    assert dropped.exit_code == 0, dropped.output
    assert json.loads(dropped.output)["redirect_uris"] == [other]
    assert flow.authorize(client_id, pkce()[1], redirect_uri=REDIRECT).status_code == 400
    with app.app_context():
        after = db.session.scalars(select(Client).filter_by(client_id=client_id)).one()
        assert after.secret_hash == secret_hash
        changed = {k for k in metadata if after.to_dict()[k] != metadata[k]}
        assert changed == {"redirect_uris"}  # what no option named stays as it was


def test_clients_update_changes_only_what_it_names(app: Flask, runner: FlaskCliRunner) -> None:
    made = json.loads(
        runner.invoke(
            args=["clients", "create", "web", "--redirect-uri", "https://a.example/cb", "--json"]
        ).output
    )
    result = runner.invoke(
        args=[
            *("clients", "update", made["client_id"], "--name", "Web App"),
            *("--scope", "openid profile", "--first-party", "--json"),
        ]
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert (shown["name"], shown["scope"], shown["first_party"]) == (
        "Web App",
        "openid profile",
        True,
    )
    unchanged = {k for k in made if k not in ("name", "scope", "first_party", "client_secret")}
    assert {k: shown[k] for k in unchanged} == {k: made[k] for k in unchanged}


@pytest.mark.parametrize(
    "args",
    [
        ("--redirect-uri", "https://a.example/x", "--add-redirect-uri", "https://a.example/y"),
        ("--remove-redirect-uri", "https://a.example/not-registered"),
        ("--redirect-uri", "https://a.example/cb#fragment"),
        ("--scope", "junk:read nonsense"),
        ("--name", " "),
    ],
)
def test_clients_update_refusals_change_nothing(
    app: Flask, runner: FlaskCliRunner, args: tuple[str, ...]
) -> None:
    made = json.loads(
        runner.invoke(
            args=["clients", "create", "web", "--redirect-uri", "https://a.example/cb", "--json"]
        ).output
    )
    result = runner.invoke(args=["clients", "update", made["client_id"], *args])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: ")  # says what is wrong
    listed = json.loads(runner.invoke(args=["clients", "list", "--json"]).output)
    assert [c for c in listed if c["client_id"] == made["client_id"]][0] == {
        k: v for k, v in made.items() if k != "client_secret"
    }


@pytest.mark.parametrize("scope", ["", "  "])
def test_an_empty_scope_neither_widens_nor_empties_a_client(
    runner: FlaskCliRunner, scope: str
) -> None:
    made = json.loads(
        runner.invoke(args=["clients", "create", "narrow", "--scope", "junk:read", "--json"]).output
    )
    for args in (
        ["clients", "create", "x", "--scope", scope],
        ["clients", "update", made["client_id"], "--scope", scope],
    ):
        result = runner.invoke(args=args)
        assert result.exit_code == 1, result.output
        [line] = result.output.strip().splitlines()
        assert line.startswith("Error: --scope")
    [listed] = json.loads(runner.invoke(args=["clients", "list", "--json"]).output)
    assert listed["scope"] == "junk:read"


def test_clients_update_of_an_unknown_client_is_one_line(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["clients", "update", "nope", "--name", "x"])
    assert result.exit_code != 0 and "nope" in result.output
    assert "Traceback" not in result.output
