-- Publish an event that changes no order's state (command.failed) exactly once.
-- KEYS[1] once-marker   KEYS[2] terminal stream
-- ARGV[1] ttl ms   ARGV[2] stream maxlen   ARGV[3] channel   ARGV[4] event JSON
-- Returns the stream id, or false when the marker shows it was published before.
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) == false then
  return false
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'event', ARGV[4])
redis.call('PUBLISH', ARGV[3], string.sub(ARGV[4], 1, -2) .. ',"stream_id":"' .. id .. '"}')
return id
