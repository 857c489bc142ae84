"""Property-based run over the OpenAPI document (schemathesis + hypothesis): whatever the
generated request, valid or not, the service never answers 5xx. Kept small (`MAX_EXAMPLES`
per operation) so it fits `make test`; raise SHOPRANK_FUZZ_EXAMPLES for a longer run."""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from shoprank.serving.app import create_app
from shoprank.serving.service import Service
from tests.serving.conftest import API_KEY

MAX_EXAMPLES = int(os.environ.get("SHOPRANK_FUZZ_EXAMPLES", "20"))


def test_no_5xx_on_generated_requests(dense_service: Service) -> None:
    app = create_app(dense_service.settings, service=dense_service)
    schema: Any = schemathesis.openapi.from_asgi("/openapi.json", app)
    # reload re-reads the model from disk (seconds each); it has its own tests
    schema = schema.exclude(path="/v1/admin/reload")
    failures: list[str] = []
    n_ops = 0
    for result in schema.get_all_operations():
        op = result.ok()
        n_ops += 1

        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def check(case: schemathesis.Case) -> None:
            headers = {"X-API-Key": API_KEY} if case.method.upper() == "POST" else {}
            resp = case.call(headers=headers)
            if resp.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {case.query} -> "
                                f"{resp.status_code} {resp.text[:200]}")

        check()
    assert n_ops >= 10
    assert failures == [], failures[:5]


@pytest.mark.parametrize("q", ["\x00", "🙂🙂", "a" * 256, "' OR 1=1 --", "   ", "ß", "%", "漢字 検索"])
def test_odd_queries(dense_service: Service, q: str) -> None:
    r = dense_service.search(q, 5, category="\x00", price_min=0.0, price_max=1e308)
    assert isinstance(r["items"], list)
