//! Makes the `:authority` of incoming HTTP/2 requests acceptable to the HTTP/2 server.
//!
//! Over a unix socket there is no host name, and gRPC C-core (py-spiffe, Ruby, C++, PHP …) sends
//! the percent-encoded socket path instead (`tmp%2Frun%2Fapi.sock`, grpc/grpc#38142). The `h2`
//! crate under tonic refuses that as a malformed authority and resets every stream
//! (`PROTOCOL_ERROR`; hyperium/h2#487 is unmerged), so those clients could not use the Workload
//! API at all. The authority carries no information on a unix socket, so this filter rewrites an
//! invalid one **in place and at the same length** (each byte outside `[A-Za-z0-9.-]` becomes
//! `-`) while the request's HEADERS frame passes through. Keeping the length keeps the HPACK
//! dynamic tables of client and server the same size, so later references stay in step.
//!
//! Only literal (not Huffman-coded) authority values inside one HEADERS frame are rewritten;
//! that is how C-core sends them. Anything else passes through untouched, and anything the filter
//! cannot parse is left for `h2` to judge.

/// The client connection preface (RFC 9113 §3.4) that precedes the first frame.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// HEADERS frames up to this size are held back and inspected; larger ones pass unchanged.
const MAX_HELD_FRAME: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Preface bytes still to pass.
    Preface(usize),
    /// Collecting the 9 bytes of a frame header.
    FrameHeader,
    /// Payload bytes to pass unchanged.
    Pass(usize),
    /// Collecting a HEADERS frame of this total length (header included) to inspect it whole.
    Headers(usize),
}

/// The inbound half of one connection, seen frame by frame.
#[derive(Debug)]
pub(crate) struct AuthorityFilter {
    state: State,
    held: Vec<u8>,
}

impl Default for AuthorityFilter {
    fn default() -> Self {
        Self { state: State::Preface(PREFACE_LEN), held: Vec::new() }
    }
}

impl AuthorityFilter {
    /// Takes bytes read from the client and appends to `out` what may be handed on now; bytes of
    /// an incomplete frame header or HEADERS frame are held until the rest arrives.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match self.state {
                State::Preface(left) | State::Pass(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = match self.state {
                        State::Preface(_) if n < left => State::Preface(left - n),
                        State::Pass(_) if n < left => State::Pass(left - n),
                        _ => State::FrameHeader,
                    };
                }
                State::FrameHeader => {
                    let n = (FRAME_HEADER_LEN - self.held.len()).min(input.len());
                    self.held.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.held.len() == FRAME_HEADER_LEN {
                        self.start_frame(out);
                    }
                }
                State::Headers(total) => {
                    let n = (total - self.held.len()).min(input.len());
                    self.held.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.held.len() == total {
                        rewrite_authority(&mut self.held);
                        out.append(&mut self.held);
                        self.state = State::FrameHeader;
                    }
                }
            }
        }
    }

    /// A complete frame header is in `held`: decide how to treat the frame's payload.
    fn start_frame(&mut self, out: &mut Vec<u8>) {
        let length = usize::from(self.held[0]) << 16 | usize::from(self.held[1]) << 8 | usize::from(self.held[2]);
        let kind = self.held[3];
        if kind == TYPE_HEADERS && length > 0 && length <= MAX_HELD_FRAME {
            self.state = State::Headers(FRAME_HEADER_LEN + length);
            return;
        }
        out.append(&mut self.held);
        self.state = if length == 0 { State::FrameHeader } else { State::Pass(length) };
    }
}

