//! Was it a person? Activity classification for the client→server bytes of one proxied WebSocket.
//!
//! [`ClientStream`] is fed the raw bytes a browser sends on an upgraded connection, in whatever chunks
//! they arrive, and answers how many of the messages in each chunk a person caused. It is pure (no
//! I/O, no clock, no async), never panics, keeps bounded state (a few hundred bytes and, once a
//! compressed message arrives, one raw inflater with its 32 KiB window; the ~10 KiB of scratch is
//! per thread) and never buffers the stream: every layer is a resumable state machine.
//!
//! # Layers
//! 1. **WebSocket framing** (RFC 6455): masked client frames, 7/16/64-bit lengths, FIN/continuation,
//!    control frames (ping/pong/close) anywhere, even between the fragments of a message. Control
//!    frames never count. A framing violation (unmasked frame, reserved opcode or RSV bit, bad
//!    fragmentation) is fatal: the stream can no longer be delimited, [`ClientStream::error`] says
//!    why and nothing more is counted (the server closes such a connection anyway).
//! 2. **permessage-deflate** (RFC 7692): one raw-DEFLATE inflater per connection, fed the unmasked
//!    payload of messages whose first frame has RSV1, with `00 00 ff ff` appended at the end of each
//!    such message. With context takeover the inflater (and its LZ77 window) lives across messages,
//!    so *every* compressed byte is inflated to keep the dictionary right; the output is only scanned
//!    through a fixed scratch buffer, never retained. To bound CPU against decompression bombs the
//!    inflated output may not outrun the input: a connection may inflate at most
//!    [`INFLATE_GRACE`] plus [`INFLATE_RATIO`]× the compressed bytes it sent (the allowance is
//!    capped at [`INFLATE_GRACE`]); beyond that, or on any inflate error, the stream switches to the
//!    fallback rule below and stops inflating.
//! 3. **VS Code protocol** (microsoft/vscode `src/vs/base/parts/ipc/common/ipc.net.ts`,
//!    `ProtocolReader`/`ProtocolWriter`): the payload bytes of all data messages form one byte
//!    stream (VS Code treats the WebSocket as a socket, so its messages ignore WebSocket message
//!    boundaries) of 13-byte headers — type u8, id u32 BE, ack u32 BE, data length u32 BE — each
//!    followed by its body. A socket is [`SocketKind::VsCode`] when its first message is a type 2
//!    Control whose body starts with `{"type":"` (the JSON `AuthRequest` of
//!    `src/vs/platform/remote/common/remoteAgentConnection.ts`); anything else is
//!    [`SocketKind::Other`]. Only Regular (type 1) messages can count; Control, Ack, Disconnect,
//!    ReplayRequest, Pause, Resume, KeepAlive and the latency probes (10/11) never do. An unknown
//!    type means we lost sync: fatal, fallback.
//! 4. **RPC method names**: an idle tab sends ~80 Regular messages a minute (chat-session
//!    persistence through `remoteFilesystem`, `agentHostProxy` pings, `telemetry`, tunnels), so a
//!    Regular message counts only when the call it carries is on [`ACTIVITY_ALLOW_LIST`]. The call is
//!    read from the first [`PREFIX_CAP`] bytes of the body, in either of the two formats VS Code
//!    puts on these sockets:
//!    - extension-host socket, `rpcProtocol.ts` `MessageIO`: request type u8 (1–4: JSON/mixed args,
//!      with/without cancellation), req u32 BE, rpc id u8, method as a short string (u8 length +
//!      UTF-8), then the arguments;
//!    - management socket, `ipc.ts` `ChannelClient.sendRequest`: `serialize([100 /*Promise*/, id,
//!      channelName, command])` then the argument, where `serialize` writes a `DataType` tag byte
//!      (0 Undefined, 1 String, 2 Buffer, 3 VSBuffer, 4 Array, 5 Object, 6 Int) followed by VQL
//!      (7-bit little-endian varint) lengths/values. Only Promise requests (100) count, never
//!      EventListen (102), cancels or responses.
//!
//!    The two formats cannot be confused: an IPC request starts `04 04 06 64`, which as an RPC
//!    request would need a req id ≥ 0x0400_0000, and its bytes 6.. never hold a `$`-method name.
//!    A Regular message whose id is not above the last counted one is a replay (VS Code's receiver
//!    drops those too) and does not count again.
//!
//! # Fallback rule (sockets that are not VS Code)
//! On an [`SocketKind::Other`] socket — its first bytes are not a VS Code handshake, or a fatal
//! inflate/protocol problem switched it — every client→server **data message** (text or binary,
//! however many frames it has) counts as **one** activity, counted when its first frame header is
//! seen; control frames never count. Messages that started while the kind was still
//! [`SocketKind::Unknown`] are counted when it turns out `Other`; when a VS Code socket switches, the
//! message in progress counts once. Such sockets are not inflated at all.

