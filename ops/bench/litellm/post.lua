-- wrk script: POST a small OpenAI chat completion to the URL's path, or to
-- /v1/chat/completions when the URL has none.
--   wrk -t2 -c16 -d10s -s ops/bench/litellm/post.lua http://127.0.0.1:PORT
-- Environment: BENCH_MODEL (default mock-chat), BENCH_STREAM=1 for "stream": true
-- (an SSE response; wrk reads it to the end like any chunked body).
-- No response()/done() hooks: they would make wrk hand every response to Lua and
-- cost load-generator CPU on a 2-core machine; wrk reports "Non-2xx or 3xx responses".
local model = os.getenv("BENCH_MODEL") or "mock-chat"
local stream = os.getenv("BENCH_STREAM") == "1"

if wrk.path == nil or wrk.path == "" or wrk.path == "/" then
  wrk.path = "/v1/chat/completions"
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer dummy"
wrk.body = string.format(
  '{"model":"%s","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16%s}',
  model, stream and ',"stream":true' or "")
