"""LiteLLM's proxy as an optional benchmark peer (ops/bench/litellm/).

- The config renderer (``config.py``, run by path with the project's python) always
  runs: its YAML is checked line by line, since the project's venv has no YAML library
  (and must not depend on LiteLLM).
- The end-to-end test runs only where ``ops/bench/litellm/setup`` has installed
  LiteLLM into ``ops/bench/.litellm-venv``: it starts the mock upstream and LiteLLM
  (one worker, via ``ops/bench/litellm/run``) on loopback and sends one chat completion
  and one streamed one through it. LiteLLM takes 10-25 s to start on two cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "ops" / "bench" / "litellm"
VENV = ROOT / "ops" / "bench" / ".litellm-venv"
READY_TIMEOUT = 45.0
MOCK_TEXT = "Hello from the li-httpd mock upstream"


def load_config_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_litellm_config", BENCH / "config.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings(text: str) -> dict[str, dict[str, str]]:
    """``section -> {key: value}`` for the two-level ``key: value`` lines (comments cut)."""
    result: dict[str, dict[str, str]] = {}
    section = ""
    for raw in text.splitlines():
        line = re.sub(r"\s+#.*$", "", raw).rstrip()
        if not line or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            section = line.rstrip(":")
            result[section] = {}
            continue
        key, _, value = line.strip().lstrip("- ").partition(":")
        result[section][key] = value.strip()
    return result


def test_config_renders_one_model_and_turns_extras_off(tmp_path: Path) -> None:
    out = tmp_path / "litellm.yaml"
    done = subprocess.run(
        [sys.executable, str(BENCH / "config.py"), "--upstream", "http://127.0.0.1:8123",
         "--model", "mock-chat", "--out", str(out)],
        capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    text = out.read_text(encoding="utf-8")
    assert "\t" not in text
    # Same text as the importable renderer; a trailing /v1 or slash is not doubled.
    config = load_config_module()
    assert config.render("http://127.0.0.1:8123") == text
    assert config.render("http://127.0.0.1:8123/v1/") == text

    parsed = settings(text)
    assert list(parsed) == ["model_list", "litellm_settings", "router_settings",
                            "general_settings"]
    model = parsed["model_list"]
    assert model["model_name"] == '"mock-chat"'
    assert model["model"] == '"openai/mock-chat"'
    assert model["api_base"] == '"http://127.0.0.1:8123/v1"'
    assert model["api_key"] == '"dummy"'
    assert model["max_retries"] == "0"
    assert text.count("model_name:") == 1

    lite = parsed["litellm_settings"]
    assert lite["telemetry"] == "false"
    assert lite["cache"] == "false"
    assert lite["num_retries"] == "0"
    for callbacks in ("callbacks", "success_callback", "failure_callback", "service_callback"):
        assert lite[callbacks] == "[]"
    assert lite["disable_streaming_logging"] == "true"
    assert lite["disable_token_counter"] == "true"

    router = parsed["router_settings"]
    assert router["num_retries"] == "0"
    assert router["disable_cooldowns"] == "true"

    general = parsed["general_settings"]
    assert general["disable_spend_logs"] == "true"
    assert general["disable_error_logs"] == "true"
    assert general["background_health_checks"] == "false"
    assert general["store_model_in_db"] == "false"
    # No database and no auth: neither may appear as a setting (only in comments).
    for key in ("database_url", "master_key"):
        assert not any(key in section for section in parsed.values())

    # Every setting outside the model entry says why, in a trailing comment.
    section = ""
    for line in text.splitlines():
        if re.match(r"^[a-z_]+:", line):
            section = line
        elif section != "model_list:" and re.match(r"^\s+[a-z_]+: ", line):
            assert " # " in line, line


def test_config_rejects_bad_arguments() -> None:
    config = load_config_module()
    for upstream in ("127.0.0.1:8123", "ftp://127.0.0.1/", "http://", "http://h:1/?a=b"):
        with pytest.raises(ValueError):
            config.render(upstream)
    with pytest.raises(ValueError):
        config.render("http://127.0.0.1:1", "two words")
    done = subprocess.run([sys.executable, str(BENCH / "config.py"), "--upstream", "nope"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "--upstream" in done.stderr


# --------------------------------------------------------------------- end to end


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@pytest.fixture
def mock_upstream() -> Iterator[str]:
    """``li-httpd mock-upstream --port 0`` as a subprocess; yields its base URL."""
    script = Path(sys.executable).with_name("li-httpd")
    command = ([str(script)] if script.is_file()
               else [sys.executable, "-m", "li_httpd.supervisor.cli"])
    process = subprocess.Popen([*command, "mock-upstream", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 20)
        line = process.stdout.readline().decode() if ready else ""
        match = re.search(r"http://[0-9.]+:\d+", line)
        assert match, f"mock-upstream did not print its URL: {line!r}"
        yield match.group(0)
    finally:
        stop(process)


@pytest.mark.skipif(not (VENV / "bin" / "litellm").exists(),
                    reason="LiteLLM not installed (bash ops/bench/litellm/setup)")
def test_litellm_proxies_a_chat_completion_to_the_mock(mock_upstream: str,
                                                      tmp_path: Path) -> None:
    config = tmp_path / "litellm.yaml"
    config.write_text(load_config_module().render(mock_upstream, "mock-chat"),
                      encoding="utf-8")
    port = free_port()
    log = tmp_path / "litellm.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            ["bash", str(BENCH / "run"), "--config", str(config), "--port", str(port),
             "--num_workers", "1"],
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            deadline = time.monotonic() + READY_TIMEOUT
            while True:
                assert process.poll() is None, (
                    f"LiteLLM exited with {process.returncode}:\n{log.read_text()[-3000:]}")
                try:
                    if client.get("/health/liveliness").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, (
                    f"LiteLLM not ready in {READY_TIMEOUT} s:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)

            request = {"model": "mock-chat", "max_tokens": 16,
                       "messages": [{"role": "user", "content": "Say hello."}]}
            response = client.post("/v1/chat/completions", json=request)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["choices"][0]["message"]["content"].startswith(MOCK_TEXT)
            assert body["usage"]["completion_tokens"] > 0
            # The answer came from this mock (it stamps its address on each response).
            peer = mock_upstream.removeprefix("http://")
            assert response.headers["llm_provider-x-mock-peer"] == peer

            text = []
            with client.stream("POST", "/v1/chat/completions",
                               json={**request, "stream": True}) as stream:
                assert stream.status_code == 200
                assert stream.headers["content-type"].startswith("text/event-stream")
                for line in stream.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line.removeprefix("data: "))
                    assert "x_mock_sent_at" in event or event.get("usage")
                    for choice in event["choices"]:
                        text.append(choice["delta"].get("content") or "")
            assert "".join(text).startswith(MOCK_TEXT)
    finally:
        stop(process)
