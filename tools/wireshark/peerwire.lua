-- peerwire.lua: a Wireshark/tshark dissector for the Fizyr RPC protocol over TCP, as peerwire
-- speaks it (the wire format: a u32 frame length, then a 12-byte header of message type, request
-- id and service id, then the body).
--
-- It decodes what `peerwire tap` decodes, with the same names: the message types are request,
-- response, requester_update, responder_update and stream; the body preview is the first
-- `peerwire.preview` bytes (64, as the tap's --preview), as text when they are printable UTF-8
-- (`peerwire.body`, the tap's "body") and as hex otherwise (`peerwire.body_hex`, the tap's
-- "body_hex"); the Info column reads like the tap's lines.
--
-- Both byte orders: a preference (auto, little, big). In auto mode the first frame of each TCP
-- connection decides, and the choice is remembered for the connection: the order in which every
-- frame header of the segment has a plausible length (at least the 12-byte header, body at most
-- `peerwire.max_body`) and a known message type. Little endian (the protocol's default) wins when
-- both fit, without being remembered, so that a later frame can still decide.
--
-- Messages split over TCP segments are reassembled (pinfo.desegment_*), and each message of a
-- segment that holds several is shown. Ports: the `peerwire.tcp_ports` preference, plus a
-- heuristic on every TCP connection (it claims a connection only when the headers fit, see above).
--
-- Usage: wireshark -X lua_script:tools/wireshark/peerwire.lua capture.pcap (or copy this file
-- into the personal Lua plugins folder). See README.md beside it.

local proto = Proto("peerwire", "peerwire (Fizyr RPC)")

local LENGTH_PREFIX_LEN = 4
local HEADER_LEN = 12
-- The most frame headers the byte-order check reads in one segment; enough to reject chance
-- matches, few enough to stay cheap on large segments.
local MAX_CHECKED_HEADERS = 16

-- The names of `peerwire tap` (src/bin/peerwire/output.rs, `type_name`).
local TYPE_NAMES = {
	[0] = "request",
	[1] = "response",
	[2] = "requester_update",
	[3] = "responder_update",
	[4] = "stream",
}

local ORDER_AUTO, ORDER_LITTLE, ORDER_BIG = 0, 1, 2

local fields = {
	length = ProtoField.uint32("peerwire.length", "Frame length", base.DEC, nil, nil,
		"The frame length prefix: header and body, not the prefix itself"),
	type = ProtoField.uint32("peerwire.type", "Message type", base.DEC, TYPE_NAMES),
	request_id = ProtoField.uint32("peerwire.request_id", "Request id", base.DEC),
	service_id = ProtoField.int32("peerwire.service_id", "Service id", base.DEC, nil, nil,
		"The service (request, stream), the update kind (updates) or the result (response: negative is an error)"),
	body_length = ProtoField.uint32("peerwire.body_length", "Body length", base.DEC),
	body = ProtoField.string("peerwire.body", "Body preview (text)", base.UNICODE,
		"The first bytes of the body, when they are printable UTF-8"),
	body_hex = ProtoField.string("peerwire.body_hex", "Body preview (hex)", base.ASCII,
		"The first bytes of the body in hex, when they are not printable UTF-8"),
	truncated = ProtoField.bool("peerwire.truncated", "Preview truncated", base.NONE, nil, nil,
		"The preview shows less than the whole body"),
	data = ProtoField.bytes("peerwire.data", "Body"),
	byte_order = ProtoField.string("peerwire.byte_order", "Byte order", base.ASCII,
		"The byte order of the frame length and the header: little or big"),
}
proto.fields = {
	fields.length, fields.type, fields.request_id, fields.service_id, fields.body_length,
	fields.body, fields.body_hex, fields.truncated, fields.data, fields.byte_order,
}

local experts = {
	malformed = ProtoExpert.new("peerwire.malformed", "Malformed peerwire frame",
		expert.group.MALFORMED, expert.severity.ERROR),
	incomplete = ProtoExpert.new("peerwire.incomplete", "Frame continues beyond this data",
		expert.group.REASSEMBLE, expert.severity.WARN),
	error_response = ProtoExpert.new("peerwire.error_response", "Error response",
		expert.group.RESPONSE_CODE, expert.severity.NOTE),
}
proto.experts = { experts.malformed, experts.incomplete, experts.error_response }

proto.prefs.tcp_ports = Pref.range("TCP ports", "",
	"TCP ports always decoded as peerwire (for example 7000,7100-7110); connections on other ports "
		.. "are found by the heuristic", 65535)
proto.prefs.byte_order = Pref.enum("Byte order", ORDER_AUTO,
	"Byte order of the frame length and the header; auto picks, per connection, the order in which "
		.. "the first frames look like peerwire",
	{ { 1, "auto", ORDER_AUTO }, { 2, "little", ORDER_LITTLE }, { 3, "big", ORDER_BIG } }, false)
proto.prefs.max_body = Pref.uint("Largest body", 16 * 1024 * 1024,
	"Frames with a larger body are shown as malformed, and the heuristic does not take them for "
		.. "peerwire (as the tap's --max-body, 16 MiB)")
proto.prefs.preview = Pref.uint("Preview bytes", 64,
	"Show at most this many bytes of each body (as the tap's --preview)")

local tcp_stream = Field.new("tcp.stream")

-- The byte order chosen for each TCP connection in auto mode, by tcp.stream index (true: little).
local orders = {}

function proto.init()
	orders = {}
end

local tcp_ports = DissectorTable.get("tcp.port")
local registered_ports = ""

function proto.prefs_changed()
	local ports = tostring(proto.prefs.tcp_ports)
	if ports ~= registered_ports then
		if registered_ports ~= "" then
			tcp_ports:remove(registered_ports, proto)
		end
		if ports ~= "" then
			tcp_ports:add(ports, proto)
		end
		registered_ports = ports
	end
end

local function u32(tvb, offset, little)
	local range = tvb(offset, 4)
	if little then
		return range:le_uint()
	end
	return range:uint()
end

-- Why the frame at `offset` (with at least 8 bytes there) is not a peerwire frame in this byte
-- order, or nil if its length and type are plausible.
local function implausible(tvb, offset, little)
	local length = u32(tvb, offset, little)
	if length < HEADER_LEN then
		return string.format("frame length %d is shorter than the %d-byte header", length, HEADER_LEN)
	end
	local max_body = proto.prefs.max_body
	if length - HEADER_LEN > max_body then
		return string.format("body of %d bytes is over the limit of %d (preference peerwire.max_body)",
			length - HEADER_LEN, max_body)
	end
	local message_type = u32(tvb, offset + LENGTH_PREFIX_LEN, little)
	if TYPE_NAMES[message_type] == nil then
		return string.format("unknown message type %d", message_type)
	end
	return nil
end

-- Whether every frame header from `offset` to the end of `tvb` (at most MAX_CHECKED_HEADERS of
-- them, and at least one) is plausible in this byte order.
local function plausible_run(tvb, offset, little)
	local total = tvb:len()
	local checked = 0
	while offset + LENGTH_PREFIX_LEN + 4 <= total and checked < MAX_CHECKED_HEADERS do
		if implausible(tvb, offset, little) then
			return false
		end
		checked = checked + 1
		offset = offset + LENGTH_PREFIX_LEN + u32(tvb, offset, little)
	end
	return checked > 0
end

-- The byte orders in which the frames from `offset` look like peerwire, as allowed by the
-- preference: two booleans, little and big.
local function candidate_orders(tvb, offset)
	local preference = proto.prefs.byte_order
	local little = preference ~= ORDER_BIG and plausible_run(tvb, offset, true)
	local big = preference ~= ORDER_LITTLE and plausible_run(tvb, offset, false)
	return little, big
end

local function stream_index()
	local info = tcp_stream()
	if info then
		return info.value
	end
	return nil
end

-- The byte order of the frame at `offset` (true: little), from the preference, what this
-- connection showed before, or the frames themselves; remembered for the connection once certain.
local function byte_order(tvb, offset, stream)
	local preference = proto.prefs.byte_order
	if preference == ORDER_LITTLE then
		return true
	elseif preference == ORDER_BIG then
		return false
	end
	if stream ~= nil and orders[stream] ~= nil then
		return orders[stream]
	end
	local little, big = candidate_orders(tvb, offset)
	if little and big then
		return true
	elseif little or big then
		if stream ~= nil then
			orders[stream] = little
		end
		return little
	end
	-- Neither fits: decode as the protocol's default to say what is wrong.
	return true
end

-- `bytes` (a Lua string) as text if it is printable UTF-8, else nil: the tap's rule (output.rs,
-- `as_text`). When `truncated`, a character cut off at the end is dropped instead of making the
-- whole preview hex. Printable: no control character (C0, DEL, C1) except tab, newline and
-- carriage return.
local function as_text(bytes, truncated)
	local i, n = 1, #bytes
	while i <= n do
		local c = bytes:byte(i)
		if c < 0x80 then
			if (c < 0x20 and c ~= 0x09 and c ~= 0x0a and c ~= 0x0d) or c == 0x7f then
				return nil
			end
			i = i + 1
		else
			-- The continuation count and the allowed range of the second byte (RFC 3629):
			-- no overlong forms, no surrogates, nothing above U+10FFFF.
			local need, low, high
			if c >= 0xc2 and c <= 0xdf then
				need, low, high = 1, 0x80, 0xbf
			elseif c == 0xe0 then
				need, low, high = 2, 0xa0, 0xbf
			elseif c == 0xed then
				need, low, high = 2, 0x80, 0x9f
			elseif c >= 0xe1 and c <= 0xef then
				need, low, high = 2, 0x80, 0xbf
			elseif c == 0xf0 then
				need, low, high = 3, 0x90, 0xbf
			elseif c >= 0xf1 and c <= 0xf3 then
				need, low, high = 3, 0x80, 0xbf
			elseif c == 0xf4 then
				need, low, high = 3, 0x80, 0x8f
			else
				return nil
			end
			for k = 1, need do
				local b = bytes:byte(i + k)
				if b == nil then
					if truncated then
						return bytes:sub(1, i - 1)
					end
					return nil
				end
				if k > 1 then
					low, high = 0x80, 0xbf
				end
				if b < low or b > high then
					return nil
				end
			end
			-- C1 controls, U+0080 to U+009F.
			if c == 0xc2 and bytes:byte(i + 1) <= 0x9f then
				return nil
			end
			i = i + need + 1
		end
	end
	return bytes
end

local function hex(bytes)
	return (bytes:gsub(".", function(c)
		return string.format("%02x", c:byte())
	end))
end

-- The text as the tap quotes it (Rust's `{:?}` of a str, for the characters that can occur).
local function quoted(text)
	local escapes = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
	return '"' .. text:gsub('["\\\n\r\t]', escapes) .. '"'
end

-- Decode the whole frame at `offset` (its length known to be plausible and all its bytes in `tvb`)
-- into `tree`; returns its line for the Info column.
local function dissect_frame(tvb, pinfo, tree, offset, little)
	local function add(parent, field, range)
		if little then
			return parent:add_le(field, range)
		end
		return parent:add(field, range)
	end
	local length = u32(tvb, offset, little)
	local frame_len = LENGTH_PREFIX_LEN + length
	local body_len = length - HEADER_LEN
	local body_offset = offset + LENGTH_PREFIX_LEN + HEADER_LEN
	local message_type = u32(tvb, offset + 4, little)
	local request_id = u32(tvb, offset + 8, little)
	local service_id = little and tvb(offset + 12, 4):le_int() or tvb(offset + 12, 4):int()
	local name = TYPE_NAMES[message_type]

	local line = string.format("%s id=%d service=%d len=%d", name, request_id, service_id, body_len)
	local item = tree:add(proto, tvb(offset, frame_len))
	item:append_text(", " .. line)
	add(item, fields.length, tvb(offset, 4))
	item:add(fields.byte_order, tvb(offset, 4), little and "little" or "big"):set_generated()
	add(item, fields.type, tvb(offset + 4, 4))
	add(item, fields.request_id, tvb(offset + 8, 4))
	local service = add(item, fields.service_id, tvb(offset + 12, 4))
	if message_type == 1 and service_id < 0 then
		service:add_proto_expert_info(experts.error_response,
			string.format("Error response (service id %d)", service_id))
	end
	item:add(fields.body_length, tvb(offset, 4), body_len):set_generated()
	if body_len > 0 then
		local body_range = tvb(body_offset, body_len)
		item:add(fields.data, body_range)
		local preview_len = math.min(body_len, proto.prefs.preview)
		local preview = tvb(body_offset, preview_len):raw()
		local text = as_text(preview, preview_len < body_len)
		local shown
		if text ~= nil then
			shown = #text
			if shown > 0 then
				item:add(fields.body, tvb(body_offset, shown), text)
			end
			line = line .. " " .. quoted(text)
		else
			shown = preview_len
			item:add(fields.body_hex, tvb(body_offset, shown), hex(preview))
			line = line .. " hex:" .. hex(preview)
		end
		item:add(fields.truncated, body_range, shown < body_len):set_generated()
		if shown < body_len then
			line = line .. string.format(" ...(+%d bytes)", body_len - shown)
		end
	end
	return line
end

-- Show the rest of `tvb` from `offset` as undecodable, with the reason.
local function malformed(tvb, tree, offset, reason)
	local item = tree:add(proto, tvb(offset))
	item:append_text(", malformed frame: " .. reason)
	item:add_proto_expert_info(experts.malformed, "Malformed frame: " .. reason)
	return "malformed frame: " .. reason
end

-- The TCP dissector: every frame of the segment (after reassembly), or a request for more bytes.
local function dissect(tvb, pinfo, tree)
	local total = tvb:len()
	local stream = stream_index()
	local lines = {}
	local offset = 0
	while offset < total do
		local remaining = total - offset
		-- The length and the message type decide the byte order and whether this is a frame.
		if remaining < LENGTH_PREFIX_LEN + 4 then
			if pinfo.can_desegment > 0 then
				pinfo.desegment_offset = offset
				pinfo.desegment_len = DESEGMENT_ONE_MORE_SEGMENT
				break
			end
			local item = tree:add(proto, tvb(offset))
			item:add_proto_expert_info(experts.incomplete)
			offset = total
			break
		end
		local little = byte_order(tvb, offset, stream)
		local reason = implausible(tvb, offset, little)
		if reason ~= nil then
			local other = little and "big" or "little"
			if plausible_run(tvb, offset, not little) then
				reason = reason .. " (it decodes as " .. other .. " endian: set the byte order preference to "
					.. other .. " or auto)"
			end
			-- Without a plausible length the frames that follow cannot be found.
			lines[#lines + 1] = malformed(tvb, tree, offset, reason)
			offset = total
			break
		end
		local frame_len = LENGTH_PREFIX_LEN + u32(tvb, offset, little)
		if remaining < frame_len then
			if pinfo.can_desegment > 0 then
				pinfo.desegment_offset = offset
				pinfo.desegment_len = frame_len - remaining
				break
			end
			local item = tree:add(proto, tvb(offset))
			item:add_proto_expert_info(experts.incomplete,
				string.format("Frame of %d bytes, %d of them in this segment", frame_len, remaining))
			offset = total
			break
		end
		lines[#lines + 1] = dissect_frame(tvb, pinfo, tree, offset, little)
		offset = offset + frame_len
	end
	if #lines > 0 then
		pinfo.cols.protocol:set("peerwire")
		pinfo.cols.info:set(table.concat(lines, "; "))
	end
	return total
end
proto.dissector = dissect

-- Whether the 1 to 7 bytes of `tvb` can start a frame in a byte order allowed by the preference:
-- the length bytes present allow a length from the header size to the largest body, and the
-- message type bytes present can still make a known type (0 to 4: three zero bytes, the high ones).
local function prefix_plausible(tvb)
	local total = tvb:len()
	local smallest, largest = HEADER_LEN, HEADER_LEN + proto.prefs.max_body
	local function fits(little)
		-- The range of lengths the bytes present allow, the others being 00 to ff.
		local low, high = 0, 0
		for i = 0, LENGTH_PREFIX_LEN - 1 do
			local weight = little and 256 ^ i or 256 ^ (LENGTH_PREFIX_LEN - 1 - i)
			if i < total then
				local b = tvb(i, 1):uint()
				low, high = low + b * weight, high + b * weight
			else
				high = high + 255 * weight
			end
		end
		if high < smallest or low > largest then
			return false
		end
		for i = LENGTH_PREFIX_LEN, total - 1 do
			local b = tvb(i, 1):uint()
			local low_byte = i == (little and LENGTH_PREFIX_LEN or LENGTH_PREFIX_LEN + 3)
			if (low_byte and b > 4) or (not low_byte and b ~= 0) then
				return false
			end
		end
		return true
	end
	local preference = proto.prefs.byte_order
	return (preference ~= ORDER_BIG and fits(true)) or (preference ~= ORDER_LITTLE and fits(false))
end

-- The heuristic: claim a TCP connection on any port whose data starts with frame headers that
-- fit one byte order allowed by the preference; from then on the whole connection is decoded
-- as peerwire.
local function heuristic(tvb, pinfo, tree)
	local total = tvb:len()
	if total < LENGTH_PREFIX_LEN + 4 then
		-- A first segment too short to show the length and the message type (a frame split
		-- early, as a writer that sends the length prefix on its own does): if what it shows
		-- fits, ask TCP for the next segment too and decide on both, without claiming the
		-- connection yet. Deciding on the next segment alone would read it from the middle of a
		-- frame.
		if pinfo.can_desegment > 0 and prefix_plausible(tvb) then
			pinfo.desegment_offset = 0
			pinfo.desegment_len = DESEGMENT_ONE_MORE_SEGMENT
			return true
		end
		return false
	end
	local little, big = candidate_orders(tvb, 0)
	if not (little or big) then
		return false
	end
	pinfo.conversation = proto
	-- The function itself: `proto.dissector` reads back as a Dissector handle, whose nested call
	-- leaves us no right to ask TCP for more bytes (pinfo.can_desegment is decremented).
	dissect(tvb, pinfo, tree)
	return true
end

proto:register_heuristic("tcp", heuristic)
tcp_ports:add_for_decode_as(proto)
