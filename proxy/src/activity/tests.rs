use super::encode::{Rng, deflate_message, frame, rpc, vsc};
use super::*;
use flate2::{Compress, Compression};

// ---------------------------------------------------------------------------------------------
// Helpers: WebSocket frames, permessage-deflate, VS Code protocol messages.

const BINARY: u8 = 0x2;
const TEXT: u8 = 0x1;
const CONT: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xa;

fn raw_compressor() -> Compress {
    Compress::new(Compression::default(), false)
}

fn handshake() -> Vec<u8> {
    vsc(2, 0, 0, br#"{"type":"auth","auth":"00000000000000000000","data":"6f1e9c"}"#)
}

fn connection_type(kind: u8) -> Vec<u8> {
    let json =
        format!(r#"{{"type":"connectionType","commit":"abc","signedData":"xyz","desiredConnectionType":{kind}}}"#);
    vsc(2, 0, 0, json.as_bytes())
}

fn vql(mut v: u32, out: &mut Vec<u8>) {
    if v == 0 {
        out.push(0);
    }
    while v != 0 {
        let mut b = (v & 0x7f) as u8;
        v >>= 7;
        if v != 0 {
            b |= 0x80;
        }
        out.push(b);
    }
}

fn ser_str(s: &[u8], out: &mut Vec<u8>) {
    out.push(1);
    vql(s.len() as u32, out);
    out.extend(s);
}

/// ipc.ts `ChannelClient.sendRequest`: `serialize([type, id, channel, command])` then `serialize(arg)`.
fn ipc(request_type: u32, id: u32, channel: &str, command: &str, arg: &[u8]) -> Vec<u8> {
    let mut b = vec![4];
    vql(4, &mut b);
    b.push(6);
    vql(request_type, &mut b);
    b.push(6);
    vql(id, &mut b);
    ser_str(channel.as_bytes(), &mut b);
    ser_str(command.as_bytes(), &mut b);
    b.push(3); // VSBuffer argument
    vql(arg.len() as u32, &mut b);
    b.extend(arg);
    b
}

fn ipc_call(id: u32, channel: &str, command: &str) -> Vec<u8> {
    ipc(100, id, channel, command, br#"[{"$mid":1,"path":"/home/u/.local/share/code-server/User/x.json"}]"#)
}

/// The client side of one connection: frames messages like Chromium does.
struct Client {
    compressor: Option<Compress>,
    no_context_takeover: bool,
    rng: Rng,
    next_id: u32,
}

impl Client {
    fn new(deflate: bool) -> Self {
        Client {
            compressor: deflate.then(raw_compressor),
            no_context_takeover: false,
            rng: Rng(0x9e37_79b9),
            next_id: 0,
        }
    }
    fn stream(&self) -> ClientStream {
        ClientStream::new(self.compressor.is_some(), self.no_context_takeover)
    }
    /// One data message's payload as it goes on the wire (compressed if negotiated), and its RSV1.
    fn payload(&mut self, bytes: &[u8]) -> (Vec<u8>, bool) {
        match self.compressor.as_mut() {
            Some(c) => {
                let p = deflate_message(c, bytes);
                if self.no_context_takeover {
                    c.reset();
                }
                (p, true)
            }
            None => (bytes.to_vec(), false),
        }
    }
    /// One single-frame binary WebSocket message.
    fn message(&mut self, bytes: &[u8]) -> Vec<u8> {
        let (p, rsv1) = self.payload(bytes);
        let mask = self.rng.mask();
        frame(BINARY, true, rsv1, &p, mask)
    }
    /// A Regular protocol message with the next id.
    fn regular(&mut self, body: &[u8]) -> Vec<u8> {
        self.next_id += 1;
        vsc(1, self.next_id, 0, body)
    }
    fn control(&mut self, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = self.rng.mask();
        frame(opcode, true, false, payload, mask)
    }
}

fn feed_all(s: &mut ClientStream, parts: &[Vec<u8>]) -> Vec<u32> {
    parts.iter().map(|p| s.feed(p)).collect()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn negotiated_deflate_parses_the_101_header() {
    assert_eq!(negotiated_deflate("permessage-deflate"), (true, false));
    assert_eq!(
        negotiated_deflate("permessage-deflate; client_max_window_bits=15; client_no_context_takeover"),
        (true, true)
    );
    assert_eq!(
        negotiated_deflate("x-webkit-deflate-frame, Permessage-Deflate;Client_No_Context_Takeover"),
        (true, true)
    );
    assert_eq!(
        negotiated_deflate("foo; client_no_context_takeover, permessage-deflate; server_no_context_takeover"),
        (true, false)
    );
    assert_eq!(negotiated_deflate(""), (false, false));
    assert_eq!(negotiated_deflate("permessage-deflate-x; client_no_context_takeover"), (false, false));
}

#[test]
fn handshake_makes_a_vscode_socket() {
    for deflate in [false, true] {
        let mut c = Client::new(deflate);
        let mut s = c.stream();
        assert_eq!(s.kind(), SocketKind::Unknown);
        let hs = c.message(&handshake());
        // The first few bytes are not enough to decide.
        assert_eq!(s.feed(&hs[..7]), 0);
        assert_eq!(s.kind(), SocketKind::Unknown);
        assert_eq!(s.feed(&hs[7..]), 0);
        assert_eq!(s.kind(), SocketKind::VsCode, "deflate={deflate}");
        assert_eq!(s.feed(&c.message(&connection_type(2))), 0);
        assert_eq!(s.kind(), SocketKind::VsCode);
        assert_eq!(s.error(), None);
    }
}

#[test]
fn protocol_chatter_is_not_activity() {
    let mut c = Client::new(true);
    let mut s = c.stream();
    s.feed(&c.message(&handshake()));
    let chatter = [
        vsc(9, 0, 0, b""),   // KeepAlive
        vsc(3, 0, 41, b""),  // Ack
        vsc(10, 0, 0, b""),  // LatencyMeasurementRequest
        vsc(11, 0, 0, b""),  // LatencyMeasurementResponse
        vsc(7, 0, 0, b""),   // Pause
        vsc(8, 0, 0, b""),   // Resume
        vsc(6, 0, 0, b""),   // ReplayRequest
        vsc(2, 0, 0, b"{}"), // Control
        // A Control/KeepAlive body that happens to contain an allow-listed call does not count.
        vsc(2, 0, 0, &rpc(1, 1, "$acceptModelChanged", b"[]")),
        vsc(9, 0, 0, &rpc(1, 1, "$acceptModelChanged", b"[]")),
    ];
    for m in &chatter {
        assert_eq!(s.feed(&c.message(m)), 0, "{m:?}");
    }
    assert_eq!(s.kind(), SocketKind::VsCode);
    // The parser is still in sync: a real editor change right after counts.
    let typed = c.regular(&rpc(1, 9, "$acceptModelChanged", b"[]"));
    assert_eq!(s.feed(&c.message(&typed)), 1);
    assert_eq!(s.feed(&c.message(&vsc(5, 0, 0, b""))), 0, "Disconnect");
    assert_eq!(s.error(), None);
}

#[test]
fn idle_noise_regular_messages_are_not_activity() {
    let mut c = Client::new(true);
    let mut s = c.stream();
    s.feed(&c.message(&handshake()));
    let mut noise = vec![
        // IPCClient's first message: the serialized connection context (an Object, not a request).
        br#"{"remoteAuthority":"vs-code-1.localhost","clientId":"abc"}"#.to_vec(),
        ipc_call(1, "remoteFilesystem", "stat"),
        ipc_call(2, "remoteFilesystem", "readdir"),
        ipc(100, 3, "remoteFilesystem", "writeFile", &[b'x'; 3000]),
        ipc_call(4, "agentHostProxy", "ping"),
        ipc_call(5, "telemetry", "ping"),
        ipc_call(6, "remoteterminal", "$resize"),
        ipc_call(7, "remoteterminal", "$acknowledgeDataEvent"),
        ipc(102, 8, "remoteterminal", "$input", b""), // EventListen, not a call
        ipc_call(9, "remoteterminalx", "$input"),
        ipc(101, 10, "remoteterminal", "$input", b""), // PromiseCancel
        rpc(1, 11, "$onDidTunnelsChange", b"[]"),
        rpc(1, 12, "$shellExecutionData", br#"[1,"tick\n"]"#),
        rpc(3, 13, "$acceptModelChange", b"[]"), // near miss
        rpc(1, 14, "$acceptModelChangedX", b"[]"),
        vec![5, 0, 0, 0, 7],                         // rpc Acknowledged
        vec![9, 0, 0, 0, 8, 0, 0, 0, 2, b'{', b'}'], // rpc ReplyOKJSON
        vec![],                                      // empty Regular
    ];
    noise.push(vec![0xff; 3]);
    for body in &noise {
        let m = c.regular(body);
        assert_eq!(s.feed(&c.message(&m)), 0, "{body:?}");
    }
    assert_eq!(s.kind(), SocketKind::VsCode);
    assert_eq!(s.error(), None);
    let typed = c.regular(&ipc_call(20, "remoteterminal", "$input"));
    assert_eq!(s.feed(&c.message(&typed)), 1, "still in sync");
}

#[test]
fn editor_rpc_requests_are_activity() {
    let methods = [
        "$acceptModelChanged",
        "$acceptEditorPropertiesChanged",
        "$acceptDocumentsAndEditorsDelta",
        "$acceptModelSaved",
        "$acceptDirtyStateChanged",
    ];
    for deflate in [false, true] {
        let mut c = Client::new(deflate);
        let mut s = c.stream();
        s.feed(&c.message(&handshake()));
        for (i, m) in methods.iter().enumerate() {
            for ty in 1..=4 {
                let body =
                    rpc(ty, (i * 4) as u32 + u32::from(ty), m, br#"[{"$mid":1,"path":"/w/a.rs"},{"changes":[]},true]"#);
                let msg = c.regular(&body);
                assert_eq!(s.feed(&c.message(&msg)), 1, "{m} type {ty} deflate={deflate}");
            }
        }
        // Types outside 1..=4 are replies/acks, whatever follows.
        let reply = c.regular(&rpc(9, 99, "$acceptModelChanged", b"[]"));
        assert_eq!(s.feed(&c.message(&reply)), 0);
    }
}

#[test]
fn terminal_input_is_activity() {
    let mut c = Client::new(true);
    let mut s = c.stream();
    s.feed(&c.message(&handshake()));
    for (id, command, expect) in
        [(5, "$input", 1), (6, "$sendText", 1), (300, "$input", 1), (70_000, "$input", 1), (7, "$resize", 0)]
    {
        let m = c.regular(&ipc(100, id, "remoteterminal", command, br#"[1,"l"]"#));
        assert_eq!(s.feed(&c.message(&m)), expect, "{command} id {id}");
    }
}

#[test]
fn replayed_regular_messages_count_once() {
    let mut c = Client::new(false);
    let mut s = c.stream();
    s.feed(&c.message(&handshake()));
    let body = rpc(1, 1, "$acceptModelChanged", b"[]");
    let one = vsc(1, 1, 0, &body);
    let two = vsc(1, 2, 0, &body);
    assert_eq!(s.feed(&c.message(&one)), 1);
    assert_eq!(s.feed(&c.message(&two)), 1);
    // The server asked for a replay: the client resends what is unacknowledged.
    assert_eq!(s.feed(&c.message(&[one.clone(), two.clone()].concat())), 0);
    assert_eq!(s.feed(&c.message(&vsc(1, 3, 0, &body))), 1);
}

/// A typed-in `$acceptModelChanged` whose JSON repeats between keystrokes, as real ones do.
fn model_changed(n: usize) -> Vec<u8> {
    let args = format!(
        r#"[{{"$mid":1,"fsPath":"/home/coder/project/src/main.rs","external":"file:///home/coder/project/src/main.rs","path":"/home/coder/project/src/main.rs","scheme":"file"}},{{"changes":[{{"range":{{"startLineNumber":12,"startColumn":{n},"endLineNumber":12,"endColumn":{n}}},"rangeLength":0,"text":"x","rangeOffset":{n}}}],"eol":"\n","versionId":{n},"isUndoing":false,"isRedoing":false,"isFlush":false,"isEolChange":false}},true]"#
    );
    rpc(1, n as u32, "$acceptModelChanged", args.as_bytes())
}

#[test]
fn context_takeover_needs_the_shared_dictionary() {
    let mut c = Client::new(true);
    let mut s = c.stream();
    s.feed(&c.message(&handshake()));
    let first = c.regular(&model_changed(1));
    let second = c.regular(&model_changed(2));
    let (p1, _) = c.payload(&first);
    let (p2, _) = c.payload(&second);
    // The second message is a few back-references into the first one's window ...
    assert!(p2.len() * 4 < second.len(), "{} vs {}", p2.len(), second.len());
    // ... so inflating it without that window fails (or yields something else).
    let mut fresh = Decompress::new(false);
    let mut out = vec![0; 4096];
    let alone = fresh.decompress(&[p2.clone(), DEFLATE_TAIL.to_vec()].concat(), &mut out, FlushDecompress::Sync);
    assert!(alone.is_err() || out[..fresh.total_out() as usize] != second[..], "p2 must depend on p1");

    let m1 = frame(BINARY, true, true, &p1, [1, 2, 3, 4]);
    let m2 = frame(BINARY, true, true, &p2, [5, 6, 7, 8]);
    assert_eq!(s.feed(&m1), 1);
    assert_eq!(s.feed(&m2), 1);
    for n in 3..20 {
        let m = c.regular(&model_changed(n));
        assert_eq!(s.feed(&c.message(&m)), 1);
        let noise = c.regular(&ipc_call(n as u32, "remoteFilesystem", "stat"));
        assert_eq!(s.feed(&c.message(&noise)), 0);
    }
    assert_eq!(s.kind(), SocketKind::VsCode);
    assert_eq!(s.error(), None);
}

#[test]
fn client_no_context_takeover_resets_the_inflater() {
    // The client resets its compressor after every message; so must we.
    let mut c = Client::new(true);
    c.no_context_takeover = true;
    let mut s = c.stream();
    s.feed(&c.message(&handshake()));
    for n in 1..10 {
        let m = c.regular(&model_changed(n));
        assert_eq!(s.feed(&c.message(&m)), 1);
    }
    assert_eq!(s.error(), None);

    // And a stream told "no context takeover" while the client keeps its window: the second
    // message cannot inflate, which proves the reset happens (and is reported, then falls back).
    let mut c = Client::new(true);
    let mut s = ClientStream::new(true, true);
    s.feed(&c.message(&handshake()));
    let m = c.regular(&model_changed(1));
    s.feed(&c.message(&m));
    let m = c.regular(&model_changed(2));
    s.feed(&c.message(&m));
    assert_eq!(s.kind(), SocketKind::Other);
    assert!(s.error().unwrap().contains("permessage-deflate"), "{:?}", s.error());
}

/// A session with everything in it: compression, fragmentation, pings between fragments, 16- and
/// 64-bit lengths, protocol messages spanning and sharing WebSocket messages. Returns the bytes and
/// how many activities it holds.
fn rich_session() -> (Vec<u8>, u32) {
    let mut c = Client::new(true);
    let mut wire = c.message(&handshake());
    wire.extend(c.message(&connection_type(2)));
    let mut expected = 0;
    let mut rng = Rng(7);
    for n in 1..40usize {
        // Several protocol messages in one WebSocket message.
        let mut batch = vsc(9, 0, 0, b"");
        batch.extend(c.regular(&model_changed(n)));
        batch.extend(c.regular(&ipc_call(n as u32, "remoteFilesystem", "stat")));
        batch.extend(vsc(3, 0, n as u32, b""));
        batch.extend(c.regular(&ipc_call(n as u32, "remoteterminal", "$input")));
        expected += 2;
        let (p, _) = c.payload(&batch);
        // Fragment it at random points with a ping and a pong in between.
        let cut1 = rng.below(p.len() + 1);
        let cut2 = cut1 + rng.below(p.len() - cut1 + 1);
        wire.extend(frame(BINARY, false, true, &p[..cut1], rng.mask()));
        wire.extend(c.control(PING, b"are you there"));
        wire.extend(frame(CONT, false, false, &p[cut1..cut2], rng.mask()));
        wire.extend(c.control(PONG, b""));
        wire.extend(frame(CONT, true, false, &p[cut2..], rng.mask()));
        if n % 10 == 0 {
            // A big one (64-bit length) and a protocol message spanning two WebSocket messages.
            let noise: Vec<u8> = (0..70_000).map(|_| rng.next_u64() as u8).collect();
            let mut big = c.regular(&rpc(1, 1000 + n as u32, "$acceptDocumentsAndEditorsDelta", &noise));
            big.extend(c.regular(&rpc(1, 2000 + n as u32, "$onDidTunnelsChange", b"[]")));
            let split = 200 + n;
            wire.extend(c.message(&big[..split]));
            wire.extend(c.message(&big[split..]));
            expected += 1;
        }
    }
    (wire, expected)
}

#[test]
fn chunk_boundaries_do_not_matter() {
    let (wire, expected) = rich_session();
    let mut whole = ClientStream::new(true, false);
    assert_eq!(whole.feed(&wire), expected);
    assert_eq!(whole.kind(), SocketKind::VsCode);
    assert_eq!(whole.error(), None);

    // One byte at a time: every boundary, including inside frame and protocol headers.
    let mut bytewise = ClientStream::new(true, false);
    let total: u32 = wire.iter().map(|b| bytewise.feed(std::slice::from_ref(b))).sum();
    assert_eq!(total, expected);
    assert_eq!(bytewise.error(), None);

    let mut rng = Rng(42);
    for _ in 0..20 {
        let mut s = ClientStream::new(true, false);
        let mut rest = &wire[..];
        let mut total = 0;
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len().min(3000));
            total += s.feed(&rest[..n]);
            rest = &rest[n..];
        }
        assert_eq!(total, expected);
    }
}

#[test]
fn protocol_message_spanning_two_ws_messages() {
    for split in [5, 13 + 3, 13 + 9] {
        // split inside the protocol header, inside the rpc header, inside the method name
        let mut c = Client::new(true);
        let mut s = c.stream();
        s.feed(&c.message(&handshake()));
        let m = c.regular(&model_changed(1));
        assert_eq!(s.feed(&c.message(&m[..split])), 0, "split {split}");
        assert_eq!(s.feed(&c.message(&m[split..])), 1, "split {split}");
        let stat = c.regular(&ipc_call(1, "remoteFilesystem", "stat"));
        assert_eq!(s.feed(&c.message(&stat[..20])) + s.feed(&c.message(&stat[20..])), 0);
        assert_eq!(s.error(), None);
    }
}

#[test]
fn several_protocol_messages_in_one_ws_message() {
    let mut c = Client::new(true);
    let mut s = c.stream();
    let mut first = handshake();
    first.extend(connection_type(1));
    first.extend(c.regular(br#"{"remoteAuthority":"x","clientId":"y"}"#));
    assert_eq!(s.feed(&c.message(&first)), 0);
    assert_eq!(s.kind(), SocketKind::VsCode);
    let mut batch = Vec::new();
    batch.extend(vsc(9, 0, 0, b""));
    batch.extend(c.regular(&ipc_call(1, "remoteterminal", "$input")));
    batch.extend(c.regular(&ipc_call(2, "remoteFilesystem", "stat")));
    batch.extend(c.regular(&ipc_call(3, "remoteterminal", "$input")));
    batch.extend(c.regular(&ipc_call(4, "remoteterminal", "$sendText")));
    batch.extend(vsc(3, 0, 9, b""));
    assert_eq!(s.feed(&c.message(&batch)), 3);
}

#[test]
fn fragmented_message_with_ping_in_the_middle() {
    let mut c = Client::new(true);
    let mut s = c.stream();
    s.feed(&c.message(&handshake()));
    let m = c.regular(&model_changed(1));
    let (p, _) = c.payload(&m);
    let third = p.len() / 3;
    let parts = vec![
        frame(BINARY, false, true, &p[..third], [9, 8, 7, 6]),
        c.control(PING, b"ping payload"),
        frame(CONT, false, false, &p[third..2 * third], [1, 1, 1, 1]),
        c.control(PING, b""),
        frame(CONT, false, false, &[], [0, 0, 0, 0]),
        frame(CONT, true, false, &p[2 * third..], [0xde, 0xad, 0xbe, 0xef]),
    ];
    assert_eq!(feed_all(&mut s, &parts).iter().sum::<u32>(), 1);
    assert_eq!(s.error(), None);
    // The message is over: the next one starts fresh.
    let m2 = c.regular(&model_changed(2));
    assert_eq!(s.feed(&c.message(&m2)), 1);
    assert_eq!(s.feed(&c.control(CLOSE, &[0x03, 0xe8])), 0);
}

#[test]
fn other_sockets_use_the_fallback_rule() {
    // A JSON-over-text socket (e.g. a dev server's live reload).
    let mut c = Client::new(false);
    let mut s = c.stream();
    assert_eq!(s.feed(&frame(TEXT, true, false, br#"{"type":"hello"}"#, [1, 2, 3, 4])), 1);
    assert_eq!(s.kind(), SocketKind::Other);
    assert_eq!(s.error(), None, "not VS Code is not an error");
    assert_eq!(s.feed(&frame(TEXT, true, false, b"x", [0; 4])), 1);
    assert_eq!(s.feed(&c.control(PING, b"")), 0);
    // A fragmented message counts once, in whichever chunk its first frame header is.
    let parts = vec![
        frame(BINARY, false, false, b"part one", [1; 4]),
        c.control(PONG, b"p"),
        frame(CONT, false, false, b"part two", [2; 4]),
        frame(CONT, true, false, b"end", [3; 4]),
    ];
    assert_eq!(feed_all(&mut s, &parts), vec![1, 0, 0, 0]);
    // Empty data messages count too (they are messages), close does not.
    assert_eq!(s.feed(&frame(BINARY, true, false, b"", [0; 4])), 1);
    assert_eq!(s.feed(&c.control(CLOSE, b"")), 0);

    // With deflate, once the first inflated byte shows it is not VS Code, nothing more is inflated:
    // even garbage "compressed" data is just a message.
    let mut c = Client::new(true);
    let mut s = c.stream();
    assert_eq!(s.feed(&c.message(br#"{"type":"hello"}"#)), 1);
    assert_eq!(s.kind(), SocketKind::Other);
    assert_eq!(s.feed(&frame(TEXT, true, true, b"\xff\xfe not deflate", [4; 4])), 1);
    assert_eq!(s.feed(&frame(BINARY, true, true, b"\x00\x01", [4; 4])), 1);
    assert_eq!(s.error(), None);
}

#[test]
fn messages_seen_before_the_kind_is_known_count_once_it_is_other() {
    let mut s = ClientStream::new(false, false);
    // One byte that could start a VS Code Control header: undecided.
    assert_eq!(s.feed(&frame(BINARY, true, false, &[2], [7; 4])), 0);
    assert_eq!(s.kind(), SocketKind::Unknown);
    assert_eq!(s.feed(&frame(BINARY, true, false, &[0, 0, 0, 0], [7; 4])), 0);
    // The length and body show it is not a VS Code handshake: both earlier messages and this one count.
    assert_eq!(s.feed(&frame(BINARY, true, false, &[0, 0, 0, 0, 0, 0, 0, 12, b'[', b'1', b']'], [7; 4])), 3);
    assert_eq!(s.kind(), SocketKind::Other);

    // A Control header whose body is not a JSON handshake is not VS Code either.
    let mut s = ClientStream::new(false, false);
    assert_eq!(s.feed(&frame(BINARY, true, false, &vsc(2, 0, 0, b"{\"typo\":1}"), [7; 4])), 1);
    assert_eq!(s.kind(), SocketKind::Other);
    // Nor is a KeepAlive before the handshake.
    let mut s = ClientStream::new(false, false);
    assert_eq!(s.feed(&frame(BINARY, true, false, &vsc(9, 0, 0, b""), [7; 4])), 1);
    assert_eq!(s.kind(), SocketKind::Other);
}

#[test]
fn fatal_problems_switch_to_the_fallback_rule() {
    // An unknown protocol message type: we lost sync with VS Code.
    let mut c = Client::new(true);
    let mut s = c.stream();
    s.feed(&c.message(&handshake()));
    assert_eq!(s.feed(&c.message(&vsc(4, 0, 0, b"??"))), 1, "the message in progress counts once");
    assert_eq!(s.kind(), SocketKind::Other);
    assert!(s.error().unwrap().contains("unknown message type 4"), "{:?}", s.error());
    assert_eq!(s.feed(&c.message(&vsc(9, 0, 0, b""))), 1, "fallback: every data message");
    assert_eq!(s.feed(&c.control(PING, b"")), 0);

    // Corrupt compressed data.
    let mut c = Client::new(true);
    let mut s = c.stream();
    s.feed(&c.message(&handshake()));
    assert_eq!(s.feed(&frame(BINARY, true, true, &[0xff; 40], [3; 4])), 1);
    assert_eq!(s.kind(), SocketKind::Other);
    assert!(s.error().unwrap().starts_with("permessage-deflate"), "{:?}", s.error());

    // Framing errors: we cannot delimit messages any more, so nothing counts.
    let frames: [(&str, Vec<u8>, bool); 6] = [
        ("unmasked", vec![0x82, 0x01, b'a'], false),
        ("RSV1 without", frame(BINARY, true, true, b"abc", [1; 4]), false),
        (
            "RSV2",
            {
                let mut f = frame(BINARY, true, false, b"a", [1; 4]);
                f[0] |= 0x20;
                f
            },
            true,
        ),
        ("reserved opcode", frame(0x3, true, false, b"a", [1; 4]), true),
        ("continuation frame outside", frame(CONT, true, false, b"a", [1; 4]), true),
        ("fragmented or oversized control", frame(PING, false, false, b"a", [1; 4]), true),
    ];
    for (why, f, deflate) in frames {
        let mut c = Client::new(deflate);
        let mut s = c.stream();
        s.feed(&c.message(&handshake()));
        s.feed(&f);
        assert_eq!(s.kind(), SocketKind::Other, "{why}");
        let err = s.error().unwrap_or_default().to_string();
        assert!(err.starts_with("WebSocket framing") && err.contains(why), "{why}: {err}");
        let m = c.regular(&model_changed(1));
        assert_eq!(s.feed(&c.message(&m)), 0, "{why}");
    }
}

#[test]
fn large_messages_are_classified_from_their_prefix() {
    for deflate in [false, true] {
        let mut c = Client::new(deflate);
        let mut s = c.stream();
        s.feed(&c.message(&handshake()));
        let mut rng = Rng(3);
        let text: Vec<u8> = (0..300_000).map(|_| b"abcdefghij klmnop\n"[rng.below(18)]).collect();
        let typed = c.regular(&rpc(1, 1, "$acceptModelChanged", &text));
        let upload = c.regular(&ipc(100, 2, "remoteFilesystem", "writeFile", &text[..250_000]));
        for (m, expected) in [(typed, 1), (upload, 0)] {
            let wire = c.message(&m);
            assert!(wire.len() > 0xffff, "needs a 64-bit length");
            let total: u32 = wire.chunks(1000).map(|ch| s.feed(ch)).sum();
            assert_eq!(total, expected, "deflate={deflate}");
        }
        assert_eq!(s.error(), None);
        let m = c.regular(&ipc_call(3, "remoteterminal", "$input"));
        assert_eq!(s.feed(&c.message(&m)), 1);
    }
}

#[test]
fn decompression_bombs_are_cut_off() {
    let mut c = Client::new(true);
    let mut s = c.stream();
    s.feed(&c.message(&handshake()));
    let bomb = c.regular(&ipc(100, 1, "remoteFilesystem", "writeFile", &vec![0u8; 32 << 20]));
    let wire = c.message(&bomb);
    assert!(wire.len() < 256 << 10, "32 MiB of zeros compress to {} bytes", wire.len());
    assert_eq!(s.feed(&wire), 1, "the fallback counts the message");
    assert_eq!(s.kind(), SocketKind::Other);
    assert!(s.error().unwrap().contains("exceeds"), "{:?}", s.error());
}

#[test]
fn garbage_never_panics() {
    let (valid, _) = rich_session();
    let mut rng = Rng(0xdead_beef);
    for i in 0..10_000 {
        let deflate = rng.below(2) == 0;
        let mut s = ClientStream::new(deflate, rng.below(3) == 0);
        let input: Vec<u8> = match i % 3 {
            // Pure noise.
            0 => (0..rng.below(600)).map(|_| rng.next_u64() as u8).collect(),
            // Plausible frame headers (masked, small lengths) with noise inside.
            1 => {
                let mut v = Vec::new();
                for _ in 0..rng.below(12) {
                    let op = [0, 1, 2, 8, 9, 10][rng.below(6)];
                    let payload: Vec<u8> = (0..rng.below(200)).map(|_| rng.next_u64() as u8).collect();
                    v.extend(frame(op, rng.below(3) != 0, rng.below(2) == 0, &payload, rng.mask()));
                }
                v
            }
            // A valid session with a few bytes flipped.
            _ => {
                let start = rng.below(valid.len() / 2);
                let mut v = valid[..start + 1 + rng.below(4000)].to_vec();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(v.len());
                    v[at] ^= 1 << rng.below(8);
                }
                if deflate { v } else { v[start..].to_vec() }
            }
        };
        let mut total = 0u32;
        let mut rest = &input[..];
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len().min(700));
            total += s.feed(&rest[..n]);
            rest = &rest[n..];
        }
        // Every counted message needs at least a 6-byte frame header.
        assert!(total as usize <= input.len() / 6 + 1, "iteration {i}: {total} from {} bytes", input.len());
        let _ = (s.kind(), s.error());
    }
}

#[test]
fn per_connection_state_is_small() {
    // Everything but the inflater (zlib's own state and its 32 KiB window).
    let size = std::mem::size_of::<ClientStream>() + std::mem::size_of::<Scratch>();
    assert!(size < 16 << 10, "{size} bytes");
}

/// Not a timed test: prints the classification speed of compressed traffic, asserts correctness.
#[test]
fn throughput() {
    let mut c = Client::new(true);
    let mut wire = c.message(&handshake());
    let mut expected = 0u32;
    let mut inflated = 0usize;
    for n in 1..=6000usize {
        let m = match n % 10 {
            0 => {
                expected += 1;
                c.regular(&model_changed(n))
            }
            1 => vsc(9, 0, 0, b""),
            2 => vsc(3, 0, n as u32, b""),
            3 => {
                let body = format!(
                    r#"[{{"$mid":1,"path":"/home/coder/.local/share/code-server/User/chat/{n}.json"}},{{"create":true,"overwrite":true,"unlock":false}}]"#
                );
                let mut buf = body.into_bytes();
                buf.extend(std::iter::repeat_n(b' ', n % 700));
                c.regular(&ipc(100, n as u32, "remoteFilesystem", "writeFile", &buf))
            }
            4 => {
                expected += 1;
                c.regular(&ipc_call(n as u32, "remoteterminal", "$input"))
            }
            _ => c.regular(&ipc_call(n as u32, "remoteFilesystem", "stat")),
        };
        inflated += m.len();
        wire.extend(c.message(&m));
    }
    let rounds = if cfg!(debug_assertions) { 2 } else { 400 };
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        let mut s = ClientStream::new(true, false);
        let total: u32 = wire.chunks(16 << 10).map(|ch| s.feed(ch)).sum();
        assert_eq!(total, expected);
        assert_eq!(s.error(), None);
    }
    let secs = start.elapsed().as_secs_f64();
    let mb = |bytes: usize| (bytes * rounds) as f64 / 1e6;
    println!(
        "activity throughput: {:.0} MB/s of compressed wire bytes ({:.0} MB/s inflated, {:.1} M messages/s), {} KiB wire / {} KiB inflated per round, ratio {:.1}",
        mb(wire.len()) / secs,
        mb(inflated) / secs,
        (6000 * rounds) as f64 / secs / 1e6,
        wire.len() >> 10,
        inflated >> 10,
        inflated as f64 / wire.len() as f64
    );
}
