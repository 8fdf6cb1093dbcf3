"""Property-based tests of the generated service: schemathesis generates requests from the service's own OpenAPI
document (valid ones, and invalid ones that break it on purpose) and sends them to a real `bentoml serve`."""
import collections, json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

# a request that is valid for the contract may still be one the model cannot use (the 422 the document declares)
EXCLUDED = [positive_data_acceptance]


def names_a_field_or_limit(status, body, fields):
    "Whether an error answer says which field, row or limit is wrong."
    text = body.get('error', '') if isinstance(body, dict) else ''
    if status == 400: return "field '" in text or 'the body' in text  # any field, also one the request made up (even '')
    if status == 413: return 'limit' in text
    if status == 415: return 'Content-Type' in text
    if status == 422: return bool(body.get('rows')) and all('row' in r and r.get('error') for r in body['rows'])
    return False


def fuzz(url, examples):
    "Send `examples` generated requests (half valid, half invalid) to POST /predict; returns the count of each status."
    schema = schemathesis.openapi.from_url(url + '/docs.json')
    op = schema['/predict']['POST']
    fields = list(httpx.get(url + '/metadata', timeout=30).json()['fields'])
    fields = [f['name'] for f in fields]
    seen, problems = collections.Counter(), []

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(case=op.as_strategy(GenerationMode.POSITIVE) | op.as_strategy(GenerationMode.NEGATIVE))
    def check(case):
        r = case.call(base_url=url, timeout=120)
        seen[r.status_code] += 1
        assert r.status_code < 500, f'{r.status_code} for {case.body!r}: {r.text[:500]}'
        if r.status_code >= 400:
            try: body = r.json()
            except ValueError: body = None
            assert names_a_field_or_limit(r.status_code, body, fields), f'{r.status_code} without a field or limit: {r.text[:500]}'
        case.validate_response(r, excluded_checks=EXCLUDED)

    check()
    return seen


def test_generated_requests_never_get_a_server_error(server):
    seen = fuzz(server.url, 700)
    assert sum(seen.values()) >= 700
    assert seen[200] >= 50 and seen[400] >= 200, seen  # both kinds were generated and reached the model
    assert not any(code >= 500 for code in seen), seen
    assert 'status=5' not in server.output()
