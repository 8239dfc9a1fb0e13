//! The Redis scripts of the cluster: each runs atomically in Redis, so a position, a
//! recovery or a dead node's cleanup is one consistent step whatever the other nodes do.

/// Appends a message to a room's history and publishes it with its position.
/// KEYS: meta hash (`e` epoch, `o` offset), stream. ARGV: body, channel, history_size,
/// history_ttl in ms, a fresh epoch (used when the room has none).
/// Returns the offset given.
pub const PUBLISH_HISTORY: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
end
local off = redis.call('HINCRBY', KEYS[1], 'o', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], off .. '-1', 'b', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[2], 'H' .. off .. ':' .. epoch .. '|' .. ARGV[1])
return off
";

/// Reads what follows an offset in a room's history.
/// KEYS: meta hash, stream. ARGV: the offset to read after, history_ttl in ms, a fresh
/// epoch (stored when the room has none, so the answer names the epoch the next message
/// will have).
/// Returns {epoch, current offset, first kept offset, {offset, body, offset, body, ...}}.
pub const RECOVER: &str = r"
local m = redis.call('HMGET', KEYS[1], 'e', 'o')
local epoch, off = m[1], tonumber(m[2] or '0')
if not epoch then
  epoch = ARGV[3]
  off = 0
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local first = off + 1
local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #head > 0 then first = tonumber(string.match(head[1][1], '^(%d+)')) end
local out = {}
local entries = redis.call('XRANGE', KEYS[2], ARGV[1] .. '-2', '+')
for _, e in ipairs(entries) do
  out[#out + 1] = string.match(e[1], '^(%d+)')
  out[#out + 1] = e[2][2]
end
return {epoch, off, first, out}
";

/// Removes a dead node: if its liveness entry has expired, deletes it with its clients
/// and memberships, announces its departure on the directory channel (in the script, so
/// every node sees it before anything the node itself may announce afterwards), and
/// returns the memberships (`id\nroom` and user id, flattened); nil when the node is
/// alive or another node removed it first.
/// KEYS: nodes hash. ARGV: prefix, node, now in ms, the departure message.
pub const SWEEP: &str = r"
local expiry = redis.call('HGET', KEYS[1], ARGV[2])
if not expiry or tonumber(expiry) >= tonumber(ARGV[3]) then return false end
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('HDEL', ARGV[1] .. ':nodestats', ARGV[2])
local key = ARGV[1] .. ':members:' .. ARGV[2]
local members = redis.call('HGETALL', key)
redis.call('DEL', key, ARGV[1] .. ':clients:' .. ARGV[2])
redis.call('PUBLISH', ARGV[1] .. ':dir', ARGV[4])
return members
";