/// Rewrites an invalid literal `:authority` value in a complete HEADERS frame.
fn rewrite_authority(frame: &mut [u8]) {
    let flags = frame[4];
    let payload = &mut frame[FRAME_HEADER_LEN..];
    let mut start = 0;
    let mut end = payload.len();
    if flags & FLAG_PADDED != 0 {
        let Some(&pad) = payload.first() else { return };
        start = 1;
        end = match end.checked_sub(usize::from(pad)) {
            Some(end) if end >= start => end,
            _ => return,
        };
    }
    if flags & FLAG_PRIORITY != 0 {
        start += 5;
    }
    if start > end {
        return;
    }
    let _ = rewrite_in_block(&mut payload[start..end]);
}

/// Walks an HPACK header block (RFC 7541 §6) and sanitises literal `:authority` values.
/// `None` when the block does not parse; the caller then leaves it alone.
fn rewrite_in_block(block: &mut [u8]) -> Option<()> {
    let mut at = 0;
    while at < block.len() {
        let first = block[at];
        if first & 0x80 != 0 {
            // Indexed header field: nothing literal to see.
            at = read_int(block, at, 7)?.1;
            continue;
        }
        if first & 0xE0 == 0x20 {
            // Dynamic table size update.
            at = read_int(block, at, 5)?.1;
            continue;
        }
        // A literal field: with incremental indexing (01), without indexing (0000) or never
        // indexed (0001). The name is a static/dynamic table index, or a literal when 0.
        let prefix = if first & 0xC0 == 0x40 { 6 } else { 4 };
        let (index, next) = read_int(block, at, prefix)?;
        at = next;
        let is_authority = if index == 0 {
            let (huffman, name, next) = read_string(block, at)?;
            at = next;
            !huffman && &block[name] == b":authority"
        } else {
            // Static table entry 1 is `:authority`.
            index == 1
        };
        let (huffman, value, next) = read_string(block, at)?;
        at = next;
        if is_authority && !huffman {
            sanitise(&mut block[value]);
        }
    }
    Some(())
}

