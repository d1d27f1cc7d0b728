//! Throughput of `wakeway_proxy::activity::ClientStream`: synthetic client→server VS Code
//! WebSocket traffic (masked frames, permessage-deflate with context takeover, 13-byte VS Code
//! headers, extension-host RPC calls) is built once, then fed through a fresh stream in chunks
//! the size of a socket read. Prints one JSON line per case. Not a test: it asserts nothing.

use std::time::Instant;

use flate2::{Compress, Compression};
use wakeway_proxy::activity::ClientStream;
use wakeway_proxy::activity::encode::{Rng, deflate_message, frame, rpc, vsc};

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
        wire.extend(frame(0x2, true, rsv1, &p, rng.mask()));
    };
    let hello = br#"{"type":"auth","auth":"00000000000000000000","data":"6f1e9c"}"#;
    push(vsc(2, 0, 0, hello), &mut rng, &mut wire);
    let kind = br#"{"type":"connectionType","commit":"abc","signedData":"xyz","desiredConnectionType":2}"#;
    push(vsc(2, 0, 0, kind), &mut rng, &mut wire);
    let methods = ["$acceptModelChanged", "$acceptEditorPropertiesChanged", "$onDidTunnelsChange", "$publicLog2"];
    for i in 0..messages {
        let mut args = format!(r#"[{{"versionId":{i},"changes":[{{"range":[1,{},1,{}],"text":""#, i % 80, i % 80 + 1);
        while args.len() < body {
            args.push_str(["let ", "x", " = ", "vscode", ".", "window", ";\\n", "42"][(rng.next_u64() % 8) as usize]);
        }
        args.push_str(r#""}]}]"#);
        let call = rpc(1, i, methods[(rng.next_u64() % 4) as usize], args.as_bytes());
        push(vsc(1, i + 1, 0, &call), &mut rng, &mut wire);
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
