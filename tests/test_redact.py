"""scrub_secrets: passwords in URLs, password options and known secret values are masked."""

from __future__ import annotations

import pytest

from novaconsole.redact import MASK, scrub_secrets


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("connection mysql+pymysql://nova:s3cret@127.0.0.1/nova", "s3cret"),
        ("rabbit://openstack:RabbitPw1@controller:5672/", "RabbitPw1"),
        ("url mysql+pymysql://nova:p@ss:w0rd@db/nova failed", "p@ss:w0rd"),
        ("password = hunter2", "hunter2"),
        ('{"password": "abc123", "user": "nova"}', "abc123"),
        ("admin_password: topsecret", "topsecret"),
    ],
)
def test_masks_passwords(text: str, secret: str) -> None:
    scrubbed = scrub_secrets(text)
    assert secret not in scrubbed
    assert MASK in scrubbed


def test_keeps_user_host_and_database() -> None:
    scrubbed = scrub_secrets("mysql+pymysql://nova:s3cret@127.0.0.1:3306/nova_api")
    assert scrubbed == "mysql+pymysql://nova:***@127.0.0.1:3306/nova_api"


def test_leaves_urls_without_password_alone() -> None:
    text = "sqlite:////var/lib/nova/nova.sqlite and http://127.0.0.1:5000/v3 for user@host"
    assert scrub_secrets(text) == text


def test_known_secrets_are_masked_anywhere_also_url_quoted() -> None:
    secret = "a b/c%d"
    text = f"value {secret} and quoted a%20b%2Fc%25d end"
    scrubbed = scrub_secrets(text, [secret, ""])
    assert secret not in scrubbed
    assert "a%20b%2Fc%25d" not in scrubbed
    assert scrubbed.startswith("value *** and quoted ***")
