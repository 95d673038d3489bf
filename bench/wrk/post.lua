-- The one request every gateway benchmark target gets: a tiny non-streaming chat completion.
-- The Authorization header is LiteLLM's master key; the other targets ignore it.
wrk.method = "POST"
wrk.body = '{"model":"fake","messages":[{"role":"user","content":"Say hello"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-local"