use flate2::{Decompress, FlushDecompress, Status};

use call::is_activity;

/// What kind of socket this is, learned from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// Not enough bytes seen yet.
    Unknown,
    /// A VS Code remote-agent socket (management or extension host): method-level classification.
    VsCode,
    /// Anything else, or a VS Code socket we lost track of: the fallback rule.
    Other,
}

/// A call that a person causes, as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityCall {
    /// An extension-host RPC request (`rpcProtocol.ts`) to this method.
    Rpc(&'static str),
    /// A management-socket IPC Promise request (`ipc.ts`) to this channel and command.
    Ipc { channel: &'static str, command: &'static str },
}

/// The calls that mean "a person did something". Everything else — `remoteFilesystem`
/// `stat`/`readdir`/`writeFile`, `agentHostProxy`, `telemetry`, `$onDidTunnelsChange`,
/// `$shellExecutionData`, terminal `$resize`/`$acknowledgeDataEvent`, ... — does not count.
///
/// These names are internal to VS Code and change without notice: re-check them (and the PEERS.md
/// measurement of idle vs typing windows) for every code-server upgrade. Pinned: code-server 4.139.1
/// / VS Code 1.139.1. Sources (microsoft/vscode):
/// - `$acceptModelChanged`, `$acceptModelSaved`, `$acceptDirtyStateChanged`: `ExtHostDocumentsShape`
///   in `src/vs/workbench/api/common/extHost.protocol.ts`, sent by
///   `src/vs/workbench/api/browser/mainThreadDocuments.ts` on a text model's content change, on save
///   and on dirty-state change — i.e. typing, saving, undo.
/// - `$acceptEditorPropertiesChanged`: `ExtHostEditorsShape` (same file), sent by
///   `mainThreadEditors.ts`/`mainThreadEditor.ts` when an editor's selections, options or visible
///   ranges change — cursor moves, clicks, scrolling.
/// - `$acceptDocumentsAndEditorsDelta`: `ExtHostDocumentsAndEditorsShape` (same file), sent by
///   `mainThreadDocumentsAndEditors.ts` when editors open, close or gain focus — clicking files.
/// - `remoteterminal` `$input`: `REMOTE_TERMINAL_CHANNEL_NAME` and `RemoteTerminalChannelRequest.Input`
///   (`src/vs/workbench/contrib/terminal/common/remote/remoteTerminalChannel.ts` and `.../remote/terminal.ts`),
///   called by `RemoteTerminalChannelClient.input` for each keystroke typed into a terminal.
/// - `remoteterminal` `$sendText`: observed for terminal typing in the PEERS.md capture; kept on the
///   list although it is not in the `RemoteTerminalChannelRequest` enum we could read.
///
/// Measured (PEERS.md): 0 hits in 16 idle, 15 terminal-loop and 6 sidebar-hidden 30 s windows,
/// 27 hits in each of 6 typing windows.
pub const ACTIVITY_ALLOW_LIST: &[ActivityCall] = &[
    ActivityCall::Rpc("$acceptModelChanged"),
    ActivityCall::Rpc("$acceptEditorPropertiesChanged"),
    ActivityCall::Rpc("$acceptDocumentsAndEditorsDelta"),
    ActivityCall::Rpc("$acceptModelSaved"),
    ActivityCall::Rpc("$acceptDirtyStateChanged"),
    ActivityCall::Ipc { channel: "remoteterminal", command: "$input" },
    ActivityCall::Ipc { channel: "remoteterminal", command: "$sendText" },
];

