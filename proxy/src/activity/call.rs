//! Which call a VS Code Regular message carries (layer 4 of [`super`]): an extension-host RPC
//! method or a management-socket IPC channel and command, read from the body's first bytes and
//! looked up on [`ACTIVITY_ALLOW_LIST`].

use super::{ACTIVITY_ALLOW_LIST, ActivityCall};

// ipc.ts DataType / RequestType
const DT_STRING: u8 = 1;
const DT_ARRAY: u8 = 4;
const DT_INT: u8 = 6;
const REQUEST_PROMISE: u32 = 100;

/// Does this Regular message body (or its first [`PREFIX_CAP`](super::PREFIX_CAP) bytes) carry an allow-listed call?
pub(super) fn is_activity(body: &[u8]) -> bool {
    if let Some(method) = rpc_method(body)
        && ACTIVITY_ALLOW_LIST.iter().any(|c| matches!(c, ActivityCall::Rpc(m) if m.as_bytes() == method))
    {
        return true;
    }
    if let Some((channel, command)) = ipc_promise_call(body) {
        return ACTIVITY_ALLOW_LIST.iter().any(|c| {
            matches!(c, ActivityCall::Ipc { channel: ch, command: cmd }
                if ch.as_bytes() == channel && cmd.as_bytes() == command)
        });
    }
    false
}

/// `rpcProtocol.ts` request: type u8 (1..=4), req u32 BE, rpc id u8, method short string.
fn rpc_method(body: &[u8]) -> Option<&[u8]> {
    if !(1..=4).contains(body.first()?) {
        return None;
    }
    let len = usize::from(*body.get(6)?);
    body.get(7..7 + len)
}

/// `ipc.ts` request header `[100, id, channelName, command]` as `serialize` writes it.
fn ipc_promise_call(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut r = Reader { buf: body, pos: 0 };
    if r.byte()? != DT_ARRAY || r.vql()? != 4 || r.byte()? != DT_INT || r.vql()? != REQUEST_PROMISE {
        return None;
    }
    if r.byte()? != DT_INT {
        return None;
    }
    r.vql()?;
    let channel = r.string()?;
    let command = r.string()?;
    Some((channel, command))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    /// `readIntVQL`: 7 bits per byte, least significant first, high bit = more (at most 5 bytes).
    fn vql(&mut self) -> Option<u32> {
        let mut value = 0u32;
        for shift in [0, 7, 14, 21, 28] {
            let b = self.byte()?;
            value |= u32::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn string(&mut self) -> Option<&'a [u8]> {
        if self.byte()? != DT_STRING {
            return None;
        }
        let len = usize::try_from(self.vql()?).ok()?;
        let s = self.buf.get(self.pos..self.pos.checked_add(len)?)?;
        self.pos += len;
        Some(s)
    }
}
