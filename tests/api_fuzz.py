"""Schemathesis over HTTP against a served gnnrec API (used by test_serve_app.py)."""

from __future__ import annotations

from typing import Any


def fuzz_openapi(url: str, token: str, max_examples: int = 15) -> dict[str, Any]:
    """Every operation of ``url``'s OpenAPI with ``max_examples`` generated requests each.

    Checks: no 5xx, documented status codes, content types and response schemas. Returns
    ``{"cases": n, "failures": [...]}`` (each failure names the operation and the request).
    """
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]
    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    cases = 0
    def test_operation(operation: Any) -> None:
        @settings(max_examples=max_examples, deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            nonlocal cases
            cases += 1
            try:
                case.call_and_validate(base_url=url, headers=headers, checks=checks,
                                       timeout=60)
            except Exception as exc:  # noqa: BLE001 - collected, reported by the test
                failures.append(f"{operation.label}: {type(exc).__name__}: "
                                f"{str(exc)[:600]}")

        run()

    for result in schema.get_all_operations():
        test_operation(result.ok())
    return {"cases": cases, "failures": failures}
