"""The suite's own rules (tests/conftest.py, tests/proof/conftest.py): a skipped test fails and says why, and the
proof tier stops before its first test on a machine short of memory or disk, naming what is missing."""

from __future__ import annotations

import pytest

from tests.proof import conftest as proof_conftest

pytest_plugins = ["pytester"]


def test_a_skipped_test_fails_and_keeps_its_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "import pytest\n\ndef test_needs_s3():\n    pytest.skip('no loopback S3 server here')\n\n"
        "def test_fine():\n    assert True\n"
    )
    result = pytester.runpytest_inprocess("-p", "tests.conftest", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        ["*test_needs_s3 was skipped*no loopback S3 server here*this suite does not skip*"]
    )


@pytest.mark.parametrize(
    ("setting", "named"),
    [("NEEDED_AVAILABLE_MEMORY_GB", "GB of memory available"), ("NEEDED_FREE_DISK_GB", "GB free")],
)
def test_the_proof_tier_stops_before_its_first_test_when_the_machine_is_short(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, setting: str, named: str
) -> None:
    monkeypatch.setattr(proof_conftest, setting, 1e6)  # more than any machine has
    pytester.makepyfile("def test_would_train():\n    open('ran', 'w').close()\n")
    result = pytester.runpytest_inprocess("-p", "tests.proof.conftest", "-p", "no:cacheprovider")
    assert result.ret == 3
    result.stdout.fnmatch_lines([f"*make proof cannot run here:*{named}*needed*"])
    assert not (pytester.path / "ran").exists()
