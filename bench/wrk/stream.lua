-- The streamed relay measurement (bench/streamed.py): every request is a streaming chat completion
-- of the fake upstream's long model, and every answer is checked here, in wrk, as it completes.
--
--   wrk -t1 -c20 -d10s -s bench/wrk/stream.lua URL -- 500
--
-- The argument after "--" is the number of content chunks per answer (max_tokens; default 500).
-- An answer counts as good when its status is 200, its body ends with "data: [DONE]" and the
-- contents of its chunks, joined, are exactly the upstream's text "t0 t1 ... t<n-1> " (so every
-- chunk arrived, once, in order; a gateway may merge chunks). done() prints one line:
--   stream-check good=<n> bad=<n> chunks=<per answer> seconds=<wrk's duration> first_bad=<why>
-- The Authorization header is LiteLLM's master key; the other targets ignore it (or check it).

-- Globals, not locals: done() reads each thread's counters with thread:get(name).
chunks = 500
expected = ""
good, bad = 0, 0
first_bad = ""
local threads = {}

local function build(n)
  local parts = {}
  for i = 0, n - 1 do
    parts[#parts + 1] = "t" .. i .. " "
  end
  return table.concat(parts)
end

function setup(thread)
  threads[#threads + 1] = thread
end

function init(args)
  chunks = tonumber(args[1]) or chunks
  expected = build(chunks)
  wrk.method = "POST"
  wrk.body = '{"model":"fake-long","messages":[{"role":"user","content":"Say hello"}],"stream":true,'
    .. '"max_tokens":' .. chunks .. '}'
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer sk-bench-local"
end

local function problem(status, body)
  if status ~= 200 then
    return "status " .. status .. ": " .. string.sub(body, 1, 80)
  end
  if not string.find(body, "data: %[DONE%]\r?\n\r?\n?$") then
    return "no [DONE] at the end: " .. string.sub(body, -80)
  end
  local parts = {}
  for text in string.gmatch(body, '"content"%s*:%s*"([^"]*)"') do
    parts[#parts + 1] = text
  end
  local text = table.concat(parts)
  if text ~= expected then
    return #parts .. " content chunks, " .. #text .. " of " .. #expected .. " characters: "
      .. string.sub(text, 1, 40)
  end
  return nil
end

function response(status, headers, body)
  local why = problem(status, body)
  if why then
    bad = bad + 1
    if first_bad == "" then
      first_bad = string.gsub(why, "%s+", " ")
    end
  else
    good = good + 1
  end
end

function done(summary, latency, requests)
  local total_good, total_bad, why = 0, 0, ""
  for _, thread in ipairs(threads) do
    total_good = total_good + thread:get("good")
    total_bad = total_bad + thread:get("bad")
    if why == "" then
      why = thread:get("first_bad")
    end
  end
  local n = threads[1] and threads[1]:get("chunks") or chunks
  io.write(string.format("stream-check good=%d bad=%d chunks=%d seconds=%.6f first_bad=%s\n",
    total_good, total_bad, n, summary.duration / 1e6, why))
end
