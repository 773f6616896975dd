#!/usr/bin/env python3
"""Render a LiteLLM proxy config.yaml for the benchmark (LiteLLM as an optional peer).

    python ops/bench/litellm/config.py --upstream http://127.0.0.1:PORT \
        [--model mock-chat] [--out litellm.yaml]

Writes (to ``--out``, or stdout) one ``model_list`` entry that sends the public model
name ``--model`` to the OpenAI-compatible mock upstream (``openai/<model>`` at
``<upstream>/v1``, API key ``dummy``) and turns off, wherever LiteLLM lets us, the work a
request would otherwise pay for that li-httpd and nginx do not do: database, spend and
error logs, callbacks, caching, retries, cooldowns, budgets, background health checks,
telemetry. Each setting carries a comment saying why.

Standard library only: it runs with the project's venv, which must never depend on
LiteLLM (LiteLLM lives in ops/bench/.litellm-venv, see ``setup``). The YAML is written as
text; every value is a plain scalar or a JSON-quoted string, which YAML reads as is.
``render()`` is importable by path for the tests (``importlib`` from this file).
"""

from __future__ import annotations

import argparse
import json
import sys
from urllib.parse import urlsplit

__all__ = ["api_base", "main", "render"]


def api_base(upstream: str) -> str:
    """``http://127.0.0.1:PORT`` (or ``.../v1``) -> ``http://127.0.0.1:PORT/v1``."""
    parts = urlsplit(upstream)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--upstream must be an http(s) URL with a host, not {upstream!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"--upstream must have no query or fragment: {upstream!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    return f"{parts.scheme}://{parts.netloc}{path}"


def _q(value: str) -> str:
    # A JSON string is a valid YAML double-quoted scalar.
    return json.dumps(value)


def render(upstream: str, model: str = "mock-chat") -> str:
    """The config.yaml text for LiteLLM's proxy in front of ``upstream``."""
    if not model or any(ch.isspace() for ch in model):
        raise ValueError(f"--model must be a non-empty name without spaces, not {model!r}")
    base = api_base(upstream)
    return f"""\
# LiteLLM proxy config for the li-httpd benchmark (rendered by ops/bench/litellm/config.py;
# do not edit: re-render). Goal: LiteLLM doing only what a proxy in front of one
# OpenAI-compatible upstream must do, so that the comparison with li-httpd and nginx
# measures the request path, not optional features.
#
# Also set by ops/bench/litellm/run, not here: no LITELLM_MASTER_KEY and no DATABASE_URL
# in the environment, LITELLM_LOCAL_MODEL_COST_MAP=True (no fetch of the price list at
# start), LITELLM_LOG=ERROR (no uvicorn access log line per request).
#
# Per-request work no setting turns off (LiteLLM 1.103.7): request and response parsed
# into pydantic objects and re-serialized (not byte-transparent: ~25 x-litellm-* and
# llm_provider-* headers added, stream usage event reshaped), the success-logging path
# (standard logging payload, cost lookup in the bundled price map), router usage
# counters, the in-memory parallel-request limiter hook, and in no-auth mode a failed
# import of its OpenTelemetry module on every request (opentelemetry-sdk is not in the
# [proxy] extra). Each worker also sends GET /v1/models to the upstream once at start.

model_list:
  - model_name: {_q(model)}            # the name clients send in "model"
    litellm_params:
      model: {_q("openai/" + model)}   # OpenAI-compatible provider (sent with the OpenAI SDK)
      api_base: {_q(base)}
      api_key: "dummy"                 # the mock ignores it; the OpenAI client needs one
      max_retries: 0                   # the OpenAI client's own retries: off
      # No rpm/tpm: per-deployment limits would add a rate-limit check to each request.

litellm_settings:
  telemetry: false                     # no usage reporting (a no-op in this version, kept explicit)
  cache: false                         # no response cache (no lookup and no store per request)
  num_retries: 0                       # no retries: a failure must show as a failure, as with nginx
  callbacks: []                        # no logging/observability integrations
  success_callback: []                 #   (Langfuse, OTel, Prometheus, ... all off)
  failure_callback: []                 #   and none on failure
  service_callback: []                 # no service-health callbacks (Prometheus service metrics)
  disable_streaming_logging: true      # skip rebuilding the full streamed response for loggers
  disable_token_counter: true          # never count tokens locally (tiktoken): usage is upstream's
  disable_end_user_cost_tracking: true # no per-end-user spend bookkeeping
  disable_add_user_agent_to_request_tags: true  # no User-Agent parsing into request tags
  disable_hf_tokenizer_download: true  # never try to download tokenizers (no network here)
  json_logs: false                     # plain, minimal logging
  set_verbose: false                   # no debug logging of each request and response

router_settings:
  routing_strategy: "simple-shuffle"   # the cheapest strategy (no latency/usage tracking)
  num_retries: 0                       # router-level retries: off
  retry_after: 0                       # no wait before a retry (there is none)
  disable_cooldowns: true              # never take the only deployment out of rotation
  enable_pre_call_checks: false        # no context-window check per request

general_settings:
  # No master_key (and no LITELLM_MASTER_KEY): no-auth dev mode, so no key lookup or
  # hashing per request. No database_url: no Postgres, no Prisma, no key/spend tables.
  disable_spend_logs: true             # no spend-log rows queued per request
  disable_error_logs: true             # no error-log rows queued per failed request
  store_model_in_db: false             # models come from this file only
  background_health_checks: false      # no periodic calls to the upstream of its own
  disable_reset_budget: true           # no budget-reset job
  disable_prisma_schema_update: true   # never run Prisma migrations at start
  alerting: []                         # no Slack/email alerting hooks
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True,
                        help="base URL of the OpenAI-compatible mock upstream, e.g. http://127.0.0.1:8081")
    parser.add_argument("--model", default="mock-chat", help="model name (default: mock-chat)")
    parser.add_argument("--out", help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    try:
        text = render(args.upstream, args.model)
    except ValueError as error:
        parser.error(str(error))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as file:
            file.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
