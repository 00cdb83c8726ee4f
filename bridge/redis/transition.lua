-- Apply one decision of the order state machine atomically.
--
-- Compare-and-set on the order's state version, so two daemons or two channels racing on one
-- order publish each transition once; then for each event: XADD to the terminal's durable
-- stream, and PUBLISH it with the new entry's id as `stream_id` (written before announced).
-- The order key holds the payment's latest status event (its final once there is one); a
-- refund is not stored there, it only updates the kept event's `details.amount_refunded`, and
-- an `order.details` (the final's card details, learned after it) is merged into the kept
-- event's `details` (and fills its `transaction_id` if it had none): the key keeps the final,
-- with its details. Events arrive as JSON objects built by the daemon; the
-- stream id is spliced in before the closing brace rather than decoded and re-encoded.
--
-- A session's commits are also fenced: they carry the token of the order's lease, and a
-- daemon whose lease was taken over (it stalled, its lease expired) can no longer publish.
--
-- KEYS[1] order state (hash: seq, state)   KEYS[2] terminal stream
-- KEYS[3] order key                         KEYS[4] terminal active key
-- KEYS[5] the order's lease key
-- ARGV[1] expected seq   ARGV[2] new seq   ARGV[3] new state JSON   ARGV[4] ttl ms
-- ARGV[5] stream maxlen  ARGV[6] channel   ARGV[7] active action: "set", "clear" or ""
-- ARGV[8] order id       ARGV[9] fencing token ("" for a commit outside a session)
-- ARGV[10] index of the event the order key gets ("0": it keeps its event)
-- ARGV[11] refunded total to write into the order key's event ("" for none)
-- ARGV[12] index of an `order.details` event to merge into the order key's event ("0": none)
-- ARGV[13..] events (JSON); none for a state change that publishes nothing
-- Returns {1, stream ids...} when applied, {0, current seq, current state JSON} when the
-- stored state moved on (the caller decides again from it), {-1} when fenced out.
if ARGV[9] ~= '' and redis.call('GET', KEYS[5]) ~= ARGV[9] then
  return {-1}
end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if seq ~= tonumber(ARGV[1]) then
  return {0, seq, redis.call('HGET', KEYS[1], 'state') or ''}
end
local result = {1}
local kept
local keep = tonumber(ARGV[10]) + 12
local merge = tonumber(ARGV[12]) + 12
for i = 13, #ARGV do
  local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'event', ARGV[i])
  local message = string.sub(ARGV[i], 1, -2) .. ',"stream_id":"' .. id .. '"}'
  redis.call('PUBLISH', ARGV[6], message)
  result[#result + 1] = id
  if i == keep then
    kept = message
  end
end
if ARGV[11] ~= '' or merge > 12 then
  local base = kept or redis.call('GET', KEYS[3])
  if base then
    local event = cjson.decode(base)
    if type(event['details']) ~= 'table' then
      event['details'] = {}
    end
    if merge > 12 then
      local learned = cjson.decode(ARGV[merge])
      if type(learned['details']) == 'table' then
        for name, value in pairs(learned['details']) do
          event['details'][name] = value
        end
      end
      if event['transaction_id'] == nil or event['transaction_id'] == cjson.null then
        event['transaction_id'] = learned['transaction_id']
      end
    end
    if ARGV[11] ~= '' then
      event['details']['amount_refunded'] = tonumber(ARGV[11])
    end
    kept = cjson.encode(event)
  end
end
if kept then
  redis.call('SET', KEYS[3], kept, 'PX', ARGV[4])
end
redis.call('HSET', KEYS[1], 'seq', ARGV[2], 'state', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if ARGV[7] == 'set' then
  redis.call('SET', KEYS[4], ARGV[8], 'PX', ARGV[4])
elseif ARGV[7] == 'clear' and redis.call('GET', KEYS[4]) == ARGV[8] then
  redis.call('DEL', KEYS[4])
end
return result
