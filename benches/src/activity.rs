//! Throughput of `wakeway_proxy::activity::ClientStream`: synthetic client→server VS Code
//! WebSocket traffic (masked frames, permessage-deflate with context takeover, 13-byte VS Code
//! headers, extension-host RPC calls) is built once, then fed through a fresh stream in chunks
//! the size of a socket read. Prints one JSON line per case. Not a test: it asserts nothing.

use std::time::Instant;

use flate2::{Compress, Compression, FlushCompress};
use wakeway_proxy::activity::ClientStream;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn frame(rsv1: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0x80 | (u8::from(rsv1) << 6) | 0x2];
    let len = payload.len();
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= 0xffff {
        f.push(0x80 | 126);
        f.extend((len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend((len as u64).to_be_bytes());
    }
    f.extend(mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    f
}

/// RFC 7692: compress with a sync flush and strip the trailing `00 00 ff ff`.
fn deflate_message(c: &mut Compress, bytes: &[u8]) -> Vec<u8> {
    let start = c.total_in();
    let mut out = Vec::with_capacity(bytes.len() / 2 + 64);
    loop {
        out.reserve(4096);
        let done = (c.total_in() - start) as usize;
        c.compress_vec(&bytes[done..], &mut out, FlushCompress::Sync).expect("compress");
        if (c.total_in() - start) as usize == bytes.len() && out.len() < out.capacity() {
            break;
        }
    }
    out.truncate(out.len() - 4);
    out
}

/// A VS Code protocol message (ipc.net.ts `ProtocolWriter.write`).
fn vsc(ty: u8, id: u32, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty];
    m.extend(id.to_be_bytes());
    m.extend(0u32.to_be_bytes());
    m.extend((body.len() as u32).to_be_bytes());
    m.extend(body);
    m
}

/// rpcProtocol.ts `_requestJSONArgs` body.
fn rpc(req: u32, method: &str, args: &[u8]) -> Vec<u8> {
    let mut b = vec![1];
    b.extend(req.to_be_bytes());
    b.push(17);
    b.push(method.len() as u8);
    b.extend(method.as_bytes());
    b.extend((args.len() as u32).to_be_bytes());
    b.extend(args);
    b
}

/// `messages` client messages of about `body` bytes each (a mix of allow-listed and background
/// calls, JSON-ish arguments), framed as Chromium sends them. Returns (wire bytes, payload bytes).
fn traffic(deflate: bool, messages: u32, body: usize) -> (Vec<u8>, u64) {
    let mut rng = Rng(0x9e37_79b9);
    let mut c = Compress::new(Compression::default(), false);
    let mut wire = Vec::new();
    let mut plain = 0u64;
    let mut push = |msg: Vec<u8>, rng: &mut Rng, wire: &mut Vec<u8>| {
        plain += msg.len() as u64;
        let (p, rsv1) = if deflate { (deflate_message(&mut c, &msg), true) } else { (msg, false) };
        wire.extend(frame(rsv1, &p, (rng.next() as u32).to_be_bytes()));
    };
    let hello = br#"{"type":"auth","auth":"00000000000000000000","data":"6f1e9c"}"#;
    push(vsc(2, 0, hello), &mut rng, &mut wire);
    let kind = br#"{"type":"connectionType","commit":"abc","signedData":"xyz","desiredConnectionType":2}"#;
    push(vsc(2, 0, kind), &mut rng, &mut wire);
    let methods = ["$acceptModelChanged", "$acceptEditorPropertiesChanged", "$onDidTunnelsChange", "$publicLog2"];
    for i in 0..messages {
        let mut args = format!(r#"[{{"versionId":{i},"changes":[{{"range":[1,{},1,{}],"text":""#, i % 80, i % 80 + 1);
        while args.len() < body {
            args.push_str(["let ", "x", " = ", "vscode", ".", "window", ";\\n", "42"][(rng.next() % 8) as usize]);
        }
        args.push_str(r#""}]}]"#);
        let call = rpc(i, methods[(rng.next() % 4) as usize], args.as_bytes());
        push(vsc(1, i + 1, &call), &mut rng, &mut wire);
    }
    (wire, plain)
}

fn main() {
    let messages: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    for (deflate, body) in [(true, 200usize), (true, 2_000), (false, 2_000)] {
        let (wire, plain) = traffic(deflate, messages, body);
        let mut best = f64::MAX;
        let mut hits = 0;
        for _ in 0..5 {
            let mut s = ClientStream::new(deflate, false);
            let t = Instant::now();
            hits = wire.chunks(16 * 1024).map(|chunk| s.feed(chunk)).sum::<u32>();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{{\"deflate\": {deflate}, \"message_bytes\": {body}, \"messages\": {messages}, \"wire_mb\": {:.2}, \
             \"payload_mb\": {:.2}, \"seconds\": {best:.4}, \"wire_mb_per_s\": {:.1}, \"payload_mb_per_s\": {:.1}, \
             \"activity_hits\": {hits}}}",
            wire.len() as f64 / 1e6,
            plain as f64 / 1e6,
            wire.len() as f64 / 1e6 / best,
            plain as f64 / 1e6 / best,
        );
    }
}
