//! What a VS Code client sends, encoded: masked WebSocket frames, permessage-deflate messages,
//! VS Code protocol messages and extension-host RPC requests — the inverse of the classifier.
//! One copy, used by the classifier's tests and by the throughput bench (`benches/`).

use flate2::{Compress, FlushCompress};

/// Deterministic xorshift64* so every run sees the same "random" traffic.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_be_bytes()
    }
}

/// One masked client frame (RFC 6455 §5.2).
pub fn frame(opcode: u8, fin: bool, rsv1: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![u8::from(fin) << 7 | u8::from(rsv1) << 6 | opcode];
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

/// RFC 7692 §7.2.1: compress `bytes` as one message with a sync flush and strip the trailing
/// `00 00 ff ff`. `c` is a raw-DEFLATE compressor kept across messages (context takeover).
pub fn deflate_message(c: &mut Compress, bytes: &[u8]) -> Vec<u8> {
    let start = c.total_in();
    let mut out = Vec::with_capacity(bytes.len() / 2 + 64);
    loop {
        out.reserve(4096);
        let done = (c.total_in() - start) as usize;
        c.compress_vec(&bytes[done..], &mut out, FlushCompress::Sync).expect("deflate into a growing buffer");
        if (c.total_in() - start) as usize == bytes.len() && out.len() < out.capacity() {
            break;
        }
    }
    assert!(out.ends_with(&super::DEFLATE_TAIL), "a sync flush ends with 00 00 ff ff");
    out.truncate(out.len() - 4);
    out
}

/// A VS Code protocol message (ipc.net.ts `ProtocolWriter.write`): type, id, ack, length, body.
pub fn vsc(ty: u8, id: u32, ack: u32, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty];
    m.extend(id.to_be_bytes());
    m.extend(ack.to_be_bytes());
    m.extend((body.len() as u32).to_be_bytes());
    m.extend(body);
    m
}

/// An extension-host RPC request body (rpcProtocol.ts `_requestJSONArgs` for types 1/2,
/// `_requestMixedArgs` with one VSBuffer argument for types 3/4).
pub fn rpc(ty: u8, req: u32, method: &str, args: &[u8]) -> Vec<u8> {
    let mut b = vec![ty];
    b.extend(req.to_be_bytes());
    b.push(17); // rpc id
    b.push(method.len() as u8);
    b.extend(method.as_bytes());
    if ty <= 2 {
        b.extend((args.len() as u32).to_be_bytes());
        b.extend(args);
    } else {
        b.push(1); // one mixed arg
        b.push(2); // ArgType.VSBuffer
        b.extend((args.len() as u32).to_be_bytes());
        b.extend(args);
    }
    b
}
