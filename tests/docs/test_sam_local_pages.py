"""What the `sam local` run of the docs' examples (sam_local_pages.py) forgives: SAM's fixed
`userAgent`, and nothing else."""

from sam_local_pages import EMULATED_USER_AGENT

WHERE = "docs/developers/guides/query-audit-logs.md:48: the output differs from the documented response (line 55): "


def test_only_sams_fixed_user_agent_is_forgiven():
    assert EMULATED_USER_AGENT.search(WHERE + ".data[0].userAgent: documented 'curl/8.5.0' (any version), got 'Custom User Agent String'")
    for problem in [
        # Another user agent is the service's own doing.
        ".data[0].userAgent: documented 'curl/8.5.0' (any version), got 'python-urllib/3.11'",
        # SAM's string in another field is not SAM's fixed user agent.
        ".data[0].clientId: documented 'a1b2c3d4', got 'Custom User Agent String'",
        # A problem that only starts like the forgiven one.
        ".data[0].userAgent: documented 'curl/8.5.0' (any version), got 'Custom User Agent String' and a status of 500",
        "documented status 200, got GET /api/v1/audit -> 502 {\"message\":\"Internal server error\"}",
    ]:
        assert not EMULATED_USER_AGENT.search(WHERE + problem), problem
