-- wrk script: replays pre-signed webhook requests from a file, each thread its own slice,
-- so no request is sent twice (no duplicates inflate the accepted rate).
-- Line format: path \t header-name \t header-value \t body
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local file, nthreads = args[1], tonumber(args[2])
  reqs = {}
  local n = 0
  for line in io.lines(file) do
    if n % nthreads == tid then
      local path, hname, hval, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      local headers = { ["Content-Type"] = "application/json" }
      headers[hname] = hval
      reqs[#reqs + 1] = wrk.format("POST", path, headers, body)
    end
    n = n + 1
  end
  idx = 0
end

function request()
  idx = idx + 1
  if idx > #reqs then idx = 1 end
  return reqs[idx]
end