/// How many body bytes of a Regular message are kept to find its method (longer names cannot be on
/// the allow-list).
pub const PREFIX_CAP: usize = 128;
/// Inflated bytes a connection may produce before the ratio limit applies (and the allowance cap).
pub const INFLATE_GRACE: u64 = 8 << 20;
/// Inflated bytes allowed per compressed byte received (DEFLATE's own maximum is ~1032).
pub const INFLATE_RATIO: u64 = 256;

const UNMASK_SCRATCH: usize = 2048;
const INFLATE_SCRATCH: usize = 8192;
/// What `ProtocolWriter` puts before a `JSON.stringify`d handshake object.
const HANDSHAKE_PREFIX: &[u8] = b"{\"type\":\"";
const DEFLATE_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

// ipc.net.ts ProtocolMessageType
const MSG_REGULAR: u8 = 1;
const MSG_CONTROL: u8 = 2;
const KNOWN_MSG_TYPES: [u8; 10] = [1, 2, 3, 5, 6, 7, 8, 9, 10, 11];

/// Parse `Sec-WebSocket-Extensions` of the 101 response: (deflate negotiated,
/// client_no_context_takeover).
pub fn negotiated_deflate(header: &str) -> (bool, bool) {
    for extension in header.split(',') {
        let mut params = extension.split(';').map(str::trim);
        if !params.next().is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate")) {
            continue;
        }
        let no_takeover = params.any(|p| {
            let name = p.split('=').next().unwrap_or("").trim();
            name.eq_ignore_ascii_case("client_no_context_takeover")
        });
        return (true, no_takeover);
    }
    (false, false)
}

/// Per-connection, per-direction (client→server) state. Created when the upgrade response is seen.
pub struct ClientStream {
    // WebSocket framing.
    hdr: [u8; 14],
    hdr_len: usize,
    in_payload: bool,
    payload_left: u64,
    mask: [u8; 4],
    mask_pos: usize,
    opcode: u8,
    fin: bool,
    in_message: bool,
    compressed: bool,
    dead: bool,
    // permessage-deflate.
    deflate: bool,
    no_context_takeover: bool,
    /// Created at the first compressed message: an idle socket never pays for the window.
    inflater: Option<Decompress>,
    inflate_allowance: u64,
    // VS Code protocol and counting.
    cls: Classifier,
}

struct Scratch {
    unmasked: [u8; UNMASK_SCRATCH],
    inflated: [u8; INFLATE_SCRATCH],
}

thread_local! {
    /// One scratch per proxy thread, not per connection: `feed` is synchronous and never
    /// re-entered, so 10,000 idle WebSockets cost no scratch memory at all.
    static SCRATCH: std::cell::RefCell<Box<Scratch>> =
        std::cell::RefCell::new(Box::new(Scratch { unmasked: [0; UNMASK_SCRATCH], inflated: [0; INFLATE_SCRATCH] }));
}

impl std::fmt::Debug for ClientStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientStream")
            .field("kind", &self.cls.kind)
            .field("deflate", &self.deflate)
            .field("no_context_takeover", &self.no_context_takeover)
            .field("error", &self.cls.error)
            .finish_non_exhaustive()
    }
}

impl ClientStream {
    /// `deflate`: permessage-deflate was negotiated (the server's 101 response carried
    /// `Sec-WebSocket-Extensions: permessage-deflate...`). `client_no_context_takeover` from the same
    /// header.
    pub fn new(deflate: bool, client_no_context_takeover: bool) -> Self {
        ClientStream {
            hdr: [0; 14],
            hdr_len: 0,
            in_payload: false,
            payload_left: 0,
            mask: [0; 4],
            mask_pos: 0,
            opcode: 0,
            fin: false,
            in_message: false,
            compressed: false,
            dead: false,
            deflate,
            no_context_takeover: client_no_context_takeover,
            inflater: None,
            inflate_allowance: INFLATE_GRACE,
            cls: Classifier::new(),
        }
    }

