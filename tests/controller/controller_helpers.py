"""Helpers shared by the controller plugin's tests."""

from __future__ import annotations

from urllib.parse import quote

#: Secrets of test sites; tests assert none of them leaks.
TEST_SECRETS = {
    "NOVA_DBPASS": "Db-Pw/1%$x",
    "NOVA_PASS": "Nova-Pw-2",
    "RABBIT_PASS": "Rabbit-Pw-3",
    "PLACEMENT_PASS": "Placement-Pw-4",
    "NEUTRON_PASS": "Neutron-Pw-5",
    "GLANCE_PASS": "Glance-Pw-6",
}


def assert_no_secret(text: str) -> None:
    """No test secret (plain or URL-quoted) appears in ``text``."""
    for value in TEST_SECRETS.values():
        assert value not in text
        assert quote(value, safe="") not in text