/// An HPACK integer with an `prefix`-bit prefix at `at`: its value and the position after it.
fn read_int(block: &[u8], at: usize, prefix: u32) -> Option<(usize, usize)> {
    let mask = (1usize << prefix) - 1;
    let mut value = usize::from(*block.get(at)?) & mask;
    let mut at = at + 1;
    if value < mask {
        return Some((value, at));
    }
    let mut shift = 0;
    loop {
        let byte = *block.get(at)?;
        at += 1;
        value = value.checked_add(usize::from(byte & 0x7f).checked_shl(shift)?)?;
        if byte & 0x80 == 0 {
            return Some((value, at));
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
}

/// An HPACK string literal at `at`: whether it is Huffman-coded, where its bytes are, and the
/// position after it.
fn read_string(block: &[u8], at: usize) -> Option<(bool, std::ops::Range<usize>, usize)> {
    let huffman = *block.get(at)? & 0x80 != 0;
    let (length, start) = read_int(block, at, 7)?;
    let end = start.checked_add(length)?;
    (end <= block.len()).then_some((huffman, start..end, end))
}

/// Leaves a valid authority as it is; otherwise replaces every byte outside `[A-Za-z0-9.-]`
/// with `-`, which always yields a valid one (a registered name) of the same length.
fn sanitise(value: &mut [u8]) {
    if tonic::codegen::http::uri::Authority::try_from(&*value).is_ok() {
        return;
    }
    for byte in value.iter_mut() {
        if !(byte.is_ascii_alphanumeric() || *byte == b'.' || *byte == b'-') {
            *byte = b'-';
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn literal(name: &[u8], value: &[u8]) -> Vec<u8> {
        // Literal with incremental indexing, literal name, no Huffman (as gRPC C-core sends it).
        let mut out = vec![0x40, name.len() as u8];
        out.extend_from_slice(name);
        out.push(value.len() as u8);
        out.extend_from_slice(value);
        out
    }

    /// What py-spiffe's grpcio sent on a real connection: `:path`, `:authority`, then more.
    fn grpc_core_headers(authority: &[u8]) -> Vec<u8> {
        let mut block = literal(b":path", b"/SpiffeWorkloadAPI/FetchJWTSVID");
        block.extend(literal(b":authority", authority));
        block.extend([0x83, 0x86]);
        block.extend(literal(b"workload.spiffe.io", b"true"));
        block
    }

    fn run(chunks: &[&[u8]]) -> Vec<u8> {
        let mut filter = AuthorityFilter::default();
        let mut out = Vec::new();
        for chunk in chunks {
            filter.feed(chunk, &mut out);
        }
        out
    }

    #[test]
    fn a_percent_encoded_socket_path_becomes_a_valid_authority_of_the_same_length() {
        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let headers = frame(TYPE_HEADERS, 0x4, 1, &grpc_core_headers(b"tmp%2Frun%2Fapi.sock"));
        let data = frame(0x0, 0x1, 1, b"\0\0\0\0\x05hello%2F");
        let input = [PREFACE, &settings, &headers, &data].concat();

        let expected_headers = frame(TYPE_HEADERS, 0x4, 1, &grpc_core_headers(b"tmp-2Frun-2Fapi.sock"));
        let expected = [PREFACE, &settings, &expected_headers, &data].concat();
        assert_eq!(run(&[&input]), expected);
        // Byte by byte: frames split anywhere are reassembled the same way.
        let singles: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(&singles), expected);
        assert!(tonic::codegen::http::uri::Authority::try_from(&b"tmp-2Frun-2Fapi.sock"[..]).is_ok());
    }

    #[test]
    fn valid_authorities_huffman_values_and_other_frames_pass_unchanged() {
        for authority in [&b"localhost"[..], b"127.0.0.1:8081", b"[::1]:50051"] {
            let headers = frame(TYPE_HEADERS, 0x4, 1, &grpc_core_headers(authority));
            let input = [PREFACE, &headers].concat();
            assert_eq!(run(&[&input]), input);
        }
        // Indexed `:authority` name (static entry 1) with a literal value, without indexing.
        let mut block = vec![0x01, 4];
        block.extend_from_slice(b"a/b%");
        let input = [PREFACE, &frame(TYPE_HEADERS, 0x4, 1, &block)].concat();
        let mut expected_block = vec![0x01, 4];
        expected_block.extend_from_slice(b"a-b-");
        assert_eq!(run(&[&input]), [PREFACE, &frame(TYPE_HEADERS, 0x4, 1, &expected_block)].concat());
        // A Huffman-coded value is not touched (its bytes are not characters).
        let huffman = [0x41, 0x83, 0x25, 0x25, 0x25];
        let input = [PREFACE, &frame(TYPE_HEADERS, 0x4, 1, &huffman)].concat();
        assert_eq!(run(&[&input]), input);
        // DATA frames that happen to contain the same bytes are never touched.
        let input = [PREFACE, &frame(0x0, 0x1, 1, &literal(b":authority", b"a%2Fb"))].concat();
        assert_eq!(run(&[&input]), input);
    }

    #[test]
    fn padding_and_priority_are_respected_and_garbage_is_left_for_h2() {
        let block = grpc_core_headers(b"x%2Fy");
        let mut payload = vec![2]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&[0, 0]);
        let input = [PREFACE, &frame(TYPE_HEADERS, 0x4 | FLAG_PADDED | FLAG_PRIORITY, 1, &payload)].concat();
        let out = run(&[&input]);
        assert!(out.windows(5).any(|w| w == b"x-2Fy"));
        assert_eq!(out.len(), input.len());

        let garbage = [PREFACE, &frame(TYPE_HEADERS, 0x4, 1, &[0x40, 0x7f, 0xff, 0xff])].concat();
        assert_eq!(run(&[&garbage]), garbage);
        let bad_padding = [PREFACE, &frame(TYPE_HEADERS, FLAG_PADDED, 1, &[9, 0x40])].concat();
        assert_eq!(run(&[&bad_padding]), bad_padding);
    }
}