    /// Feed the next chunk of raw bytes exactly as the client sent them. Returns how many messages
    /// in this chunk a person caused.
    pub fn feed(&mut self, chunk: &[u8]) -> u32 {
        let mut rest = chunk;
        while !rest.is_empty() && !self.dead {
            if self.in_payload {
                let n = usize::try_from(self.payload_left).map_or(rest.len(), |left| left.min(rest.len()));
                let (now, later) = rest.split_at(n);
                rest = later;
                self.payload(now);
                self.payload_left -= n as u64;
                if self.payload_left == 0 {
                    self.in_payload = false;
                    self.frame_end();
                }
            } else {
                let need = if self.hdr_len < 2 { 2 } else { self.header_len() };
                let take = (need - self.hdr_len).min(rest.len());
                self.hdr[self.hdr_len..self.hdr_len + take].copy_from_slice(&rest[..take]);
                self.hdr_len += take;
                rest = &rest[take..];
                if self.hdr_len == 2 && self.hdr[1] & 0x80 == 0 {
                    self.die("unmasked client frame");
                } else if self.hdr_len >= 2 && self.hdr_len == self.header_len() {
                    self.header_done();
                }
            }
        }
        std::mem::take(&mut self.cls.count)
    }

    pub fn kind(&self) -> SocketKind {
        self.cls.kind
    }

    /// A fatal parse problem switches the stream to `Other` with the fallback rule; this says why.
    pub fn error(&self) -> Option<&str> {
        self.cls.error.as_deref()
    }

    /// Full header length once the first two bytes are known (client frames always carry a mask).
    fn header_len(&self) -> usize {
        match self.hdr[1] & 0x7f {
            126 => 2 + 2 + 4,
            127 => 2 + 8 + 4,
            _ => 2 + 4,
        }
    }

    fn die(&mut self, why: &str) {
        self.cls.fall_back(Some(format!("WebSocket framing: {why}")));
        self.dead = true;
    }

    fn header_done(&mut self) {
        let (b0, b1) = (self.hdr[0], self.hdr[1]);
        self.hdr_len = 0;
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        let opcode = b0 & 0x0f;
        let (len, mask_at) = match b1 & 0x7f {
            126 => (u64::from(u16::from_be_bytes([self.hdr[2], self.hdr[3]])), 4),
            127 => {
                let mut be = [0; 8];
                be.copy_from_slice(&self.hdr[2..10]);
                (u64::from_be_bytes(be), 10)
            }
            n => (u64::from(n), 2),
        };
        self.mask.copy_from_slice(&self.hdr[mask_at..mask_at + 4]);
        if b0 & 0x30 != 0 {
            return self.die("RSV2/RSV3 set");
        }
        if len >> 63 != 0 {
            return self.die("64-bit length with the high bit set");
        }
        match opcode {
            0x8..=0xa => {
                if !fin || len > 125 {
                    return self.die("fragmented or oversized control frame");
                }
                if rsv1 {
                    return self.die("RSV1 on a control frame");
                }
            }
            0x1 | 0x2 => {
                if self.in_message {
                    return self.die("new data frame inside a fragmented message");
                }
                if rsv1 && !self.deflate {
                    return self.die("RSV1 without permessage-deflate");
                }
                self.in_message = true;
                self.compressed = rsv1;
                self.cls.message_start();
            }
            0x0 => {
                if !self.in_message {
                    return self.die("continuation frame outside a message");
                }
                if rsv1 {
                    return self.die("RSV1 on a continuation frame");
                }
            }
            _ => return self.die("reserved opcode"),
        }
        self.opcode = opcode;
        self.fin = fin;
        self.payload_left = len;
        self.mask_pos = 0;
        if len == 0 {
            self.frame_end();
        } else {
            self.in_payload = true;
        }
    }

    fn frame_end(&mut self) {
        if self.opcode >= 0x8 || !self.fin {
            return;
        }
        // End of a data message.
        if self.compressed && self.cls.kind != SocketKind::Other {
            self.inflate_tail();
        }
        if self.compressed
            && self.no_context_takeover
            && let Some(d) = self.inflater.as_mut()
        {
            d.reset(false);
        }
        self.in_message = false;
        self.compressed = false;
        self.cls.message_end();
    }

    fn payload(&mut self, data: &[u8]) {
        // Control frames carry nothing we need; the fallback rule needs no payload either.
        if self.opcode >= 0x8 || self.cls.kind == SocketKind::Other {
            return;
        }
        SCRATCH.with_borrow_mut(|scratch| self.payload_through(data, scratch));
    }

    fn payload_through(&mut self, data: &[u8], scratch: &mut Scratch) {
        for piece in data.chunks(UNMASK_SCRATCH) {
            let Scratch { unmasked, inflated } = scratch;
            let m = self.mask;
            let p = self.mask_pos;
            let rotated = [m[p & 3], m[(p + 1) & 3], m[(p + 2) & 3], m[(p + 3) & 3]];
            let out = &mut unmasked[..piece.len()];
            for (i, (o, b)) in out.iter_mut().zip(piece).enumerate() {
                *o = b ^ rotated[i & 3];
            }
            self.mask_pos = (p + piece.len()) & 3;
            if self.compressed {
                if self.deflate && self.inflater.is_none() {
                    self.inflater = Some(Decompress::new(false));
                }
                let Some(d) = self.inflater.as_mut() else {
                    return self.cls.fall_back(Some("compressed frame without an inflater".into()));
                };
                inflate(d, out, FlushDecompress::None, &mut inflated[..], &mut self.inflate_allowance, &mut self.cls);
            } else {
                self.cls.feed(out);
            }
            if self.cls.kind == SocketKind::Other {
                return;
            }
        }
    }

    fn inflate_tail(&mut self) {
        if let Some(d) = self.inflater.as_mut() {
            let (allowance, cls) = (&mut self.inflate_allowance, &mut self.cls);
            SCRATCH
                .with_borrow_mut(|s| inflate(d, &DEFLATE_TAIL, FlushDecompress::Sync, &mut s.inflated, allowance, cls));
        }
    }
}

/// Inflate `input` through the fixed `out` scratch, scanning every piece of output.
fn inflate(
    d: &mut Decompress,
    mut input: &[u8],
    flush: FlushDecompress,
    out: &mut [u8],
    allowance: &mut u64,
    cls: &mut Classifier,
) {
    loop {
        let (in0, out0) = (d.total_in(), d.total_out());
        let res = d.decompress(input, out, flush);
        let consumed = usize::try_from(d.total_in().wrapping_sub(in0)).unwrap_or(usize::MAX).min(input.len());
        let produced = usize::try_from(d.total_out().wrapping_sub(out0)).unwrap_or(usize::MAX).min(out.len());
        input = &input[consumed..];
        *allowance = allowance.saturating_add((consumed as u64).saturating_mul(INFLATE_RATIO)).min(INFLATE_GRACE);
        if produced as u64 > *allowance {
            return cls.fall_back(Some(format!(
                "permessage-deflate: inflated output exceeds {INFLATE_RATIO}x the compressed input; stopped inflating"
            )));
        }
        *allowance -= produced as u64;
        let ended = match res {
            Err(e) => return cls.fall_back(Some(format!("permessage-deflate: {e}"))),
            Ok(status) => status == Status::StreamEnd,
        };
        cls.feed(&out[..produced]);
        if cls.kind == SocketKind::Other {
            return;
        }
        if ended {
            // A block with BFINAL set (RFC 7692 §7.2.3.3 allows it; browsers don't send it): whatever
            // follows starts a fresh raw stream. Its window is lost, so a later message that refers to
            // it fails to inflate and switches the stream to the fallback rule.
            d.reset(false);
            if input.is_empty() {
                return;
            }
            continue;
        }
        if (input.is_empty() && produced < out.len()) || (consumed == 0 && produced == 0) {
            return;
        }
    }
}

/// The VS Code protocol parser and the counters; fed the (inflated) payload byte stream.
struct Classifier {
    kind: SocketKind,
    error: Option<String>,
    /// Activity counted during the current `feed` call.
    count: u32,
    /// Data messages started while the kind was unknown (they count if it turns out `Other`).
    pending: u32,
    in_message: bool,
    message_counted: bool,
    // Protocol message being parsed.
    hdr: [u8; 13],
    hdr_len: usize,
    in_body: bool,
    msg_type: u8,
    msg_id: u32,
    body_left: u32,
    prefix: [u8; PREFIX_CAP],
    prefix_len: usize,
    classified: bool,
    handshake_matched: usize,
    last_regular_id: u32,
}

impl Classifier {
    fn new() -> Self {
        Classifier {
            kind: SocketKind::Unknown,
            error: None,
            count: 0,
            pending: 0,
            in_message: false,
            message_counted: false,
            hdr: [0; 13],
            hdr_len: 0,
            in_body: false,
            msg_type: 0,
            msg_id: 0,
            body_left: 0,
            prefix: [0; PREFIX_CAP],
            prefix_len: 0,
            classified: false,
            handshake_matched: 0,
            last_regular_id: 0,
        }
    }

    fn message_start(&mut self) {
        self.in_message = true;
        self.message_counted = true;
        match self.kind {
            SocketKind::Other => self.count = self.count.saturating_add(1),
            SocketKind::Unknown => self.pending = self.pending.saturating_add(1),
            SocketKind::VsCode => self.message_counted = false,
        }
    }

    fn message_end(&mut self) {
        self.in_message = false;
    }

    /// Switch to the fallback rule (`reason` is `None` when the socket simply is not VS Code).
    fn fall_back(&mut self, reason: Option<String>) {
        if self.error.is_none() {
            self.error = reason;
        }
        match self.kind {
            SocketKind::Other => return,
            SocketKind::Unknown => self.count = self.count.saturating_add(std::mem::take(&mut self.pending)),
            SocketKind::VsCode => {
                if self.in_message && !self.message_counted {
                    self.count = self.count.saturating_add(1);
                    self.message_counted = true;
                }
            }
        }
        self.kind = SocketKind::Other;
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.kind != SocketKind::Other {
            if !self.in_body {
                let take = (self.hdr.len() - self.hdr_len).min(data.len());
                self.hdr[self.hdr_len..self.hdr_len + take].copy_from_slice(&data[..take]);
                self.hdr_len += take;
                data = &data[take..];
                if self.kind == SocketKind::Unknown && self.hdr[0] != MSG_CONTROL {
                    return self.fall_back(None);
                }
                if self.hdr_len == self.hdr.len() {
                    self.header_done();
                }
                continue;
            }
            let n = usize::try_from(self.body_left).map_or(data.len(), |left| left.min(data.len()));
            let (now, later) = data.split_at(n);
            data = later;
            if self.kind == SocketKind::Unknown {
                for &b in now.iter().take(HANDSHAKE_PREFIX.len() - self.handshake_matched) {
                    if b != HANDSHAKE_PREFIX[self.handshake_matched] {
                        return self.fall_back(None);
                    }
                    self.handshake_matched += 1;
                }
                if self.handshake_matched == HANDSHAKE_PREFIX.len() {
                    self.kind = SocketKind::VsCode;
                    self.pending = 0;
                }
            } else if self.msg_type == MSG_REGULAR && !self.classified {
                let take = (PREFIX_CAP - self.prefix_len).min(now.len());
                self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&now[..take]);
                self.prefix_len += take;
                if self.prefix_len == PREFIX_CAP {
                    self.classify();
                }
            }
            self.body_left -= n as u32;
            if self.body_left == 0 {
                self.body_done();
            }
        }
    }

    fn header_done(&mut self) {
        let h = self.hdr;
        self.hdr_len = 0;
        let msg_type = h[0];
        let len = u32::from_be_bytes([h[9], h[10], h[11], h[12]]);
        if self.kind == SocketKind::Unknown {
            if msg_type != MSG_CONTROL || (len as usize) < HANDSHAKE_PREFIX.len() {
                return self.fall_back(None);
            }
        } else if !KNOWN_MSG_TYPES.contains(&msg_type) {
            return self.fall_back(Some(format!("VS Code protocol: unknown message type {msg_type}")));
        }
        self.msg_type = msg_type;
        self.msg_id = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
        self.body_left = len;
        self.prefix_len = 0;
        self.classified = false;
        if len == 0 {
            self.body_done();
        } else {
            self.in_body = true;
        }
    }

    fn body_done(&mut self) {
        if self.msg_type == MSG_REGULAR && !self.classified {
            self.classify();
        }
        self.in_body = false;
    }

    fn classify(&mut self) {
        self.classified = true;
        let id = self.msg_id;
        let replay = id != 0 && id <= self.last_regular_id;
        self.last_regular_id = self.last_regular_id.max(id);
        if !replay && is_activity(&self.prefix[..self.prefix_len]) {
            self.count = self.count.saturating_add(1);
        }
    }
}

mod call;
pub mod encode;
#[cfg(test)]
mod tests;
